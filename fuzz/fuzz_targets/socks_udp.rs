//! cargo-fuzz entry for `socks_udp`; the body is
//! `ephemera::fuzzing::socks_udp::run`, which the library's unit tests
//! also replay on stable.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ephemera::fuzzing::socks_udp::run(data));
