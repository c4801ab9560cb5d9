//! Crash safety: a workload runs on a storage backend that, at one write, starts
//! failing (the image must stay readable) or crashes, losing everything not flushed.
//! This is repeated for every write point of the workload. Each surviving image must
//! show no corruption under qemu-img check and cowimg check (leaks are allowed), and
//! every byte acknowledged by a flush and not written since must read back.

mod common;

use common::*;
use cowimg::create::{layout_qcow2, CreateOptions};
use cowimg::storage::{Fault, FaultStorage, MemoryStorage};
use cowimg::{Backing, Format, Image, OpenOptions};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

#[derive(Clone, Debug)]
enum Op {
    Write(u64, u64, u8),
    Zero(u64, u64, bool),
    Discard(u64, u64),
    Compressed(u64, u8),
    /// An internal snapshot of the current state (the guest content is unchanged).
    Snapshot,
    Flush,
}

fn workload(seed: u64, size: u64, cs: u64, big: bool) -> Vec<Op> {
    let mut x = seed | 1;
    let mut next = move |n: u64| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x % n.max(1)
    };
    let mut ops = Vec::new();
    let mut compressed_done = std::collections::HashSet::new();
    for i in 0..24 {
        let off = next(size);
        let len = 1 + next((size - off).min(if big { 256 * cs } else { 3 * cs }));
        let op = match next(8) {
            0 => Op::Zero(off, len, next(2) == 0),
            1 => Op::Discard(off, len),
            2 if compressed_done.insert(off / cs) => {
                Op::Compressed(off / cs * cs, next(255) as u8 + 1)
            }
            _ => Op::Write(off, len, next(255) as u8 + 1),
        };
        ops.push(op);
        if i % 4 == 3 {
            ops.push(Op::Flush);
        }
    }
    ops
}

/// Applies `op` to the image, and if it succeeds, to the model of the guest content.
fn apply(
    image: &mut Image,
    model: &mut [u8],
    touched: &mut [bool],
    op: &Op,
    cs: u64,
) -> cowimg::Result<()> {
    let mark = |touched: &mut [bool], off: u64, len: u64| {
        for s in off / 512..(off + len).div_ceil(512) {
            touched[s as usize] = true;
        }
    };
    match *op {
        Op::Write(off, len, p) => {
            mark(touched, off, len);
            image.write_at(&vec![p; len as usize], off)?;
            model[off as usize..(off + len) as usize].fill(p);
        }
        Op::Zero(off, len, unmap) => {
            mark(touched, off, len);
            image.write_zeroes(off, len, unmap)?;
            model[off as usize..(off + len) as usize].fill(0);
        }
        Op::Discard(off, len) => {
            mark(touched, off, len);
            image.discard(off, len)?;
            // Version 3 without a backing file: whole clusters read as zeros.
            let (first, last) = (off.next_multiple_of(cs), (off + len) / cs * cs);
            if first < last {
                model[first as usize..last as usize].fill(0);
            }
        }
        Op::Compressed(off, p) => {
            let len = cs.min(model.len() as u64 - off);
            mark(touched, off, len);
            // Refused when the cluster already has space: the model is unchanged then.
            if image.write_compressed(&vec![p; len as usize], off).is_ok() {
                model[off as usize..(off + len) as usize].fill(p);
            }
        }
        Op::Snapshot => {
            image.snapshot_create("s")?;
        }
        Op::Flush => image.flush()?,
    }
    Ok(())
}

struct Outcome {
    bytes: Vec<u8>,
    acked: Vec<u8>,
    touched: Vec<bool>,
    writes: u64,
    /// The backing file the image was written over, if any.
    backing: Option<PathBuf>,
}

/// How the image under test is opened: writable, over `backing` when given.
fn options_over(backing: Option<&Path>, writable: bool) -> OpenOptions {
    OpenOptions::new()
        .writable(writable)
        .backing(match backing {
            Some(path) => Backing::Override {
                path: path.to_path_buf(),
                format: Some(Format::Qcow2),
            },
            None => Backing::Ignore,
        })
}

