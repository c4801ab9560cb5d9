//! What the library reports, in the JSON shapes `qemu-img … --output=json` prints
//! (keys in QEMU's order), so that the command line and the bindings answer alike.

mod inspect;
mod json;

pub use inspect::inspect;
pub use json::Json;

use crate::check::CheckResult;
use crate::image::BlockStatus;
use crate::info::{ImageInfo, Qcow2Info};
use crate::qcow2::Snapshot;

/// One file of a chain as `qemu-img info --output=json` prints it.
pub fn info(info: &ImageInfo) -> Json {
    let filename = info.filename.display().to_string();
    let mut file = vec![
        ("children", Json::Array(vec![])),
        ("virtual-size", Json::int(info.file_length)),
        ("filename", Json::str(&filename)),
        ("format", Json::str(&info.protocol)),
    ];
    if let Some(size) = info.actual_size {
        file.push(("actual-size", Json::int(size)));
    }
    // The file driver says more of itself than QEMU's remote (curl) drivers do.
    if info.protocol == "file" {
        file.push((
            "format-specific",
            Json::Object(vec![
                ("type", Json::str("file")),
                ("data", Json::Object(vec![])),
            ]),
        ));
        file.push(("dirty-flag", Json::Bool(false)));
    }
    let file = Json::Object(file);
    let mut fields = vec![(
        "children",
        Json::Array(vec![Json::Object(vec![
            ("name", Json::str("file")),
            ("info", file),
        ])]),
    )];
    // qemu-img's order: the backing format, then the snapshots.
    if let Some(f) = &info.backing_format {
        fields.push(("backing-filename-format", Json::str(f)));
    }
    if !info.snapshots.is_empty() {
        fields.push((
            "snapshots",
            Json::Array(info.snapshots.iter().map(snapshot).collect()),
        ));
    }
    fields.push(("virtual-size", Json::int(info.virtual_size)));
    fields.push(("filename", Json::str(&filename)));
    if let Some(cs) = info.cluster_size {
        fields.push(("cluster-size", Json::int(cs)));
    }
    fields.push(("format", Json::str(info.format.name())));
    if let Some(size) = info.actual_size {
        fields.push(("actual-size", Json::int(size)));
    }
    if let Some(q) = &info.qcow2 {
        fields.push((
            "format-specific",
            Json::Object(vec![
                ("type", Json::str(info.format.name())),
                ("data", qcow2_specific(q)),
            ]),
        ));
    }
    if let Some(l) = &info.luks {
        fields.push((
            "format-specific",
            Json::Object(vec![
                ("type", Json::str("luks")),
                ("data", luks_info(l, false)),
            ]),
        ));
    }
    if let Some(full) = &info.full_backing_file {
        fields.push((
            "full-backing-filename",
            Json::str(full.display().to_string()),
        ));
    }
    if let Some(name) = &info.backing_file {
        fields.push(("backing-filename", Json::str(name)));
    }
    if info.encrypted {
        fields.push(("encrypted", Json::Bool(true)));
    }
    fields.push(("dirty-flag", Json::Bool(info.dirty)));
    Json::Object(fields)
}

/// `format-specific.data` for qcow2, in QEMU's field order.
pub fn qcow2_specific(q: &Qcow2Info) -> Json {
    let mut data = vec![
        ("compat", Json::str(q.compat())),
        ("compression-type", Json::str(q.compression.name())),
    ];
    if let Some(lazy) = q.lazy_refcounts {
        data.push(("lazy-refcounts", Json::Bool(lazy)));
    }
    if !q.bitmaps.is_empty() {
        let list = q
            .bitmaps
            .iter()
            .map(|b| {
                let mut flags = Vec::new();
                if b.in_use {
                    flags.push(Json::str("in-use"));
                }
                if b.auto {
                    flags.push(Json::str("auto"));
                }
                Json::Object(vec![
                    ("flags", Json::Array(flags)),
                    ("name", Json::str(&b.name)),
                    ("granularity", Json::int(b.granularity)),
                ])
            })
            .collect();
        data.push(("bitmaps", Json::Array(list)));
    }
    data.push(("refcount-bits", Json::int(q.refcount_bits)));
    match (&q.luks, q.encryption) {
        (Some(luks), _) => data.push(("encrypt", luks_info(luks, true))),
        (None, Some(format)) => {
            data.push(("encrypt", Json::Object(vec![("format", Json::str(format))])))
        }
        (None, None) => {}
    }
    if let Some(name) = &q.data_file {
        data.push(("data-file", Json::str(name)));
        data.push(("data-file-raw", Json::Bool(q.data_file_raw)));
    }
    if let Some(corrupt) = q.corrupt {
        data.push(("corrupt", Json::Bool(corrupt)));
    }
    if let Some(extended) = q.extended_l2 {
        data.push(("extended-l2", Json::Bool(extended)));
    }
    Json::Object(data)
}

