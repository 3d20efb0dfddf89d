//! The KVM guest: a VM with one memory slot, an in-kernel irqchip, vCPU
//! threads running the guest program, a serial port, and the engine's
//! embedding API over all of it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use kvm_bindings::{
    kvm_mp_state, kvm_segment, CpuId, KVM_MAX_CPUID_ENTRIES, KVM_MP_STATE_RUNNABLE,
};
use kvm_ioctls::{Kvm, VcpuExit, VcpuFd, VmFd};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmstream::Value;
use vmstream_migrate::vm::{
    Device, DeviceRegistry, DirtyBitmap, DirtyLog, GuestMemory, Region, SerdeDevice, Vcpus, Vm,
};

use crate::digest::{combine, crc_range, DigestCache};
use crate::program;
use crate::serial::{self, Uart};
use crate::state::{self, ClockState, IrqchipState, VcpuState};

const PAGE: u64 = 4096;
/// Guest memory below this holds the mailbox, tables, program and stacks;
/// the workload writes above it.
const WORK: u64 = 1 << 20;
const GDT: u64 = 0x1000;
const IDT: u64 = 0x1800;
const MAILBOX_RATE: u64 = 0x04;
const MAILBOX_PRINT: u64 = 0x08;
const MAILBOX_TIMER: u64 = 0x0c;
const PERCPU: u64 = 0x100;
const STACKS: u64 = 0x10000;
/// LAPIC timer count of one 10 ms tick: KVM's APIC bus runs at 1 GHz.
const TICK_COUNT: u32 = 10_000_000;
const TICKS_PER_S: u64 = 100;
/// Serial lines: one every 10 ticks.
const PRINT_EVERY: u32 = 10;
/// The most vCPUs (stacks and per-vCPU blocks are sized for them).
pub const MAX_VCPUS: u8 = 16;
/// The largest guest: a 32-bit guest without paging addresses up to 4 GiB,
/// less the LAPIC and IOAPIC pages at the top.
pub const MAX_MEMORY: u64 = 3 << 30;

/// How guest memory starts out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fill {
    /// Pseudo-random bytes above the first MiB.
    Random,
    /// Zeros.
    Zero,
}

/// Where the guest's serial lines go.
pub type LineSink = Arc<dyn Fn(&str) + Send + Sync>;

/// A KVM guest's shape.
#[derive(Clone)]
pub struct Config {
    /// The KVM device node ([`KVM_DEVICE`]).
    pub device: PathBuf,
    /// Memory in bytes (a multiple of 2 MiB, 2 MiB ..= [`MAX_MEMORY`]).
    pub memory: u64,
    /// vCPUs (1 ..= [`MAX_VCPUS`]).
    pub vcpus: u8,
    /// Initial memory contents (above the first MiB).
    pub fill: Fill,
    /// Seed of the random fill.
    pub seed: u64,
    /// Set up the guest program (`false`: an incoming guest, whose memory
    /// and vCPU state arrive by migration).
    pub boot: bool,
    /// The vCPU state version to save (the current one, or 1 to write what
    /// the previous release wrote).
    pub vcpu_state_version: u32,
    /// Serial output, one call per line.
    pub sink: LineSink,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("memory", &self.memory)
            .field("vcpus", &self.vcpus)
            .field("fill", &self.fill)
            .field("boot", &self.boot)
            .finish()
    }
}

/// The KVM device node.
pub const KVM_DEVICE: &str = "/dev/kvm";

fn open_kvm(device: &Path) -> Result<Kvm, String> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(device.as_os_str().as_bytes())
        .map_err(|_| format!("{}: a path with a NUL byte", device.display()))?;
    let kvm = Kvm::new_with_path(path)
        .map_err(|e| format!("{} cannot be opened: {e}", device.display()))?;
    match kvm.get_api_version() {
        12 => Ok(kvm),
        v => Err(format!(
            "{} is not KVM (API version {v}, 12 expected)",
            device.display()
        )),
    }
}

/// Whether `device` (normally [`KVM_DEVICE`]) opens as KVM; the error says
/// why not.
pub fn kvm_available(device: &Path) -> Result<(), String> {
    open_kvm(device).map(drop)
}

/// A state captured when the vCPUs park and written back before they run:
/// `restore` is set when a migration loaded one.
#[derive(Debug)]
struct Slot<T> {
    state: Option<T>,
    restore: bool,
}

type Shared<T> = Arc<Mutex<Slot<T>>>;

