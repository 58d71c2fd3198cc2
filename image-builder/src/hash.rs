//! The input hash that names an image: FNV-1a over every input, field by field.

use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use crate::{io_err, Result};

/// FNV-1a, 64 bit (`protocol::fnv`, the device's CHECKSUM too): stable across Rust versions
/// and platforms (unlike `DefaultHasher`). Every field is length-prefixed so that moving
/// bytes between fields changes the hash.
#[derive(Debug, Clone)]
pub(crate) struct Fnv64(u64);

impl Fnv64 {
    pub(crate) fn new() -> Self {
        Fnv64(protocol::fnv::OFFSET_BASIS)
    }

    fn bytes(&mut self, data: &[u8]) {
        self.0 = protocol::fnv::update(self.0, data);
    }

    pub(crate) fn field(&mut self, tag: &[u8], data: &[u8]) {
        for part in [tag, data] {
            self.bytes(&(part.len() as u64).to_le_bytes());
            self.bytes(part);
        }
    }

    /// A file's path (as given) and contents.
    pub(crate) fn file(&mut self, path: &Path) -> Result<()> {
        let mut f = fs::File::open(path).map_err(io_err(path))?;
        let len = f.metadata().map_err(io_err(path))?.len();
        self.field(b"file", path.as_os_str().as_encoded_bytes());
        self.bytes(&len.to_le_bytes());
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = f.read(&mut buf).map_err(io_err(path))?;
            if n == 0 {
                return Ok(());
            }
            self.bytes(&buf[..n]);
        }
    }

    /// The source files below `root` (paths relative to `base`), in a stable order; skips
    /// hidden entries, `target/` and build outputs (Kbuild's `.o`, `.ko`, `.mod*`, ...).
    pub(crate) fn tree(&mut self, root: &Path, base: &Path) -> Result<()> {
        let mut entries: Vec<PathBuf> = fs::read_dir(root)
            .map_err(io_err(root))?
            .map(|e| e.map(|e| e.path()))
            .collect::<io::Result<_>>()
            .map_err(io_err(root))?;
        entries.sort();
        for path in entries {
            let name = path.file_name().unwrap_or_default().to_string_lossy();
            if name.starts_with('.') || name == "target" || is_ignored(&name) {
                continue;
            }
            let ty = fs::symlink_metadata(&path)
                .map_err(io_err(&path))?
                .file_type();
            if ty.is_dir() {
                self.tree(&path, base)?;
            } else if ty.is_file() {
                let rel = path.strip_prefix(base).unwrap_or(&path);
                self.field(b"path", rel.as_os_str().as_encoded_bytes());
                let data = fs::read(&path).map_err(io_err(&path))?;
                self.field(b"data", &data);
            }
        }
        Ok(())
    }

    pub(crate) fn hex(&self) -> String {
        format!("{:016x}", self.0)
    }
}

/// Build outputs (Kbuild's `.o`, `.ko`, `.mod*`, ...) and documentation.
pub(crate) fn is_ignored(name: &str) -> bool {
    const SUFFIXES: &[&str] = &[
        ".o", ".ko", ".mod", ".mod.c", ".symvers", ".order", ".cmd", ".md",
    ];
    SUFFIXES.iter().any(|s| name.ends_with(s))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hash_of(fields: &[(&[u8], &[u8])]) -> String {
        let mut h = Fnv64::new();
        for (t, d) in fields {
            h.field(t, d);
        }
        h.hex()
    }

    #[test]
    fn fnv_known_values() {
        // Published FNV-1a 64 test vectors.
        let mut h = Fnv64::new();
        h.bytes(b"");
        assert_eq!(h.hex(), "cbf29ce484222325");
        h.bytes(b"a");
        assert_eq!(h.hex(), "af63dc4c8601ec8c");
        let mut h = Fnv64::new();
        h.bytes(b"foobar");
        assert_eq!(h.hex(), "85944171f73967e8");
    }

    #[test]
    fn hash_changes_with_inputs() {
        let a = hash_of(&[(b"kernel", b"6.1.192-2"), (b"init", b"echo")]);
        assert_eq!(a, hash_of(&[(b"kernel", b"6.1.192-2"), (b"init", b"echo")]));
        assert_ne!(a, hash_of(&[(b"kernel", b"6.1.192-3"), (b"init", b"echo")]));
        // Moving a byte from one field to the next must change the hash.
        assert_ne!(a, hash_of(&[(b"kernel", b"6.1.192-"), (b"init", b"2echo")]));
    }

    #[test]
    fn tree_hash_skips_build_outputs() {
        let dir = std::env::temp_dir().join(format!("vgpu-images-test-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("src")).unwrap();
        fs::write(dir.join("src/a.c"), "int a;").unwrap();
        let h = |dir: &Path| {
            let mut h = Fnv64::new();
            h.tree(dir, dir).unwrap();
            h.hex()
        };
        let first = h(&dir);
        fs::write(dir.join("src/a.o"), "obj").unwrap();
        fs::write(dir.join("src/.a.o.cmd"), "cmd").unwrap();
        fs::create_dir_all(dir.join("target")).unwrap();
        fs::write(dir.join("target/x"), "x").unwrap();
        assert_eq!(first, h(&dir));
        fs::write(dir.join("src/a.c"), "int b;").unwrap();
        assert_ne!(first, h(&dir));
        fs::remove_dir_all(&dir).unwrap();
    }
}
