//! See `cowimg::fuzz::headers`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| cowimg::fuzz::headers(data));
