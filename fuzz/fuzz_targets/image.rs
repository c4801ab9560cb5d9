//! See `cowimg::fuzz::image`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| cowimg::fuzz::image(data));
