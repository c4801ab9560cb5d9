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

/// The detector itself: in a copy of the repository, a hand edit is reported.
#[test]
fn a_hand_edit_is_reported() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let copy = std::env::temp_dir().join(format!("cowimg-codegen-{}", std::process::id()));
    std::fs::create_dir_all(copy.join("spec")).unwrap();
    for entry in std::fs::read_dir(root.join("spec")).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, copy.join("spec").join(path.file_name().unwrap())).unwrap();
    }
    let files = cowimg_codegen::generate(&copy).unwrap();
    for (path, text) in &files {
        std::fs::create_dir_all(copy.join(path).parent().unwrap()).unwrap();
        std::fs::write(copy.join(path), text).unwrap();
    }
    assert!(cowimg_codegen::stale_files(&copy).unwrap().is_empty());
    let victim = copy.join("src/format/generated/qcow2.rs");
    let edited = std::fs::read_to_string(&victim)
        .unwrap()
        .replace("pub cluster_bits: u32", "pub cluster_bits: u64");
    std::fs::write(&victim, edited).unwrap();
    let stale = cowimg_codegen::stale_files(&copy).unwrap();
    std::fs::remove_dir_all(&copy).unwrap();
    assert_eq!(
        stale,
        vec![std::path::PathBuf::from("src/format/generated/qcow2.rs")]
    );
}
