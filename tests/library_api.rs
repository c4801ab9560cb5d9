//! The library as a Rust user meets it: options built like `std::fs::OpenOptions`, an
//! image written through `std::io` traits, errors that become `io::Error`s of the
//! right kind, snapshot dates as `SystemTime`. Results are checked with qemu-img.

mod common;

use common::{qemu_img, Scratch};
use cowimg::{Error, ErrorKind, Format, Image, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};

#[test]
fn an_image_is_written_with_io_copy_and_read_back_with_read() {
    let dir = Scratch::new("api-io");
    let img = dir.str("img.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", &img, "4M"]);
    let data: Vec<u8> = (0..3 << 20).map(|i: u32| (i % 251) as u8).collect();
    {
        let mut image = Image::open(
            &img,
            &OpenOptions::new().format(Format::Qcow2).writable(true),
        )
        .unwrap();
        let mut writer = image.writer();
        writer.seek(SeekFrom::Start(64 << 10)).unwrap();
        assert_eq!(
            io::copy(&mut &data[..], &mut writer).unwrap(),
            data.len() as u64
        );
        writer.flush().unwrap();
        // The disk does not grow: a write at its end is refused.
        writer.seek(SeekFrom::End(0)).unwrap();
        assert_eq!(
            writer.write(&[1]).unwrap_err().kind(),
            io::ErrorKind::WriteZero
        );
    }
    qemu_img(&["check", &img]);
    let raw = dir.str("img.raw");
    qemu_img(&["convert", "-O", "raw", &img, &raw]);
    let mut want = vec![0u8; 4 << 20];
    want[64 << 10..(64 << 10) + data.len()].copy_from_slice(&data);
    assert!(
        std::fs::read(&raw).unwrap() == want,
        "qemu-img reads what was copied in"
    );
    let image = Image::open(&img, &OpenOptions::new()).unwrap();
    let mut back = Vec::new();
    image.reader().read_to_end(&mut back).unwrap();
    assert!(back == want, "the reader reads it too");
}

#[test]
fn errors_become_io_errors_of_the_right_kind() {
    let dir = Scratch::new("api-errors");
    let missing = Image::open(dir.path("missing.qcow2"), &OpenOptions::new()).unwrap_err();
    assert_eq!(missing.kind(), ErrorKind::Io);
    assert_eq!(io::Error::from(missing).kind(), io::ErrorKind::NotFound);
    std::fs::write(dir.path("junk.qcow2"), b"QFI\xfb not really a header").unwrap();
    let junk = Image::open(
        dir.path("junk.qcow2"),
        &OpenOptions::new().format(Format::Qcow2),
    )
    .unwrap_err();
    assert_eq!(junk.kind(), ErrorKind::InvalidFormat);
    let as_io = io::Error::from(junk);
    assert_eq!(as_io.kind(), io::ErrorKind::InvalidData);
    let inner = as_io.into_inner().unwrap().downcast::<Error>().unwrap();
    assert_eq!(
        inner.kind(),
        ErrorKind::InvalidFormat,
        "the cowimg error is kept inside"
    );
}

#[test]
fn snapshot_dates_are_times() {
    let dir = Scratch::new("api-snapshot");
    let img = dir.str("img.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", &img, "1M"]);
    qemu_img(&["snapshot", "-c", "first", &img]);
    let json = qemu_img(&["info", "--output=json", &img]);
    let field = |key: &str| common::json_number(&json, key).unwrap();
    let image = Image::open(&img, &OpenOptions::new()).unwrap();
    let snapshot = &image.snapshots()[0];
    let since = snapshot
        .created()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    assert_eq!(since.as_secs(), field("date-sec"));
    assert_eq!(u64::from(since.subsec_nanos()), field("date-nsec"));
    assert_eq!(
        snapshot.vm_clock().as_nanos(),
        u128::from(field("vm-clock-nsec"))
    );
}

#[test]
fn images_are_created_and_written_from_the_library() {
    use cowimg::create::CreateOptions;
    let dir = Scratch::new("api-create");
    let mut expected = vec![0u8; 2 << 20];
    expected[1 << 20..(1 << 20) + 4096].fill(0x5a);
    std::fs::write(dir.path("expected.raw"), expected).unwrap();
    for (name, format, qemu_format) in [
        ("new.qcow2", Format::Qcow2, "qcow2"),
        ("new.qcow", Format::Qcow, "qcow"),
        ("new.raw", Format::Raw, "raw"),
    ] {
        let path = dir.str(name);
        let options = CreateOptions::new(2 << 20);
        let mut image = Image::create(&path, format, &options).unwrap();
        image.write_at(&[0x5a; 4096], 1 << 20).unwrap();
        image.flush().unwrap();
        drop(image);
        if format == Format::Qcow2 {
            qemu_img(&["check", &path]);
        }
        let out = qemu_img(&[
            "compare",
            "-f",
            qemu_format,
            &path,
            &dir.str("expected.raw"),
        ]);
        assert_eq!(out, "Images are identical.\n", "{name}");
    }
}
