#![no_main]
//! Frames of any shape through the switch engine.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| vale::testing::fuzz_engine(data));
