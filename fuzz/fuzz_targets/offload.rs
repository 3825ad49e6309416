#![no_main]
//! Software checksum and segmentation of untrusted virtio-net frames: a
//! 12-byte vnet header, then the frame. See `vale::testing::fuzz_offload`.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| vale::testing::fuzz_offload(data));
