//! A synthetic guest: memory, a dirty log, "vCPUs" that are one workload
//! thread writing pages at a given rate, and serde devices. It is what
//! `vmstream guest` runs, and the embedding example for a VMM.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::vm::{
    DeviceRegistry, DirtyBitmap, DirtyLog, GuestMemory, Region, SerdeDevice, Vcpus, Vm,
};

const STRIPE: u64 = 2 << 20;
const PAGE: u32 = 4096;

/// How guest memory starts out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fill {
    /// Pseudo-random bytes (nothing compresses, no zero pages).
    Random,
    /// Zeros.
    Zero,
}

/// The state of one synthetic device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceRegs {
    /// Device number.
    pub id: u32,
    /// Some registers.
    pub regs: Vec<u32>,
    /// Bumped by the workload: proves device state moves with the guest.
    pub ticks: u64,
    /// A queue.
    pub fifo: Vec<u8>,
}

/// The workload's own state: the "vCPU" of a synthetic guest. It migrates
/// with the guest (as device `cpu0`), so the destination's workload goes on
/// where the source's stopped: same rate, counter and page sequence.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CpuState {
    /// Pages written per second while running.
    pub rate: u64,
    /// Page writes so far.
    pub counter: u64,
    /// The page sequence's generator state.
    pub seed: u64,
}

struct Memory {
    stripes: Vec<RwLock<Vec<u8>>>,
    size: u64,
    dirty: Mutex<Option<DirtyBitmap>>,
}

impl Memory {
    fn span(&self, offset: u64, len: usize) -> Result<(), String> {
        if !offset.is_multiple_of(u64::from(PAGE)) || !len.is_multiple_of(PAGE as usize) {
            return Err(format!(
                "access at {offset:#x}+{len:#x} is not page-aligned"
            ));
        }
        if offset.checked_add(len as u64).is_none_or(|e| e > self.size) {
            return Err(format!(
                "access at {offset:#x}+{len:#x} is beyond {:#x}",
                self.size
            ));
        }
        Ok(())
    }
}

/// A synthetic VM.
pub struct Synthetic {
    mem: Arc<Memory>,
    run: Arc<(Mutex<RunState>, Condvar)>,
    throttle: Arc<AtomicU8>,
    devices: Vec<Arc<Mutex<DeviceRegs>>>,
    cpu: Arc<Mutex<CpuState>>,
    stop: Arc<AtomicBool>,
    worker: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl std::fmt::Debug for Synthetic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Synthetic {{ size: {}, devices: {} }}",
            self.mem.size,
            self.devices.len()
        )
    }
}

#[derive(Debug)]
struct RunState {
    paused: bool,
}

fn xorshift(s: &mut u64) -> u64 {
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    *s
}

impl Synthetic {
    /// A guest of `size` bytes (rounded up to 2 MiB) with `devices` devices,
    /// paused.
    pub fn new(size: u64, fill: Fill, devices: u32, seed: u64) -> Synthetic {
        let size = size.div_ceil(STRIPE).max(1) * STRIPE;
        let mut stripes = Vec::new();
        let mut s = seed | 1;
        for _ in 0..size / STRIPE {
            let mut v = vec![0u8; STRIPE as usize];
            if fill == Fill::Random {
                for w in v.chunks_exact_mut(8) {
                    w.copy_from_slice(&xorshift(&mut s).to_le_bytes());
                }
            }
            stripes.push(RwLock::new(v));
        }
        let devices = (0..devices)
            .map(|id| {
                Arc::new(Mutex::new(DeviceRegs {
                    id,
                    regs: (0..16).map(|r| r * 7 + id).collect(),
                    ticks: 0,
                    fifo: vec![id as u8; 8],
                }))
            })
            .collect();
        Synthetic {
            mem: Arc::new(Memory {
                stripes,
                size,
                dirty: Mutex::new(None),
            }),
            run: Arc::new((Mutex::new(RunState { paused: true }), Condvar::new())),
            throttle: Arc::new(AtomicU8::new(0)),
            devices,
            cpu: Arc::new(Mutex::new(CpuState {
                rate: 0,
                counter: 0,
                seed: 0x9e37_79b9_7f4a_7c15,
            })),
            stop: Arc::new(AtomicBool::new(false)),
            worker: Mutex::new(None),
        }
    }

