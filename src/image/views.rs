//! The image as `std::io` sees it: `Read + Seek`, and `Read + Write + Seek` for a
//! writable one.

use super::*;

impl Image {
    /// A `Read + Seek` view of the virtual disk.
    pub fn reader(&self) -> ImageReader<'_> {
        ImageReader {
            image: self,
            pos: 0,
        }
    }
}

/// `Read + Write + Seek` over a writable [`Image`], for `io::copy` into an image and
/// other consumers of std's traits. Writes past the end of the disk are refused (the
/// disk does not grow); `flush` flushes the image.
pub struct ImageWriter<'a> {
    image: &'a mut Image,
    pos: u64,
}

impl Image {
    /// A `Read + Write + Seek` view from the start of the disk.
    pub fn writer(&mut self) -> ImageWriter<'_> {
        ImageWriter {
            image: self,
            pos: 0,
        }
    }
}

impl Read for ImageWriter<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut reader = ImageReader {
            image: self.image,
            pos: self.pos,
        };
        let n = reader.read(buf)?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl Write for ImageWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let room = self.image.size().saturating_sub(self.pos);
        if room == 0 && !buf.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                "write past the end of the disk",
            ));
        }
        let n = room.min(buf.len() as u64) as usize;
        self.image.write_at(&buf[..n], self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(self.image.flush()?)
    }
}

impl Seek for ImageWriter<'_> {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        let mut reader = ImageReader {
            image: self.image,
            pos: self.pos,
        };
        self.pos = reader.seek(pos)?;
        Ok(self.pos)
    }
}

/// `Read + Seek` over an [`Image`].
pub struct ImageReader<'a> {
    image: &'a Image,
    pos: u64,
}

impl Read for ImageReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = (self.image.size().saturating_sub(self.pos)).min(buf.len() as u64) as usize;
        if n == 0 {
            return Ok(0);
        }
        self.image.read_at(&mut buf[..n], self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl Seek for ImageReader<'_> {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        let target = match pos {
            SeekFrom::Start(n) => Some(n),
            SeekFrom::End(d) => self.image.size().checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        self.pos = target
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "seek before the start"))?;
        Ok(self.pos)
    }
}
