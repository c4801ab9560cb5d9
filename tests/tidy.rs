//! The rules of docs/ARCHITECTURE.md that a reader of the source can check, checked:
//! every hand-written source file says what it is in a module doc line; no code outside
//! tests can panic through `unwrap`, `expect` or a panicking macro (input must never
//! reach a panic); and no runtime writes a header field at a number instead of at the
//! offset the spec generates for it.

use std::path::{Path, PathBuf};

/// Hand-written Rust files under `src/`: the generated views and the fuzz bodies
/// (which panic on purpose when an invariant breaks) aside.
fn sources() -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                if !path.ends_with("generated") {
                    walk(&path, out);
                }
            } else if path.extension().is_some_and(|e| e == "rs") && !path.ends_with("fuzz.rs") {
                out.push(path);
            }
        }
    }
    let mut out = Vec::new();
    walk(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"), &mut out);
    out.sort();
    assert!(out.len() > 40, "the sources are there");
    out
}

/// The file's code before its test module, with comment lines blanked.
fn code_outside_tests(text: &str) -> Vec<(usize, &str)> {
    text.lines()
        .enumerate()
        .take_while(|(_, line)| line.trim() != "#[cfg(test)]")
        .filter(|(_, line)| !line.trim_start().starts_with("//"))
        .map(|(i, line)| (i + 1, line))
        .collect()
}

#[test]
fn every_source_file_starts_with_a_module_doc_line() {
    let missing: Vec<_> = sources()
        .into_iter()
        .filter(|p| !std::fs::read_to_string(p).unwrap().starts_with("//!"))
        .collect();
    assert!(
        missing.is_empty(),
        "no `//!` line at the top of {missing:?}"
    );
}

#[test]
fn no_code_outside_tests_can_panic_through_unwrap_or_expect() {
    const PANICKING: [&str; 6] = [
        ".unwrap()",
        ".expect(",
        "panic!(",
        "unreachable!(",
        "todo!(",
        "unimplemented!(",
    ];
    let mut found = Vec::new();
    for path in sources() {
        let text = std::fs::read_to_string(&path).unwrap();
        for (n, line) in code_outside_tests(&text) {
            if PANICKING.iter().any(|p| line.contains(p)) {
                found.push(format!("{}:{n}: {}", path.display(), line.trim()));
            }
        }
    }
    assert!(
        found.is_empty(),
        "panicking calls outside tests:\n{}",
        found.join("\n")
    );
}

/// The last argument of each `write_at(…)` call in `text`, with the call's line.
fn write_at_offsets(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    for (start, _) in text.match_indices("write_at(") {
        let args = &text[start + "write_at(".len()..];
        let (mut depth, mut commas, mut end) = (0i32, vec![], None);
        for (i, c) in args.char_indices() {
            match c {
                '(' | '[' | '{' => depth += 1,
                ')' | ']' | '}' if depth == 0 => {
                    end = Some(i);
                    break;
                }
                ')' | ']' | '}' => depth -= 1,
                ',' if depth == 0 => commas.push(i),
                _ => {}
            }
        }
        let Some(end) = end else { continue };
        // The pieces between top-level commas; a trailing comma leaves an empty last one.
        let mut bounds = vec![0];
        bounds.extend(commas.iter().map(|c| c + 1));
        let pieces: Vec<&str> = bounds
            .iter()
            .zip(commas.iter().copied().chain([end]))
            .map(|(&from, to)| args[from..to].trim())
            .filter(|piece| !piece.is_empty())
            .collect();
        if pieces.len() >= 2 {
            let line = text[..start].lines().count();
            out.push((line, pieces[pieces.len() - 1].to_string()));
        }
    }
    out
}

#[test]
fn header_fields_are_written_at_the_offsets_the_spec_gives() {
    let mut found = Vec::new();
    for path in sources() {
        let text = std::fs::read_to_string(&path).unwrap();
        let code: String = code_outside_tests(&text)
            .into_iter()
            .map(|(_, line)| format!("{line}\n"))
            .collect();
        for (line, offset) in write_at_offsets(&code) {
            // Offset 0 is a whole structure written from its start.
            if offset.parse::<u64>().is_ok_and(|n| n != 0) {
                found.push(format!(
                    "{}: write_at(…, {offset}) near line {line}",
                    path.display()
                ));
            }
            // Named field offsets belong to the one header writer, which keeps the
            // in-memory header equal to the file.
            if offset.ends_with("_AT") && !path.ends_with("qcow2/header_fields.rs") {
                found.push(format!(
                    "{}: write_at(…, {offset}) near line {line} (use the setters in qcow2/header_fields.rs)",
                    path.display()
                ));
            }
        }
    }
    assert!(
        found.is_empty(),
        "header fields written outside the header writer:\n{}",
        found.join("\n")
    );
}

#[test]
fn the_offset_scanner_sees_literals_and_names() {
    let sample = "s.write_at(&bits.to_be_bytes(), 72)?;\n\
                  s.write_at(&f(a, b), Header::SIZE_AT)?;\n\
                  s.write_at(\n    &x,\n    40,\n)?;";
    let offsets: Vec<String> = write_at_offsets(sample)
        .into_iter()
        .map(|(_, o)| o)
        .collect();
    assert_eq!(offsets, ["72", "Header::SIZE_AT", "40"]);
}
