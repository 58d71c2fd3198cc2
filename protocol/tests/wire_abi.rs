//! The Rust wire structs and constants (src/wire.rs) and the C header the guest driver
//! compiles (guest-driver/include/vgpu_wire.h) must agree in full: the same structs with the
//! same fields at the same offsets, and the same constants with the same values, none
//! missing on either side. The names are read from the header's text and from the Rust
//! source and serde; a small C program compiled against the header reports sizes, offsets
//! and values, compared with `size_of` / `offset_of!`.

use std::collections::{BTreeMap, BTreeSet};
use std::mem::{offset_of, size_of};
use std::path::PathBuf;

use serde::de::DeserializeOwned;
use serde::Serialize;
use vm_memory::ByteValued;

use protocol::wire;

/// One struct: its C name, its size, and (field, offset, size) per field.
type Layout = (String, usize, Vec<(String, usize, usize)>);

/// The Rust layout of a wire struct, found without naming a field: each field serde knows
/// (the JSON key) is set to a marker and found in the struct's bytes; its size is 8 if it
/// takes a value above `u32::MAX`, else 4. The bytes no field covers are `reserved`.
/// So a field added to a struct in `src/wire.rs` is checked with no edit here.
fn layout_of<T>(c_name: &str) -> Layout
where
    T: Serialize + DeserializeOwned + ByteValued + Default,
{
    let base = T::default();
    let size = size_of::<T>();
    let mut covered = vec![false; size];
    let mut fields = Vec::new();
    for key in serde_fields::<T>() {
        let set = |v: u64| serde_json::from_value::<T>(serde_json::json!({ key.clone(): v }));
        let marked = set(0x5a5a_5a5a).expect("every wire field takes a u32 value");
        let offset = (0..size)
            .find(|&i| base.as_slice()[i] != marked.as_slice()[i])
            .expect("the marker lands in the struct");
        let width = if set(1 << 32).is_ok() { 8 } else { 4 };
        covered[offset..offset + width]
            .iter_mut()
            .for_each(|c| *c = true);
        fields.push((key, offset, width));
    }
    if let Some(start) = covered.iter().position(|c| !c) {
        let len = covered[start..].iter().take_while(|c| !**c).count();
        assert!(
            covered[start + len..].iter().all(|c| *c),
            "{c_name}: the bytes no field covers are not one reserved run"
        );
        fields.push(("reserved".to_string(), start, len));
    }
    fields.sort_by_key(|f| f.1);
    (c_name.to_string(), size, fields)
}

fn rust_layouts() -> Vec<Layout> {
    vec![
        layout_of::<wire::Config>("vgpu_config"),
        layout_of::<wire::Cmd>("vgpu_cmd"),
        layout_of::<wire::Resp>("vgpu_resp"),
        layout_of::<wire::MapEntry>("vgpu_map_entry"),
        layout_of::<wire::Fault>("vgpu_fault"),
        layout_of::<wire::EventCounters>("vgpu_event_counters"),
        layout_of::<wire::GlobalCounters>("vgpu_global_counters"),
        // Two nested tables: serde shows them keyed by event name, so they are named here.
        (
            "vgpu_counters".to_string(),
            size_of::<wire::Counters>(),
            vec![
                (
                    "events".to_string(),
                    offset_of!(wire::Counters, events),
                    size_of::<[wire::EventCounters; wire::event::COUNT]>(),
                ),
                (
                    "global".to_string(),
                    offset_of!(wire::Counters, global),
                    size_of::<wire::GlobalCounters>(),
                ),
            ],
        ),
    ]
}

/// The C program: one line per struct size and per field, "name size" or
/// "name.field offset size".
fn c_program(layouts: &[Layout]) -> String {
    let mut c = String::from(
        "#include <stddef.h>\n#include <stdio.h>\n#include \"vgpu_wire.h\"\nint main(void)\n{\n",
    );
    for (name, _, fields) in layouts {
        c += &format!("\tprintf(\"{name} %zu\\n\", sizeof(struct {name}));\n");
        for (f, _, _) in fields {
            c += &format!(
                "\tprintf(\"{name}.{f} %zu %zu\\n\", offsetof(struct {name}, {f}), \
                 sizeof(((struct {name} *)0)->{f}));\n"
            );
        }
    }
    c += "\treturn 0;\n}\n";
    c
}

