//! `-o help` (or `-o ?`): the options a format takes at create, convert and amend, as
//! qemu-img lists them, and the option-list checks qemu-img makes before any of them.

use cowimg::{Error, ErrorKind};

/// One `-o` option: its name, the kind of value it takes, and what it does, in the
/// words qemu-img's listing uses (scripts and QEMU's tests read them).
struct OptionDoc(&'static str, &'static str, &'static str);

const SIZE: OptionDoc = OptionDoc("size", "size", "Virtual disk size");
const BACKING_FILE: OptionDoc = OptionDoc("backing_file", "str", "File name of a base image");
const ENCRYPTION: OptionDoc = OptionDoc(
    "encryption",
    "bool (on/off)",
    "Encrypt the image with format 'aes'. (Deprecated in favor of encrypt.format=aes)",
);

const QCOW2_CREATE: &[OptionDoc] = &[
    BACKING_FILE,
    OptionDoc("backing_fmt", "str", "Image format of the base image"),
    OptionDoc("cluster_size", "size", "qcow2 cluster size"),
    OptionDoc(
        "compat",
        "str",
        "Compatibility level (v2 [0.10] or v3 [1.1])",
    ),
    OptionDoc(
        "compression_type",
        "str",
        "Compression method used for image cluster compression",
    ),
    OptionDoc("data_file", "str", "File name of an external data file"),
    OptionDoc(
        "data_file_raw",
        "bool (on/off)",
        "The external data file must stay valid as a raw image",
    ),
    OptionDoc(
        "encrypt.cipher-alg",
        "str",
        "Name of encryption cipher algorithm",
    ),
    OptionDoc(
        "encrypt.cipher-mode",
        "str",
        "Name of encryption cipher mode",
    ),
    OptionDoc(
        "encrypt.format",
        "str",
        "Encrypt the image, format choices: 'aes', 'luks'",
    ),
    OptionDoc(
        "encrypt.hash-alg",
        "str",
        "Name of encryption hash algorithm",
    ),
    OptionDoc(
        "encrypt.iter-time",
        "num",
        "Time to spend in PBKDF in milliseconds",
    ),
    OptionDoc("encrypt.ivgen-alg", "str", "Name of IV generator algorithm"),
    OptionDoc(
        "encrypt.ivgen-hash-alg",
        "str",
        "Name of IV generator hash algorithm",
    ),
    OptionDoc(
        "encrypt.key-secret",
        "str",
        "ID of secret providing qcow AES key or LUKS passphrase",
    ),
    ENCRYPTION,
    OptionDoc("extended_l2", "bool (on/off)", "Extended L2 tables"),
    OptionDoc(
        "lazy_refcounts",
        "bool (on/off)",
        "Postpone refcount updates",
    ),
    OptionDoc(
        "preallocation",
        "str",
        "Preallocation mode (allowed values: off, metadata, falloc, full)",
    ),
    OptionDoc(
        "refcount_bits",
        "num",
        "Width of a reference count entry in bits",
    ),
    SIZE,
];

const QCOW_CREATE: &[OptionDoc] = &[
    BACKING_FILE,
    OptionDoc("backing_fmt", "str", "Format of the backing image"),
    OptionDoc(
        "encrypt.format",
        "str",
        "Encrypt the image, format choices: 'aes'",
    ),
    OptionDoc(
        "encrypt.key-secret",
        "str",
        "ID of the secret that provides the AES encryption key",
    ),
    ENCRYPTION,
    SIZE,
];

/// UML cow, which QEMU 10 no longer creates: cowimg's own options.
const COW_CREATE: &[OptionDoc] = &[
    BACKING_FILE,
    OptionDoc(
        "cow_version",
        "num",
        "Header layout: 3 (default) or 2, the Linux kernel's",
    ),
    SIZE,
];

const LUKS_CREATE: &[OptionDoc] = &[
    OptionDoc("cipher-alg", "str", "Name of encryption cipher algorithm"),
    OptionDoc("cipher-mode", "str", "Name of encryption cipher mode"),
    OptionDoc(
        "detached-header",
        "bool (on/off)",
        "Create a detached LUKS header",
    ),
    OptionDoc("hash-alg", "str", "Name of encryption hash algorithm"),
    OptionDoc("iter-time", "num", "Time to spend in PBKDF in milliseconds"),
    OptionDoc("ivgen-alg", "str", "Name of IV generator algorithm"),
    OptionDoc(
        "ivgen-hash-alg",
        "str",
        "Name of IV generator hash algorithm",
    ),
    OptionDoc(
        "key-secret",
        "str",
        "ID of the secret that provides the keyslot passphrase",
    ),
    SIZE,
];

/// What the file protocol adds when the target file is named.
const FILE_CREATE: &[OptionDoc] = &[
    OptionDoc(
        "extent_size_hint",
        "size",
        "Extent size hint for the image file, 0 to disable",
    ),
    OptionDoc(
        "nocow",
        "bool (on/off)",
        "Turn off copy-on-write (valid only on btrfs)",
    ),
    OptionDoc(
        "preallocation",
        "str",
        "Preallocation mode (allowed values: off, falloc, full)",
    ),
    SIZE,
];

const LUKS_AMEND: &[OptionDoc] = &[
    OptionDoc("iter-time", "num", "Time to spend in PBKDF in milliseconds"),
    OptionDoc(
        "keyslot",
        "num",
        "Select a single keyslot to modify explicitly",
    ),
    OptionDoc(
        "new-secret",
        "str",
        "New secret to set in the matching keyslots. Empty string to erase",
    ),
    OptionDoc(
        "old-secret",
        "str",
        "Select all keyslots that match this password",
    ),
    OptionDoc(
        "state",
        "str",
        "Select new state of affected keyslots (active/inactive)",
    ),
];

/// The names qcow2 amend takes besides its LUKS key-slot options (`encrypt.` + those).
const QCOW2_AMEND: &[&str] = &[
    "backing_file",
    "backing_fmt",
    "compat",
    "data_file",
    "data_file_raw",
    "lazy_refcounts",
    "refcount_bits",
    "size",
];

/// Checks each `-o` argument as qemu-img does before reading any: not empty, not
/// starting with a comma, not ending in an odd run of commas (an even run is escaped
/// commas in a value).
pub fn check_option_lists(texts: &[String]) -> Result<(), Error> {
    for text in texts {
        let trailing = text.len() - text.trim_end_matches(',').len();
        if text.is_empty() || text.starts_with(',') || trailing % 2 == 1 {
            return Err(Error::new(
                ErrorKind::BadArgument,
                format!("Invalid option list: {text}"),
            ));
        }
    }
    Ok(())
}

/// Whether any `-o` argument asks for help (`help` or `?`, as an option of its own).
pub fn wants_help(texts: &[String]) -> bool {
    texts
        .iter()
        .flat_map(|t| crate::source::parse_options(t))
        .any(|(key, _)| key == "help" || key == "?")
}

/// The listing's lines: `name=<kind>` padded to qemu-img's column, then the meaning;
/// `prefix` goes before each name (`encrypt.` for qcow2's LUKS options).
fn listing(options: &[(&str, &OptionDoc)]) -> String {
    let mut lines: Vec<String> = options
        .iter()
        .map(|(prefix, OptionDoc(name, kind, doc))| {
            let left = format!("{prefix}{name}=<{kind}>");
            format!(
                "  {left:<22} - {doc}
"
            )
        })
        .collect();
    lines.sort();
    lines.concat()
}

/// QEMU's format drivers that read images but cannot create them.
const READ_ONLY_DRIVERS: &[&str] = &["bochs", "cloop", "dmg"];

/// The format `name`, if images of it can be created (QEMU's words when it cannot).
pub fn creatable(name: &str) -> Result<cowimg::Format, Error> {
    if READ_ONLY_DRIVERS.contains(&name) {
        return Err(Error::new(
            ErrorKind::BadArgument,
            format!("Format driver '{name}' does not support image creation"),
        ));
    }
    crate::source::format_named(name)
}

fn create_options(format: &str) -> Result<&'static [OptionDoc], Error> {
    Ok(match format {
        "qcow2" => QCOW2_CREATE,
        "qcow" => QCOW_CREATE,
        "cow" => COW_CREATE,
        "luks" => LUKS_CREATE,
        "raw" => &[SIZE],
        _ => {
            creatable(format)?;
            return Err(Error::new(
                ErrorKind::BadArgument,
                format!("Format driver '{format}' does not support image creation"),
            ));
        }
    })
}

