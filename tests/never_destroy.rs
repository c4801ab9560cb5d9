//! Commands that would destroy what the user has are refused, as qemu-img refuses them,
//! and leave every file as it was: output onto input (by any name), an image made its
//! own backing file, a backing file named without its format. Failed commands leave
//! nothing half-made, and exit codes tell scripts the truth. Each case runs qemu-img
//! (or qemu-io) on the same input beside cowimg.

mod common;

use common::{qemu_img, qemu_io, Scratch};
use std::path::Path;
use std::process::Command;

const COWIMG: &str = env!("CARGO_BIN_EXE_cowimg");

/// Exit code and standard error of `program args` run in `dir`.
fn run_in(dir: &Path, program: &str, args: &[&str]) -> (i32, String) {
    let out = Command::new(program)
        .current_dir(dir)
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Sets up `dir` afresh: base.qcow2 (pattern 7 over the first 64 KiB), overlay.qcow2
/// on it (pattern 9 at 64 KiB) and r.raw (pattern 5).
fn images(dir: &Scratch) {
    for name in ["base.qcow2", "overlay.qcow2", "r.raw", "alias.qcow2"] {
        let _ = std::fs::remove_file(dir.path(name));
    }
    qemu_img(&["create", "-q", "-f", "qcow2", &dir.str("base.qcow2"), "1M"]);
    qemu_io(&[
        "-f",
        "qcow2",
        "-c",
        "write -P 7 0 64k",
        &dir.str("base.qcow2"),
    ]);
    let overlay = dir.str("overlay.qcow2");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        "base.qcow2",
        "-F",
        "qcow2",
        &overlay,
    ]);
    qemu_io(&["-f", "qcow2", "-c", "write -P 9 64k 64k", &overlay]);
    qemu_img(&["create", "-q", "-f", "raw", &dir.str("r.raw"), "1M"]);
    qemu_io(&["-f", "raw", "-c", "write -P 5 0 1M", &dir.str("r.raw")]);
    std::fs::hard_link(dir.path("base.qcow2"), dir.path("alias.qcow2")).unwrap();
}

fn snapshot_files(dir: &Scratch) -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<_> = std::fs::read_dir(dir.path(""))
        .unwrap()
        .map(|e| e.unwrap().path())
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read(&p).unwrap_or_default())
        })
        .collect();
    files.sort();
    files
}

/// Runs `args` with qemu-img and with cowimg on fresh copies of the same images; both
/// must exit `code`, and when they refuse, cowimg must leave every file as it was.
fn same_refusal(args: &[&str], code: i32) {
    for program in ["qemu-img", COWIMG] {
        let dir = Scratch::new("refuse");
        images(&dir);
        let before = snapshot_files(&dir);
        let (got, stderr) = run_in(&dir.path(""), program, args);
        assert_eq!(got, code, "{program} {args:?}: {stderr}");
        if program == COWIMG && code != 0 {
            assert_eq!(snapshot_files(&dir), before, "{args:?} changed a file");
        }
    }
}

#[test]
fn output_onto_input_is_refused_by_any_name() {
    for args in [
        &["convert", "-O", "qcow2", "base.qcow2", "./base.qcow2"][..],
        &["convert", "-O", "qcow2", "base.qcow2", "alias.qcow2"],
        &["convert", "-O", "raw", "r.raw", "r.raw"],
        &["convert", "-O", "qcow2", "overlay.qcow2", "base.qcow2"],
        &[
            "convert",
            "-U",
            "-O",
            "qcow2",
            "overlay.qcow2",
            "alias.qcow2",
        ],
        &["dd", "if=r.raw", "of=r.raw", "-O", "raw"],
        &["dd", "if=overlay.qcow2", "of=base.qcow2", "-O", "qcow2"],
        &[
            "create",
            "-f",
            "qcow2",
            "-b",
            "base.qcow2",
            "-F",
            "qcow2",
            "base.qcow2",
        ],
    ] {
        let dir = Scratch::new("onto");
        images(&dir);
        let before = snapshot_files(&dir);
        let (code, stderr) = run_in(&dir.path(""), COWIMG, args);
        assert_eq!(code, 1, "{args:?}: {stderr}");
        assert_eq!(snapshot_files(&dir), before, "{args:?} changed a file");
        // qemu-img refuses these too (by its locks, or by name for create), except
        // under -U, where it has nothing to go by and overwrites the file, and in dd
        // onto the same raw file, which qemu-img 10.0.2 empties before it locks.
        let raw_dd = args[0] == "dd" && args[1] == "if=r.raw";
        if !args.contains(&"-U") && !raw_dd {
            same_refusal(args, 1);
        }
    }
    // A different name for the backing file (./base.qcow2) slips past qemu-img's
    // check by name, which then makes the image its own backing file; cowimg
    // compares files, not names.
    let dir = Scratch::new("self-backing");
    images(&dir);
    let before = snapshot_files(&dir);
    let args = [
        "create",
        "-f",
        "qcow2",
        "-b",
        "./base.qcow2",
        "-F",
        "qcow2",
        "base.qcow2",
    ];
    assert_eq!(run_in(&dir.path(""), COWIMG, &args).0, 1);
    assert_eq!(snapshot_files(&dir), before);
}