/// The guest bytes an operation may change.
fn op_range(op: &Op, cs: u64, size: u64) -> std::ops::Range<usize> {
    match *op {
        Op::Write(off, len, _) | Op::Zero(off, len, _) | Op::Discard(off, len) => {
            off as usize..(off + len) as usize
        }
        Op::Compressed(off, _) => off as usize..(off + cs).min(size) as usize,
        Op::Flush | Op::Snapshot => 0..0,
    }
}

/// The image a workload starts from: its bytes, its guest content, and the backing
/// file it is written over (if any).
#[derive(Clone, Copy)]
struct Scenario<'a> {
    base: &'a [u8],
    start: &'a [u8],
    backing: Option<&'a Path>,
}

impl<'a> Scenario<'a> {
    /// An image without a backing file.
    fn alone(base: &'a [u8], start: &'a [u8]) -> Self {
        Scenario {
            base,
            start,
            backing: None,
        }
    }
}

/// Runs `ops` on the scenario's image, the fault striking as given.
fn run(scenario: Scenario, cs: u64, ops: &[Op], fault: Option<(u64, Fault)>) -> Outcome {
    let Scenario {
        base,
        start,
        backing,
    } = scenario;
    let storage = Arc::new(FaultStorage::new(base.to_vec(), fault));
    let options = options_over(backing, true);
    let size = start.len() as u64;
    let mut image = Image::open_storage(storage.clone(), Format::Qcow2, &options).expect("open");
    let mut model = start.to_vec();
    let mut acked = model.clone();
    let mut touched = vec![false; (size / 512) as usize];
    for op in ops {
        if let Err(e) = apply(&mut image, &mut model, &mut touched, op, cs) {
            // The handle still reads: everything but what the failed request covered
            // is as it was.
            if matches!(fault, Some((_, Fault::Fail | Fault::NoSpace))) {
                let mut now = vec![0u8; size as usize];
                image
                    .read_at(&mut now, 0)
                    .unwrap_or_else(|r| panic!("{op:?} failed ({e}); reads then fail: {r}"));
                let hit = op_range(op, cs, size);
                for (i, (a, b)) in now.iter().zip(&model).enumerate() {
                    assert!(
                        a == b || hit.contains(&i),
                        "{op:?} failed ({e}), and byte {i:#x} it did not cover changed"
                    );
                }
            }
            break;
        }
        if matches!(op, Op::Flush) {
            acked.copy_from_slice(&model);
            touched.fill(false);
        }
    }
    drop(image);
    let bytes = match fault {
        Some((_, Fault::Drop | Fault::Reorder)) => storage.durable(),
        _ => storage.current(),
    };
    Outcome {
        bytes,
        acked,
        touched,
        writes: storage.writes(),
        backing: backing.map(Path::to_path_buf),
    }
}

/// Which damage an outcome may show.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Allowed {
    /// Leaks at most.
    Leaks,
    /// Also COPIED flags that disagree with refcounts: a snapshot raises a cluster's
    /// refcount and clears its flag in two clusters of the file, so a crash between
    /// the two leaves the flag early, which cowimg's `check -r all` must then repair.
    CopiedFlags,
}

fn verify(outcome: &Outcome, dir: &Scratch, context: &str) {
    verify_allowing(outcome, dir, context, Allowed::Leaks)
}

