#![no_main]
//! Guest descriptor chains of any shape through the vhost-user backend's
//! chain walkers (TX fragments, RX buffers).
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| backend::testing::fuzz_vring(data));
