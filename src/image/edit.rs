//! Changes to an image beyond writing data: its backing file (rebase), committing into
//! the backing file, amending the header, internal snapshots.

use super::*;
use crate::create::Compat;
use crate::qcow2::BitmapContent;

/// A change to a persistent bitmap (see [`Image::change_bitmap`]).
#[derive(Clone, Copy, Debug)]
#[non_exhaustive]
pub enum BitmapChange<'a> {
    /// A new bitmap, no bit set: bytes per bit (by default the cluster size within
    /// 4 KiB to 64 KiB), and whether guest writes mark it.
    Add {
        /// Bytes one bit covers; `None` for QEMU's default.
        granularity: Option<u64>,
        /// Whether guest writes mark it.
        enabled: bool,
    },
    /// The bitmap removed.
    Remove,
    /// Every bit cleared.
    Clear,
    /// Guest writes mark it.
    Enable,
    /// Guest writes leave it as it is.
    Disable,
    /// Every bit covering a range the other bitmap has set, set.
    Merge(&'a BitmapContent),
}

impl Image {
    /// Names another backing file in the header, touching no data (`rebase -u`).
    pub fn set_backing(&mut self, name: Option<&str>, format: Option<Format>) -> Result<()> {
        self.set_backing_driver(name, format.map(Format::name))
    }

    /// [`Image::set_backing`] with the backing format named by a QEMU driver name, one
    /// cowimg need not open (`host_device`, as qemu-img rebase -u records it).
    pub fn set_backing_driver(&mut self, name: Option<&str>, driver: Option<&str>) -> Result<()> {
        self.whole_disk("rebase")?;
        self.top_qcow2("a backing file")?.set_backing(name, driver)
    }

    /// Safe rebase: every range the top image does not hold itself and whose content
    /// differs between the current backing chain and `new` (or zeros, for none) is
    /// copied into the top image first; then the header names `new`.
    pub fn rebase(&mut self, name: Option<&str>, new: Option<&Image>) -> Result<()> {
        self.rebase_compressed(name, new, false)
    }

    /// [`Image::rebase`], the whole clusters copied written compressed when `compress`
    /// (qemu-img rebase -c).
    pub fn rebase_compressed(
        &mut self,
        name: Option<&str>,
        new: Option<&Image>,
        compress: bool,
    ) -> Result<()> {
        self.whole_disk("rebase")?;
        let size = self.size();
        // Compare and copy by the top image's clusters, so no more is copied than needed.
        let unit = match self.top() {
            Layer::Qcow2(q) => q.cluster_size(),
            Layer::Qcow(q) => q.cluster_size(),
            Layer::Cow(c) => u64::from(c.header().sector_size),
            Layer::Raw(_) | Layer::Luks(_) => 64 << 10,
        };
        let mut old_buf = vec![0u8; unit as usize];
        let mut new_buf = vec![0u8; unit as usize];
        let mut offset = 0;
        while offset < size {
            let (held, len) = self.top_status(offset, size - offset)?;
            if held {
                offset += len;
                self.report(offset, size);
                continue;
            }
            let end = offset + len;
            while offset < end {
                let n = unit.min(end - offset) as usize;
                read_chain(&self.chain[1..], offset, &mut old_buf[..n])?;
                match new {
                    Some(image) => read_chain(&image.chain, offset, &mut new_buf[..n])?,
                    None => new_buf[..n].fill(0),
                }
                if old_buf[..n] != new_buf[..n] {
                    let data = old_buf[..n].to_vec();
                    // Where no old backing file reaches (none, or past its end), the
                    // zeros are written as zeros (a zero cluster), as qemu-img rebase
                    // writes them; what an old backing file gave is written as data.
                    let absent = self.chain.get(1).is_none_or(|b| offset >= b.layer.size());
                    match (absent, compress && n as u64 == unit) {
                        (true, _) => self.write_zeroes(offset, n as u64, false)?,
                        (false, true) => self.write_compressed(&data, offset)?,
                        (false, false) => self.write_at(&data, offset)?,
                    }
                }
                offset += n as u64;
                self.report(offset, size);
            }
        }
        self.flush()?;
        let format = new.map(|i| i.top().format());
        self.set_backing(name, format)
    }

