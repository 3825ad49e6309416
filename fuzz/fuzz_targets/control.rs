//! valed's control plane, stateful: sequences of requests from four
//! connections of two uids, connections closing between them. See
//! `valed::fuzzing::control_sequence` for the input layout and invariants.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    valed::fuzzing::control_sequence(data);
});
