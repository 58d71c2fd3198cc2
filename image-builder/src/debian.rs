//! Debian packages: resolving the kernel, its headers and its source through apt, downloading
//! them with `apt-get download` and unpacking them with `dpkg-deb` into the cache, once.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::cache::{publish, temp_dir};
use crate::command::run;
use crate::hmm_tests::HMM_SOURCES;
use crate::{io_err, write_file, ImageError, Result};

/// The meta package whose candidate names the current 6.1 cloud kernel.
pub(crate) const KERNEL_META: &str = "linux-image-cloud-amd64";

/// The kernel source package, for the HMM selftest and the dmirror uapi header.
pub(crate) const KERNEL_SOURCE: &str = "linux-source-6.1";

/// The Debian package that carries the kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct KernelPackage {
    /// `linux-image-6.1.0-N-cloud-amd64`
    pub(crate) package: String,
    /// The candidate version, e.g. `6.1.192-2`.
    pub(crate) version: String,
    /// `6.1.0-N-cloud-amd64`
    pub(crate) release: String,
}

/// Resolves the kernel from the candidate of the meta package, whose Depends names the
/// ABI package and normally pins its version (`(= 6.1.192-2)`), so one apt call suffices.
pub(crate) fn resolve_kernel() -> Result<KernelPackage> {
    let show = run(Command::new("apt-cache").args(["show", "--no-all-versions", KERNEL_META]))
        .map_err(|e| ImageError::Apt {
            package: KERNEL_META.into(),
            message: e.to_string(),
        })?;
    let depends = control_field(&show, "Depends").unwrap_or_default();
    let (release, version) =
        kernel_from_depends(depends).ok_or_else(|| ImageError::NoKernel(depends.to_string()))?;
    match version {
        Some(version) => Ok(KernelPackage {
            package: format!("linux-image-{release}"),
            version,
            release,
        }),
        None => kernel_package(&release),
    }
}

pub(crate) fn kernel_package(release: &str) -> Result<KernelPackage> {
    let package = format!("linux-image-{release}");
    let show = run(Command::new("apt-cache").args(["show", "--no-all-versions", &package]))
        .map_err(|e| ImageError::Apt {
            package: package.clone(),
            message: e.to_string(),
        })?;
    let version = control_field(&show, "Version").ok_or_else(|| ImageError::Apt {
        package: package.clone(),
        message: "no Version in apt-cache show".into(),
    })?;
    Ok(KernelPackage {
        package,
        version: version.to_string(),
        release: release.to_string(),
    })
}

/// The release `6.1.0-N-cloud-amd64` of a package name `linux-image-6.1.0-N-cloud-amd64`.
fn kernel_release_of(package: &str) -> Option<&str> {
    let release = package.strip_prefix("linux-image-")?;
    let abi = release
        .strip_prefix("6.1.0-")?
        .strip_suffix("-cloud-amd64")?;
    (!abi.is_empty() && abi.bytes().all(|b| b.is_ascii_digit())).then_some(release)
}

/// The 6.1 cloud kernel release named in a Depends field, with the version it pins
/// (`= V`) if any. Among several alternatives the highest ABI wins.
fn kernel_from_depends(depends: &str) -> Option<(String, Option<String>)> {
    depends
        .split([',', '|'])
        .filter_map(|dep| {
            let dep = dep.trim();
            let (name, constraint) = match dep.split_once('(') {
                Some((n, c)) => (n.trim(), Some(c.trim_end_matches(')').trim())),
                None => (dep, None),
            };
            let release = kernel_release_of(name)?;
            let version = constraint
                .and_then(|c| c.strip_prefix('='))
                .map(|v| v.trim().to_string());
            let abi: u64 = release
                .strip_prefix("6.1.0-")?
                .split('-')
                .next()?
                .parse()
                .ok()?;
            Some((abi, release.to_string(), version))
        })
        .max_by_key(|(abi, _, _)| *abi)
        .map(|(_, release, version)| (release, version))
}

/// The value of `Field: value` in a Debian control stanza.
fn control_field<'a>(text: &'a str, field: &str) -> Option<&'a str> {
    text.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .map(str::trim)
}

