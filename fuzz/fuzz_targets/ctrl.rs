//! Control-socket codec: no panics, and every accepted request or reply
//! encodes back to the same bytes. See `netmap::testing::fuzz_ctrl`.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    netmap::testing::fuzz_ctrl(data);
});