fn verify_allowing(outcome: &Outcome, dir: &Scratch, context: &str, allowed: Allowed) {
    let path = dir.str("crashed.qcow2");
    std::fs::write(&path, &outcome.bytes).unwrap();
    let check = || {
        Command::new("qemu-img")
            .args(["check", "--output=json", "-f", "qcow2", &path])
            .output()
            .unwrap()
    };
    let mut theirs = check();
    let mut code = theirs.status.code();
    if code == Some(2) && allowed == Allowed::CopiedFlags {
        let report = String::from_utf8_lossy(&theirs.stderr).into_owned();
        assert!(
            report
                .lines()
                .filter(|l| l.starts_with("ERROR"))
                .all(|l| l.contains("OFLAG_COPIED")),
            "{context}: corruption other than COPIED flags:\n{report}"
        );
        let repair = Command::new(env!("CARGO_BIN_EXE_cowimg"))
            .args(["check", "-r", "all", "-f", "qcow2", &path])
            .output()
            .unwrap();
        assert_eq!(
            repair.status.code(),
            Some(0),
            "{context}: cowimg check -r all"
        );
        theirs = check();
        code = theirs.status.code();
        assert_eq!(
            code,
            Some(0),
            "{context}: qemu-img check after cowimg's repair"
        );
    }
    assert!(
        code == Some(0) || code == Some(3),
        "{context}: qemu-img check found corruption:\n{}{}",
        String::from_utf8_lossy(&theirs.stdout),
        String::from_utf8_lossy(&theirs.stderr)
    );
    let ours = Command::new(env!("CARGO_BIN_EXE_cowimg"))
        .args(["check", "--output=json", "-f", "qcow2", &path])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&ours.stdout),
        String::from_utf8_lossy(&theirs.stdout),
        "{context}: checks disagree"
    );
    assert_eq!(ours.status.code(), code, "{context}");
    let image = Image::open_storage(
        Arc::new(MemoryStorage::new(outcome.bytes.clone())),
        Format::Qcow2,
        &options_over(outcome.backing.as_deref(), false),
    )
    .unwrap_or_else(|e| panic!("{context}: the image no longer opens: {e}"));
    let mut content = vec![0u8; outcome.acked.len()];
    image
        .read_at(&mut content, 0)
        .unwrap_or_else(|e| panic!("{context}: unreadable: {e}"));
    for (s, touched) in outcome.touched.iter().enumerate() {
        let range = s * 512..(s + 1) * 512;
        if !touched && content[range.clone()] != outcome.acked[range.clone()] {
            panic!(
                "{context}: acknowledged data at {:#x} was lost",
                range.start
            );
        }
    }
}

/// Default creation options with this size and cluster size.
fn sized(size: u64, cluster_size: u64) -> CreateOptions {
    CreateOptions::new(size).cluster_size(cluster_size)
}

fn fresh(opts: &CreateOptions) -> Vec<u8> {
    let m = MemoryStorage::new(Vec::new());
    layout_qcow2(&m, None, opts).unwrap();
    m.to_vec()
}

fn every_write_point(opts: CreateOptions, seed: u64, big: bool, points: u64) {
    let ops = workload(seed, opts.size, opts.cluster_size, big);
    crash_at_points(&opts, &ops, points);
}

/// Runs `ops` with each fault striking at (up to `points`) write points; every outcome
/// must verify. Returns the run without a fault.
fn crash_at_points(opts: &CreateOptions, ops: &[Op], points: u64) -> Outcome {
    let start = vec![0u8; opts.size as usize];
    let faults = [Fault::Drop, Fault::Reorder, Fault::Fail, Fault::NoSpace];
    let base = fresh(opts);
    let scenario = Scenario::alone(&base, &start);
    faults_at_points(scenario, opts, ops, points, &faults, Allowed::Leaks)
}

/// `crash_at_points` from the scenario's image, for `faults`.
fn faults_at_points(
    scenario: Scenario,
    opts: &CreateOptions,
    ops: &[Op],
    points: u64,
    faults: &[Fault],
    allowed: Allowed,
) -> Outcome {
    let clean = run(scenario, opts.cluster_size, ops, None);
    let total = clean.writes;
    assert!(total > 20, "the workload writes ({total})");
    let dir = Scratch::new("fault");
    verify(&clean, &dir, "no fault");
    let step = (total / points).max(1);
    for &fault in faults {
        for at in (0..total).step_by(step as usize) {
            let outcome = run(scenario, opts.cluster_size, ops, Some((at, fault)));
            verify_allowing(
                &outcome,
                &dir,
                &format!("{fault:?} at write {at} of {total}, {opts:?}"),
                allowed,
            );
        }
    }
    clean
}

