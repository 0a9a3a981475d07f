//! cargo-fuzz entry for `stack_pair`; the body is `ephemera::fuzzing::stack_pair::run`,
//! which the library's unit tests also replay on stable.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ephemera::fuzzing::stack_pair::run(data));