/// Downloads and unpacks the kernel package below `cache`, once; returns the tree.
pub(crate) fn fetch_kernel(kp: &KernelPackage, cache: &Path) -> Result<PathBuf> {
    let tree = cache.join(format!("{}_{}", kp.package, kp.version.replace(':', "%3a")));
    let vmlinuz = tree.join("boot").join(format!("vmlinuz-{}", kp.release));
    if vmlinuz.is_file() {
        return Ok(tree);
    }
    let deb = download_deb(&kp.package, &kp.version, &cache.join("debs"))?;
    let tmp = temp_dir(cache, "unpack")?;
    run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&tmp))?;
    if !tmp
        .join("boot")
        .join(format!("vmlinuz-{}", kp.release))
        .is_file()
    {
        return Err(ImageError::Apt {
            package: kp.package.clone(),
            message: format!("the package has no boot/vmlinuz-{}", kp.release),
        });
    }
    publish(&tmp, &tree, false)?;
    Ok(tree)
}

/// `apt-get download package=version` into `debs` unless the `.deb` is already there;
/// returns its path (`<package>_<version>_<arch>.deb`, arch `amd64` or `all`).
fn download_deb(package: &str, version: &str, debs: &Path) -> Result<PathBuf> {
    let prefix = format!("{package}_{}_", version.replace(':', "%3a"));
    let find = || -> Result<Option<PathBuf>> {
        let mut found = None;
        for entry in fs::read_dir(debs).map_err(io_err(debs))? {
            let path = entry.map_err(io_err(debs))?.path();
            let name = path.file_name().unwrap_or_default().to_string_lossy();
            if name.starts_with(&prefix) && name.ends_with(".deb") {
                found = Some(path);
            }
        }
        Ok(found)
    };
    fs::create_dir_all(debs).map_err(io_err(debs))?;
    if let Some(deb) = find()? {
        return Ok(deb);
    }
    let apt_err = |message: String| ImageError::Apt {
        package: package.to_string(),
        message,
    };
    run(Command::new("apt-get")
        .args(["download", "-q", &format!("{package}={version}")])
        .current_dir(debs))
    .map_err(|e| apt_err(e.to_string()))?;
    find()?.ok_or_else(|| apt_err(format!("apt-get download did not produce {prefix}*.deb")))
}

/// The packages that make the guest kernel's Kbuild tree, all at the kernel's version:
/// `linux-headers-<release>`, the `-common` headers it names and `linux-kbuild-6.1`.
pub(crate) fn resolve_headers(kp: &KernelPackage) -> Result<Vec<(String, String)>> {
    let headers = format!("linux-headers-{}", kp.release);
    let apt_err = |message: String| ImageError::Apt {
        package: headers.clone(),
        message,
    };
    let show = run(Command::new("apt-cache").args([
        "show",
        "--no-all-versions",
        &format!("{headers}={}", kp.version),
    ]))
    .map_err(|e| apt_err(e.to_string()))?;
    let depends = control_field(&show, "Depends").unwrap_or_default();
    let (common, kbuild) = headers_depends(depends).ok_or_else(|| {
        apt_err(format!(
            "Depends names no -common or linux-kbuild package: {depends}"
        ))
    })?;
    Ok([headers.clone(), common, kbuild]
        .into_iter()
        .map(|p| (p, kp.version.clone()))
        .collect())
}

/// The `linux-headers-*-common` and `linux-kbuild-*` package names in a Depends field.
fn headers_depends(depends: &str) -> Option<(String, String)> {
    let names: Vec<&str> = depends
        .split([',', '|'])
        .map(|d| d.split('(').next().unwrap_or("").trim())
        .collect();
    let common = names
        .iter()
        .find(|n| n.starts_with("linux-headers-") && n.ends_with("-common"))?;
    let kbuild = names.iter().find(|n| n.starts_with("linux-kbuild-"))?;
    Some((common.to_string(), kbuild.to_string()))
}

