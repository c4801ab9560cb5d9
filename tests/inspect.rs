//! `cowimg inspect` against the bytes themselves and qemu-img: every header field's
//! value is what the file holds at the offset inspect names; snapshot entries sit where
//! inspect says; extensions are named; check's findings are listed with their places.

mod common;

use common::{qemu_img, qemu_io, Scratch};

fn inspect(image: &str) -> String {
    common::cowimg(&["inspect", "--output=json", image])
}

/// (structure, field, offset, value) of every header field inspect lists.
fn header_fields(json: &str) -> Vec<(String, String, u64, u64)> {
    json.split("\"structure\": \"")
        .skip(1)
        .map(|obj| {
            let s = |key: &str| common::json_value(obj, key).unwrap();
            (
                obj.split('"').next().unwrap().to_string(),
                s("field"),
                s("offset").parse().unwrap(),
                s("value").parse().unwrap(),
            )
        })
        .collect()
}

fn width(field: &str, structure: &str) -> usize {
    // The spec's widths for the fields checked below.
    match (structure, field) {
        (_, "magic" | "version" | "backing_file_size" | "cluster_bits" | "crypt_method")
        | (_, "l1_size" | "refcount_table_clusters" | "nb_snapshots" | "refcount_order")
        | (_, "header_length" | "vm_state_size" | "date_sec" | "date_nsec") => 4,
        (_, "id_str_size" | "name_size") => 2,
        (_, "compression_type") => 1,
        (_, "extra_data_size") => 4,
        _ => 8,
    }
}

#[test]
fn every_field_is_what_the_file_holds_where_inspect_says() {
    let dir = Scratch::new("inspect");
    let base = dir.str("base.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", &base, "4M"]);
    let image = dir.str("img.qcow2");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        "compression_type=zstd",
        "-b",
        &base,
        "-F",
        "qcow2",
        &image,
    ]);
    qemu_io(&["-c", "write -P 1 0 1M", &image]);
    qemu_img(&["snapshot", "-c", "first", &image]);
    qemu_img(&["snapshot", "-c", "second-one", &image]);
    let bytes = std::fs::read(&image).unwrap();
    let json = inspect(&image);
    // This file's part: the base's comes after its filename.
    let own = json
        .split(&format!("\"filename\": \"{base}\""))
        .next()
        .unwrap();
    let fields = header_fields(own);
    assert!(fields.len() > 30, "{json}");
    for (structure, field, offset, value) in &fields {
        let w = width(field, structure);
        let at = *offset as usize;
        let raw = &bytes[at..at + w];
        let mut b = [0u8; 8];
        b[8 - w..].copy_from_slice(raw);
        assert_eq!(
            u64::from_be_bytes(b),
            *value,
            "{structure}.{field} at {offset}"
        );
    }
    // Both snapshots are listed with their IDs, and the chain's base file too.
    for name in [
        "\"first\"",
        "\"second-one\"",
        "\"BackingFormat\"",
        "\"FeatureTable\"",
    ] {
        assert!(json.contains(name), "{name} missing: {json}");
    }
    assert!(json.contains(&format!("\"filename\": \"{base}\"")));
}

#[test]
fn check_findings_are_listed_with_their_places() {
    let dir = Scratch::new("inspect-leak");
    let image = dir.str("leak.qcow2");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        "cluster_size=4096",
        &image,
        "4M",
    ]);
    qemu_io(&["-c", "write -P 1 0 64k", &image]);
    // Leak: raise the refcount of a free cluster past the end of what is used.
    let mut bytes = std::fs::read(&image).unwrap();
    let reftable = common::be64(&bytes, 48) as usize;
    let block = common::be64(&bytes, reftable as u64) as usize;
    // A cluster inside the (grown) file that nothing references.
    let leaked = bytes.len() / 4096 + 1;
    bytes.resize((leaked + 2) * 4096, 0);
    bytes[block + leaked * 2..block + leaked * 2 + 2].copy_from_slice(&1u16.to_be_bytes());
    std::fs::write(&image, &bytes).unwrap();
    let json = inspect(&image);
    let qemu = std::process::Command::new("qemu-img")
        .args(["check", &image])
        .output()
        .unwrap();
    let qemu =
        String::from_utf8_lossy(&qemu.stderr).into_owned() + &String::from_utf8_lossy(&qemu.stdout);
    let line = format!("Leaked cluster {leaked} refcount=1 reference=0");
    assert!(qemu.contains(&line), "{qemu}");
    assert!(json.contains(&line), "{json}");
}
