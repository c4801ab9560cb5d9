//! Turns the declarative layouts in `spec/*.toml` into Rust views
//! (`src/format/generated/`) and layout tables (`docs/format/`).
//!
//! The output is a pure function of the spec, so a test can regenerate it in memory and
//! compare it with what is checked in. Rust output goes through `rustfmt` so that the
//! checked-in files are what `cargo fmt` would leave.

mod docs;
mod rust;
mod spec;

use std::path::{Path, PathBuf};

pub use spec::Family;

/// Everything codegen writes, as (path relative to the repository root, contents).
pub fn generate(root: &Path) -> Result<Vec<(PathBuf, String)>, String> {
    let families = spec::load_all(&root.join("spec"))?;
    let mut out = Vec::new();
    for family in &families {
        let code = rust::family(family)?;
        out.push((
            PathBuf::from(format!("src/format/generated/{}.rs", family.family)),
            rustfmt(&code)?,
        ));
        out.push((
            PathBuf::from(format!("docs/format/{}.md", family.family)),
            docs::family(family),
        ));
    }
    out.push((
        PathBuf::from("src/format/generated/mod.rs"),
        rustfmt(&rust::module_index(&families))?,
    ));
    out.push((
        PathBuf::from("docs/format/README.md"),
        docs::index(&families),
    ));
    Ok(out)
}

/// The files on disk that differ from what `generate` makes (missing ones included).
pub fn stale_files(root: &Path) -> Result<Vec<PathBuf>, String> {
    Ok(generate(root)?
        .into_iter()
        .filter(|(path, text)| std::fs::read_to_string(root.join(path)).ok().as_ref() != Some(text))
        .map(|(path, _)| path)
        .collect())
}

fn rustfmt(code: &str) -> Result<String, String> {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let mut child = Command::new("rustfmt")
        .args(["--edition", "2021", "--emit", "stdout"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run rustfmt (rustup component add rustfmt): {e}"))?;
    child
        .stdin
        .take()
        .expect("stdin was piped")
        .write_all(code.as_bytes())
        .map_err(|e| format!("writing to rustfmt: {e}"))?;
    let output = child
        .wait_with_output()
        .map_err(|e| format!("rustfmt: {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "rustfmt rejected the generated code:\n{}\n--- code ---\n{code}",
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    String::from_utf8(output.stdout).map_err(|e| format!("rustfmt output: {e}"))
}