fn shared<T>() -> Shared<T> {
    Arc::new(Mutex::new(Slot {
        state: None,
        restore: false,
    }))
}

fn lock<T>(m: &Mutex<T>) -> Result<MutexGuard<'_, T>, String> {
    m.lock().map_err(|_| "a guest lock is poisoned".to_owned())
}

#[derive(Debug)]
struct RunState {
    paused: bool,
    parked: usize,
    quit: bool,
    /// The first vCPU failure (a triple fault, a failed restore).
    error: Option<String>,
}

#[derive(Debug)]
struct Control {
    run: Mutex<RunState>,
    cv: Condvar,
}

/// A KVM virtual machine running the guest program.
pub struct KvmGuest {
    // Field order is drop order: the VM fd closes before the memory unmaps.
    vm: Arc<VmFd>,
    mem: Arc<GuestMemoryMmap>,
    size: u64,
    nvcpus: usize,
    control: Arc<Control>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    vcpus: Vec<Shared<VcpuState>>,
    clock: Shared<ClockState>,
    irqchip: Shared<IrqchipState>,
    serial: Arc<Mutex<Uart>>,
    vcpu_state_version: u32,
    logging: AtomicBool,
    /// Pages the digest took from KVM's dirty log, for the next fetch.
    carry: Mutex<Option<DirtyBitmap>>,
    digest: DigestCache,
    _kvm: Kvm,
}

impl std::fmt::Debug for KvmGuest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "KvmGuest {{ size: {}, vcpus: {} }}",
            self.size, self.nvcpus
        )
    }
}

fn xorshift(s: &mut u64) -> u64 {
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    *s
}

fn segment(selector: u16, type_: u8) -> kvm_segment {
    kvm_segment {
        base: 0,
        limit: 0xffff_ffff,
        selector,
        type_,
        present: 1,
        dpl: 0,
        db: 1,
        s: 1,
        l: 0,
        g: 1,
        avl: 0,
        unusable: 0,
        padding: 0,
    }
}

