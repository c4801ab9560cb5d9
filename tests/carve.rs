//! `cowimg carve` on images qemu-io wrote known secrets into, then discarded,
//! overwrote under a snapshot, or left only in a deleted snapshot: each secret is
//! recovered at the host offset qemu-img map gave it, with the reason; a freshly
//! converted image gives nothing.

mod common;

use common::{qemu_img, qemu_io, Scratch};

/// The host offset qemu-img map gives guest offset `guest`.
fn host_of(image: &str, guest: u64) -> u64 {
    common::qemu_map(std::path::Path::new(image), "qcow2")
        .iter()
        .find(|e| e.start <= guest && guest < e.start + e.length && e.data)
        .and_then(|e| e.offset.map(|o| o + guest - e.start))
        .unwrap()
}

/// One run of carve.json.
#[derive(Debug, PartialEq)]
struct Run {
    host: u64,
    len: u64,
    reason: String,
    snapshot: Option<String>,
    stale_table: Option<u64>,
    guest: Option<u64>,
}

/// Carves `image` into `out`: the manifest's runs.
fn carve(image: &str, out: &str) -> Vec<Run> {
    let json = common::cowimg(&["carve", "--output=json", image, out]);
    let carved = json.split("\"vm-states\"").next().unwrap();
    carved
        .split("\"file\"")
        .skip(1)
        .map(|obj| Run {
            host: common::json_value(obj, "host-offset")
                .unwrap()
                .parse()
                .unwrap(),
            len: common::json_value(obj, "length").unwrap().parse().unwrap(),
            reason: common::json_value(obj, "reason").unwrap(),
            snapshot: common::json_value(obj, "snapshot-id"),
            stale_table: common::json_value(obj, "stale-table-offset").map(|g| g.parse().unwrap()),
            guest: common::json_value(obj, "guest-offset").map(|g| g.parse().unwrap()),
        })
        .collect()
}

/// The run holding host offset `host`, and its carved bytes from `host` on.
fn carved_at<'a>(out: &str, runs: &'a [Run], host: u64) -> (&'a Run, Vec<u8>) {
    let run = runs
        .iter()
        .find(|r| r.host <= host && host < r.host + r.len)
        .unwrap_or_else(|| panic!("nothing carved at {host}: {runs:?}"));
    let bytes = std::fs::read(format!("{out}/{:016x}-{}.bin", run.host, run.reason)).unwrap();
    assert_eq!(bytes.len() as u64, run.len);
    (run, bytes[(host - run.host) as usize..].to_vec())
}

#[test]
fn discarded_overwritten_and_deleted_snapshot_secrets_are_recovered_where_they_were() {
    let dir = Scratch::new("carve");
    let image = dir.str("evidence.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", &image, "8M"]);
    qemu_io(&[
        "-c",
        "write -P 0xa1 0 64k",
        "-c",
        "write -P 0xa2 1M 64k",
        "-c",
        "write -P 0xa3 2M 64k",
        &image,
    ]);
    let (h1, h2, h3) = (
        host_of(&image, 0),
        host_of(&image, 1 << 20),
        host_of(&image, 2 << 20),
    );
    // Secret 1: overwritten after a snapshot (the snapshot keeps it).
    qemu_img(&["snapshot", "-c", "before", &image]);
    qemu_io(&["-c", "write -P 0xb1 0 64k", &image]);
    // Secret 4: written after the snapshot, so only the current state held it.
    qemu_io(&["-c", "write -P 0xa4 3M 64k", &image]);
    let h4 = host_of(&image, 3 << 20);
    // Secrets 2 to 4: discarded by the guest (2 and 3 while the snapshot holds them).
    // QEMU passes no discard down to the file here, as a guest's trim often is not.
    let opts = format!("driver=qcow2,discard=unmap,pass-discard-request=off,pass-discard-snapshot=off,file.filename={image}");
    qemu_io(&[
        "--image-opts",
        "-c",
        "discard 1M 64k",
        "-c",
        "discard 2M 64k",
        "-c",
        "discard 3M 64k",
        &opts,
    ]);
    let out = dir.str("out");
    let runs = carve(&image, &out);
    let (run, bytes) = carved_at(&out, &runs, h4);
    let freed = |r: &Run| r.reason == "free" || r.reason == "past-last-allocation";
    assert!(freed(run) && run.guest.is_none(), "{runs:?}");
    assert!(bytes[..65536].iter().all(|b| *b == 0xa4));
    for (host, byte, guest) in [(h1, 0xa1, 0u64), (h2, 0xa2, 1 << 20), (h3, 0xa3, 2 << 20)] {
        let (run, bytes) = carved_at(&out, &runs, host);
        assert_eq!(run.reason, "snapshot-only", "{runs:?}");
        assert_eq!(
            (run.snapshot.as_deref(), run.guest),
            (Some("1"), Some(guest)),
            "{runs:?}"
        );
        assert!(bytes[..65536].iter().all(|b| *b == byte));
    }
    // The snapshot deleted without passing discards down (qemu-img would punch the
    // freed clusters out of the file, and the secrets with them). Its L1 and L2 tables
    // are freed too, and still say where each secret was.
    let opts = format!("driver=qcow2,pass-discard-snapshot=off,file.filename={image}");
    qemu_img(&["snapshot", "--image-opts", "-d", "before", &opts]);
    let out2 = dir.str("out2");
    let runs = carve(&image, &out2);
    let stale: Vec<u64> = runs
        .iter()
        .filter(|r| r.reason == "stale-table")
        .map(|r| r.host)
        .collect();
    for (host, byte, guest) in [(h1, 0xa1, 0u64), (h2, 0xa2, 1 << 20), (h3, 0xa3, 2 << 20)] {
        let (run, bytes) = carved_at(&out2, &runs, host);
        assert!(freed(run), "{runs:?}");
        assert_eq!(run.guest, Some(guest), "{runs:?}");
        assert!(stale.contains(&run.stale_table.unwrap()), "{runs:?}");
        assert!(bytes[..65536].iter().all(|b| *b == byte));
    }
    // The current state's own data is never carved.
    let now = host_of(&image, 0);
    assert!(
        !runs.iter().any(|r| r.host <= now && now < r.host + r.len),
        "{runs:?}"
    );
}

