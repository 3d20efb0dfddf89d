//! The guest architecture of a QEMU stream, and the target page size that
//! goes with it.
//!
//! QEMU's stream does not name its architecture. What says it, in the order
//! a reader learns it:
//!
//! 1. the machine type of the configuration section (`pseries-7.2` is ppc64,
//!    `s390-ccw-virtio-7.2` s390x, `pc-q35-7.2` x86-64), which leaves some
//!    boards shared by several targets (`virt-7.2` is arm, aarch64 or m68k;
//!    `virt` riscv32, riscv64, loongarch64, or1k or xtensa);
//! 2. the device description (vmdesc), when it is known before the first
//!    section (a file's own trailer read ahead, or a twin's): the vCPU's
//!    fields tell the families apart, and the width of its general registers
//!    the 32- and 64-bit targets;
//! 3. the vCPU's state itself, once its section is read: an Arm vCPU whose
//!    coprocessor register list holds AArch64 system registers is aarch64.
//!
//! Where none decides, the caller says (`--arch`), or it stays unknown.

use vmstream::{Arch, Value};

use crate::vmdesc::Vmdesc;

/// The architectures a machine type can belong to (empty: not known).
pub(crate) fn candidates(machine: &str) -> &'static [Arch] {
    use Arch::*;
    let base = strip_version(machine);
    match base {
        "pc" | "q35" | "isapc" | "microvm" | "xenfv" | "xenpv" | "x-remote" | "pc-q35"
        | "pc-i440fx" => &[X86_64],
        "pseries" | "powernv" | "powernv8" | "powernv9" | "powernv10" => &[Ppc64],
        "mac99" | "g3beige" | "ppce500" | "40p" | "bamboo" | "sam460ex" | "ref405ep"
        | "virtex-ml507" | "mpc8544ds" | "pegasos2" => &[Ppc, Ppc64],
        "s390-ccw-virtio" => &[S390x],
        "virt" if machine != base => &[Aarch64, Arm, M68k],
        "virt" => &[Riscv64, Riscv32, Loongarch64, Or1k, Xtensa],
        "sbsa-ref" | "xlnx-zcu102" | "xlnx-versal-virt" | "raspi3b" | "raspi3ap" | "raspi4b" => {
            &[Aarch64]
        }
        "vexpress-a9" | "vexpress-a15" | "versatilepb" | "versatileab" | "raspi2b" | "raspi0"
        | "raspi1ap" | "realview-pbx-a9" | "sabrelite" | "mcimx6ul-evk" | "mcimx7d-sabre" => {
            &[Arm, Aarch64]
        }
        "spike" | "sifive_u" | "sifive_e" | "microchip-icicle-kit" | "shakti_c" | "opentitan" => {
            &[Riscv64, Riscv32]
        }
        "malta" | "mipssim" | "boston" | "pica61" | "magnum" => &[Mips, Mips64],
        "fuloong2e" | "loongson3-virt" => &[Mips64],
        "sun4u" | "sun4v" | "niagara" => &[Sparc64],
        "leon3_generic" | "SS-5" | "SS-10" | "SS-20" | "SS-600MP" | "LX" | "Voyager"
        | "SPARCClassic" | "SPARCbook" | "SS-4" => &[Sparc],
        "clipper" => &[Alpha],
        "hppa" | "B160L" | "C3700" => &[Hppa],
        "q800" | "an5206" | "mcf5208evb" | "next-cube" => &[M68k],
        "petalogix-s3adsp1800" | "petalogix-ml605" | "xlnx-zynqmp-pmu" => &[Microblaze],
        "or1k-sim" => &[Or1k],
        "r2d" => &[Sh4],
        "sim" | "lx60" | "lx200" | "ml605" | "kc705" | "lx60-nommu" | "lx200-nommu"
        | "ml605-nommu" | "kc705-nommu" => &[Xtensa],
        "tricore_testboard" | "KIT_AURIX_TC277_TRB" => &[Tricore],
        "gdbsim-r5f562n7" | "gdbsim-r5f562n8" => &[Rx],
        "axis-dev88" => &[Cris],
        "10m50-ghrd" | "nios2-generic-nommu" => &[Nios2],
        _ if base.starts_with("arduino-") => &[Avr],
        _ => &[],
    }
}

/// `pc-q35-7.2` → `pc-q35`, `virt-7.2` → `virt`, `pseries` → `pseries`.
fn strip_version(machine: &str) -> &str {
    match machine.rsplit_once('-') {
        Some((base, v))
            if !base.is_empty()
                && v.split('.')
                    .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit())) =>
        {
            base
        }
        _ => machine,
    }
}