#[test]
fn crash_or_failure_at_every_write_point() {
    let opts = sized(256 << 10, 4096);
    every_write_point(opts, 11, false, u64::MAX);
    let opts = sized(256 << 10, 512).refcount_bits(1);
    every_write_point(opts, 12, false, u64::MAX);
}

/// Enough allocation to create refcount blocks and grow the refcount table (64-bit
/// refcounts and 512-byte clusters: a block covers 32 KiB, the first table 2 MiB).
#[test]
fn crash_during_refcount_table_growth() {
    let opts = sized(6 << 20, 512).refcount_bits(64);
    let ops = vec![
        Op::Write(0, 3 << 20, 0x61),
        Op::Flush,
        Op::Write(3 << 20, 3 << 20, 0x62),
        Op::Flush,
    ];
    let clean = crash_at_points(&opts, &ops, 80);
    let table_clusters = u32::from_be_bytes(clean.bytes[56..60].try_into().unwrap());
    assert!(table_clusters > 1, "the workload grows the refcount table");
}

/// Clusters that flushed L2 entries point at are freed (discard, zeros with unmap,
/// overwritten compressed clusters): their refcounts may drop only once the changed
/// tables are durable.
#[test]
fn crash_while_freeing_flushed_clusters() {
    let opts = sized(1 << 20, 4096);
    let cs = opts.cluster_size;
    let ops = vec![
        Op::Write(0, 8 * cs, 0x11),
        Op::Compressed(8 * cs, 0x22),
        Op::Compressed(9 * cs, 0x23),
        Op::Flush,
        Op::Discard(0, 2 * cs),
        Op::Zero(2 * cs, 2 * cs, true),
        Op::Write(8 * cs, cs / 2, 0x33),
        Op::Flush,
        Op::Write(4 * cs, 4 * cs, 0x44),
        Op::Discard(9 * cs, cs),
        Op::Zero(4 * cs, cs, true),
        Op::Flush,
    ];
    crash_at_points(&opts, &ops, u64::MAX);
}

/// Memory whose next flush fails once when armed: a transient error.
#[derive(Debug, Default)]
struct FlakyFlush {
    inner: MemoryStorage,
    armed: std::sync::atomic::AtomicBool,
}

impl cowimg::storage::Storage for FlakyFlush {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
        self.inner.read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> std::io::Result<()> {
        self.inner.write_at(buf, offset)
    }
    fn len(&self) -> std::io::Result<u64> {
        self.inner.len()
    }
    fn set_len(&self, len: u64) -> std::io::Result<()> {
        self.inner.set_len(len)
    }
    fn flush(&self) -> std::io::Result<()> {
        if self.armed.swap(false, std::sync::atomic::Ordering::SeqCst) {
            return Err(std::io::Error::other("transient flush failure"));
        }
        self.inner.flush()
    }
}

/// A write-back that fails half-way keeps its tables: the frees they allow must not
/// happen on a later, successful flush before the tables are written.
#[test]
fn a_failed_flush_keeps_what_it_could_not_write() {
    let opts = sized(1 << 20, 4096);
    let storage = Arc::new(FlakyFlush {
        inner: MemoryStorage::new(fresh(&opts)),
        ..Default::default()
    });
    let options = OpenOptions::new().writable(true);
    let mut image = Image::open_storage(storage.clone(), Format::Qcow2, &options).unwrap();
    image.write_at(&[7u8; 8192], 0).unwrap();
    image.flush().unwrap();
    image.discard(0, 8192).unwrap();
    storage
        .armed
        .store(true, std::sync::atomic::Ordering::SeqCst);
    assert!(image.flush().is_err(), "the armed flush fails");
    image.flush().unwrap();
    drop(image);
    let dir = Scratch::new("flaky");
    verify(
        &Outcome {
            bytes: storage.inner.to_vec(),
            acked: vec![0; opts.size as usize],
            touched: vec![false; (opts.size / 512) as usize],
            writes: 0,
            backing: None,
        },
        &dir,
        "flush failed once, then succeeded",
    );
}

