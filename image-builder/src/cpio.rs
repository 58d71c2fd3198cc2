//! The initramfs: entries collected by path and written as a `newc` cpio archive.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use crate::{io_err, Result};

/// Where the bytes of an archive entry come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Source {
    Dir,
    File(PathBuf),
    Bytes(Vec<u8>),
    Symlink(String),
    /// Major, minor.
    Device(u32, u32),
}

/// An initramfs in the making: entries by path (no leading `/`), written as `newc` cpio.
#[derive(Debug, Default)]
pub(crate) struct Initramfs {
    entries: BTreeMap<String, (u32, Source)>,
}

impl Initramfs {
    /// Adds an entry (full mode including the file type) and any missing parent directories.
    pub(crate) fn node(&mut self, path: &str, mode: u32, source: Source) {
        let path = path.trim_matches('/');
        let mut parent = path;
        while let Some((p, _)) = parent.rsplit_once('/') {
            self.entries
                .entry(p.to_string())
                .or_insert((0o040755, Source::Dir));
            parent = p;
        }
        self.entries.insert(path.to_string(), (mode, source));
    }

    pub(crate) fn dir(&mut self, path: &str) {
        self.node(path, 0o040755, Source::Dir);
    }

    pub(crate) fn file(&mut self, path: &str, src: &Path, perm: u32) {
        self.node(path, 0o100000 | perm, Source::File(src.to_path_buf()));
    }

    /// Writes the archive (temp file + rename); returns its size.
    pub(crate) fn write(&self, out: &Path) -> Result<u64> {
        let tmp = out.with_extension("part");
        let file = fs::File::create(&tmp).map_err(io_err(&tmp))?;
        let mut w = BufWriter::new(file);
        // BTreeMap order puts every directory before its contents.
        for (ino, (path, (mode, source))) in (1..).zip(&self.entries) {
            let (data, rdev) = match source {
                Source::Dir => (Vec::new(), (0, 0)),
                Source::File(src) => (fs::read(src).map_err(io_err(src))?, (0, 0)),
                Source::Bytes(b) => (b.clone(), (0, 0)),
                Source::Symlink(t) => (t.clone().into_bytes(), (0, 0)),
                Source::Device(maj, min) => (Vec::new(), (*maj, *min)),
            };
            write_cpio_entry(&mut w, ino, *mode, rdev, path, &data).map_err(io_err(&tmp))?;
        }
        write_cpio_entry(&mut w, 0, 0, (0, 0), "TRAILER!!!", &[]).map_err(io_err(&tmp))?;
        let file = w.into_inner().map_err(|e| io_err(&tmp)(e.into_error()))?;
        let size = file.metadata().map_err(io_err(&tmp))?.len();
        drop(file);
        fs::rename(&tmp, out).map_err(io_err(out))?;
        Ok(size)
    }
}

/// Writes one `newc` cpio entry (uid/gid/mtime 0, so archives are reproducible).
fn write_cpio_entry(
    w: &mut impl Write,
    ino: u32,
    mode: u32,
    rdev: (u32, u32),
    name: &str,
    data: &[u8],
) -> io::Result<()> {
    let too_big = || {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{name} too large for cpio"),
        )
    };
    let size = u32::try_from(data.len()).map_err(|_| too_big())?;
    let namesize = u32::try_from(name.len() + 1).map_err(|_| too_big())?;
    let nlink = if mode & 0o170000 == 0o040000 { 2 } else { 1 };
    let fields = [
        ino, mode, 0, 0, nlink, 0, size, 0, 0, rdev.0, rdev.1, namesize, 0,
    ];
    let mut header = String::with_capacity(110);
    header.push_str("070701");
    for f in fields {
        let _ = write!(header, "{f:08x}");
    }
    w.write_all(header.as_bytes())?;
    w.write_all(name.as_bytes())?;
    w.write_all(&[0])?;
    w.write_all(&[0; 3][..pad4(110 + name.len() + 1)])?;
    w.write_all(data)?;
    w.write_all(&[0; 3][..pad4(data.len())])
}

/// Bytes needed to pad `n` to a multiple of 4.
fn pad4(n: usize) -> usize {
    (4 - n % 4) % 4
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads back (name, mode, rdev major, rdev minor, data) from a newc archive.
    fn read_cpio(mut d: &[u8]) -> Vec<(String, u32, u32, u32, Vec<u8>)> {
        let mut out = Vec::new();
        loop {
            assert_eq!(&d[..6], b"070701");
            let field = |i: usize| {
                u32::from_str_radix(std::str::from_utf8(&d[6 + 8 * i..14 + 8 * i]).unwrap(), 16)
                    .unwrap()
            };
            let (mode, size, rmaj, rmin, namesize) = (
                field(1),
                field(6) as usize,
                field(9),
                field(10),
                field(11) as usize,
            );
            let name = std::str::from_utf8(&d[110..110 + namesize - 1])
                .unwrap()
                .to_string();
            assert_eq!(d[110 + namesize - 1], 0);
            let start = 110 + namesize + pad4(110 + namesize);
            let data = d[start..start + size].to_vec();
            d = &d[start + size + pad4(size)..];
            if name == "TRAILER!!!" {
                assert!(d.is_empty());
                return out;
            }
            out.push((name, mode, rmaj, rmin, data));
        }
    }

    #[test]
    fn cpio_round_trip() {
        let dir = std::env::temp_dir().join(format!("vgpu-cpio-test-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let src = dir.join("src");
        fs::write(&src, b"hello").unwrap();
        let mut fsroot = Initramfs::default();
        fsroot.file("bin/prog", &src, 0o755);
        fsroot.node("dev/console", 0o020600, Source::Device(5, 1));
        fsroot.node("bin/sh", 0o120777, Source::Symlink("/bin/busybox".into()));
        fsroot.node("etc/x", 0o100644, Source::Bytes(b"abc".to_vec()));
        let out = dir.join("initrd.img");
        let size = fsroot.write(&out).unwrap();
        let data = fs::read(&out).unwrap();
        assert_eq!(size as usize, data.len());
        assert_eq!(data.len() % 4, 0);
        let entries = read_cpio(&data);
        let names: Vec<&str> = entries.iter().map(|e| e.0.as_str()).collect();
        assert_eq!(
            names,
            [
                "bin",
                "bin/prog",
                "bin/sh",
                "dev",
                "dev/console",
                "etc",
                "etc/x"
            ]
        );
        assert_eq!(entries[0].1, 0o040755);
        assert_eq!(entries[1].1, 0o100755);
        assert_eq!(entries[1].4, b"hello");
        assert_eq!(entries[2].4, b"/bin/busybox");
        assert_eq!((entries[4].1, entries[4].2, entries[4].3), (0o020600, 5, 1));
        assert_eq!(entries[6].4, b"abc");
        fs::remove_dir_all(&dir).unwrap();
    }
}