/// Narrows `cands` with the device description: the vCPU section `cpu` and
/// the devices around it. `None` when it does not decide.
pub(crate) fn from_description(cands: &[Arch], desc: &Vmdesc) -> Option<Arch> {
    use Arch::*;
    let cpu = desc
        .devices
        .iter()
        .find(|d| d.name == "cpu")
        .and_then(|d| d.vmsd.as_ref())?;
    let field = |name: &str| cpu.fields.iter().find(|f| f.name == name);
    let sub = |name: &str| cpu.subsections.iter().any(|s| s.vmsd_name == name);
    let width = |name: &str| field(name).map(|f| f.size);
    let family: &[Arch] = if field("env.eip").is_some() {
        // x86: qemu-system-x86_64 saves 64-bit registers, qemu-system-i386 32-bit ones.
        match width("env.regs") {
            Some(4) => &[I386],
            _ => &[X86_64],
        }
    } else if field("env.xregs").is_some() {
        // Arm: AArch64-only state decides; ThumbEE exists only before ARMv8.
        if ["cpu/sve", "cpu/za", "cpu/pauth", "cpu/mte"]
            .iter()
            .any(|s| sub(s))
        {
            &[Aarch64]
        } else if sub("cpu/thumb2ee") {
            &[Arm]
        } else {
            &[Aarch64, Arm]
        }
    } else if field("env.priv_ver").is_some() || field("env.mstatus").is_some() {
        match width("env.gpr") {
            Some(8) => &[Riscv64],
            Some(4) => &[Riscv32],
            _ => &[Riscv64, Riscv32],
        }
    } else if desc.devices.iter().any(|d| d.name.starts_with("spapr")) {
        &[Ppc64]
    } else if field("env.dregs").is_some() {
        &[M68k]
    } else if desc.devices.iter().any(|d| d.name.contains("s390")) {
        &[S390x]
    } else if field("env.gpr").is_some() && cands.iter().any(|a| matches!(a, Ppc | Ppc64)) {
        match width("env.gpr") {
            Some(8) => &[Ppc64],
            Some(4) => &[Ppc],
            _ => &[Ppc, Ppc64],
        }
    } else {
        &[]
    };
    let both: Vec<Arch> = family
        .iter()
        .copied()
        .filter(|a| {
            cands.is_empty() || cands.contains(a) || (*a == I386 && cands.contains(&X86_64))
        })
        .collect();
    match both[..] {
        [one] => Some(one),
        _ => None,
    }
}

/// The architecture the vCPU state `value` of section `cpu` shows, where
/// it decides between `cands`: an Arm vCPU lists its coprocessor registers by
/// KVM-style ids, whose top byte is `0x60` for AArch64 system registers and
/// `0x40` for AArch32 ones, so an AArch64-capable vCPU has `0x60` ids.
pub(crate) fn from_cpu(cands: &[Arch], value: &Value) -> Option<Arch> {
    if !(cands.contains(&Arch::Aarch64) && cands.contains(&Arch::Arm)) {
        return None;
    }
    let Value::Struct(fields) = value else {
        return None;
    };
    let (_, Value::Seq(ids)) = fields.iter().find(|(n, _)| n == "cpreg_vmstate_indexes")? else {
        return None;
    };
    let mut arm = false;
    for id in ids {
        match id {
            Value::U64(v) if v >> 56 == 0x60 => return Some(Arch::Aarch64),
            Value::U64(v) if v >> 56 == 0x40 => arm = true,
            _ => {}
        }
    }
    arm.then_some(Arch::Arm)
}

/// The target page size of an architecture when the configuration section
/// does not give one (`TARGET_PAGE_BITS`, or its minimum where the target
/// picks it at run time and then says it in the configuration section).
pub fn default_page_size(arch: Arch) -> Option<u64> {
    use Arch::*;
    let bits = match arch {
        Arm => 10,
        Alpha | Cris | Or1k | Sparc64 => 13,
        Loongarch64 | Tricore => 14,
        X86_64 | I386 | Aarch64 | Riscv64 | Riscv32 | S390x | Ppc64 | Ppc | Mips | Mips64
        | Sparc | Hppa | M68k | Microblaze | Sh4 | Xtensa | Rx | Nios2 => 12,
        _ => return None,
    };
    Some(1 << bits)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn machines() {
        assert_eq!(candidates("pc-q35-7.2"), &[Arch::X86_64]);
        assert_eq!(candidates("pc-i440fx-10.0"), &[Arch::X86_64]);
        assert_eq!(candidates("microvm"), &[Arch::X86_64]);
        assert_eq!(candidates("pseries-7.2"), &[Arch::Ppc64]);
        assert_eq!(candidates("s390-ccw-virtio-10.0"), &[Arch::S390x]);
        assert_eq!(
            candidates("virt-7.2"),
            &[Arch::Aarch64, Arch::Arm, Arch::M68k]
        );
        assert_eq!(candidates("virt")[0], Arch::Riscv64);
        assert!(candidates("no-such-board").is_empty());
        assert!(candidates("").is_empty());
        assert_eq!(strip_version("a-1.2-"), "a-1.2-");
        assert_eq!(strip_version("-1.2"), "-1.2");
    }

    #[test]
    fn cpu_values() {
        let cands = [Arch::Aarch64, Arch::Arm];
        let cpu = |ids: Vec<u64>| {
            Value::Struct(vec![(
                "cpreg_vmstate_indexes".into(),
                Value::Seq(ids.into_iter().map(Value::U64).collect()),
            )])
        };
        assert_eq!(
            from_cpu(
                &cands,
                &cpu(vec![0x4020_0000_0000_0001, 0x6030_0000_0013_c000])
            ),
            Some(Arch::Aarch64)
        );
        assert_eq!(
            from_cpu(&cands, &cpu(vec![0x4020_0000_0000_0001])),
            Some(Arch::Arm)
        );
        assert_eq!(from_cpu(&cands, &cpu(vec![])), None);
        assert_eq!(
            from_cpu(&[Arch::Riscv64], &cpu(vec![0x6030_0000_0013_c000])),
            None
        );
        assert_eq!(from_cpu(&cands, &Value::Bytes(vec![1])), None);
    }
}