/// Downloads and unpacks the header packages into one prefix below `cache`, once, and
/// returns the Kbuild directory (`<prefix>/usr/src/linux-headers-<release>`).
///
/// The packages expect to live in `/usr/src` and `/usr/lib`: absolute symlinks are made
/// relative inside the prefix and the flavour's Makefile includes the `-common` one by
/// a path relative to itself (`make -C` runs there).
pub(crate) fn fetch_headers(
    kp: &KernelPackage,
    packages: &[(String, String)],
    cache: &Path,
) -> Result<PathBuf> {
    let tree_name = format!(
        "linux-headers-{}_{}",
        kp.release,
        kp.version.replace(':', "%3a")
    );
    let tree = cache.join(tree_name);
    let kdir_rel = Path::new("usr/src").join(format!("linux-headers-{}", kp.release));
    if tree.join(&kdir_rel).join("Makefile").is_file() {
        return Ok(tree.join(kdir_rel));
    }
    let mut debs = Vec::new();
    for (package, version) in packages {
        debs.push(download_deb(package, version, &cache.join("debs"))?);
    }
    let tmp = temp_dir(cache, "unpack")?;
    for deb in &debs {
        run(Command::new("dpkg-deb").arg("-x").arg(deb).arg(&tmp))?;
    }
    relativize_symlinks(&tmp, &tmp)?;
    let makefile = tmp.join(&kdir_rel).join("Makefile");
    let missing = |what: &str| ImageError::Apt {
        package: packages[0].0.clone(),
        message: format!("the unpacked headers have no {what}"),
    };
    let text = fs::read_to_string(&makefile).map_err(|_| missing("Makefile"))?;
    write_file(
        &makefile,
        text.replace("include /usr/src/", "include ../").as_bytes(),
    )?;
    for f in ["Module.symvers", ".config", "scripts/mod/modpost"] {
        if !tmp.join(&kdir_rel).join(f).exists() {
            return Err(missing(&format!("{}/{f}", kdir_rel.display())));
        }
    }
    publish(&tmp, &tree, false)?;
    Ok(tree.join(kdir_rel))
}

/// Rewrites every absolute symlink below `dir` to a relative one that points at the same
/// path inside `root`.
fn relativize_symlinks(root: &Path, dir: &Path) -> Result<()> {
    for entry in fs::read_dir(dir).map_err(io_err(dir))? {
        let path = entry.map_err(io_err(dir))?.path();
        let ty = fs::symlink_metadata(&path)
            .map_err(io_err(&path))?
            .file_type();
        if ty.is_dir() {
            relativize_symlinks(root, &path)?;
        } else if ty.is_symlink() {
            let target = fs::read_link(&path).map_err(io_err(&path))?;
            let Ok(inside) = target.strip_prefix("/") else {
                continue;
            };
            let depth = path
                .parent()
                .and_then(|p| p.strip_prefix(root).ok())
                .map_or(0, |p| p.components().count());
            let mut rel = PathBuf::new();
            for _ in 0..depth {
                rel.push("..");
            }
            rel.push(inside);
            fs::remove_file(&path).map_err(io_err(&path))?;
            std::os::unix::fs::symlink(&rel, &path).map_err(io_err(&path))?;
        }
    }
    Ok(())
}

/// The version of `linux-source-6.1` to take: the kernel's own source version when apt
/// has it, else the candidate (the newest).
pub(crate) fn resolve_kernel_source(kp: &KernelPackage) -> Result<String> {
    let exact = format!("{KERNEL_SOURCE}={}", kp.version);
    if run(Command::new("apt-cache").args(["show", "--no-all-versions", &exact])).is_ok() {
        return Ok(kp.version.clone());
    }
    let show = run(Command::new("apt-cache").args(["show", "--no-all-versions", KERNEL_SOURCE]))
        .map_err(|e| ImageError::Apt {
            package: KERNEL_SOURCE.into(),
            message: e.to_string(),
        })?;
    control_field(&show, "Version")
        .map(str::to_string)
        .ok_or_else(|| ImageError::Apt {
            package: KERNEL_SOURCE.into(),
            message: "no Version in apt-cache show".into(),
        })
}