impl KvmGuest {
    /// Creates the VM, paused. With `boot`, its vCPUs start the guest
    /// program on the first resume.
    pub fn new(cfg: Config) -> Result<Arc<KvmGuest>, String> {
        if cfg.memory < 2 << 20 || cfg.memory > MAX_MEMORY || !cfg.memory.is_multiple_of(2 << 20) {
            return Err(format!(
                "guest memory must be a multiple of 2 MiB from 2 MiB to {} MiB, not {} bytes",
                MAX_MEMORY >> 20,
                cfg.memory
            ));
        }
        if cfg.vcpus == 0 || cfg.vcpus > MAX_VCPUS {
            return Err(format!("1 to {MAX_VCPUS} vCPUs, not {}", cfg.vcpus));
        }
        if !(state::VCPU_OLDEST..=state::VCPU_VERSION).contains(&cfg.vcpu_state_version) {
            return Err(format!(
                "vCPU state version {} is not one this build saves ({}..={})",
                cfg.vcpu_state_version,
                state::VCPU_OLDEST,
                state::VCPU_VERSION
            ));
        }
        crate::sys::install_kick_handler()?;
        let kvm = open_kvm(&cfg.device)?;
        let vm = kvm.create_vm().map_err(|e| format!("KVM_CREATE_VM: {e}"))?;
        // Intel needs a TSS area below 4 GiB outside guest memory.
        let _ = vm.set_tss_address(0xfffb_d000);
        vm.create_irq_chip()
            .map_err(|e| format!("KVM_CREATE_IRQCHIP: {e}"))?;
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), cfg.memory as usize)])
            .map_err(|e| format!("guest memory of {} bytes: {e}", cfg.memory))?;
        crate::sys::set_slot(&vm, &mem, false)?;
        let mem = Arc::new(mem);
        let guest = KvmGuest {
            vm: Arc::new(vm),
            mem,
            size: cfg.memory,
            nvcpus: usize::from(cfg.vcpus),
            control: Arc::new(Control {
                run: Mutex::new(RunState {
                    paused: true,
                    parked: 0,
                    quit: false,
                    error: None,
                }),
                cv: Condvar::new(),
            }),
            threads: Mutex::new(Vec::new()),
            vcpus: (0..cfg.vcpus).map(|_| shared()).collect(),
            clock: shared(),
            irqchip: shared(),
            serial: Arc::new(Mutex::new(Uart::default())),
            vcpu_state_version: cfg.vcpu_state_version,
            logging: AtomicBool::new(false),
            carry: Mutex::new(None),
            digest: DigestCache::new(cfg.memory, !cfg.boot),
            _kvm: kvm,
        };
        if cfg.boot {
            guest.load_program(cfg.fill, cfg.seed)?;
        }
        let cpuid = guest
            ._kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(|e| format!("KVM_GET_SUPPORTED_CPUID: {e}"))?;
        let msr_list = guest
            ._kvm
            .get_msr_index_list()
            .map_err(|e| format!("KVM_GET_MSR_INDEX_LIST: {e}"))?;
        let guest = Arc::new(guest);
        let mut threads = Vec::new();
        for id in 0..cfg.vcpus {
            let vcpu = guest
                .vm
                .create_vcpu(u64::from(id))
                .map_err(|e| format!("KVM_CREATE_VCPU {id}: {e}"))?;
            setup_cpuid(&vcpu, &cpuid, id)?;
            if cfg.boot {
                boot_regs(&vcpu, id)?;
            }
            let msrs = state::readable_msrs(&vcpu, msr_list.as_slice());
            let worker = Worker {
                id,
                vcpu,
                msrs,
                control: guest.control.clone(),
                slot: guest.vcpus[usize::from(id)].clone(),
                serial: guest.serial.clone(),
                sink: cfg.sink.clone(),
                _mem: guest.mem.clone(),
            };
            let h = std::thread::Builder::new()
                .name(format!("vcpu{id}"))
                .spawn(move || worker.run())
                .map_err(|e| format!("starting vCPU thread {id}: {e}"))?;
            threads.push(h);
        }
        *lock(&guest.threads)? = threads;

        // Returns once every vCPU thread has parked.
        guest.pause()?;
        Ok(guest)
    }

    /// Writes the tables, the program and the mailbox, and fills the rest.
    fn load_program(&self, fill: Fill, seed: u64) -> Result<(), String> {
        let w = |addr: u64, data: &[u8]| {
            self.mem
                .write_slice(data, GuestAddress(addr))
                .map_err(|e| format!("writing guest memory at {addr:#x}: {e}"))
        };
        if fill == Fill::Random {
            let mut s = seed | 1;
            let mut buf = vec![0u8; 1 << 20];
            let mut at = WORK;
            while at < self.size {
                for c in buf.chunks_exact_mut(8) {
                    c.copy_from_slice(&xorshift(&mut s).to_le_bytes());
                }
                w(at, &buf)?;
                at += buf.len() as u64;
            }
        }
        // GDT: null, flat code (0x08), flat data (0x10), accessed bits set.
        let gdt: [u64; 3] = [0, 0x00cf_9b00_0000_ffff, 0x00cf_9300_0000_ffff];
        for (i, d) in gdt.iter().enumerate() {
            w(GDT + 8 * i as u64, &d.to_le_bytes())?;
        }
        // IDT: only vector 0x20, a 32-bit interrupt gate to the timer handler.
        let t = u64::from(program::TIMER);
        let gate = (t & 0xffff) | (0x08 << 16) | (0x8e00 << 32) | ((t >> 16) << 48);
        w(IDT + 0x20 * 8, &gate.to_le_bytes())?;
        w(program::LOAD, program::PROGRAM)?;
        w(MAILBOX_PRINT, &PRINT_EVERY.to_le_bytes())?;
        w(MAILBOX_TIMER, &TICK_COUNT.to_le_bytes())?;
        let pages = (self.size - WORK) / PAGE;
        let slice = pages / self.nvcpus as u64;
        for i in 0..self.nvcpus as u64 {
            let b = PERCPU + 64 * i;
            let first = WORK + i * slice * PAGE;
            w(b, &(first as u32).to_le_bytes())?;
            w(b + 4, &(slice as u32).to_le_bytes())?;
        }
        Ok(())
    }

    /// Sets the workload: `pages_per_s` pages written per second, shared by
    /// the vCPUs (rounded to whole pages per vCPU and 10 ms tick).
    pub fn set_dirty_rate(&self, pages_per_s: u64) -> Result<(), String> {
        let per_tick = pages_per_s.div_ceil(TICKS_PER_S * self.nvcpus as u64);
        let per_tick = u32::try_from(per_tick).map_err(|_| "dirty rate too high")?;
        self.mem
            .write_obj(per_tick, GuestAddress(MAILBOX_RATE))
            .map_err(|e| format!("mailbox: {e}"))
    }

    /// Guest memory in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// vCPU 0's tick counter: the number its serial lines print.
    pub fn counter(&self) -> u64 {
        self.percpu(0, 0x0c)
    }

    fn percpu(&self, cpu: u64, field: u64) -> u64 {
        self.mem
            .read_obj::<u32>(GuestAddress(PERCPU + 64 * cpu + field))
            .map(u64::from)
            .unwrap_or(0)
    }

    /// Pages each vCPU has written.
    pub fn pages_written(&self) -> Vec<u64> {
        (0..self.nvcpus as u64)
            .map(|i| self.percpu(i, 0x10))
            .collect()
    }

    /// The serial port's state.
    pub fn serial(&self) -> Uart {
        self.serial.lock().map(|u| u.clone()).unwrap_or_default()
    }

    /// Whether the vCPUs are paused.
    pub fn is_paused(&self) -> bool {
        self.control.run.lock().map(|r| r.paused).unwrap_or(true)
    }

    /// The first vCPU failure, if any.
    pub fn error(&self) -> Option<String> {
        self.control.run.lock().ok().and_then(|r| r.error.clone())
    }

    /// CRC32C of all guest memory.
    pub fn checksum(&self) -> Result<u32, String> {
        self.crc32c(&self.regions()[0])
    }

    /// The guest as the migration engine sees it: memory, dirty log, vCPUs
    /// and the devices `cpu0`.., `clock`, `irqchip`, `serial0`.
    pub fn vm(self: &Arc<Self>) -> Vm {
        let mut reg = DeviceRegistry::new();
        for (i, s) in self.vcpus.iter().enumerate() {
            let _ = reg.register(Box::new(StateDevice {
                name: format!("cpu{i}"),
                type_name: state::VCPU_TYPE,
                version: self.vcpu_state_version,
                loads: state::VCPU_OLDEST..=state::VCPU_VERSION,
                slot: s.clone(),
                save: VcpuState::save,
                load: VcpuState::load,
            }));
        }
        let _ = reg.register(Box::new(StateDevice {
            name: "clock".to_owned(),
            type_name: "kvm-clock",
            version: 1,
            loads: 1..=1,
            slot: self.clock.clone(),
            save: |s, _| vmstream::to_value(s).map_err(|e| e.to_string()),
            load: |_, v| vmstream::from_value(v).map_err(|e| e.to_string()),
        }));
        let _ = reg.register(Box::new(StateDevice {
            name: "irqchip".to_owned(),
            type_name: "kvm-x86-irqchip",
            version: 1,
            loads: 1..=1,
            slot: self.irqchip.clone(),
            save: |s, _| vmstream::to_value(s).map_err(|e| e.to_string()),
            load: |_, v| vmstream::from_value(v).map_err(|e| e.to_string()),
        }));
        let _ = reg.register(Box::new(SerdeDevice::new(
            "serial0",
            "uart-16550",
            1,
            self.serial.clone(),
        )));
        Vm {
            memory: self.clone(),
            dirty: self.clone(),
            vcpus: self.clone(),
            devices: Arc::new(Mutex::new(reg)),
        }
    }

    /// Stops the vCPU threads (also done on drop).
    pub fn shutdown(&self) {
        if let Ok(mut r) = self.control.run.lock() {
            r.quit = true;
        }
        self.control.cv.notify_all();
        let threads = self
            .threads
            .lock()
            .map(|mut t| std::mem::take(&mut *t))
            .unwrap_or_default();
        for h in &threads {
            crate::sys::kick(h);
        }
        for h in threads {
            let _ = h.join();
        }
    }
}