#[test]
fn a_backing_file_without_its_format_is_refused() {
    same_refusal(
        &["create", "-f", "qcow2", "-b", "base.qcow2", "new.qcow2"],
        1,
    );
    same_refusal(&["create", "-f", "qcow", "-b", "base.qcow2", "new.qcow"], 1);
    same_refusal(&["rebase", "-u", "-b", "base.qcow2", "overlay.qcow2"], 1);
    same_refusal(&["rebase", "-b", "r.raw", "overlay.qcow2"], 1);
    // Dropping the backing file needs no format.
    same_refusal(&["rebase", "-u", "-b", "", "overlay.qcow2"], 0);
}

#[test]
fn a_failed_create_leaves_nothing_behind() {
    let dir = Scratch::new("failed-create");
    for args in [
        &["create", "-f", "cow", "x.cow", "8M"][..],
        &[
            "create",
            "-f",
            "qcow2",
            "-o",
            "cluster_size=3",
            "x.qcow2",
            "8M",
        ],
        &[
            "create",
            "-f",
            "qcow2",
            "-o",
            "data_file=x.data,cluster_size=3",
            "x.qcow2",
            "8M",
        ],
    ] {
        let (code, stderr) = run_in(&dir.path(""), COWIMG, args);
        assert_eq!(code, 1, "{args:?}: {stderr}");
        let left: Vec<_> = std::fs::read_dir(dir.path("")).unwrap().collect();
        assert!(left.is_empty(), "{args:?} left {left:?}");
    }
}

#[test]
fn a_fifo_is_refused_not_waited_on() {
    let dir = Scratch::new("fifo");
    let fifo = dir.path("pipe");
    let status = Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(status.success());
    for args in [
        &["snapshot", "-c", "s", "pipe"][..],
        &["check", "pipe"],
        &["info", "pipe"],
    ] {
        let (code, stderr) = run_in(&dir.path(""), COWIMG, args);
        assert_eq!(code, 1, "{args:?}");
        assert!(
            stderr.contains("'file' driver requires 'pipe' to be a regular file"),
            "{args:?}: {stderr}"
        );
    }
    // qemu-img refuses the write the same way (its read-only open of a FIFO blocks).
    let (code, stderr) = run_in(&dir.path(""), "qemu-img", &["snapshot", "-c", "s", "pipe"]);
    assert_eq!(code, 1);
    assert!(stderr.contains("'file' driver requires 'pipe' to be a regular file"));
}

#[test]
fn exit_codes_tell_the_truth() {
    let dir = Scratch::new("exit-codes");
    images(&dir);
    let here = dir.path("");
    // A mistyped option is a usage error (1), never check's "corruptions remain" (2).
    for program in ["qemu-img", COWIMG] {
        assert_eq!(
            run_in(&here, program, &["check", "--bogus", "base.qcow2"]).0,
            1
        );
        assert_eq!(run_in(&here, program, &["check"]).0, 1);
    }
    // A pattern that does not verify fails the run, as in qemu-io; one that does not.
    for (pattern, code) in [("0x01", 1), ("0x07", 0)] {
        let command = format!("read -P {pattern} 0 4k");
        let qemu = run_in(&here, "qemu-io", &["-c", &command, "base.qcow2"]).0;
        let ours = run_in(&here, COWIMG, &["io", "-c", &command, "base.qcow2"]).0;
        assert_eq!((qemu, ours), (code, code), "{command}");
    }
    let two = [
        "-c",
        "read -P 0x01 0 4k",
        "-c",
        "read -P 0x07 0 4k",
        "base.qcow2",
    ];
    let mut ours = vec!["io"];
    ours.extend(two);
    assert_eq!(run_in(&here, "qemu-io", &two).0, 1);
    assert_eq!(run_in(&here, COWIMG, &ours).0, 1);
}
