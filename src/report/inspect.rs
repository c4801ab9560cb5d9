//! `inspect`: everything an image's files hold, each thing with its host offset:
//! every header field, every extension (unknown ones as bytes), the feature-name table,
//! the snapshot table, the bitmap directory, the table locations, the encryption header's
//! place (never a secret), and every anomaly check finds, for each file of the chain.

use super::{utc, Json};
use crate::error::Result;
use crate::format::qcow2::{ExtensionMagic, Qcow2Header, Qcow2HeaderV3};
use crate::format::Layout;
use crate::image::{ChainEntry, Image, Layer};
use crate::qcow2::Qcow2;

/// One structure's integer fields at their file offsets.
fn fields(structure: &str, base: u64, list: Vec<(&'static str, u64, u64)>) -> Vec<Json> {
    list.into_iter()
        .map(|(name, offset, value)| {
            Json::Object(vec![
                ("structure", Json::str(structure)),
                ("field", Json::str(name)),
                ("offset", Json::int(base + offset)),
                ("value", Json::int(value)),
            ])
        })
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Everything the files of `image`'s chain hold, the image first; with `unreadable`
/// (what [`crate::copy::unreadable_ranges`] found), the guest ranges of the whole chain
/// that cannot be read, listed with the image.
pub fn inspect(image: &Image, unreadable: Option<&[crate::copy::Unreadable]>) -> Result<Json> {
    let mut files = image
        .chain()
        .iter()
        .map(inspect_file)
        .collect::<Result<Vec<_>>>()?;
    if let (Some(ranges), Some(Json::Object(top))) = (unreadable, files.first_mut()) {
        top.push(("unreadable", super::unreadable(ranges)));
    }
    Ok(Json::Array(files))
}

fn inspect_file(entry: &ChainEntry) -> Result<Json> {
    let mut out = vec![
        (
            "filename",
            Json::str(crate::storage::display_url(&entry.path.to_string_lossy())),
        ),
        ("format", Json::str(entry.format().name())),
    ];
    match &entry.layer {
        Layer::Qcow2(q) => qcow2(q, &mut out)?,
        Layer::Qcow(q) => {
            let h = q.header();
            out.push((
                "header",
                Json::Array(fields("qcow header", 0, h.fields.int_fields())),
            ));
            if let Some(name) = &h.backing_file {
                out.push(("backing-file", Json::str(String::from_utf8_lossy(name))));
            }
        }
        Layer::Cow(c) => {
            use crate::cow::header::Fields;
            let h = c.header();
            let list = match &h.fields {
                Fields::V1(f, _) => f.int_fields(),
                Fields::V2(f) => f.int_fields(),
                Fields::V3(f) => f.int_fields(),
                Fields::V3Broken(f) => f.int_fields(),
                Fields::Qemu(f) => f.int_fields(),
            };
            out.push(("layout", Json::str(h.layout_name())));
            out.push(("header", Json::Array(fields("cow header", 0, list))));
            out.push(("bitmap-offset", Json::int(h.bitmap_offset)));
            out.push(("data-offset", Json::int(h.data_offset)));
        }
        Layer::Raw(_) | Layer::Luks(_) => {}
    }
    Ok(Json::Object(out))
}

fn qcow2(q: &Qcow2, out: &mut Vec<(&'static str, Json)>) -> Result<()> {
    let h = q.header();
    let mut header = fields("qcow2 header", 0, h.common.int_fields());
    if let Some(v3) = &h.v3 {
        header.extend(fields(
            "qcow2 header v3",
            Qcow2Header::SIZE as u64,
            v3.int_fields(),
        ));
    }
    if let Some(c) = &h.compression {
        let at = (Qcow2Header::SIZE + Qcow2HeaderV3::SIZE) as u64;
        header.extend(fields("qcow2 header compression", at, c.int_fields()));
    }
    out.push(("header", Json::Array(header)));
    let extensions = h
        .extensions
        .iter()
        .map(|e| {
            let kind = e.kind();
            let mut f = vec![
                ("magic", Json::str(format!("{:#010x}", e.magic))),
                (
                    "name",
                    Json::str(kind.map_or("unknown".into(), |k| format!("{k:?}"))),
                ),
                ("offset", Json::int(e.offset)),
                ("length", Json::int(e.data.len() as u64)),
            ];
            match kind {
                Some(ExtensionMagic::BackingFormat | ExtensionMagic::DataFile) => {
                    f.push(("value", Json::str(String::from_utf8_lossy(&e.data))))
                }
                _ => f.push(("data", Json::str(hex(&e.data[..e.data.len().min(4096)])))),
            }
            Json::Object(f)
        })
        .collect();
    out.push(("extensions", Json::Array(extensions)));
    let features = h
        .feature_table()
        .iter()
        .map(|f| {
            Json::Object(vec![
                ("type", Json::int(f.feature_type)),
                ("bit", Json::int(f.bit)),
                (
                    "name",
                    Json::str(String::from_utf8_lossy(f.name.until_nul())),
                ),
            ])
        })
        .collect();
    out.push(("feature-table", Json::Array(features)));
    let c = &h.common;
    out.push((
        "tables",
        Json::Object(vec![
            ("l1-table-offset", Json::int(c.l1_table_offset)),
            ("l1-size", Json::int(c.l1_size)),
            ("refcount-table-offset", Json::int(c.refcount_table_offset)),
            (
                "refcount-table-clusters",
                Json::int(c.refcount_table_clusters),
            ),
            ("snapshots-offset", Json::int(c.snapshots_offset)),
            ("nb-snapshots", Json::int(c.nb_snapshots)),
        ]),
    ));
    // Each table entry's place: the entries follow one another, each padded to 8.
    let mut at = c.snapshots_offset;
    let mut snapshots = Vec::new();
    for s in q.snapshots() {
        let entry_at = at;
        at += crate::qcow2::snapshot::table_len(std::slice::from_ref(s));
        snapshots.push(Json::Object(vec![
            ("id", Json::str(&s.id)),
            ("name", Json::str(&s.name)),
            ("offset", Json::int(entry_at)),
            (
                "date",
                Json::str(format!("{} UTC", utc(i64::from(s.date_sec())))),
            ),
            ("disk-size", Json::int(s.disk_size)),
            ("vm-state-size", Json::int(s.vm_state_size)),
            ("icount", s.icount.map_or(Json::Bool(false), Json::int)),
            (
                "entry",
                Json::Array(fields(
                    "snapshot table entry",
                    entry_at,
                    s.header.int_fields(),
                )),
            ),
        ]));
    }
    out.push(("snapshots", Json::Array(snapshots)));
    if let Ok(list) = crate::qcow2::bitmaps::read_directory(q.storage(), h) {
        let bitmaps = list
            .iter()
            .map(|b| {
                Json::Object(vec![
                    ("name", Json::str(&b.name)),
                    ("granularity", Json::int(b.granularity)),
                    ("in-use", Json::Bool(b.in_use)),
                    ("auto", Json::Bool(b.auto)),
                    ("table-offset", Json::int(b.entry.bitmap_table_offset)),
                    ("table-size", Json::int(b.entry.bitmap_table_size)),
                ])
            })
            .collect();
        out.push(("bitmaps", Json::Array(bitmaps)));
    }
    let mut encryption = vec![("crypt-method", Json::int(c.crypt_method))];
    if let Ok(Some(luks)) = h.crypto() {
        encryption.push(("luks-header-offset", Json::int(luks.offset)));
        encryption.push(("luks-header-length", Json::int(luks.length)));
    }
    out.push(("encryption", Json::Object(encryption)));
    // What check finds, each message naming its place; counting only, never repairing.
    let data_file = h.incompatible_features() & crate::format::qcow2::incompatible::DATA_FILE != 0;
    match crate::qcow2::check::check(q.storage(), data_file, crate::qcow2::check::Repair::None) {
        Ok(r) => {
            let messages = r.messages.iter().map(Json::str).collect();
            out.push(("anomalies", Json::Array(messages)));
            out.push(("check", super::check(&r, "")));
        }
        Err(e) => out.push(("anomalies", Json::Array(vec![Json::str(e.to_string())]))),
    }
    Ok(())
}