impl Drop for KvmGuest {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn setup_cpuid(vcpu: &VcpuFd, supported: &CpuId, id: u8) -> Result<(), String> {
    let mut cpuid = supported.clone();
    for e in cpuid.as_mut_slice() {
        match e.function {
            // Initial APIC id.
            1 => e.ebx = (e.ebx & 0x00ff_ffff) | (u32::from(id) << 24),
            // x2APIC id.
            0xb | 0x1f => e.edx = u32::from(id),
            _ => {}
        }
    }
    vcpu.set_cpuid2(&cpuid)
        .map_err(|e| format!("KVM_SET_CPUID2: {e}"))
}

/// Flat 32-bit protected mode at the program's entry, with this vCPU's stack.
fn boot_regs(vcpu: &VcpuFd, id: u8) -> Result<(), String> {
    let mut s = vcpu
        .get_sregs()
        .map_err(|e| format!("KVM_GET_SREGS: {e}"))?;
    s.cs = segment(0x08, 0xb);
    let data = segment(0x10, 0x3);
    (s.ds, s.es, s.fs, s.gs, s.ss) = (data, data, data, data, data);
    s.gdt.base = GDT;
    s.gdt.limit = 3 * 8 - 1;
    s.idt.base = IDT;
    s.idt.limit = 256 * 8 - 1;
    // PE, ET, NE: protected mode, caches on, no paging.
    s.cr0 = 0x31;
    s.cr4 = 0;
    s.efer = 0;
    vcpu.set_sregs(&s)
        .map_err(|e| format!("KVM_SET_SREGS: {e}"))?;
    let regs = kvm_bindings::kvm_regs {
        rip: u64::from(program::START),
        rflags: 0x2,
        rsp: STACKS + (u64::from(id) + 1) * 0x1000,
        rsi: u64::from(id),
        ..Default::default()
    };
    vcpu.set_regs(&regs)
        .map_err(|e| format!("KVM_SET_REGS: {e}"))?;
    // Application processors wait for INIT/SIPI otherwise.
    vcpu.set_mp_state(kvm_mp_state {
        mp_state: KVM_MP_STATE_RUNNABLE,
    })
    .map_err(|e| format!("KVM_SET_MP_STATE: {e}"))
}

/// One vCPU thread.
struct Worker {
    id: u8,
    vcpu: VcpuFd,
    msrs: Vec<u32>,
    control: Arc<Control>,
    slot: Shared<VcpuState>,
    serial: Arc<Mutex<Uart>>,
    sink: LineSink,
    /// Keeps guest memory mapped while this vCPU exists.
    _mem: Arc<GuestMemoryMmap>,
}

impl Worker {
    fn fail(&self, e: String) {
        eprintln!("vcpu{}: {e}", self.id);
        if let Ok(mut r) = self.control.run.lock() {
            r.error.get_or_insert(format!("vcpu{}: {e}", self.id));
            // A failed vCPU stays parked until quit.
            r.paused = true;
        }
        self.control.cv.notify_all();
    }