/// A full disk during copy-on-write: clusters shared with an internal snapshot (and
/// clusters of a snapshot-shared L2 table) are written 1 KiB at a time while the file
/// cannot grow. Every write that fails leaves the image check-clean and every byte it
/// did not cover intact, in the file and through the same handle.
#[test]
fn full_disk_while_copying_snapshot_shared_clusters() {
    let opts = sized(1 << 20, 4096);
    let cs = opts.cluster_size;
    let storage = Arc::new(MemoryStorage::new(fresh(&opts)));
    let writable = OpenOptions::new().writable(true);
    let mut start = vec![0u8; opts.size as usize];
    {
        let mut image = Image::open_storage(storage.clone(), Format::Qcow2, &writable).unwrap();
        for c in 0..32u64 {
            let fill = vec![0x40 + c as u8; cs as usize];
            image.write_at(&fill, c * cs).unwrap();
            start[(c * cs) as usize..((c + 1) * cs) as usize].copy_from_slice(&fill);
        }
        image.snapshot_create("before").unwrap();
        image.flush().unwrap();
    }
    let base = storage.to_vec();
    let mut ops: Vec<Op> = (0..16u64)
        .map(|i| Op::Write(i * 2 * cs + 1024, 1024, 0xa0 + i as u8))
        .collect();
    ops.insert(8, Op::Flush);
    ops.push(Op::Flush);
    let scenario = Scenario::alone(&base, &start);
    faults_at_points(
        scenario,
        &opts,
        &ops,
        u64::MAX,
        &[Fault::NoSpace],
        Allowed::Leaks,
    );
}

/// Snapshots taken between writes, under every fault at every write point: a crash or
/// a full disk while the snapshot is taken (L1 copy, COPIED flags, refcounts, table)
/// leaves leaks, or COPIED flags cleared early that cowimg's `check -r all` repairs to
/// a clean image, and no acknowledged byte is lost.
#[test]
fn crash_or_full_disk_around_snapshots() {
    let opts = sized(512 << 10, 4096);
    let cs = opts.cluster_size;
    let ops = vec![
        Op::Write(0, 16 * cs, 0x51),
        Op::Flush,
        Op::Snapshot,
        Op::Write(cs / 2, 2 * cs, 0x52),
        Op::Zero(8 * cs, 4 * cs, true),
        Op::Flush,
        Op::Snapshot,
        Op::Discard(0, 4 * cs),
        Op::Write(12 * cs + 100, 3 * cs, 0x53),
        Op::Flush,
    ];
    let faults = [Fault::Drop, Fault::Reorder, Fault::Fail, Fault::NoSpace];
    let (base, start) = (fresh(&opts), vec![0u8; opts.size as usize]);
    let scenario = Scenario::alone(&base, &start);
    faults_at_points(
        scenario,
        &opts,
        &ops,
        u64::MAX,
        &faults,
        Allowed::CopiedFlags,
    );
}