    /// Writes everything the top image holds into its backing file, then (unless
    /// `keep`) empties the top image so that it reads through to it (`commit`). A
    /// backing file that probed as raw is written only when `backing_format` states it.
    pub fn commit(&mut self, keep: bool, backing_format: Option<Format>) -> Result<()> {
        self.commit_into(1, keep, backing_format)
    }

    /// `commit -b`: what the layers above the chain's layer `depth` hold (1: the backing
    /// file, 2: its backing file…), written into that layer. Through several layers
    /// the image is kept as it is (as qemu-img's `-b` implies `-d`): the layers in
    /// between no longer read as they did, and the top image still does.
    pub fn commit_into(
        &mut self,
        depth: usize,
        keep: bool,
        backing_format: Option<Format>,
    ) -> Result<()> {
        self.whole_disk("commit")?;
        let keep = keep || depth > 1;
        let Some(below) = self.chain.get(depth).filter(|_| depth > 0) else {
            return Err(Error::new(
                ErrorKind::BadArgument,
                match depth {
                    1 => "Image does not have a backing file".to_string(),
                    _ => format!("the backing chain has no layer {depth}"),
                },
            ));
        };
        // A header that names its format is trusted, as QEMU trusts it; a file that
        // merely probed as raw could be anything, and is written only when stated.
        if below.probed && below.layer.format() == Format::Raw && backing_format.is_none() {
            return Err(Error::new(
                ErrorKind::BadArgument,
                "the backing file probed as raw, which is never trusted for writing: state its format (commit -F raw)",
            ));
        }
        let base_path = below.path.clone();
        let base_format = backing_format.unwrap_or(below.layer.format());
        // The chain below holds read locks that keep writers out, this one too: it is
        // closed while the base is written, and opened again after.
        drop(self.chain.split_off(depth));
        let written = self.copy_into_base(&base_path, base_format);
        let reopened = Image::open(
            &base_path,
            &OpenOptions {
                format: Some(base_format),
                backing: Backing::Follow,
                writable: false,
                snapshot: None,
                data_file: None,
                ..self.options.clone()
            },
        );
        written?;
        self.chain.extend(reopened?.chain);
        if !keep {
            match self.split_top()?.0 {
                Layer::Qcow2(q) => q.make_empty()?,
                Layer::Qcow(q) => q.make_empty()?,
                other => {
                    return Err(Error::new(
                        ErrorKind::Unsupported,
                        format!(
                            "a {} image cannot be emptied after commit (use -d)",
                            other.format()
                        ),
                    ))
                }
            }
            self.flush()?;
        }
        Ok(())
    }

    /// The copying half of `commit`: every range a layer of the chain holds (the chain
    /// ends above the base now), written into the base image at `path` opened for
    /// writing (its own backing chain below it, so that a part-written cluster of the
    /// base keeps what the base's backing file gives).
    fn copy_into_base(&self, path: &Path, format: Format) -> Result<()> {
        let options = OpenOptions {
            format: Some(format),
            backing: Backing::Follow,
            writable: true,
            snapshot: None,
            data_file: None,
            ..self.options.clone()
        };
        let mut base = Image::open(path, &options)?;
        let size = self.size();
        if base.size() < size {
            base.resize(size)?;
        }
        let unit = 1u64 << 20;
        let mut buf = vec![0u8; unit as usize];
        let mut offset = 0;
        while offset < size {
            let status = self.block_status(offset, size - offset)?;
            let (held, len) = (status.present, status.len);
            if held && status.zero {
                // Zeros are committed as zeros, the base's clusters released, as
                // QEMU's commit writes them.
                base.write_zeroes(offset, len, true)?;
            } else if held {
                let mut at = offset;
                while at < offset + len {
                    let n = unit.min(offset + len - at) as usize;
                    self.read_at(&mut buf[..n], at)?;
                    base.write_at(&buf[..n], at)?;
                    at += n as u64;
                    self.report(at, size);
                }
            }
            offset += len;
            self.report(offset, size);
        }
        base.flush()
    }

