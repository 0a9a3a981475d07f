//! cargo-fuzz entry for `stack_pair`; the body is `ephemera::fuzzing::stack_pair::run`,
//! which `tests/fuzz_regressions.rs` also replays on stable.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ephemera::fuzzing::stack_pair::run(data));