    /// Starts the workload thread, writing `rate` pages per second while the
    /// guest runs (0: idle). The guest stays paused until resumed. An
    /// incoming guest takes the rate from the migrated `cpu0` state.
    pub fn start_workload(&self, rate: u64) {
        if let Ok(mut c) = self.cpu.lock() {
            c.rate = rate;
        }
        let (mem, run, throttle, devices, cpu, stop) = (
            self.mem.clone(),
            self.run.clone(),
            self.throttle.clone(),
            self.devices.clone(),
            self.cpu.clone(),
            self.stop.clone(),
        );
        let h = std::thread::spawn(move || {
            let pages = mem.size / u64::from(PAGE);
            let tick = Duration::from_millis(10);
            while !stop.load(Ordering::Relaxed) {
                let started = Instant::now();
                {
                    let (lock, cv) = &*run;
                    let Ok(mut g) = lock.lock() else { return };
                    while g.paused && !stop.load(Ordering::Relaxed) {
                        g = match cv.wait_timeout(g, Duration::from_millis(50)) {
                            Ok((g, _)) => g,
                            Err(_) => return,
                        };
                    }
                    // Holding the run lock: pause waits for this batch.
                    let Ok(mut c) = cpu.lock() else { return };
                    for _ in 0..c.rate / 100 {
                        let page = xorshift(&mut c.seed) % pages;
                        c.counter += 1;
                        let off = page * u64::from(PAGE);
                        let stripe = (off / STRIPE) as usize;
                        let at = (off % STRIPE) as usize;
                        if let Ok(mut s) = mem.stripes[stripe].write() {
                            s[at..at + 8].copy_from_slice(&c.counter.to_le_bytes());
                            s[at + 8..at + 16].copy_from_slice(&page.to_le_bytes());
                        }
                        if let Ok(mut d) = mem.dirty.lock() {
                            if let Some(d) = d.as_mut() {
                                d.set(page);
                            }
                        }
                    }
                    drop(c);
                    if let Some(d) = devices.first() {
                        if let Ok(mut d) = d.lock() {
                            d.ticks += 1;
                        }
                    }
                }
                let t = throttle.load(Ordering::Relaxed);
                let spent = started.elapsed();
                let mut sleep = tick.saturating_sub(spent);
                if t > 0 {
                    sleep += tick * u32::from(t) / u32::from(100 - t.min(99));
                }
                std::thread::sleep(sleep);
            }
        });
        if let Ok(mut w) = self.worker.lock() {
            *w = Some(h);
        }
    }

    /// How many page writes the workload has made.
    pub fn counter(&self) -> u64 {
        self.cpu.lock().map(|c| c.counter).unwrap_or(0)
    }

    /// Whether the guest is paused.
    pub fn is_paused(&self) -> bool {
        self.run.0.lock().map(|g| g.paused).unwrap_or(true)
    }

    /// The device states.
    pub fn device_states(&self) -> Vec<DeviceRegs> {
        self.devices
            .iter()
            .filter_map(|d| d.lock().ok().map(|d| d.clone()))
            .collect()
    }

    /// The guest as the migration engine sees it.
    pub fn vm(self: &Arc<Self>) -> Vm {
        let mut reg = DeviceRegistry::new();
        let _ = reg.register(Box::new(SerdeDevice::new(
            "cpu0",
            "synthetic-cpu",
            1,
            self.cpu.clone(),
        )));
        for (i, d) in self.devices.iter().enumerate() {
            let _ = reg.register(Box::new(SerdeDevice::new(
                &format!("dev{i}"),
                "synthetic-regs",
                1,
                d.clone(),
            )));
        }
        Vm {
            memory: self.clone(),
            dirty: self.clone(),
            vcpus: self.clone(),
            devices: Arc::new(Mutex::new(reg)),
        }
    }

    /// CRC32C of all memory.
    pub fn checksum(&self) -> u32 {
        self.region_crc()
    }
}

