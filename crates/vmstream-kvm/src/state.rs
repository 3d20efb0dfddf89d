//! vCPU and VM state as versioned serde device state.
//!
//! Registers a reader wants to see by name (`regs`, the MSRs) are named
//! fields; the kernel's own structures (`kvm_sregs`, the XSAVE area, the
//! LAPIC page, `kvm_vcpu_events`, the PIC and IOAPIC) travel as the opaque
//! bytes kvm-bindings' serde gives them, which stay loadable when a newer
//! kernel appends fields.
//!
//! Saving follows the order the Rust VMMs document: `mp_state` first (its
//! GET can change APIC state), `vcpu_events` last. Restoring: `mp_state`,
//! `regs` (before the events: `KVM_SET_REGS` drops pending exceptions),
//! `sregs` (before the LAPIC: the APIC base), XSAVE, XCRs, the LAPIC (before
//! the MSRs: the TSC deadline), the MSRs with `TSC_DEADLINE` after `TSC`, and
//! `vcpu_events` last. CPUID is set when the vCPU is created, before all.

use kvm_bindings::{
    kvm_irqchip, kvm_lapic_state, kvm_mp_state, kvm_msr_entry, kvm_regs, kvm_sregs,
    kvm_vcpu_events, kvm_xcrs, kvm_xsave, Msrs, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER,
    KVM_IRQCHIP_PIC_SLAVE,
};
use kvm_ioctls::{VcpuFd, VmFd};
use serde::{Deserialize, Serialize};
use vmstream::Value;

/// The device type of a vCPU's state.
pub const VCPU_TYPE: &str = "kvm-x86-vcpu";
/// The vCPU state version this build saves ([`VcpuState`]).
pub const VCPU_VERSION: u32 = 2;
/// The oldest vCPU state version this build loads ([`VcpuStateV1`]).
pub const VCPU_OLDEST: u32 = 1;

/// `IA32_TSC`.
pub const MSR_TSC: u32 = 0x10;
/// `IA32_TSC_DEADLINE`: restored after `IA32_TSC` and the LAPIC.
pub const MSR_TSC_DEADLINE: u32 = 0x6e0;
/// Most MSRs one `KVM_GET_MSRS` takes.
const MSR_CHUNK: usize = 200;

/// The general registers, by name.
#[allow(missing_docs)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Regs {
    pub rax: u64,
    pub rbx: u64,
    pub rcx: u64,
    pub rdx: u64,
    pub rsi: u64,
    pub rdi: u64,
    pub rsp: u64,
    pub rbp: u64,
    pub r8: u64,
    pub r9: u64,
    pub r10: u64,
    pub r11: u64,
    pub r12: u64,
    pub r13: u64,
    pub r14: u64,
    pub r15: u64,
    pub rip: u64,
    pub rflags: u64,
}

impl From<kvm_regs> for Regs {
    fn from(r: kvm_regs) -> Regs {
        Regs {
            rax: r.rax,
            rbx: r.rbx,
            rcx: r.rcx,
            rdx: r.rdx,
            rsi: r.rsi,
            rdi: r.rdi,
            rsp: r.rsp,
            rbp: r.rbp,
            r8: r.r8,
            r9: r.r9,
            r10: r.r10,
            r11: r.r11,
            r12: r.r12,
            r13: r.r13,
            r14: r.r14,
            r15: r.r15,
            rip: r.rip,
            rflags: r.rflags,
        }
    }
}

impl From<Regs> for kvm_regs {
    fn from(r: Regs) -> kvm_regs {
        kvm_regs {
            rax: r.rax,
            rbx: r.rbx,
            rcx: r.rcx,
            rdx: r.rdx,
            rsi: r.rsi,
            rdi: r.rdi,
            rsp: r.rsp,
            rbp: r.rbp,
            r8: r.r8,
            r9: r.r9,
            r10: r.r10,
            r11: r.r11,
            r12: r.r12,
            r13: r.r13,
            r14: r.r14,
            r15: r.r15,
            rip: r.rip,
            rflags: r.rflags,
        }
    }
}

/// One model-specific register.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Msr {
    /// Its index.
    pub index: u32,
    /// Its value.
    pub data: u64,
}

/// A vCPU's state, version 2.
#[derive(Debug, Serialize, Deserialize)]
pub struct VcpuState {
    /// `KVM_GET_MP_STATE` (runnable, halted, ...).
    pub mp_state: u32,
    /// General registers.
    pub regs: Regs,
    /// Segment, control and descriptor-table registers.
    pub sregs: kvm_sregs,
    /// The XSAVE area (x87, SSE, AVX, ...): the FPU state.
    pub xsave: kvm_xsave,
    /// Extended control registers (XCR0).
    pub xcrs: kvm_xcrs,
    /// The local APIC's register page (timer included).
    pub lapic: kvm_lapic_state,
    /// The MSRs of `KVM_GET_MSR_INDEX_LIST` this vCPU reads, in list order.
    pub msrs: Vec<Msr>,
    /// Pending exceptions, interrupts, NMIs, SMM and the interrupt shadow.
    pub vcpu_events: kvm_vcpu_events,
}

