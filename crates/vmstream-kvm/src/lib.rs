//! A KVM guest that migrates live with vmstream: the reference embedding
//! of the engine's API ([`vmstream_migrate::vm`]) for a Rust VMM on
//! rust-vmm's crates.
//!
//! [`KvmGuest`] is a real KVM virtual machine: one memory slot with
//! `KVM_MEM_LOG_DIRTY_PAGES` dirty tracking while a migration runs, an
//! in-kernel irqchip, vCPU threads running a small 32-bit guest program
//! (`guest/guest.S`, in [`program`]) that writes a counter and a pattern
//! over its memory on every LAPIC timer tick and prints `counter N` lines on
//! an emulated 16550 ([`serial`]). Every vCPU's registers, XSAVE, XCRs,
//! MSRs, LAPIC, events and MP state ([`state`]), the KVM clock, the PICs and
//! IOAPIC, and the serial port are versioned serde devices.
//!
//! `unsafe` code lives only in the private `sys` module.
#![deny(unsafe_code)]

mod digest;
mod guest;
pub mod program;
pub mod serial;
pub mod state;
#[allow(unsafe_code)]
mod sys;

pub use guest::{
    kvm_available, Config, Fill, KvmGuest, LineSink, KVM_DEVICE, MAX_MEMORY, MAX_VCPUS,
};
