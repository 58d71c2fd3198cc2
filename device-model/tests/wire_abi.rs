//! The Rust wire structs (src/wire.rs) and the C header the guest driver compiles
//! (guest-driver/include/vgpu_wire.h) must agree on every size and offset. This test
//! compiles a small C program against the header, runs it, and compares its answers with
//! `size_of` / `offset_of!`.

use std::collections::BTreeMap;
use std::mem::{offset_of, size_of, size_of_val};
use std::path::PathBuf;
use std::process::Command;

use device_model::wire;

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

/// The C constants that must match the Rust ones.
fn c_constants() -> Vec<(&'static str, u64)> {
    vec![
        ("VIRTIO_ID_VGPU", u64::from(wire::VIRTIO_ID_VGPU)),
        ("VGPU_CMD_BIND", u64::from(wire::opcode::BIND)),
        ("VGPU_CMD_UNBIND", u64::from(wire::opcode::UNBIND)),
        ("VGPU_CMD_MAP", u64::from(wire::opcode::MAP)),
        ("VGPU_CMD_INVALIDATE", u64::from(wire::opcode::INVALIDATE)),
        ("VGPU_CMD_JOB", u64::from(wire::opcode::JOB)),
        ("VGPU_CMD_FAULT_FAIL", u64::from(wire::opcode::FAULT_FAIL)),
        ("VGPU_CMD_COUNTERS", u64::from(wire::opcode::COUNTERS)),
        ("VGPU_CMD_AUDIT", u64::from(wire::opcode::AUDIT)),
        ("VGPU_S_BUSY", u64::from(wire::status::BUSY)),
        ("VGPU_EV_COUNT", wire::event::COUNT as u64),
        ("VGPU_EV_EXCLUSIVE", u64::from(wire::event::EXCLUSIVE)),
        (
            "VGPU_INV_F_RELEASE_TRACKING",
            u64::from(wire::INV_F_RELEASE_TRACKING),
        ),
        ("VGPU_INV_F_DOWNGRADE", u64::from(wire::INV_F_DOWNGRADE)),
        ("VGPU_MAP_F_FAULT_REPLY", u64::from(wire::MAP_F_FAULT_REPLY)),
        ("VGPU_JOB_COPY", u64::from(wire::job_op::COPY)),
        ("VGPU_JOB_COPY_TO_DMA", u64::from(wire::job_op::COPY_TO_DMA)),
        (
            "VGPU_JOB_COPY_FROM_DMA",
            u64::from(wire::job_op::COPY_FROM_DMA),
        ),
        ("VGPU_MAP_WRITE", wire::MAP_WRITE),
        ("VGPU_MAP_GPA_MASK", wire::MAP_GPA_MASK),
        ("VGPU_FAULT_F_WRITE", u64::from(wire::FAULT_F_WRITE)),
        ("VGPU_COUNTERS_F_RESET", u64::from(wire::COUNTERS_F_RESET)),
        ("VGPU_PROT_WRITE", wire::PROT_WRITE),
    ]
}

#[test]
fn c_header_and_rust_structs_agree() {
    let include = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../guest-driver/include");
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("wire_abi");
    std::fs::create_dir_all(&dir).unwrap();
    let layouts = rust_layouts();
    let mut program = c_program(&layouts);
    let consts = c_constants();
    // Constants go in a second function so the output stays line oriented.
    program = program.replace(
        "\treturn 0;\n}\n",
        &consts
            .iter()
            .map(|(n, _)| format!("\tprintf(\"#{n} %llu\\n\", (unsigned long long)({n}));\n"))
            .collect::<String>(),
    ) + "\treturn 0;\n}\n";
    let src = dir.join("wire_abi.c");
    let exe = dir.join("wire_abi");
    std::fs::write(&src, program).unwrap();

    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let built = Command::new(&cc)
        .arg("-Wall")
        .arg("-Werror")
        .arg("-I")
        .arg(&include)
        .arg(&src)
        .arg("-o")
        .arg(&exe)
        .output();
    let built = match built {
        Ok(o) => o,
        Err(e) => {
            println!("SKIP: cannot run the C compiler {cc:?}: {e}");
            return;
        }
    };
    if !built.status.success() {
        let err = String::from_utf8_lossy(&built.stderr);
        if err.contains("linux/types.h") {
            println!("SKIP: kernel uapi headers (linux/types.h) are not installed: {err}");
            return;
        }
        panic!("compiling the C header failed:\n{err}");
    }
    let out = Command::new(&exe).output().unwrap();
    assert!(out.status.success());
    let c: BTreeMap<String, Vec<u64>> = String::from_utf8(out.stdout)
        .unwrap()
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