/// What `create -f FORMAT -o help` (or convert's) prints: the format's options, with
/// the file protocol's merged in when the target is named.
pub fn create_help(format: &str, target_named: bool) -> Result<String, Error> {
    let mut options: Vec<(&str, &OptionDoc)> =
        create_options(format)?.iter().map(|o| ("", o)).collect();
    if !target_named {
        return Ok(format!(
            "Supported {format} options:\n{}\nThe protocol level may support further options.\nSpecify the target filename to include those options.\n",
            listing(&options)
        ));
    }
    for extra in FILE_CREATE {
        if !options.iter().any(|(_, o)| o.0 == extra.0) {
            options.push(("", extra));
        }
    }
    Ok(format!("Supported options:\n{}", listing(&options)))
}

/// What `amend -f FORMAT -o help` prints.
pub fn amend_help(format: &str) -> Result<String, Error> {
    let options: Vec<(&str, &OptionDoc)> = match format {
        "qcow2" => QCOW2_CREATE
            .iter()
            .filter(|o| QCOW2_AMEND.contains(&o.0))
            .map(|o| ("", o))
            .chain(LUKS_AMEND.iter().map(|o| ("encrypt.", o)))
            .collect(),
        "luks" => LUKS_AMEND.iter().map(|o| ("", o)).collect(),
        _ if !READ_ONLY_DRIVERS.contains(&format) => {
            crate::source::format_named(format)?;
            return Err(Error::new(
                ErrorKind::BadArgument,
                format!("Format driver '{format}' does not support option amendment"),
            ));
        }
        _ => {
            return Err(Error::new(
                ErrorKind::BadArgument,
                format!("Format driver '{format}' does not support option amendment"),
            ));
        }
    };
    Ok(format!(
        "Amend options for '{format}':\n{}",
        listing(&options)
    ))
}
