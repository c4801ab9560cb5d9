//! Entry points for fuzzing. The cargo-fuzz targets in `fuzz/` call these, and an
//! ordinary test replays every saved corpus and regression input through them, so the
//! same code runs under libFuzzer and on stable in CI. Each takes arbitrary bytes and
//! panics only when an invariant breaks: bad input must give an error, never a panic,
//! a hang or an allocation beyond the input's own bounds.

use crate::format::{cow as cow_views, qcow as qcow_views, qcow2 as qcow2_views, Layout};
use crate::qcow2::check::{check as run_check, Repair};
use crate::qcow2::create::{create, CreateOptions};
use crate::storage::{MemoryStorage, Storage};
use crate::{cow, probe, qcow, qcow2, Format, Image, OpenOptions};
use arbitrary::{Arbitrary, Unstructured};
use std::sync::Arc;

/// Guest bytes read from one fuzzed image at most.
const READ_BUDGET: u64 = 1 << 20;
/// Block-status calls made on one fuzzed image at most.
const STATUS_BUDGET: u32 = 256;

fn roundtrip<T: Layout>(data: &[u8]) {
    if let Ok(view) = T::parse(data) {
        assert_eq!(
            view.to_bytes(),
            data[..T::SIZE],
            "{} does not re-serialise to its bytes",
            T::NAME
        );
    }
}

/// The qcow2 header and extension parsers, and the rewrite of what they parsed: a
/// rewritten cluster 0 must read back as the same header.
pub fn qcow2_header(data: &[u8]) {
    let storage = MemoryStorage::new(data.to_vec());
    let _ = probe(&storage);
    if let Ok(h) = qcow2::Header::read(&storage) {
        let _ = h.feature_table();
        let _ = h.bitmaps();
        let _ = h.crypto();
        if let Ok(cluster) = h.to_cluster() {
            let again = qcow2::Header::read(&MemoryStorage::new(cluster))
                .expect("a rewritten header reads back");
            assert_eq!(again.common.size, h.common.size);
            // A version 2 rewrite drops the feature table, as QEMU's does.
            let kept = |x: &qcow2::Header| -> Vec<u32> {
                let v2_table =
                    |m| x.v3.is_none() && m == qcow2_views::ExtensionMagic::FeatureTable.value();
                x.extensions
                    .iter()
                    .map(|e| e.magic)
                    .filter(|&m| !v2_table(m))
                    .collect()
            };
            assert_eq!(kept(&again), kept(&h));
            assert_eq!(again.unknown_fields, h.unknown_fields);
        }
    }
    roundtrip::<qcow2_views::Qcow2Header>(data);
    roundtrip::<qcow2_views::Qcow2HeaderV3>(data);
    roundtrip::<qcow2_views::SnapshotHeader>(data);
    roundtrip::<qcow2_views::BitmapDirectoryEntry>(data);
}

/// The qcow (version 1) header parser.
pub fn qcow_header(data: &[u8]) {
    let storage = MemoryStorage::new(data.to_vec());
    if let Ok(h) = qcow::Header::read(&storage) {
        let _ = (h.virtual_size(), h.l1_size());
    }
    roundtrip::<qcow_views::QcowHeader>(data);
}

/// The cow header parser, every layout and both byte orders.
pub fn cow_header(data: &[u8]) {
    let storage = MemoryStorage::new(data.to_vec());
    if let Ok(h) = cow::Header::read(&storage) {
        assert!(
            h.data_offset >= h.bitmap_offset,
            "cow data before the bitmap: {h:?}"
        );
    }
    roundtrip::<cow_views::CowHeaderV3>(data);
    roundtrip::<cow_views::QemuCowHeader>(data);
}

/// Block status, reads and snapshot listing over an opened image, within budgets.
fn exercise(image: &Image) {
    let size = image.size();
    let mut offset = 0;
    for _ in 0..STATUS_BUDGET {
        if offset >= size {
            break;
        }
        match image.block_status(offset, size - offset) {
            Ok(s) => {
                assert!(s.len > 0, "block status made no progress at {offset}");
                offset += s.len;
            }
            Err(_) => break,
        }
    }
    for (at, len) in [
        (0, READ_BUDGET),
        (size / 2, 4096),
        (size.saturating_sub(65536), 65536),
    ] {
        let len = len.min(size.saturating_sub(at));
        let mut buf = vec![0u8; len as usize];
        let _ = image.read_at(&mut buf, at);
    }
    let _ = image.snapshots().len();
    // Carving walks every table of every snapshot and each freed cluster; a VM state
    // is read up to a budget (its zero runs cost nothing).
    let _ = crate::carve::carve(image);
    for state in crate::carve::vm_states(image).unwrap_or_default() {
        let mut budget = READ_BUDGET;
        let _ = crate::carve::read_vm_state(image, &state.snapshot_id, |piece| {
            if let crate::carve::Piece::Data(bytes) = piece {
                budget = budget.checked_sub(bytes.len() as u64).ok_or_else(|| {
                    crate::Error::new(crate::ErrorKind::BadArgument, "fuzz read budget spent")
                })?;
            }
            Ok(())
        });
    }
}