/// A LUKS header as `qemu-img info` lists it, in the order QEMU 10 prints its keys;
/// `with_format`: as qcow2's `encrypt` block, which names its format (a raw luks
/// volume's format-specific data does not).
pub fn luks_info(l: &crate::info::LuksInfo, with_format: bool) -> Json {
    let mut fields = Vec::new();
    if let Some(ivgen) = l.ivgen_alg {
        fields.push(("ivgen-alg", Json::str(ivgen)));
    }
    fields.push(("detached-header", Json::Bool(false)));
    fields.push(("hash-alg", Json::str(l.hash_alg)));
    fields.push(("cipher-alg", Json::str(l.cipher_alg)));
    fields.push(("uuid", Json::str(&l.uuid)));
    if let Some(hash) = l.ivgen_hash_alg {
        fields.push(("ivgen-hash-alg", Json::str(hash)));
    }
    if with_format {
        fields.push(("format", Json::str("luks")));
    }
    fields.push(("cipher-mode", Json::str(l.cipher_mode)));
    let slots = l
        .slots
        .iter()
        .map(|&(active, iters, key_offset, stripes)| {
            let mut s = vec![("active", Json::Bool(active))];
            if active {
                s.push(("iters", Json::int(u64::from(iters))));
            }
            s.push(("key-offset", Json::int(key_offset)));
            if active {
                s.push(("stripes", Json::int(u64::from(stripes))));
            }
            Json::Object(s)
        })
        .collect();
    fields.push(("slots", Json::Array(slots)));
    fields.push(("payload-offset", Json::int(l.payload_offset)));
    fields.push(("master-key-iters", Json::int(u64::from(l.master_key_iters))));
    Json::Object(fields)
}

/// One snapshot as `qemu-img info` lists it.
pub fn snapshot(s: &Snapshot) -> Json {
    let mut fields = Vec::new();
    if let Some(icount) = s.icount {
        fields.push(("icount", Json::int(icount)));
    }
    fields.extend([
        (
            "vm-clock-nsec",
            Json::int(s.vm_clock_nsec() % 1_000_000_000),
        ),
        ("name", Json::str(&s.name)),
        ("date-sec", Json::int(s.date_sec())),
        ("date-nsec", Json::int(s.date_nsec())),
        ("vm-clock-sec", Json::int(s.vm_clock_nsec() / 1_000_000_000)),
        ("id", Json::str(&s.id)),
        ("vm-state-size", Json::int(s.vm_state_size)),
    ]);
    Json::Object(fields)
}

/// qemu-img's `ImageCheck` JSON: zero counters are left out, in qemu's key order.
pub fn check(r: &CheckResult, filename: &str) -> Json {
    // (key, value, kept when zero)
    let counters = [
        ("image-end-offset", r.image_end_offset, false),
        ("compressed-clusters", r.compressed_clusters, false),
        ("total-clusters", r.total_clusters, false),
        ("corruptions", r.corruptions, false),
        ("corruptions-fixed", r.corruptions_fixed, false),
        ("check-errors", r.check_errors, true),
        ("leaks", r.leaks, false),
        ("leaks-fixed", r.leaks_fixed, false),
        ("allocated-clusters", r.allocated_clusters, false),
    ];
    let mut fields: Vec<_> = counters
        .into_iter()
        .filter(|(_, v, always)| *always || *v != 0)
        .map(|(key, v, _)| (key, Json::int(v)))
        .collect();
    fields.push(("filename", Json::str(filename)));
    fields.push(("format", Json::str("qcow2")));
    if r.fragmented_clusters != 0 {
        fields.push(("fragmented-clusters", Json::int(r.fragmented_clusters)));
    }
    Json::Object(fields)
}

/// The ranges as `qemu-img map --output=json` prints them: one compact object a line.
pub fn map(ranges: &[BlockStatus]) -> String {
    let mut out = String::new();
    for (i, r) in ranges.iter().enumerate() {
        let mut fields = vec![
            ("start", Json::int(r.start)),
            ("length", Json::int(r.len)),
            ("depth", Json::int(r.depth as u64)),
            ("present", Json::Bool(r.present)),
            ("zero", Json::Bool(r.zero)),
            ("data", Json::Bool(r.data)),
            ("compressed", Json::Bool(r.compressed)),
        ];
        if let Some(offset) = r.offset {
            fields.push(("offset", Json::int(offset)));
        }
        out.push_str(if i == 0 { "[" } else { ",\n" });
        Json::Object(fields).write_compact(&mut out);
    }
    out.push_str("]\n");
    out
}

/// A time as seconds since the epoch, written as "YYYY-MM-DD HH:MM:SS" in UTC.
pub fn utc(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Days to a civil date (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// Ranges a salvaging read could not read, as `hash` and `inspect` list them.
pub fn unreadable(ranges: &[crate::copy::Unreadable]) -> Json {
    Json::Array(
        ranges
            .iter()
            .map(|r| {
                Json::Object(vec![
                    ("start", Json::int(r.start)),
                    ("length", Json::int(r.len)),
                    ("error", Json::str(&r.error)),
                ])
            })
            .collect(),
    )
}