#[test]
fn a_freshly_converted_image_has_nothing_to_carve() {
    let dir = Scratch::new("carve-fresh");
    let image = dir.str("used.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", &image, "8M"]);
    qemu_io(&[
        "-c",
        "write -P 0xa1 0 64k",
        "-c",
        "write -P 0xa2 1M 64k",
        &image,
    ]);
    qemu_img(&["snapshot", "-c", "old", &image]);
    qemu_io(&["-c", "write -P 0xb1 0 64k", &image]);
    assert_ne!(
        carve(&image, &dir.str("used")),
        vec![],
        "the snapshot holds 0xa1"
    );
    let fresh = dir.str("fresh.qcow2");
    qemu_img(&["convert", "-O", "qcow2", &image, &fresh]);
    assert_eq!(carve(&fresh, &dir.str("out")), vec![]);
}

#[test]
fn a_snapshots_saved_vm_state_is_extracted_whole() {
    let dir = Scratch::new("carve-vmstate");
    let image = dir.str("vm.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", &image, "8M"]);
    // qemu-io writes the VM-state area (-b) as savevm does; the snapshot keeps it, and
    // the state written afterwards differs, so the snapshot's own tree must be read.
    qemu_io(&[
        "-c",
        "write -P 0x11 0 64k",
        "-c",
        "write -b -P 0xc4 0 96k",
        &image,
    ]);
    qemu_img(&["snapshot", "-c", "vm1", &image]);
    qemu_io(&["-c", "write -b -P 0xd5 0 64k", &image]);
    // qemu-img records no state size (only savevm does): set it as savevm would, in the
    // snapshot entry (bytes 32..36) and its v3 extra data (bytes 40..48).
    let mut bytes = std::fs::read(&image).unwrap();
    let table = u64::from_be_bytes(bytes[64..72].try_into().unwrap()) as usize;
    bytes[table + 32..table + 36].copy_from_slice(&98304u32.to_be_bytes());
    bytes[table + 40..table + 48].copy_from_slice(&98304u64.to_be_bytes());
    std::fs::write(&image, &bytes).unwrap();
    let list = qemu_img(&["snapshot", "-l", &image]);
    assert!(list.contains("96 KiB"), "{list}");
    let out = dir.str("out");
    let json = common::cowimg(&["carve", "--output=json", &image, &out]);
    let states = json.split("\"vm-states\"").nth(1).unwrap();
    assert_eq!(
        common::json_value(states, "snapshot-name").as_deref(),
        Some("vm1"),
        "{json}"
    );
    assert_eq!(
        common::json_value(states, "length").as_deref(),
        Some("98304"),
        "{json}"
    );
    let state = std::fs::read(format!("{out}/vmstate-1.bin")).unwrap();
    assert_eq!(state.len(), 98304);
    assert!(state.iter().all(|b| *b == 0xc4));
}