/// The input as a LUKS volume (the raw format's layout): header and key slots read
/// and checked; when every derivation is cheap, opened as a raw luks image with a
/// fixed passphrase and read through.
pub fn luks_header(data: &[u8]) {
    let storage = MemoryStorage::new(data.to_vec());
    let Ok(volume) = crate::luks::LuksVolume::read(&storage, 0, data.len() as u64) else {
        return;
    };
    let cheap = volume.header.mk_digest_iterations <= 1000
        && volume.slots.iter().all(|s| s.iterations <= 1000);
    let options = OpenOptions {
        passphrase: Some(crate::Secret::from("fuzz")),
        metadata_only: !cheap,
        ..OpenOptions::default()
    };
    let storage: Arc<dyn Storage> = Arc::new(storage);
    if let Ok(image) = Image::open_storage(storage, Format::Luks, &options) {
        let _ = image.info();
        if cheap {
            exercise(&image);
        }
    }
}

/// The input as an image file: the first byte picks the format to open it as (or to
/// probe), the rest is the file.
pub fn image(data: &[u8]) {
    let Some((&choice, file)) = data.split_first() else {
        return;
    };
    let storage: Arc<dyn Storage> = Arc::new(MemoryStorage::new(file.to_vec()));
    let format = match choice % 5 {
        0 => probe(storage.as_ref()).unwrap_or(Format::Raw),
        1 => Format::Qcow2,
        2 => Format::Qcow,
        3 => Format::Cow,
        _ => Format::Raw,
    };
    if format == Format::Luks {
        // Unlocking runs the header's own iteration counts: that target bounds them.
        return luks_header(file);
    }
    let options = OpenOptions {
        passphrase: Some(crate::Secret::from("fuzz")),
        ..OpenOptions::default()
    };
    if let Ok(image) = Image::open_storage(storage.clone(), format, &options) {
        exercise(&image);
        if let Some(s) = image.snapshots().first() {
            let view = OpenOptions {
                snapshot: Some(qcow2::SnapshotRef::Id(s.id.clone())),
                ..options.clone()
            };
            if let Ok(snapshot) = Image::open_storage(storage, format, &view) {
                exercise(&snapshot);
            }
        }
    }
}

/// The input as a qcow2 file: check it, repair a copy with every fix, and check the
/// copy again. On arbitrary bytes the outcome is what matters here: a report or an
/// error, never a panic, a hang or an unbounded allocation.
pub fn check(data: &[u8]) {
    let storage = MemoryStorage::new(data.to_vec());
    if run_check(&storage, false, Repair::None).is_err() {
        return;
    }
    let copy = MemoryStorage::new(data.to_vec());
    if run_check(&copy, false, Repair::All).is_ok() {
        let _ = run_check(&copy, false, Repair::None);
    }
}

/// One operation of the write-path target.
#[derive(Arbitrary, Debug)]
enum Op {
    Write { offset: u32, len: u16, pattern: u8 },
    Zero { offset: u32, len: u16, unmap: bool },
    Discard { offset: u32, len: u16 },
    Compressed { cluster: u16, pattern: u8 },
    Snapshot,
    DeleteSnapshot,
    Flush,
}

/// Creation options drawn from the input.
#[derive(Arbitrary, Debug)]
struct Setup {
    cluster_bits: u8,
    v2: bool,
    refcount_order: u8,
    extended_l2: bool,
    zstd: bool,
    size_kib: u16,
}

impl Setup {
    fn options(&self) -> CreateOptions {
        let cluster_bits = 9 + u32::from(self.cluster_bits % 8); // 512 B .. 64 KiB
        CreateOptions {
            size: (u64::from(self.size_kib % 2048) + 1) * 1024,
            version: if self.v2 { 2 } else { 3 },
            cluster_size: 1 << cluster_bits,
            refcount_bits: if self.v2 {
                16
            } else {
                1 << (2 + self.refcount_order % 5)
            },
            extended_l2: self.extended_l2 && !self.v2 && cluster_bits >= 14,
            compression: if self.zstd && !self.v2 {
                crate::codec::Compression::Zstd
            } else {
                crate::codec::Compression::Deflate
            },
            ..CreateOptions::default()
        }
    }
}

/// The image under test and the model of what the guest should read.
struct Session {
    image: Image,
    model: Vec<u8>,
    size: u64,
    cs: u64,
    refcount_bits: u32,
    snapshots: u32,
}

impl Session {
    /// Guest range from an offset and length drawn from the input, inside the disk.
    fn range(&self, offset: u32, len: u16) -> (u64, u64) {
        let at = u64::from(offset) % self.size;
        (at, u64::from(len).min(self.size - at))
    }

    fn fill(&mut self, at: u64, n: u64, byte: u8) {
        self.model[at as usize..(at + n) as usize].fill(byte);
    }