/// Extracts [`HMM_SOURCES`] from the kernel source package below `cache`, once, and
/// returns the directory that holds them as in the kernel tree. The package (a 140 MB
/// `.deb` with the tree as one `.tar.xz`) stays in `cache/debs`; nothing else of it is
/// unpacked.
pub(crate) fn fetch_hmm_sources(version: &str, cache: &Path) -> Result<PathBuf> {
    let dir = cache.join(format!(
        "{KERNEL_SOURCE}_{}-hmm",
        version.replace(':', "%3a")
    ));
    if HMM_SOURCES.iter().all(|f| dir.join(f).is_file()) {
        return Ok(dir);
    }
    let deb = download_deb(KERNEL_SOURCE, version, &cache.join("debs"))?;
    let tmp = temp_dir(cache, "hmm-src")?;
    let top = KERNEL_SOURCE;
    let members: Vec<String> = HMM_SOURCES.iter().map(|f| format!("{top}/{f}")).collect();
    // dpkg-deb streams the package's data archive, tar takes the tree's .tar.xz out of
    // it, and the inner tar extracts only the members named, without their top directory.
    let script = format!(
        "set -o pipefail; dpkg-deb --fsys-tarfile \"$1\" \
         | tar -xO ./usr/src/{top}.tar.xz | xz -dc \
         | tar -x -C \"$2\" --strip-components=1 \"${{@:3}}\""
    );
    run(Command::new("bash")
        .arg("-c")
        .arg(script)
        .arg("extract")
        .arg(&deb)
        .arg(&tmp)
        .args(&members))?;
    if let Some(missing) = HMM_SOURCES.iter().find(|f| !tmp.join(f).is_file()) {
        return Err(ImageError::Apt {
            package: KERNEL_SOURCE.into(),
            message: format!("the source tree has no {missing}"),
        });
    }
    publish(&tmp, &dir, false)?;
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_release_parsing() {
        let r = |s: &str| Some(s.to_string());
        assert_eq!(
            kernel_from_depends("linux-image-6.1.0-56-cloud-amd64 (= 6.1.192-2)"),
            Some(("6.1.0-56-cloud-amd64".into(), r("6.1.192-2")))
        );
        assert_eq!(
            kernel_from_depends("linux-image-6.1.0-56-cloud-amd64"),
            Some(("6.1.0-56-cloud-amd64".into(), None))
        );
        // A 6.12 backport and the generic flavour do not match.
        assert_eq!(
            kernel_from_depends("linux-image-6.12.38+deb12-cloud-amd64 (= 6.12.38-1~bpo12+1)"),
            None
        );
        assert_eq!(kernel_from_depends("linux-image-6.1.0-56-amd64"), None);
        assert_eq!(
            kernel_from_depends(
                "linux-image-6.1.0-9-cloud-amd64 | linux-image-6.1.0-10-cloud-amd64 (>= 1)"
            ),
            Some(("6.1.0-10-cloud-amd64".into(), None))
        );
        assert_eq!(kernel_release_of("linux-image-6.1.0--cloud-amd64"), None);
        let show =
            "Package: linux-image-6.1.0-56-cloud-amd64\nVersion: 6.1.192-2\nSection: kernel\n";
        assert_eq!(control_field(show, "Version"), Some("6.1.192-2"));
        assert_eq!(control_field(show, "Depends"), None);
    }

    #[test]
    fn headers_depends_parsing() {
        let dep = "linux-headers-6.1.0-56-common (= 6.1.192-2), linux-kbuild-6.1 (>= 6.1.192-2), \
                   linux-compiler-gcc-12-x86";
        assert_eq!(
            headers_depends(dep),
            Some((
                "linux-headers-6.1.0-56-common".into(),
                "linux-kbuild-6.1".into()
            ))
        );
        assert_eq!(headers_depends("linux-kbuild-6.1"), None);
        assert_eq!(headers_depends(""), None);
    }

    #[test]
    fn symlinks_made_relative() {
        let dir = std::env::temp_dir().join(format!("vgpu-symlink-test-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("usr/src/common")).unwrap();
        fs::create_dir_all(dir.join("lib/modules/6.1")).unwrap();
        fs::write(dir.join("usr/src/common/Makefile"), "x").unwrap();
        let link = dir.join("lib/modules/6.1/source");
        std::os::unix::fs::symlink("/usr/src/common", &link).unwrap();
        let rel = dir.join("usr/src/scripts");
        std::os::unix::fs::symlink("common", &rel).unwrap();
        relativize_symlinks(&dir, &dir).unwrap();
        assert_eq!(
            fs::read_link(&link).unwrap(),
            PathBuf::from("../../../usr/src/common")
        );
        assert_eq!(fs::read_to_string(link.join("Makefile")).unwrap(), "x");
        assert_eq!(fs::read_link(&rel).unwrap(), PathBuf::from("common"));
        fs::remove_dir_all(&dir).unwrap();
    }
}
