//! Kernel modules: which `.ko` files an image needs and in which order they load, from the
//! `depends=` of each module's `.modinfo` (the kernel package has no `modules.dep`).

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use crate::{elf, io_err, ImageError, Result};

/// The module name of a file name: `virtio-rng.ko` -> `virtio_rng`.
fn module_name(file: &str) -> Option<String> {
    file.strip_suffix(".ko").map(|s| s.replace('-', "_"))
}

/// All `.ko` files below `dir`, by module name.
fn index_modules(dir: &Path) -> Result<BTreeMap<String, PathBuf>> {
    let mut index = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in fs::read_dir(&d).map_err(io_err(&d))? {
            let path = entry.map_err(io_err(&d))?.path();
            if path.is_dir() {
                stack.push(path);
            } else if let Some(name) = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(module_name)
            {
                index.insert(name, path);
            }
        }
    }
    Ok(index)
}

/// The `depends=` list of a module's `.modinfo` section.
fn module_depends(data: &[u8]) -> Option<Vec<String>> {
    let modinfo = elf::section(data, ".modinfo")?;
    let deps = modinfo
        .split(|&b| b == 0)
        .find_map(|s| s.strip_prefix(b"depends="))
        .unwrap_or(b"");
    Some(
        String::from_utf8_lossy(deps)
            .split(',')
            .filter(|s| !s.is_empty())
            .map(|s| s.replace('-', "_"))
            .collect(),
    )
}

/// `wanted` and their dependencies below `dir`, dependencies first.
pub(crate) fn module_load_order(dir: &Path, wanted: &[&str]) -> Result<Vec<(String, PathBuf)>> {
    let index = index_modules(dir)?;
    let mut order = Vec::new();
    for name in wanted {
        visit_module(name, &index, &mut order, &mut Vec::new())?;
    }
    Ok(order)
}

fn visit_module(
    name: &str,
    index: &BTreeMap<String, PathBuf>,
    order: &mut Vec<(String, PathBuf)>,
    path: &mut Vec<String>,
) -> Result<()> {
    if order.iter().any(|(n, _)| n == name) {
        return Ok(());
    }
    let err = |reason: String| ImageError::Module {
        name: name.to_string(),
        reason,
    };
    if path.iter().any(|n| n == name) {
        return Err(err(format!("dependency cycle via {}", path.join(" -> "))));
    }
    let file = index
        .get(name)
        .ok_or_else(|| err("not in the kernel package (built in, or not built?)".into()))?;
    let data = fs::read(file).map_err(io_err(file))?;
    let deps =
        module_depends(&data).ok_or_else(|| err(format!("{} has no .modinfo", file.display())))?;
    path.push(name.to_string());
    for dep in &deps {
        visit_module(dep, index, order, path)?;
    }
    path.pop();
    order.push((name.to_string(), file.clone()));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn module_names() {
        assert_eq!(module_name("virtio-rng.ko").as_deref(), Some("virtio_rng"));
        assert_eq!(module_name("virtio.ko.xz"), None);
    }
}