    /// Parks while paused: captures the state on the way in, applies a
    /// loaded state on the way out. Returns false on quit.
    fn park(&mut self) -> bool {
        let Ok(mut r) = self.control.run.lock() else {
            return false;
        };
        if !r.paused && !r.quit {
            return true;
        }
        if let Ok(mut slot) = self.slot.lock() {
            if !slot.restore {
                match state::capture(&self.vcpu, &self.msrs) {
                    Ok(s) => slot.state = Some(s),
                    Err(e) => {
                        slot.state = None;
                        r.error
                            .get_or_insert(format!("vcpu{}: saving its state: {e}", self.id));
                    }
                }
            }
        }
        r.parked += 1;
        self.control.cv.notify_all();
        while r.paused && !r.quit {
            r = match self.control.cv.wait(r) {
                Ok(r) => r,
                Err(_) => return false,
            };
        }
        r.parked -= 1;
        if r.quit {
            return false;
        }
        drop(r);
        let restored = self.slot.lock().map_err(|_| "lock").map(|mut slot| {
            if !slot.restore {
                return None;
            }
            slot.restore = false;
            slot.state.as_ref().map(|s| state::restore(&self.vcpu, s))
        });
        match restored {
            Ok(Some(Err(e))) => {
                self.fail(format!("restoring its state: {e}"));
                return self.park();
            }
            Ok(Some(Ok(skipped))) if !skipped.is_empty() => {
                eprintln!("vcpu{}: MSRs the kernel refused: {skipped:x?}", self.id)
            }
            _ => {}
        }
        true
    }

