#![no_main]
//! A hostile VMM's vhost-user requests (any order, size, descriptors)
//! served by the backend's own dispatch.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    backend::testing::fuzz_vhost_user(data);
});