#[test]
fn c_header_and_rust_structs_agree() {
    let include = include_dir();
    let layouts = rust_layouts();
    let mut program = c_program(&layouts);
    let consts: Vec<(&str, u64)> = wire::C_CONSTANTS.iter().map(|(c, _, v)| (*c, *v)).collect();
    // Constants go in a second function so the output stays line oriented.
    program = program.replace(
        "\treturn 0;\n}\n",
        &consts
            .iter()
            .map(|(n, _)| format!("\tprintf(\"#{n} %llu\\n\", (unsigned long long)({n}));\n"))
            .collect::<String>(),
    ) + "\treturn 0;\n}\n";
    let Some(out) = protocol::testing::run_c_program("wire_abi", &program, &include) else {
        return;
    };
    let c: BTreeMap<String, Vec<u64>> = out
        .lines()
        .map(|l| {
            let mut parts = l.split_whitespace();
            let name = parts.next().unwrap().to_string();
            (name, parts.map(|n| n.parse().unwrap()).collect())
        })
        .collect();

    let mut wrong = Vec::new();
    for (name, size, fields) in &layouts {
        if c[name] != [*size as u64] {
            wrong.push(format!("sizeof {name}: C {:?}, Rust {size}", c[name]));
        }
        for (f, off, fsize) in fields {
            let key = format!("{name}.{f}");
            if c[&key] != [*off as u64, *fsize as u64] {
                wrong.push(format!(
                    "{key}: C (offset, size) {:?}, Rust ({off}, {fsize})",
                    c[&key]
                ));
            }
        }
    }
    for (n, v) in &consts {
        if c[&format!("#{n}")] != [*v] {
            wrong.push(format!("{n}: C {:?}, Rust {v}", c[&format!("#{n}")]));
        }
    }
    assert!(
        wrong.is_empty(),
        "the wire ABI differs:\n{}",
        wrong.join("\n")
    );
    println!(
        "checked {} structs and {} constants against vgpu_wire.h",
        layouts.len(),
        consts.len()
    );
}

fn include_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../guest-driver/include")
}

fn header() -> String {
    std::fs::read_to_string(include_dir().join("vgpu_wire.h")).expect("vgpu_wire.h")
}

/// The constants the header defines: `#define` names and enum members, the include guard
/// left out.
fn header_constants(h: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut in_enum = false;
    for line in h.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("#define ") {
            let name = rest.split_whitespace().next().unwrap_or("");
            if name != "VGPU_WIRE_H" {
                names.insert(name.to_string());
            }
        } else if line.starts_with("enum ") && line.ends_with('{') {
            in_enum = true;
        } else if in_enum && line.starts_with('}') {
            in_enum = false;
        } else if in_enum {
            if let Some((name, _)) = line.split_once('=') {
                names.insert(name.trim().to_string());
            }
        }
    }
    names
}

/// The fields of each struct in the header, in order.
fn header_structs(h: &str) -> BTreeMap<String, Vec<String>> {
    let mut structs = BTreeMap::new();
    let mut current: Option<(String, Vec<String>)> = None;
    for line in h.lines().map(str::trim) {
        if let Some(name) = line
            .strip_prefix("struct ")
            .and_then(|r| r.strip_suffix(" {"))
        {
            current = Some((name.to_string(), Vec::new()));
        } else if line.starts_with("};") {
            if let Some((name, fields)) = current.take() {
                structs.insert(name, fields);
            }
        } else if let Some((_, fields)) = current.as_mut() {
            // `__u64 name;`, `__u32 reserved[3];`, `struct vgpu_x events[N];`
            if let Some(decl) = line.strip_suffix(';') {
                let last = decl.split_whitespace().last().unwrap_or("");
                fields.push(last.split('[').next().unwrap_or("").to_string());
            }
        }
    }
    structs
}

