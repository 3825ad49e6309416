#![no_main]
//! The virtio driver's split queue against a hostile device: used ids,
//! lengths and indexes of any value, interleaved with the driver's posts,
//! publishes, reaps and interrupt toggles.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| guest_driver::testing::fuzz_used(data));
