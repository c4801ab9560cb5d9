//! One image, many threads: writers each own a region of an overlay (over a backing
//! file, so writes copy on write) and check every change they make against their model
//! of it, while readers read anywhere at once. Afterwards qemu-img finds the image
//! clean and reads it exactly as the models say.

mod common;

use common::{qemu_img, qemu_io, Scratch};
use cowimg::{Format, Image, OpenOptions, SharedImage};

const REGION: u64 = 1 << 20;
const WRITERS: u64 = 4;
const READERS: usize = 2;
const OPS: usize = 400;

/// A small deterministic generator per thread.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

#[test]
fn concurrent_readers_and_writers_match_a_model() {
    let dir = Scratch::new("shared");
    let base = dir.str("base.qcow2");
    let top = dir.str("top.qcow2");
    let size = WRITERS * REGION;
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        "cluster_size=4096",
        &base,
        &size.to_string(),
    ]);
    qemu_io(&[
        "-f",
        "qcow2",
        "-c",
        &format!("write -P 0x11 0 {size}"),
        &base,
    ]);
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        "cluster_size=4096",
        "-b",
        &base,
        "-F",
        "qcow2",
        &top,
    ]);
    let options = OpenOptions::new().format(Format::Qcow2).writable(true);
    let disk = SharedImage::new(Image::open(&top, &options).unwrap());
    let stop = std::sync::atomic::AtomicBool::new(false);
    let models: Vec<Vec<u8>> = std::thread::scope(|scope| {
        for r in 0..READERS {
            let (disk, stop) = (disk.clone(), &stop);
            scope.spawn(move || {
                let mut rng = Rng(0x9e37_79b9 + r as u64);
                let mut buf = vec![0u8; 256 << 10];
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let len = 1 + rng.below(buf.len() as u64);
                    let at = rng.below(size - len);
                    disk.read_at(&mut buf[..len as usize], at).unwrap();
                    let _ = disk.block_status(at, len).unwrap();
                }
            });
        }
        let writers: Vec<_> = (0..WRITERS)
            .map(|w| {
                let disk = disk.clone();
                scope.spawn(move || {
                    let mut rng = Rng(0x1234_5678 + w);
                    let start = w * REGION;
                    let mut model = vec![0x11u8; REGION as usize];
                    for i in 0..OPS {
                        let len = 1 + rng.below(64 << 10);
                        let off = rng.below(REGION - len);
                        let (at, range) = (start + off, off as usize..(off + len) as usize);
                        if i % 5 == 4 {
                            disk.write_zeroes(at, len, rng.below(2) == 0).unwrap();
                            model[range.clone()].fill(0);
                        } else {
                            let pattern = vec![(w * 50 + i as u64 % 50) as u8 + 1; len as usize];
                            disk.write_at(&pattern, at).unwrap();
                            model[range.clone()].copy_from_slice(&pattern);
                        }
                        // What this thread owns reads as its model, whatever the others do.
                        let mut back = vec![0u8; len as usize];
                        disk.read_at(&mut back, at).unwrap();
                        assert!(
                            back == model[range],
                            "writer {w}, op {i}: read back differs"
                        );
                        if i % 40 == 39 {
                            disk.flush().unwrap();
                        }
                    }
                    model
                })
            })
            .collect();
        let models = writers.into_iter().map(|h| h.join().unwrap()).collect();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        models
    });
    disk.flush().unwrap();
    drop(disk.into_inner().expect("the last handle"));
    let out = qemu_img(&["check", "-f", "qcow2", &top]);
    assert!(out.contains("No errors were found"), "{out}");
    let raw = dir.str("top.raw");
    qemu_img(&["convert", "-f", "qcow2", "-O", "raw", &top, &raw]);
    let content = std::fs::read(&raw).unwrap();
    for (w, model) in models.iter().enumerate() {
        let region = &content[w * REGION as usize..(w + 1) * REGION as usize];
        assert!(
            region == &model[..],
            "region {w} reads otherwise in qemu-img"
        );
    }
}