    fn run(mut self) {
        loop {
            if !self.park() {
                return;
            }
            let mut line = None;
            match self.vcpu.run() {
                Ok(VcpuExit::IoOut(port, data)) => {
                    if (serial::PORT..serial::PORT + 8).contains(&port) {
                        if let (Ok(mut u), Some(&b)) = (self.serial.lock(), data.first()) {
                            line = u.write(port - serial::PORT, b);
                        }
                    }
                }
                Ok(VcpuExit::IoIn(port, data)) => {
                    let v = if (serial::PORT..serial::PORT + 8).contains(&port) {
                        self.serial
                            .lock()
                            .map(|u| u.read(port - serial::PORT))
                            .unwrap_or(0xff)
                    } else {
                        0xff
                    };
                    data.iter_mut().for_each(|b| *b = v);
                }
                Ok(VcpuExit::MmioRead(_, data)) => data.iter_mut().for_each(|b| *b = 0xff),
                Ok(VcpuExit::MmioWrite(..)) | Ok(VcpuExit::IrqWindowOpen) => {}
                Ok(VcpuExit::Hlt) => std::thread::sleep(Duration::from_millis(1)),
                Ok(other) => {
                    let what = format!("{other:?}");
                    self.fail(format!("stopped: KVM exit {what}"));
                }
                Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                    self.vcpu.set_kvm_immediate_exit(0);
                }
                Err(e) => self.fail(format!("KVM_RUN: {e}")),
            }
            if let Some(l) = line {
                (self.sink)(&l);
            }
        }
    }
}

/// A device whose state the vCPU threads or the pause capture, and which a
/// load sets up for the next resume to write back.
struct StateDevice<T> {
    name: String,
    type_name: &'static str,
    version: u32,
    loads: std::ops::RangeInclusive<u32>,
    slot: Shared<T>,
    save: fn(&T, u32) -> Result<Value, String>,
    load: fn(u32, &Value) -> Result<T, String>,
}

impl<T: Send> Device for StateDevice<T> {
    fn name(&self) -> &str {
        &self.name
    }
    fn type_name(&self) -> &str {
        self.type_name
    }
    fn version(&self) -> u32 {
        self.version
    }
    fn loads(&self) -> std::ops::RangeInclusive<u32> {
        self.loads.clone()
    }
    fn save(&self) -> Result<Value, String> {
        let slot = lock(&self.slot)?;
        let s = slot
            .state
            .as_ref()
            .ok_or_else(|| format!("{}: no state saved (is the guest paused?)", self.name))?;
        (self.save)(s, self.version)
    }
    fn load(&mut self, version: u32, state: &Value) -> Result<(), String> {
        let s = (self.load)(version, state)?;
        let mut slot = lock(&self.slot)?;
        slot.state = Some(s);
        slot.restore = true;
        Ok(())
    }
}

impl GuestMemory for KvmGuest {
    fn page_size(&self) -> u32 {
        PAGE as u32
    }

    fn regions(&self) -> Vec<Region> {
        vec![Region {
            id: 0,
            name: "ram0".to_owned(),
            size: self.size,
        }]
    }

    fn read(&self, region: u32, offset: u64, out: &mut [u8]) -> Result<(), String> {
        if region != 0 {
            return Err(format!("no region {region}"));
        }
        let gens = self.digest.before_read(offset, out.len());
        self.mem
            .read_slice(out, GuestAddress(offset))
            .map_err(|e| format!("reading guest memory at {offset:#x}: {e}"))?;
        self.digest.after_read(offset, out, &gens);
        Ok(())
    }

    fn write(&self, region: u32, offset: u64, data: &[u8]) -> Result<(), String> {
        if region != 0 {
            return Err(format!("no region {region}"));
        }
        self.mem
            .write_slice(data, GuestAddress(offset))
            .map_err(|e| format!("writing guest memory at {offset:#x}: {e}"))?;
        self.digest.written(offset, data);
        Ok(())
    }

    /// The region's CRC32C: from the digest cache when it tracks changes
    /// (see `digest.rs`), else in parallel pieces, combined. Either way the
    /// CRC32C of the whole region.
    fn crc32c(&self, region: &Region) -> Result<u32, String> {
        if region.id != 0 {
            return Err(format!("no region {}", region.id));
        }
        if self.logging.load(Ordering::SeqCst) {
            // Writes the engine has not fetched yet: the cache must see them,
            // and the next fetch still returns them.
            let log = self.kvm_dirty_log()?;
            self.digest.mark_pages(&log);
            let mut carry = lock(&self.carry)?;
            match carry.as_mut() {
                Some(c) => c.union(&log),
                None => *carry = Some(log),
            }
        }
        if let Some(crc) = self.digest.crc(&self.mem) {
            return crc;
        }
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        let piece = self.size.div_ceil(threads as u64).next_multiple_of(2 << 20);
        let pieces: Vec<(u64, u64)> = (0..self.size)
            .step_by(piece as usize)
            .map(|at| (at, piece.min(self.size - at)))
            .collect();
        let crcs = std::thread::scope(|s| {
            let handles: Vec<_> = pieces
                .iter()
                .map(|&(at, len)| s.spawn(move || crc_range(&self.mem, at, len)))
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .map_err(|_| "a checksum thread panicked".to_owned())?
                })
                .collect::<Result<Vec<u32>, String>>()
        })?;
        Ok(combine(crcs.into_iter().zip(pieces.iter().map(|p| p.1))))
    }
}

