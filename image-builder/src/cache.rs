//! The output directory: images in content-addressed directories `<name>-<hash>/`, built in a
//! temporary directory and renamed into place, `<name>-latest` links, pruning of old images.

use std::fs;
use std::path::{Path, PathBuf};

use crate::{io_err, Result};

/// A fresh temporary directory in `parent` (same file system, so it can be renamed).
pub(crate) fn temp_dir(parent: &Path, name: &str) -> Result<PathBuf> {
    fs::create_dir_all(parent).map_err(io_err(parent))?;
    let tmp = parent.join(format!(".tmp-{name}-{}", std::process::id()));
    if tmp.exists() {
        fs::remove_dir_all(&tmp).map_err(io_err(&tmp))?;
    }
    fs::create_dir(&tmp).map_err(io_err(&tmp))?;
    Ok(tmp)
}

/// Moves a finished directory into place. An existing directory of the same name is
/// replaced only with `replace` (`--force`); otherwise it won (a concurrent build of the
/// same inputs) and `tmp` is dropped.
pub(crate) fn publish(tmp: &Path, dir: &Path, replace: bool) -> Result<()> {
    if dir.exists() {
        if !replace {
            return fs::remove_dir_all(tmp).map_err(io_err(tmp));
        }
        let old = dir.with_extension(format!("old-{}", std::process::id()));
        fs::rename(dir, &old).map_err(io_err(dir))?;
        fs::remove_dir_all(&old).map_err(io_err(&old))?;
    }
    fs::rename(tmp, dir).map_err(io_err(dir))
}

/// Keeps the newest `KEEP_IMAGES` images called `name` (never `current`) and removes
/// temporary directories left by build processes that no longer exist. Best effort.
pub(crate) fn prune(out_dir: &Path, name: &str, current: &Path) {
    const KEEP_IMAGES: usize = 3;
    let Ok(entries) = fs::read_dir(out_dir) else {
        return;
    };
    let mut images = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        let file_name = entry.file_name().to_string_lossy().into_owned();
        if let Some(hash) = file_name.strip_prefix(&format!("{name}-")) {
            let is_image = hash.len() == 16 && hash.bytes().all(|b| b.is_ascii_hexdigit());
            if is_image && path != current {
                let mtime = entry.metadata().and_then(|m| m.modified()).ok();
                images.push((mtime, path));
            }
        } else if let Some(pid) = file_name.strip_prefix(&format!(".tmp-{name}-")) {
            if !Path::new("/proc").join(pid).exists() {
                let _ = fs::remove_dir_all(&path);
            }
        }
    }
    images.sort_by_key(|(mtime, _)| std::cmp::Reverse(*mtime));
    for (_, path) in images.into_iter().skip(KEEP_IMAGES - 1) {
        let _ = fs::remove_dir_all(path);
    }
}

/// Points `<out_dir>/<name>-latest` at `dir` (a relative symlink, replaced atomically).
pub(crate) fn set_latest(out_dir: &Path, name: &str, dir: &Path) -> Result<()> {
    let link = out_dir.join(format!("{name}-latest"));
    let tmp = out_dir.join(format!(".{name}-latest.{}", std::process::id()));
    let target = dir.file_name().unwrap_or_default();
    let _ = fs::remove_file(&tmp);
    std::os::unix::fs::symlink(target, &tmp).map_err(io_err(&tmp))?;
    fs::rename(&tmp, &link).map_err(io_err(&link))
}
