//! What the builder reads from ELF64 files: whether an executable is static (no PT_INTERP)
//! and the contents of a named section (a module's `.modinfo`).

fn le16(d: &[u8], at: usize) -> Option<u64> {
    Some(u16::from_le_bytes(d.get(at..at + 2)?.try_into().ok()?).into())
}

fn le32(d: &[u8], at: usize) -> Option<u64> {
    Some(u32::from_le_bytes(d.get(at..at + 4)?.try_into().ok()?).into())
}

fn le64(d: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(d.get(at..at + 8)?.try_into().ok()?))
}

fn is_elf64le(d: &[u8]) -> bool {
    d.len() >= 64 && d[..4] == *b"\x7fELF" && d[4] == 2 && d[5] == 1
}

/// Whether an ELF64 file asks for a program interpreter (PT_INTERP); None if not ELF64.
pub(crate) fn has_interp(d: &[u8]) -> Option<bool> {
    const PT_INTERP: u64 = 3;
    if !is_elf64le(d) {
        return None;
    }
    let (phoff, phentsize, phnum) = (le64(d, 0x20)?, le16(d, 0x36)?, le16(d, 0x38)?);
    for i in 0..phnum {
        let at = usize::try_from(phoff + i * phentsize).ok()?;
        if le32(d, at)? == PT_INTERP {
            return Some(true);
        }
    }
    Some(false)
}

/// The contents of a named section of an ELF64 file.
pub(crate) fn section<'a>(d: &'a [u8], name: &str) -> Option<&'a [u8]> {
    if !is_elf64le(d) {
        return None;
    }
    let (shoff, shentsize, shnum, shstrndx) = (
        le64(d, 0x28)?,
        le16(d, 0x3a)?,
        le16(d, 0x3c)?,
        le16(d, 0x3e)?,
    );
    let header = |i: u64| usize::try_from(shoff + i * shentsize).ok();
    let section = |i: u64| -> Option<&'a [u8]> {
        let h = header(i)?;
        let (off, size) = (le64(d, h + 24)?, le64(d, h + 32)?);
        d.get(usize::try_from(off).ok()?..usize::try_from(off + size).ok()?)
    };
    let strtab = section(shstrndx)?;
    (0..shnum).find_map(|i| {
        let name_off = usize::try_from(le32(d, header(i)?)?).ok()?;
        let s = strtab.get(name_off..)?;
        let end = s.iter().position(|&b| b == 0)?;
        (&s[..end] == name.as_bytes()).then(|| section(i)).flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interp_checks() {
        let me = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        assert!(has_interp(&me).is_some());
        assert_eq!(has_interp(b"#!/bin/sh\n"), None);
    }
}