    fn apply(&mut self, op: Op) {
        let (size, cs) = (self.size, self.cs);
        match op {
            Op::Write {
                offset,
                len,
                pattern,
            } => {
                let (at, n) = self.range(offset, len);
                self.image
                    .write_at(&vec![pattern; n as usize], at)
                    .expect("write");
                self.fill(at, n, pattern);
            }
            Op::Zero { offset, len, unmap } => {
                let (at, n) = self.range(offset, len);
                self.image.write_zeroes(at, n, unmap).expect("write zeroes");
                self.fill(at, n, 0);
            }
            Op::Discard { offset, len } => {
                let (at, n) = self.range(offset, len);
                self.image.discard(at, n).expect("discard");
                // No backing file: discarded whole clusters read as zeros in v2 and v3.
                let end = at + n;
                let last = if end == size { end } else { end / cs * cs };
                let first = at.next_multiple_of(cs);
                if first < last {
                    self.fill(first, last - first, 0);
                }
            }
            Op::Compressed { cluster, pattern } => {
                let at = u64::from(cluster) * cs % size.next_multiple_of(cs);
                if at >= size {
                    return;
                }
                let n = cs.min(size - at);
                // Refused over a cluster that has space; the content is then unchanged.
                let data = vec![pattern; n as usize];
                if self.image.write_compressed(&data, at).is_ok() {
                    self.fill(at, n, pattern);
                }
            }
            Op::Snapshot => {
                if self.refcount_bits >= 4
                    && self.snapshots < 4
                    && self.image.snapshot_create("s").is_ok()
                {
                    self.snapshots += 1;
                }
            }
            Op::DeleteSnapshot => {
                if let Some(id) = self.image.snapshots().first().map(|s| s.id.clone()) {
                    self.image.snapshot_delete(&id).expect("delete snapshot");
                    self.snapshots -= 1;
                }
            }
            Op::Flush => self.image.flush().expect("flush"),
        }
    }
}

/// A fresh image and operations drawn from the input, mirrored in a model of the guest
/// content. Afterwards our check must find no corruption and no leak, and a re-read
/// must equal the model.
pub fn write_path(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let Ok(setup) = Setup::arbitrary(&mut u) else {
        return;
    };
    let opts = setup.options();
    let storage = Arc::new(MemoryStorage::new(Vec::new()));
    create(storage.as_ref(), None, &opts).expect("creating a fresh image");
    let writable = OpenOptions {
        writable: true,
        ..OpenOptions::default()
    };
    let image = Image::open_storage(storage.clone(), Format::Qcow2, &writable).expect("opening it");
    let size = image.size();
    let mut session = Session {
        image,
        model: vec![0u8; size as usize],
        size,
        cs: opts.cluster_size,
        refcount_bits: opts.refcount_bits,
        snapshots: 0,
    };
    let trace = std::env::var_os("COWIMG_FUZZ_TRACE").is_some();
    for _ in 0..64 {
        let Ok(op) = Op::arbitrary(&mut u) else { break };
        if trace {
            eprintln!("{op:?} (size {size}, {opts:?})");
        }
        session.apply(op);
        if trace {
            let r = run_check(storage.as_ref(), false, Repair::None).expect("check");
            if r.corruptions + r.leaks > 0 {
                eprintln!("  -> {:?}", &r.messages[..r.messages.len().min(6)]);
            }
        }
    }
    let Session {
        mut image, model, ..
    } = session;
    image.flush().expect("flush");
    drop(image);
    let result = run_check(storage.as_ref(), false, Repair::None).expect("check");
    assert_eq!(
        (result.corruptions, result.leaks, result.check_errors),
        (0, 0, 0),
        "{result:?}"
    );
    let image =
        Image::open_storage(storage, Format::Qcow2, &OpenOptions::default()).expect("reopen");
    let mut back = vec![0u8; size as usize];
    image.read_at(&mut back, 0).expect("read back");
    assert!(
        back == model,
        "the image does not read back what was written"
    );
}

/// The input as everything an NBD client sends: greeting reply, options, requests,
/// to a server exporting a small writable qcow2 image and a read-only one. Whatever the
/// bytes, the session ends with an error or a clean close, never a panic, and its
/// memory stays bounded by the protocol limits.
pub fn nbd(data: &[u8]) {
    use crate::nbd::{serve, Export};
    use crate::shared::SharedImage;
    let storage = Arc::new(MemoryStorage::new(Vec::new()));
    let opts = CreateOptions::new(1 << 20).cluster_size(4096);
    create(storage.as_ref(), None, &opts).expect("creating the exported image");
    let writable = OpenOptions {
        writable: true,
        ..OpenOptions::default()
    };
    let image = Image::open_storage(storage.clone(), Format::Qcow2, &writable).expect("opening it");
    let image = Arc::new(SharedImage::new(image));
    let exports = [
        Export::new("", image.clone())
            .read_only(false)
            .allocation_depth(true),
        Export::new("ro", image),
    ];
    let stop = std::sync::atomic::AtomicBool::new(false);
    let _ = serve(data, std::io::sink(), &exports, &stop);
}