impl KvmGuest {
    fn kvm_dirty_log(&self) -> Result<DirtyBitmap, String> {
        let words = self
            .vm
            .get_dirty_log(0, self.size as usize)
            .map_err(|e| format!("KVM_GET_DIRTY_LOG: {e}"))?;
        Ok(DirtyBitmap::from_words(words, self.size / PAGE))
    }
}

impl DirtyLog for KvmGuest {
    fn start(&self) -> Result<(), String> {
        crate::sys::set_slot(&self.vm, &self.mem, true)?;
        self.logging.store(true, Ordering::SeqCst);
        *lock(&self.carry)? = None;
        self.digest.track();
        Ok(())
    }

    fn fetch_and_clear(&self) -> Result<BTreeMap<u32, DirtyBitmap>, String> {
        if !self.logging.load(Ordering::SeqCst) {
            return Err("dirty logging is not on".to_owned());
        }
        let mut log = self.kvm_dirty_log()?;
        if let Some(c) = lock(&self.carry)?.take() {
            log.union(&c);
        }
        self.digest.mark_pages(&log);
        // This VMM writes guest memory itself only before the guest first
        // runs and on a destination, so there are no own writes to add.
        Ok(BTreeMap::from([(0, log)]))
    }

    fn stop(&self) {
        self.digest.untrack();
        if self.logging.swap(false, Ordering::SeqCst) {
            if let Err(e) = crate::sys::set_slot(&self.vm, &self.mem, false) {
                eprintln!("stopping dirty logging: {e}");
            }
        }
    }
}

impl Vcpus for KvmGuest {
    fn pause(&self) -> Result<(), String> {
        let mut r = lock(&self.control.run)?;
        r.paused = true;
        while r.parked < self.nvcpus {
            drop(r);
            if let Ok(t) = self.threads.lock() {
                for h in t.iter() {
                    crate::sys::kick(h);
                }
            }
            r = lock(&self.control.run)?;
            if r.parked < self.nvcpus {
                r = self
                    .control
                    .cv
                    .wait_timeout(r, Duration::from_millis(2))
                    .map_err(|_| "a guest lock is poisoned")?
                    .0;
            }
        }
        drop(r);
        // Every vCPU is parked: the VM-wide state holds still.
        for (what, res) in [
            (
                "clock",
                capture(&self.clock, || ClockState::capture(&self.vm)),
            ),
            (
                "irqchip",
                capture(&self.irqchip, || IrqchipState::capture(&self.vm)),
            ),
        ] {
            res.map_err(|e| format!("saving the {what}: {e}"))?;
        }
        let r = lock(&self.control.run)?;
        match &r.error {
            Some(e) => Err(e.clone()),
            None => Ok(()),
        }
    }

    fn resume(&self) -> Result<(), String> {
        let mut r = lock(&self.control.run)?;
        if let Some(e) = &r.error {
            return Err(e.clone());
        }
        if !self.logging.load(Ordering::SeqCst) {
            // The guest writes memory unseen from now on.
            self.digest.untrack();
        }
        // VM-wide state first: the vCPUs restore theirs as they leave park.
        restore(&self.irqchip, |s| s.restore(&self.vm))?;
        restore(&self.clock, |s| s.restore(&self.vm))?;
        r.paused = false;
        drop(r);
        self.control.cv.notify_all();
        Ok(())
    }
}

fn capture<T>(slot: &Shared<T>, f: impl FnOnce() -> Result<T, String>) -> Result<(), String> {
    let mut s = lock(slot)?;
    if !s.restore {
        s.state = Some(f()?);
    }
    Ok(())
}

fn restore<T>(slot: &Shared<T>, f: impl FnOnce(&T) -> Result<(), String>) -> Result<(), String> {
    let mut s = lock(slot)?;
    if s.restore {
        s.restore = false;
        if let Some(st) = &s.state {
            f(st)?;
        }
    }
    Ok(())
}