impl Drop for Synthetic {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.run.1.notify_all();
        if let Ok(mut w) = self.worker.lock() {
            if let Some(h) = w.take() {
                let _ = h.join();
            }
        }
    }
}

impl GuestMemory for Synthetic {
    fn page_size(&self) -> u32 {
        PAGE
    }

    fn regions(&self) -> Vec<Region> {
        vec![Region {
            id: 0,
            name: "ram0".to_owned(),
            size: self.mem.size,
        }]
    }

    fn read(&self, region: u32, offset: u64, out: &mut [u8]) -> Result<(), String> {
        if region != 0 {
            return Err(format!("no region {region}"));
        }
        self.mem.span(offset, out.len())?;
        let mut done = 0usize;
        while done < out.len() {
            let off = offset + done as u64;
            let (stripe, at) = ((off / STRIPE) as usize, (off % STRIPE) as usize);
            let n = (out.len() - done).min(STRIPE as usize - at);
            let s = self.mem.stripes[stripe]
                .read()
                .map_err(|_| "memory lock poisoned")?;
            out[done..done + n].copy_from_slice(&s[at..at + n]);
            done += n;
        }
        Ok(())
    }

    fn crc32c(&self, region: &Region) -> Result<u32, String> {
        if region.id != 0 {
            return Err(format!("no region {}", region.id));
        }
        Ok(self.region_crc())
    }

    fn write(&self, region: u32, offset: u64, data: &[u8]) -> Result<(), String> {
        if region != 0 {
            return Err(format!("no region {region}"));
        }
        self.mem.span(offset, data.len())?;
        let mut done = 0usize;
        while done < data.len() {
            let off = offset + done as u64;
            let (stripe, at) = ((off / STRIPE) as usize, (off % STRIPE) as usize);
            let n = (data.len() - done).min(STRIPE as usize - at);
            let mut s = self.mem.stripes[stripe]
                .write()
                .map_err(|_| "memory lock poisoned")?;
            s[at..at + n].copy_from_slice(&data[done..done + n]);
            done += n;
        }
        Ok(())
    }
}

impl Synthetic {
    fn region_crc(&self) -> u32 {
        let mut c = vmstream::Crc32c::new();
        for s in &self.mem.stripes {
            if let Ok(s) = s.read() {
                c.update(&s);
            }
        }
        c.finish()
    }
}

impl DirtyLog for Synthetic {
    fn start(&self) -> Result<(), String> {
        *self.mem.dirty.lock().map_err(|_| "dirty lock poisoned")? =
            Some(DirtyBitmap::new(self.mem.size / u64::from(PAGE)));
        Ok(())
    }

    fn fetch_and_clear(&self) -> Result<BTreeMap<u32, DirtyBitmap>, String> {
        let mut d = self.mem.dirty.lock().map_err(|_| "dirty lock poisoned")?;
        let d = d.as_mut().ok_or("dirty logging is not on")?;
        let out = d.clone();
        d.clear();
        Ok(BTreeMap::from([(0, out)]))
    }

    fn stop(&self) {
        if let Ok(mut d) = self.mem.dirty.lock() {
            *d = None;
        }
    }
}

impl Vcpus for Synthetic {
    fn pause(&self) -> Result<(), String> {
        let mut g = self.run.0.lock().map_err(|_| "run lock poisoned")?;
        g.paused = true;
        Ok(())
    }

    fn resume(&self) -> Result<(), String> {
        let mut g = self.run.0.lock().map_err(|_| "run lock poisoned")?;
        g.paused = false;
        self.run.1.notify_all();
        Ok(())
    }

    fn throttle(&self, percent: u8) {
        self.throttle.store(percent.min(99), Ordering::Relaxed);
    }
}

impl Synthetic {
    /// Writes a compressible pattern over every page (tests).
    pub fn write_pattern(&self) {
        for (i, s) in self.mem.stripes.iter().enumerate() {
            if let Ok(mut s) = s.write() {
                for (j, p) in s.chunks_exact_mut(PAGE as usize).enumerate() {
                    p[..8].copy_from_slice(&((i * 1000 + j) as u64).to_le_bytes());
                }
            }
        }
    }
}
