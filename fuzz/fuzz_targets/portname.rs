//! Port-name parser: no panics, and every accepted name round-trips through
//! its canonical (`Display`) form. See `netmap::testing::fuzz_portname`.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    netmap::testing::fuzz_portname(data);
});