    /// `amend`: the compat level (both ways) and lazy refcounts of a qcow2 image.
    pub fn amend(&mut self, compat: Option<Compat>, lazy_refcounts: Option<bool>) -> Result<()> {
        self.whole_disk("amend")?;
        self.on_top(|top, below| {
            let Layer::Qcow2(q) = top else {
                return Err(Error::new(
                    ErrorKind::Unsupported,
                    "amend needs a qcow2 image",
                ));
            };
            match compat {
                Some(Compat::V0_10) => q.downgrade_to_v2(below)?,
                Some(Compat::V1_1) => q.upgrade_to_v3()?,
                None => {}
            }
            if let Some(on) = lazy_refcounts {
                q.set_lazy_refcounts(on)?;
            }
            q.flush()
        })
    }

    /// `amend -o refcount_bits=N`: the top qcow2 image's refcount entry width.
    pub fn amend_refcount_bits(&mut self, bits: u32) -> Result<()> {
        self.whole_disk("amend")?;
        let q = self.top_qcow2("refcount_bits")?;
        q.change_refcount_bits(bits)?;
        q.flush()
    }

    /// `amend -o data_file=NAME,data_file_raw=off`: the top qcow2 image's external data
    /// file name (empty: none recorded) and its raw flag (which can only be cleared).
    pub fn amend_data_file(&mut self, name: Option<&str>, raw: Option<bool>) -> Result<()> {
        self.whole_disk("amend")?;
        let q = self.top_qcow2("data_file")?;
        q.amend_data_file(name, raw)?;
        q.flush()
    }

    /// Completes the snapshot table entries of a version 3 qcow2 image whose extra data
    /// lacks the disk size (what `check -r all` repairs as "snapshot table entry N is
    /// incomplete"), rewriting the table as QEMU does. Returns the indices completed.
    pub fn complete_snapshot_table(&mut self) -> Result<Vec<usize>> {
        self.on_top(|top, _| match top {
            Layer::Qcow2(q) if q.header().version() >= 3 => {
                let needed = crate::qcow2::snapshot::v3_required_extra();
                let completed = q.complete_snapshot_entries(needed)?;
                q.flush()?;
                Ok(completed)
            }
            _ => Ok(Vec::new()),
        })
    }

    /// Adds or erases key slots of the top image's LUKS header (qcow2 with LUKS, or a
    /// luks volume), as qemu-img amend's `encrypt.state` and friends; a new slot is
    /// unlocked with the passphrase the image was opened with.
    pub fn change_key_slots(&mut self, change: &crate::create::KeySlotChange) -> Result<()> {
        let secret = self.options.passphrase.clone();
        self.on_top(|top, _| match top {
            Layer::Qcow2(q) => q.change_key_slots(secret.as_ref(), change),
            Layer::Luks(l) => l.amend(secret.as_ref(), change),
            _ => Err(Error::new(
                ErrorKind::Unsupported,
                "Key slots can only be changed in LUKS-encrypted images",
            )),
        })
    }

    /// Writes `buf` at byte `pos` of the top image's VM state area (qcow2 keeps it past
    /// the disk), as savevm and qemu-io's `write -b` do.
    pub fn write_vm_state(&mut self, buf: &[u8], pos: u64) -> Result<()> {
        self.whole_disk("VM state")?;
        self.on_top(|top, below| match top {
            Layer::Qcow2(q) => q.write_vm_state(pos, buf, below),
            _ => Err(no_vm_state()),
        })
    }

    /// Where the top image's VM state area starts (qcow2; None for formats without one).
    pub fn vm_state_offset(&self) -> Option<u64> {
        match self.top() {
            Layer::Qcow2(q) => Some(q.vm_state_offset()),
            _ => None,
        }
    }

    /// Reads `buf.len()` bytes at byte `pos` of the top image's VM state area.
    pub fn read_vm_state(&self, buf: &mut [u8], pos: u64) -> Result<()> {
        self.whole_disk("VM state")?;
        match self.top() {
            Layer::Qcow2(q) => q.read_vm_state(pos, buf),
            _ => Err(no_vm_state()),
        }
    }

    /// (ID, name) of each internal snapshot of the top image, in table order.
    pub fn snapshot_names(&self) -> Vec<(String, String)> {
        self.snapshots()
            .iter()
            .map(|s| (s.id.clone(), s.name.clone()))
            .collect()
    }

