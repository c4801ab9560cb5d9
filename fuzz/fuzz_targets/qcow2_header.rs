//! See `cowimg::fuzz::qcow2_header`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| cowimg::fuzz::qcow2_header(data));