/// A full disk (and every other fault) while copying backing-file data into new
/// clusters: 1 KiB writes into clusters the image does not have yet.
#[test]
fn full_disk_while_copying_from_a_backing_file() {
    let opts = sized(1 << 20, 4096);
    let cs = opts.cluster_size;
    let dir = Scratch::new("fault-backing");
    let backing = dir.path("backing.qcow2");
    let backing_storage = Arc::new(MemoryStorage::new(fresh(&opts)));
    let mut start = vec![0u8; opts.size as usize];
    {
        let writable = options_over(None, true);
        let mut image =
            Image::open_storage(backing_storage.clone(), Format::Qcow2, &writable).unwrap();
        for c in 0..32u64 {
            let fill = vec![0x60 + c as u8; cs as usize];
            image.write_at(&fill, c * cs).unwrap();
            start[(c * cs) as usize..((c + 1) * cs) as usize].copy_from_slice(&fill);
        }
        image.flush().unwrap();
    }
    std::fs::write(&backing, backing_storage.to_vec()).unwrap();
    let overlay = opts
        .clone()
        .backing_file(backing.to_str().unwrap().to_string())
        .backing_format("qcow2".to_string());
    let mut ops: Vec<Op> = (0..16u64)
        .map(|i| Op::Write(i * 2 * cs + 1024, 1024, 0xb0 + i as u8))
        .collect();
    ops.insert(8, Op::Flush);
    ops.push(Op::Flush);
    let faults = [Fault::Drop, Fault::Reorder, Fault::Fail, Fault::NoSpace];
    let base = fresh(&overlay);
    let scenario = Scenario {
        base: &base,
        start: &start,
        backing: Some(&backing),
    };
    faults_at_points(scenario, &opts, &ops, u64::MAX, &faults, Allowed::Leaks);
}

/// The guest content of `bytes` as a qcow2 image, or None when it cannot be read.
fn content_of(bytes: &[u8]) -> Option<Vec<u8>> {
    let image = Image::open_storage(
        Arc::new(MemoryStorage::new(bytes.to_vec())),
        Format::Qcow2,
        &OpenOptions::default(),
    )
    .ok()?;
    let mut out = vec![0u8; image.size() as usize];
    image.read_at(&mut out, 0).ok()?;
    Some(out)
}

/// Clusters a fault-free check finds referenced but with refcount 0: what a repair
/// would have freed while still in use.
fn in_use_without_refcount(bytes: &[u8]) -> std::collections::BTreeSet<u64> {
    use cowimg::check::{check, Repair};
    let result = check(&MemoryStorage::new(bytes.to_vec()), false, Repair::None).unwrap();
    result
        .messages
        .iter()
        .filter_map(|m| {
            let rest = m.strip_prefix("ERROR cluster ")?;
            let (n, rest) = rest.split_once(' ')?;
            rest.starts_with("refcount=0 ").then(|| n.parse().ok())?
        })
        .collect()
}