/// Every `pub const` of src/wire.rs by Rust path (`opcode::BIND`), read from the source.
fn rust_constants() -> BTreeSet<String> {
    let src =
        std::fs::read_to_string(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src/wire.rs"))
            .expect("src/wire.rs");
    let mut names = BTreeSet::new();
    let mut module: Option<String> = None;
    for line in src.lines() {
        if let Some(m) = line
            .strip_prefix("pub mod ")
            .and_then(|r| r.strip_suffix(" {"))
        {
            module = Some(m.to_string());
        } else if line == "}" {
            module = None;
        } else if let Some(rest) = line.trim().strip_prefix("pub const ") {
            let (name, ty) = rest.split_once(':').unwrap_or((rest, ""));
            let name = name.trim();
            // Only numbers have a C counterpart (event::NAMES, the JSON names, has none).
            let ty = ty.split('=').next().unwrap_or("").trim();
            if !matches!(ty, "u16" | "u32" | "u64" | "usize") {
                continue;
            }
            names.insert(match &module {
                Some(m) => format!("{m}::{name}"),
                None => name.to_string(),
            });
        }
    }
    names
}

#[test]
fn every_constant_is_named_on_both_sides() {
    let c: BTreeSet<String> = header_constants(&header());
    let table: BTreeSet<String> = wire::C_CONSTANTS
        .iter()
        .map(|(c, _, _)| c.to_string())
        .collect();
    assert_eq!(
        c.difference(&table).collect::<Vec<_>>(),
        Vec::<&String>::new(),
        "defined in vgpu_wire.h, missing from wire::C_CONSTANTS"
    );
    assert_eq!(
        table.difference(&c).collect::<Vec<_>>(),
        Vec::<&String>::new(),
        "in wire::C_CONSTANTS, not defined in vgpu_wire.h"
    );
    let rust = rust_constants();
    let paths: BTreeSet<String> = wire::C_CONSTANTS
        .iter()
        .map(|(_, p, _)| p.replace(" :: ", "::"))
        .collect();
    assert_eq!(
        rust, paths,
        "every constant of src/wire.rs needs its C name in C_CONSTANTS"
    );
}

/// The serde names of a wire struct's fields (reserved words are skipped by serde).
fn serde_fields<T: Serialize + Default>() -> Vec<String> {
    let v = serde_json::to_value(T::default()).unwrap();
    v.as_object().unwrap().keys().cloned().collect()
}

#[test]
fn every_struct_has_the_same_fields_in_the_same_order_on_both_sides() {
    let c = header_structs(&header());
    let rust: BTreeMap<String, Vec<String>> = rust_layouts()
        .into_iter()
        .map(|(name, _, fields)| (name, fields.into_iter().map(|f| f.0).collect()))
        .collect();
    assert_eq!(
        c, rust,
        "structs and fields (in order): vgpu_wire.h vs src/wire.rs"
    );
}

#[test]
fn the_layout_probe_finds_what_offset_of_says() {
    let (_, size, fields) = layout_of::<wire::Resp>("vgpu_resp");
    assert_eq!(size, 24);
    let want = [
        ("status", offset_of!(wire::Resp, status), 4),
        ("reserved", offset_of!(wire::Resp, reserved), 4),
        ("value0", offset_of!(wire::Resp, value0), 8),
        ("value1", offset_of!(wire::Resp, value1), 8),
    ];
    let got: Vec<(&str, usize, usize)> = fields
        .iter()
        .map(|(n, o, s)| (n.as_str(), *o, *s))
        .collect();
    assert_eq!(got, want);
    let (_, _, fields) = layout_of::<wire::GlobalCounters>("vgpu_global_counters");
    let fault_retries = fields.iter().find(|f| f.0 == "fault_retries").unwrap();
    assert_eq!(
        fault_retries.1,
        offset_of!(wire::GlobalCounters, fault_retries)
    );
    let reserved = fields.last().unwrap();
    assert_eq!((reserved.0.as_str(), reserved.2), ("reserved", 18 * 8));
}
