//! The checked-in generated files must be exactly what the spec produces now.

use std::path::Path;

#[test]
fn generated_files_match_the_spec() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let stale = cowimg_codegen::stale_files(root).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        stale.is_empty(),
        "generated files differ from spec/ (edited by hand, or the spec changed): {stale:?}\n\
         run `cargo run -p cowimg-codegen` and commit the result"
    );
}