/// Read errors (a failing disk) at every read point of opening, reading, mapping and
/// checking QEMU-made images, with and without `-r all`: each step answers or fails
/// with an error, never a panic; a repair that met a read error frees no cluster in use
/// (references it could not count would look leaked; QEMU, too, then repairs nothing),
/// and has not changed what the image reads as. Errors that persist and transient
/// ones (a single failed read) both.
#[test]
fn read_errors_at_every_read_point() {
    use cowimg::check::{check, Repair};
    // A crashed lazy-refcounts image too, whose repair rebuilds the refcounts: a
    // rebuild from references a read error hid would free live data.
    let dir = Scratch::new("read-faults");
    let crashed = dir.str("crashed.qcow2");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        "cluster_size=4096,lazy_refcounts=on",
        &crashed,
        "1M",
    ]);
    let aborted = Command::new("qemu-io")
        .args([
            "-f",
            "qcow2",
            "-c",
            "write -P 9 0 256k",
            "-c",
            "abort",
            &crashed,
        ])
        .output()
        .unwrap();
    assert!(!aborted.status.success(), "qemu-io aborted");
    let images = [
        "sample.qcow2",
        "snapshots.qcow2",
        "zstd-extl2.qcow2",
        "refcount1.qcow2",
        "crashed",
    ];
    for name in images {
        let bytes = if name == "crashed" {
            std::fs::read(&crashed).unwrap()
        } else {
            data(name)
        };
        let want = content_of(&bytes).expect("the image reads");
        let in_use_before = in_use_without_refcount(&bytes);
        let exercise = |at: Option<(u64, Fault)>| -> u64 {
            let fault = at;
            let storage = Arc::new(FaultStorage::new(bytes.clone(), fault));
            if let Ok(image) =
                Image::open_storage(storage.clone(), Format::Qcow2, &OpenOptions::default())
            {
                let mut buf = vec![0u8; image.size() as usize];
                let _ = image.read_at(&mut buf, 0);
                let _ = image.map();
            }
            let _ = check(storage.as_ref(), false, Repair::None);
            let reads = storage.reads();
            let repaired = Arc::new(FaultStorage::new(bytes.clone(), fault));
            let outcome = check(repaired.as_ref(), false, Repair::All);
            let freed = in_use_without_refcount(&repaired.current());
            assert!(
                freed.is_subset(&in_use_before),
                "{name}: a repair under a read error at {at:?} freed clusters in use: {:?} ({:?})",
                freed.difference(&in_use_before).collect::<Vec<_>>(),
                outcome.map(|r| r.messages.into_iter().take(3).collect::<Vec<_>>())
            );
            if outcome.is_err() || repaired.tripped() {
                assert!(
                    content_of(&repaired.current()).as_ref() == Some(&want),
                    "{name}: a repair under a read error at read {at:?} changed the content"
                );
            }
            reads
        };
        let total = exercise(None);
        assert!(total > 5, "{name}: {total} reads");
        for at in 0..total {
            exercise(Some((at, Fault::ReadFail)));
            exercise(Some((at, Fault::ReadGlitch)));
        }
    }
}

/// Which LUKS1 key slots a raw volume's header marks active, read from the bytes as the
/// LUKS1 layout has them (eight 48-byte slots from byte 208, each opening with
/// 0x00AC71F3 when active): independent of cowimg's own reader.
fn active_luks_slots(bytes: &[u8]) -> Vec<usize> {
    (0..8)
        .filter(|i| be32(bytes, 208 + 48 * *i as u64) == 0x00AC_71F3)
        .collect()
}

/// Whether `passphrase` unlocks the raw LUKS volume in `bytes`.
fn luks_unlocks(bytes: &[u8], passphrase: &str) -> bool {
    let storage = Arc::new(MemoryStorage::new(bytes.to_vec()));
    let options = OpenOptions::new().passphrase(cowimg::Secret::from(passphrase));
    Image::open_storage(storage, Format::Luks, &options).is_ok()
}

