//! The Rust wire structs and constants (src/wire.rs) and the C header the guest driver
//! compiles (guest-driver/include/vgpu_wire.h) must agree in full: the same structs with the
//! same fields at the same offsets, and the same constants with the same values, none
//! missing on either side. The names are read from the header's text and from the Rust
//! source and serde; a small C program compiled against the header reports sizes, offsets
//! and values, compared with `size_of` / `offset_of!`.

use std::collections::{BTreeMap, BTreeSet};
use std::mem::{offset_of, size_of, size_of_val};
use std::path::PathBuf;

use protocol::wire;

/// One struct: its C name, its size, and (field, offset, size) per field.
type Layout = (&'static str, usize, Vec<(&'static str, usize, usize)>);

macro_rules! layout {
    ($t:ty, $c:literal, [$($f:ident),* $(,)?]) => {{
        let v = <$t>::default();
        (
            $c,
            size_of::<$t>(),
            vec![$((stringify!($f), offset_of!($t, $f), size_of_val(&v.$f))),*],
        )
    }};
}

fn rust_layouts() -> Vec<Layout> {
    vec![
        layout!(
            wire::Config,
            "vgpu_config",
            [
                max_pasids,
                max_map_pages,
                atc_entries,
                atc_ways,
                fault_ahead,
                reserved
            ]
        ),
        layout!(
            wire::Cmd,
            "vgpu_cmd",
            [opcode, pasid, start, length, arg0, arg1, event, flags]
        ),
        layout!(wire::Resp, "vgpu_resp", [status, reserved, value0, value1]),
        layout!(wire::MapEntry, "vgpu_map_entry", [gpa_flags]),
        layout!(
            wire::Fault,
            "vgpu_fault",
            [fault_id, job_id, address, pasid, flags]
        ),
        layout!(
            wire::EventCounters,
            "vgpu_event_counters",
            [
                notifications,
                ats_invalidations,
                pasid_invalidations,
                pages_invalidated,
                atc_entries_dropped,
                useless_invalidations,
                refaults,
                downgrades,
                leaf_splits,
                reserved,
            ]
        ),
        layout!(
            wire::GlobalCounters,
            "vgpu_global_counters",
            [
                device_faults,
                jobs_completed,
                jobs_failed,
                maps,
                pages_mapped,
                command_errors,
                atc_hits,
                atc_misses,
                page_walks,
                violations,
                bytes_read,
                bytes_written,
                permission_faults,
                fault_retries,
                reserved,
            ]
        ),
        layout!(wire::Counters, "vgpu_counters", [events, global]),
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
        if c[*name] != [*size as u64] {
            wrong.push(format!("sizeof {name}: C {:?}, Rust {size}", c[*name]));
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
            let name = rest.split(':').next().unwrap_or("").trim();
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
    let mut rust = rust_constants();
    rust.remove("C_CONSTANTS");
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
fn serde_fields<T: serde::Serialize + Default>() -> Vec<String> {
    let v = serde_json::to_value(T::default()).unwrap();
    v.as_object().unwrap().keys().cloned().collect()
}

#[test]
fn every_struct_has_the_same_fields_on_both_sides() {
    let c = header_structs(&header());
    let layouts = rust_layouts();
    let rust: BTreeMap<String, Vec<String>> = layouts
        .iter()
        .map(|(name, _, fields)| {
            (
                name.to_string(),
                fields.iter().map(|f| f.0.to_string()).collect(),
            )
        })
        .collect();
    assert_eq!(
        c, rust,
        "structs and fields (in order): vgpu_wire.h vs the layouts here"
    );
    // The layout lists above are checked against the Rust structs themselves.
    let serde: BTreeMap<&str, Vec<String>> = BTreeMap::from([
        ("vgpu_config", serde_fields::<wire::Config>()),
        ("vgpu_cmd", serde_fields::<wire::Cmd>()),
        ("vgpu_resp", serde_fields::<wire::Resp>()),
        ("vgpu_map_entry", serde_fields::<wire::MapEntry>()),
        ("vgpu_fault", serde_fields::<wire::Fault>()),
        ("vgpu_event_counters", serde_fields::<wire::EventCounters>()),
        (
            "vgpu_global_counters",
            serde_fields::<wire::GlobalCounters>(),
        ),
        ("vgpu_counters", serde_fields::<wire::Counters>()),
    ]);
    for (name, fields) in &rust {
        let mut want: BTreeSet<String> = fields
            .iter()
            .filter(|f| *f != "reserved")
            .cloned()
            .collect();
        let got: BTreeSet<String> = serde[name.as_str()].iter().cloned().collect();
        assert_eq!(
            got,
            std::mem::take(&mut want),
            "{name}: Rust fields vs the layout list"
        );
    }
}