/// A vCPU's state, version 1: what the first release saved. It had no XCRs;
/// loading it gives XCR0 its reset value (x87 only), which is what a guest
/// that never enabled `CR4.OSXSAVE` has.
#[derive(Debug, Serialize, Deserialize)]
pub struct VcpuStateV1 {
    /// `KVM_GET_MP_STATE`.
    pub mp_state: u32,
    /// General registers.
    pub regs: Regs,
    /// Segment, control and descriptor-table registers.
    pub sregs: kvm_sregs,
    /// The XSAVE area.
    pub xsave: kvm_xsave,
    /// The local APIC's register page.
    pub lapic: kvm_lapic_state,
    /// MSRs.
    pub msrs: Vec<Msr>,
    /// Pending events.
    pub vcpu_events: kvm_vcpu_events,
}

impl From<VcpuStateV1> for VcpuState {
    /// The transform from version 1: XCR0 at its reset value.
    fn from(v: VcpuStateV1) -> VcpuState {
        let mut xcrs = kvm_xcrs {
            nr_xcrs: 1,
            ..Default::default()
        };
        xcrs.xcrs[0].xcr = 0;
        xcrs.xcrs[0].value = 1;
        VcpuState {
            mp_state: v.mp_state,
            regs: v.regs,
            sregs: v.sregs,
            xsave: v.xsave,
            xcrs,
            lapic: v.lapic,
            msrs: v.msrs,
            vcpu_events: v.vcpu_events,
        }
    }
}

impl From<&VcpuState> for VcpuStateV1 {
    /// What the first release would have saved (for tests of the transform).
    fn from(v: &VcpuState) -> VcpuStateV1 {
        VcpuStateV1 {
            mp_state: v.mp_state,
            regs: v.regs,
            sregs: v.sregs,
            xsave: kvm_xsave {
                region: v.xsave.region,
                ..Default::default()
            },
            lapic: v.lapic,
            msrs: v.msrs.clone(),
            vcpu_events: v.vcpu_events,
        }
    }
}

impl VcpuState {
    /// Saves `version` of the state.
    pub fn save(&self, version: u32) -> Result<Value, String> {
        match version {
            1 => vmstream::to_value(&VcpuStateV1::from(self)),
            _ => vmstream::to_value(self),
        }
        .map_err(|e| e.to_string())
    }

    /// Loads a state of `version`, transforming older versions.
    pub fn load(version: u32, v: &Value) -> Result<VcpuState, String> {
        match version {
            1 => vmstream::from_value::<VcpuStateV1>(v).map(VcpuState::from),
            VCPU_VERSION => vmstream::from_value::<VcpuState>(v),
            _ => return Err(format!("vCPU state version {version} is unknown")),
        }
        .map_err(|e| e.to_string())
    }
}

fn err(what: &str) -> impl Fn(kvm_ioctls::Error) -> String + '_ {
    move |e| format!("{what}: {e}")
}

/// The MSRs of `list` that `vcpu` reads (some listed ones are absent on a
/// given host or CPU model).
pub fn readable_msrs(vcpu: &VcpuFd, list: &[u32]) -> Vec<u32> {
    list.iter()
        .copied()
        .filter(|&index| {
            Msrs::from_entries(&[kvm_msr_entry {
                index,
                ..Default::default()
            }])
            .ok()
            .and_then(|mut m| vcpu.get_msrs(&mut m).ok())
                == Some(1)
        })
        .collect()
}

/// Reads a paused vCPU's state; `msrs` from [`readable_msrs`].
pub fn capture(vcpu: &VcpuFd, msrs: &[u32]) -> Result<VcpuState, String> {
    let mp_state = vcpu.get_mp_state().map_err(err("KVM_GET_MP_STATE"))?;
    let regs = vcpu.get_regs().map_err(err("KVM_GET_REGS"))?;
    let sregs = vcpu.get_sregs().map_err(err("KVM_GET_SREGS"))?;
    let xsave = vcpu.get_xsave().map_err(err("KVM_GET_XSAVE"))?;
    let xcrs = vcpu.get_xcrs().map_err(err("KVM_GET_XCRS"))?;
    let lapic = vcpu.get_lapic().map_err(err("KVM_GET_LAPIC"))?;
    let mut out = Vec::with_capacity(msrs.len());
    for chunk in msrs.chunks(MSR_CHUNK) {
        let entries: Vec<kvm_msr_entry> = chunk
            .iter()
            .map(|&index| kvm_msr_entry {
                index,
                ..Default::default()
            })
            .collect();
        let mut m = Msrs::from_entries(&entries).map_err(|e| format!("MSR list: {e:?}"))?;
        let n = vcpu.get_msrs(&mut m).map_err(err("KVM_GET_MSRS"))?;
        if n != chunk.len() {
            return Err(format!(
                "KVM_GET_MSRS read {n} of {} MSRs (stopped at {:#x})",
                chunk.len(),
                chunk[n]
            ));
        }
        out.extend(m.as_slice().iter().map(|e| Msr {
            index: e.index,
            data: e.data,
        }));
    }
    let vcpu_events = vcpu.get_vcpu_events().map_err(err("KVM_GET_VCPU_EVENTS"))?;
    Ok(VcpuState {
        mp_state: mp_state.mp_state,
        regs: regs.into(),
        sregs,
        xsave,
        xcrs,
        lapic,
        msrs: out,
        vcpu_events,
    })
}

