//! See `cowimg::fuzz::cow_header`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| cowimg::fuzz::cow_header(data));
