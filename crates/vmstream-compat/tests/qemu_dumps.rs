//! `schema-diff` on `-dump-vmstate` output of the installed QEMU 7.2 and 10.0
//! (scripts/install-qemu.sh; skipped with a note where either is missing).

#![allow(clippy::unwrap_used)] // test helpers

use std::path::PathBuf;
use std::process::Command;

use vmstream_compat::diff::{diff, Break, Kind};
use vmstream_compat::Schema;

/// The QEMU binaries as scripts/qemu_tool.py finds them: `QEMU_72` / `QEMU_100`,
/// else `qemu-system-x86_64` on PATH and `target/qemu-10.0/qemu-system-x86_64`.
pub fn qemu(version: &str) -> Option<PathBuf> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let path = match version {
        "7.2" => std::env::var_os("QEMU_72").map_or("qemu-system-x86_64".into(), PathBuf::from),
        _ => std::env::var_os("QEMU_100").map_or(
            root.join("target/qemu-10.0/qemu-system-x86_64"),
            PathBuf::from,
        ),
    };
    let out = Command::new(&path).arg("--version").output().ok()?;
    String::from_utf8_lossy(&out.stdout)
        .contains(&format!("version {version}."))
        .then_some(path)
}

fn dump(version: &str, machine: &str, dir: &std::path::Path) -> Option<Vec<u8>> {
    let q = qemu(version)?;
    let file = dir.join(format!("{machine}-{version}.json"));
    let st = Command::new(q)
        .args([
            "-M",
            machine,
            "-nodefaults",
            "-display",
            "none",
            "-dump-vmstate",
        ])
        .arg(&file)
        .status()
        .ok()?;
    assert!(st.success(), "QEMU {version} -dump-vmstate failed");
    std::fs::read(&file).ok()
}

#[test]
fn qemu_7_2_against_10_0() {
    let dir = std::env::temp_dir().join(format!("vmstream-dumps-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for machine in ["pc-i440fx-7.2", "pc-q35-7.2"] {
        let (Some(a), Some(b)) = (dump("7.2", machine, &dir), dump("10.0", machine, &dir)) else {
            eprintln!("note: QEMU 7.2 or 10.0 missing (scripts/install-qemu.sh); skipped");
            return;
        };
        let old = Schema::from_dump(&a).unwrap();
        let new = Schema::from_dump(&b).unwrap();
        assert_eq!(old.machine.as_deref(), Some(machine));
        let r = diff(&old, &new);
        let text = r.to_string();
        let dev = |k: &str| {
            r.devices
                .iter()
                .find(|d| d.key == k)
                .unwrap_or_else(|| panic!("{k} in\n{text}"))
        };
        // the esp break: drq_state added unconditionally, renames before it
        let esp = dev("am53c974");
        assert_eq!(esp.vmsd.as_deref(), Some("pciespscsi"));
        let find = |path: &str, kind: Kind| {
            esp.changes
                .iter()
                .find(|c| c.path.join("/") == path && c.kind == kind)
                .unwrap_or_else(|| panic!("{path} {kind:?} in\n{text}"))
        };
        assert_eq!(find("esp/drq_state", Kind::FieldAdded).forward, Break::Yes);
        assert_eq!(find("esp/data_in_ready", Kind::Renamed).forward, Break::No);
        assert_eq!(find("esp/ti_cmd", Kind::Renamed).forward, Break::No);
        assert_eq!(
            find("esp/esp/pdma", Kind::SubsectionRemoved).forward,
            Break::IfSent
        );
        assert_eq!(find("esp", Kind::Version).forward, Break::No);
        // e1000e: padding replaced two arrays, checked on behind them
        let e = dev("e1000e");
        assert!(e
            .changes
            .iter()
            .any(|c| c.kind == Kind::Renamed && c.path == ["core.itr_intr_pending"]));
        assert!(e
            .changes
            .iter()
            .any(|c| c.path == ["core.timadj"] && c.kind == Kind::FieldAdded));
        // sb16: five fields became one padding field of their total size
        let sb = dev("sb16");
        assert_eq!(sb.changes.len(), 5, "{text}");
        assert!(sb
            .changes
            .iter()
            .all(|c| c.kind == Kind::Renamed && c.forward == Break::No));
        // hpet and acpi-ghes renames, devices gone and new
        assert!(dev("hpet").changes.iter().any(|c| c.kind == Kind::Renamed));
        assert!(dev("pci-piix3").changes[0].kind == Kind::DeviceRemoved);
        assert!(dev("igb").changes[0].kind == Kind::DeviceAdded);
        assert!(r.breaks());
        if std::env::var_os("VMSTREAM_PRINT_DIFF").is_some() {
            println!("{text}");
        }
        // the same dump against itself: nothing
        assert_eq!(diff(&old, &old).changes(), 0);
    }
    let _ = std::fs::remove_dir_all(&dir);
}