/// Sets MSRs, skipping any the kernel refuses (as cloud-hypervisor does);
/// returns the indices skipped.
fn set_msrs(vcpu: &VcpuFd, msrs: &[Msr]) -> Result<Vec<u32>, String> {
    let mut skipped = Vec::new();
    let mut rest = msrs;
    while !rest.is_empty() {
        let chunk = &rest[..rest.len().min(MSR_CHUNK)];
        let entries: Vec<kvm_msr_entry> = chunk
            .iter()
            .map(|m| kvm_msr_entry {
                index: m.index,
                data: m.data,
                ..Default::default()
            })
            .collect();
        let m = Msrs::from_entries(&entries).map_err(|e| format!("MSR list: {e:?}"))?;
        let n = vcpu.set_msrs(&m).map_err(err("KVM_SET_MSRS"))?;
        if n < chunk.len() {
            skipped.push(chunk[n].index);
            rest = &rest[n + 1..];
        } else {
            rest = &rest[n..];
        }
    }
    Ok(skipped)
}

/// Writes a state into a vCPU that is not running, in the order above;
/// returns the MSRs the kernel refused.
pub fn restore(vcpu: &VcpuFd, s: &VcpuState) -> Result<Vec<u32>, String> {
    vcpu.set_mp_state(kvm_mp_state {
        mp_state: s.mp_state,
    })
    .map_err(err("KVM_SET_MP_STATE"))?;
    vcpu.set_regs(&s.regs.into()).map_err(err("KVM_SET_REGS"))?;
    vcpu.set_sregs(&s.sregs).map_err(err("KVM_SET_SREGS"))?;
    crate::sys::set_xsave(vcpu, &s.xsave)?;
    vcpu.set_xcrs(&s.xcrs).map_err(err("KVM_SET_XCRS"))?;
    vcpu.set_lapic(&s.lapic).map_err(err("KVM_SET_LAPIC"))?;
    let (late, early): (Vec<Msr>, Vec<Msr>) =
        s.msrs.iter().partition(|m| m.index == MSR_TSC_DEADLINE);
    let mut skipped = set_msrs(vcpu, &early)?;
    skipped.extend(set_msrs(vcpu, &late)?);
    vcpu.set_vcpu_events(&s.vcpu_events)
        .map_err(err("KVM_SET_VCPU_EVENTS"))?;
    Ok(skipped)
}

/// The VM's KVM clock (`KVM_GET_CLOCK`), saved once every vCPU is paused and
/// restored before any runs: device `clock` (`kvm-clock`, version 1).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClockState {
    /// Nanoseconds of guest time.
    pub clock: u64,
}

impl ClockState {
    /// Reads the VM's clock.
    pub fn capture(vm: &VmFd) -> Result<ClockState, String> {
        let c = vm.get_clock().map_err(err("KVM_GET_CLOCK"))?;
        Ok(ClockState { clock: c.clock })
    }

    /// Sets the VM's clock.
    pub fn restore(&self, vm: &VmFd) -> Result<(), String> {
        let c = kvm_bindings::kvm_clock_data {
            clock: self.clock,
            ..Default::default()
        };
        vm.set_clock(&c).map_err(err("KVM_SET_CLOCK"))
    }
}

/// The in-kernel interrupt controllers besides the LAPICs: both PICs and the
/// IOAPIC. Device `irqchip` (`kvm-x86-irqchip`, version 1).
#[derive(Debug, Serialize, Deserialize)]
pub struct IrqchipState {
    /// The master 8259.
    pub pic_master: kvm_irqchip,
    /// The slave 8259.
    pub pic_slave: kvm_irqchip,
    /// The IOAPIC.
    pub ioapic: kvm_irqchip,
}

impl IrqchipState {
    /// Reads the controllers.
    pub fn capture(vm: &VmFd) -> Result<IrqchipState, String> {
        let get = |chip_id| {
            let mut c = kvm_irqchip {
                chip_id,
                ..Default::default()
            };
            vm.get_irqchip(&mut c)
                .map(|()| c)
                .map_err(err("KVM_GET_IRQCHIP"))
        };
        Ok(IrqchipState {
            pic_master: get(KVM_IRQCHIP_PIC_MASTER)?,
            pic_slave: get(KVM_IRQCHIP_PIC_SLAVE)?,
            ioapic: get(KVM_IRQCHIP_IOAPIC)?,
        })
    }

    /// Writes them back.
    pub fn restore(&self, vm: &VmFd) -> Result<(), String> {
        for c in [&self.pic_master, &self.pic_slave, &self.ioapic] {
            vm.set_irqchip(c).map_err(err("KVM_SET_IRQCHIP"))?;
        }
        Ok(())
    }
}
