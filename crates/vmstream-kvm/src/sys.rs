//! The crate's only `unsafe` code: registering guest memory with KVM, the
//! one vCPU ioctl kvm-ioctls leaves unsafe, and kicking a vCPU thread out
//! of `KVM_RUN` with a signal. Each is a small safe function.

use std::os::unix::thread::JoinHandleExt;
use std::thread::JoinHandle;

use kvm_bindings::{kvm_userspace_memory_region, kvm_xsave, KVM_MEM_LOG_DIRTY_PAGES};
use kvm_ioctls::{VcpuFd, VmFd};
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

/// Registers all of `mem` (one region at guest address 0) as KVM memory
/// slot 0, with dirty logging on or off. Called again with the other flag,
/// it changes only the flag.
///
/// The caller keeps `mem` alive for as long as `vm` or any of its vCPU fds
/// exists (`KvmGuest` holds both and its vCPU threads hold `mem`).
pub(crate) fn set_slot(vm: &VmFd, mem: &GuestMemoryMmap, log_dirty: bool) -> Result<(), String> {
    let size = mem.last_addr().0 + 1;
    let host = mem
        .get_host_address(GuestAddress(0))
        .map_err(|e| format!("guest memory: {e}"))?;
    let region = kvm_userspace_memory_region {
        slot: 0,
        flags: if log_dirty {
            KVM_MEM_LOG_DIRTY_PAGES
        } else {
            0
        },
        guest_phys_addr: 0,
        memory_size: size,
        userspace_addr: host as u64,
    };
    // SAFETY: `host..host + size` is one live anonymous mapping owned by
    // `mem` (a single region starting at guest address 0, checked by the
    // caller's construction), which outlives the VM as documented above; KVM
    // only reads and writes guest memory through it.
    unsafe { vm.set_user_memory_region(region) }
        .map_err(|e| format!("KVM_SET_USER_MEMORY_REGION: {e}"))
}

/// `KVM_SET_XSAVE` with the legacy 4 KiB area `KVM_GET_XSAVE` returned.
pub(crate) fn set_xsave(vcpu: &VcpuFd, xsave: &kvm_xsave) -> Result<(), String> {
    // SAFETY: `kvm_xsave` without its flexible array is exactly the 4 KiB
    // area KVM_SET_XSAVE reads; the area came from KVM_GET_XSAVE, never
    // KVM_GET_XSAVE2, so the kernel reads nothing past it.
    unsafe { vcpu.set_xsave(xsave) }.map_err(|e| format!("KVM_SET_XSAVE: {e}"))
}

extern "C" fn on_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

/// The signal that kicks a vCPU thread out of `KVM_RUN` (with `EINTR`).
pub(crate) fn kick_signal() -> libc::c_int {
    vmm_sys_util::signal::SIGRTMIN()
}

/// Installs the (empty) handler of [`kick_signal`], once per process.
pub(crate) fn install_kick_handler() -> Result<(), String> {
    static ONCE: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    ONCE.get_or_init(|| {
        vmm_sys_util::signal::register_signal_handler(kick_signal(), on_kick)
            .map_err(|e| format!("installing the vCPU kick signal handler: {e}"))
    })
    .clone()
}

/// Sends [`kick_signal`] to `thread`.
pub(crate) fn kick<T>(thread: &JoinHandle<T>) {
    // SAFETY: the pthread_t belongs to a thread whose JoinHandle we borrow, so
    // it has not been joined or detached and the id is valid; the signal has
    // a handler (install_kick_handler runs before any vCPU thread starts).
    unsafe {
        libc::pthread_kill(thread.as_pthread_t(), kick_signal());
    }
}