    /// The top image's internal snapshots (none for formats without them).
    pub fn snapshots(&self) -> &[qcow2::Snapshot] {
        match self.top() {
            Layer::Qcow2(q) => q.snapshots(),
            Layer::Qcow(_) | Layer::Cow(_) | Layer::Raw(_) | Layer::Luks(_) => &[],
        }
    }

    fn top_qcow2(&mut self, what: &str) -> Result<&mut Qcow2> {
        match self.split_top()?.0 {
            Layer::Qcow2(q) => Ok(q),
            other => Err(Error::new(
                ErrorKind::Unsupported,
                format!("{what} needs a qcow2 image, not {}", other.format()),
            )),
        }
    }

    /// Changes the top image's persistent bitmap `name` as `qemu-img bitmap` does (a
    /// qcow2 version 3 image keeps them). The change is stored at [`Image::close`].
    pub fn change_bitmap(&mut self, name: &str, change: BitmapChange<'_>) -> Result<()> {
        let q = match self.split_top()?.0 {
            Layer::Qcow2(q) => q,
            _ => {
                return Err(Error::new(
                    ErrorKind::Unsupported,
                    "Can't store persistent bitmaps to this image: Operation not supported",
                ))
            }
        };
        match change {
            BitmapChange::Add {
                granularity,
                enabled,
            } => q.add_bitmap(name, granularity, enabled),
            BitmapChange::Remove => q.remove_bitmap(name),
            BitmapChange::Clear => q.clear_bitmap(name),
            BitmapChange::Enable => q.set_bitmap_enabled(name, true),
            BitmapChange::Disable => q.set_bitmap_enabled(name, false),
            BitmapChange::Merge(source) => q.merge_into_bitmap(name, source),
        }
    }

    /// The top image's persistent bitmaps as its directory lists them (none for formats
    /// without them).
    pub fn bitmaps(&self) -> Result<Vec<crate::info::Bitmap>> {
        match self.chain.first().map(|e| &e.layer) {
            Some(Layer::Qcow2(q)) => crate::qcow2::bitmaps::read_directory(q.storage(), q.header()),
            _ => Ok(Vec::new()),
        }
    }

    /// The bits of the top image's persistent bitmap `name` (as this handle holds them,
    /// with its own writes marked).
    pub fn bitmap_content(&self, name: &str) -> Result<BitmapContent> {
        match self.chain.first().map(|e| &e.layer) {
            Some(Layer::Qcow2(q)) => q.bitmap_content(name),
            _ => Err(Error::new(
                ErrorKind::BadArgument,
                format!("Dirty bitmap '{name}' not found"),
            )),
        }
    }

    /// Closes the image as dropping it does (held metadata written, bitmaps stored
    /// back, the dirty bit cleared), reporting what dropping cannot: whether that
    /// worked.
    pub fn close(mut self) -> Result<()> {
        match self.chain.first_mut().map(|e| &mut e.layer) {
            Some(Layer::Qcow2(q)) => q.close(),
            _ => self.flush(),
        }
    }

    /// Takes an internal snapshot of the top image; returns its id.
    pub fn snapshot_create(&mut self, name: &str) -> Result<String> {
        self.whole_disk("a snapshot")?;
        self.top_qcow2("a snapshot")?.snapshot_create(name)
    }

    /// Makes the snapshot with this id (or name) the current state.
    pub fn snapshot_apply(&mut self, id_or_name: &str) -> Result<()> {
        self.whole_disk("a snapshot")?;
        self.top_qcow2("a snapshot")?.snapshot_apply(id_or_name)
    }

    /// Deletes the snapshot with this id (or name).
    pub fn snapshot_delete(&mut self, id_or_name: &str) -> Result<()> {
        self.whole_disk("a snapshot")?;
        self.top_qcow2("a snapshot")?.snapshot_delete(id_or_name)
    }
}

/// Only qcow2 keeps VM state (QEMU's other drivers refuse the same way).
fn no_vm_state() -> Error {
    Error::new(ErrorKind::Unsupported, "Operation not supported")
}
