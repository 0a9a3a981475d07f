//! cargo-fuzz entry for `rx_split`; the body is `ephemera::fuzzing::rx_split::run`,
//! which the library's unit tests also replay on stable.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ephemera::fuzzing::rx_split::run(data));