/// Adding a key slot writes its key material before the header that activates it, and
/// erasing one writes the header before wiping the material: a crash, a failed write or
/// a full disk at any write leaves every slot the header calls active unlocking with
/// its passphrase, and the passphrase that was not being changed always unlocking.
#[test]
fn crash_or_failure_at_every_write_of_a_key_slot_change() {
    use cowimg::create::{Encryption, KeySlotChange, LuksOptions};
    let dir = Scratch::new("luks-slot-faults");
    let path = dir.str("v.luks");
    let luks = LuksOptions::new(cowimg::Secret::from("old")).iter_time_ms(10);
    let options = CreateOptions::new(1 << 20).encryption(Encryption::Luks(luks));
    drop(Image::create(&path, Format::Luks, &options).unwrap());
    let only_old = std::fs::read(&path).unwrap();
    assert_eq!(active_luks_slots(&only_old), vec![0]);

    let mut add = KeySlotChange::default();
    add.active = true;
    add.new_secret = Some(cowimg::Secret::from("new"));
    add.iter_time_ms = Some(10);
    let mut erase = KeySlotChange::default();
    erase.old_secret = Some(cowimg::Secret::from("old"));
    let change = |start: &[u8], opened_with: &str, change: &KeySlotChange, fault| {
        let storage = Arc::new(FaultStorage::new(start.to_vec(), fault));
        let options = OpenOptions::new()
            .writable(true)
            .passphrase(cowimg::Secret::from(opened_with));
        let result = Image::open_storage(storage.clone(), Format::Luks, &options)
            .and_then(|mut image| image.change_key_slots(change));
        (storage, result)
    };
    let (done, result) = change(&only_old, "old", &add, None);
    result.unwrap();
    let both = done.current();
    assert_eq!(active_luks_slots(&both), vec![0, 1]);
    assert!(luks_unlocks(&both, "old") && luks_unlocks(&both, "new"));

    // (start, opened with, change, the passphrase kept, the slot changed and its passphrase)
    let cases = [
        (&only_old, "old", &add, "old", 1, "new"),
        (&both, "new", &erase, "new", 0, "old"),
    ];
    for (start, opened_with, what, kept, slot, changed) in cases {
        for fault in [Fault::Drop, Fault::Reorder, Fault::Fail, Fault::NoSpace] {
            for at in 0.. {
                let (storage, result) = change(start, opened_with, what, Some((at, fault)));
                if !storage.tripped() {
                    result.unwrap();
                    assert!(at > 1, "the change took several writes");
                    break;
                }
                let after = match fault {
                    Fault::Drop | Fault::Reorder => storage.durable(),
                    _ => storage.current(),
                };
                let context = format!("{changed:?} slot {slot}, {fault:?} at write {at}");
                assert!(
                    luks_unlocks(&after, kept),
                    "{context}: '{kept}' no longer unlocks"
                );
                let active = active_luks_slots(&after).contains(&slot);
                assert_eq!(
                    luks_unlocks(&after, changed),
                    active,
                    "{context}: slot active {active} but its passphrase disagrees"
                );
            }
        }
    }
}

/// An image with persistent bitmaps under every fault at every write point: marking
/// them in use before the first write, the writes, and storing them back at close
/// (new tables and directory, the header switched, the old clusters freed) leave at
/// most leaks — qemu-img check, which counts the bitmaps' clusters while they are
/// consistent, finds no corruption — and no acknowledged byte is lost. Without a
/// fault, the bitmaps are consistent again afterwards.
#[test]
fn crash_or_full_disk_while_bitmaps_are_marked_and_stored() {
    let opts = sized(512 << 10, 4096);
    let cs = opts.cluster_size;
    let memory = Arc::new(MemoryStorage::new(fresh(&opts)));
    let mut image = Image::open_storage(memory.clone(), Format::Qcow2, &options_over(None, true))
        .expect("open");
    let add = |enabled, granularity| cowimg::image::BitmapChange::Add {
        granularity,
        enabled,
    };
    image.change_bitmap("on", add(true, None)).unwrap();
    image.change_bitmap("off", add(false, Some(512))).unwrap();
    image.close().unwrap();
    let base = memory.to_vec();
    let ops = vec![
        Op::Write(0, 3 * cs, 0x61),
        Op::Flush,
        Op::Zero(8 * cs, 2 * cs, true),
        Op::Write(20 * cs + 100, cs, 0x62),
        Op::Discard(0, cs),
        Op::Flush,
    ];
    let start = vec![0u8; opts.size as usize];
    let faults = [Fault::Drop, Fault::Reorder, Fault::Fail, Fault::NoSpace];
    let clean = faults_at_points(
        Scenario::alone(&base, &start),
        &opts,
        &ops,
        u64::MAX,
        &faults,
        Allowed::Leaks,
    );
    let dir = Scratch::new("bitmap-fault");
    let path = dir.str("clean.qcow2");
    std::fs::write(&path, &clean.bytes).unwrap();
    let info = qemu_img(&["info", &path]);
    assert!(
        info.contains("name: on") && info.contains("name: off"),
        "{info}"
    );
    assert!(!info.contains("in-use"), "{info}");
}
