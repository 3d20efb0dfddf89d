//! The embedding API: what a VMM implements so the engine can migrate it.
//!
//! A VMM hands the engine one [`Vm`]: its guest memory regions, a dirty log
//! over them, vCPU pause/resume hooks, and a [`DeviceRegistry`] whose entries
//! save and load their state through serde with a type name and a version.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::DeserializeOwned;
use serde::Serialize;
use vmstream::Value;

/// One region of guest memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Region {
    /// Id that page batches refer to; unique within the VM.
    pub id: u32,
    /// Name, e.g. `ram0`; the destination must have a region of the same name
    /// and size.
    pub name: String,
    /// Size in bytes, a multiple of the page size.
    pub size: u64,
}

/// A set of dirty pages of one region: bit `i` of word `i / 64` is page `i`.
/// This is the layout of `KVM_GET_DIRTY_LOG`'s bitmap, so a KVM dirty log
/// plugs in without conversion; a dirty ring fills one with `set`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DirtyBitmap {
    words: Vec<u64>,
    pages: u64,
}

impl DirtyBitmap {
    /// An empty bitmap over `pages` pages.
    pub fn new(pages: u64) -> DirtyBitmap {
        DirtyBitmap {
            words: vec![0; pages.div_ceil(64) as usize],
            pages,
        }
    }

    /// A bitmap with every page set.
    pub fn full(pages: u64) -> DirtyBitmap {
        let mut b = DirtyBitmap::new(pages);
        for w in &mut b.words {
            *w = u64::MAX;
        }
        b.trim();
        b
    }

    /// Wraps KVM-layout words; bits past `pages` are ignored.
    pub fn from_words(words: Vec<u64>, pages: u64) -> DirtyBitmap {
        let mut b = DirtyBitmap { words, pages };
        b.words.resize(pages.div_ceil(64) as usize, 0);
        b.trim();
        b
    }

    fn trim(&mut self) {
        let rem = self.pages % 64;
        if rem != 0 {
            if let Some(last) = self.words.last_mut() {
                *last &= (1u64 << rem) - 1;
            }
        }
    }

    /// Number of pages the bitmap covers.
    pub fn pages(&self) -> u64 {
        self.pages
    }

    /// Marks page `i` dirty (ignored past the end).
    pub fn set(&mut self, i: u64) {
        if i < self.pages {
            self.words[(i / 64) as usize] |= 1 << (i % 64);
        }
    }

    /// Whether page `i` is dirty.
    pub fn get(&self, i: u64) -> bool {
        i < self.pages && self.words[(i / 64) as usize] & (1 << (i % 64)) != 0
    }

    /// Adds every page dirty in `other`.
    pub fn union(&mut self, other: &DirtyBitmap) {
        for (a, b) in self.words.iter_mut().zip(&other.words) {
            *a |= *b;
        }
    }

    /// Number of dirty pages.
    pub fn count(&self) -> u64 {
        self.words.iter().map(|w| u64::from(w.count_ones())).sum()
    }

    /// Clears every page.
    pub fn clear(&mut self) {
        self.words.iter_mut().for_each(|w| *w = 0);
    }

    /// The dirty pages, as runs `(first, count)` in rising order.
    pub fn runs(&self) -> Vec<(u64, u64)> {
        let mut out: Vec<(u64, u64)> = Vec::new();
        for (wi, &w) in self.words.iter().enumerate() {
            let mut w = w;
            while w != 0 {
                let bit = u64::from(w.trailing_zeros());
                let page = wi as u64 * 64 + bit;
                match out.last_mut() {
                    Some((first, count)) if *first + *count == page => *count += 1,
                    _ => out.push((page, 1)),
                }
                w &= w - 1;
            }
        }
        out
    }
}

/// Guest memory as the engine sees it. Implementations must allow reads while
/// vCPUs run (the engine re-sends what the dirty log reports) and writes only
/// on a destination whose vCPUs are not running.
pub trait GuestMemory: Send + Sync {
    /// The page size in bytes (a power of two).
    fn page_size(&self) -> u32;
    /// The regions, in a stable order.
    fn regions(&self) -> Vec<Region>;
    /// Copies `out.len()` bytes (whole pages) of region `region` from byte
    /// `offset` into `out`.
    fn read(&self, region: u32, offset: u64, out: &mut [u8]) -> Result<(), String>;
    /// Writes `data` (whole pages) into region `region` at byte `offset`.
    fn write(&self, region: u32, offset: u64, data: &[u8]) -> Result<(), String>;
    /// CRC32C of a whole region (called with vCPUs paused). The default reads
    /// it in 1 MiB pieces; an implementation with direct access can skip
    /// the copy.
    fn crc32c(&self, region: &Region) -> Result<u32, String> {
        let mut buf = vec![0u8; 1 << 20];
        let mut crc = vmstream::Crc32c::new();
        let mut at = 0;
        while at < region.size {
            let n = (region.size - at).min(buf.len() as u64) as usize;
            self.read(region.id, at, &mut buf[..n])?;
            crc.update(&buf[..n]);
            at += n as u64;
        }
        Ok(crc.finish())
    }
}

/// Dirty-page tracking over guest memory: a KVM dirty bitmap
/// (`KVM_GET_DIRTY_LOG`, or manual protect with `KVM_CLEAR_DIRTY_LOG`), a dirty
/// ring, or a VMM's own log. Implementations OR in the VMM's own writes.
pub trait DirtyLog: Send + Sync {
    /// Starts tracking: pages written from now on are reported.
    fn start(&self) -> Result<(), String>;
    /// Returns the pages written since `start` or the previous fetch, per
    /// region id, and clears them.
    fn fetch_and_clear(&self) -> Result<BTreeMap<u32, DirtyBitmap>, String>;
    /// Stops tracking.
    fn stop(&self);
}

/// The VMM's vCPUs, as far as migration needs them.
pub trait Vcpus: Send + Sync {
    /// Stops every vCPU; returns once none runs.
    fn pause(&self) -> Result<(), String>;
    /// Lets them run again.
    fn resume(&self) -> Result<(), String>;
    /// Auto-converge: slows the vCPUs to `percent` % of their time (0 stops
    /// throttling). The default does nothing.
    fn throttle(&self, percent: u8) {
        let _ = percent;
    }
}

/// One migratable device: saved and loaded as a vmstream [`Value`] with a type
/// name and a state version.
pub trait Device: Send {
    /// Instance name, unique in the VM (e.g. `serial0`).
    fn name(&self) -> &str;
    /// Device type: keys versions and transforms (e.g. `uart-16550`).
    fn type_name(&self) -> &str;
    /// The state version this build saves.
    fn version(&self) -> u32;
    /// The state versions this build loads, lowest first.
    fn loads(&self) -> std::ops::RangeInclusive<u32> {
        self.version()..=self.version()
    }
    /// Saves the state (vCPUs paused).
    fn save(&self) -> Result<Value, String>;
    /// Loads a state of `version` (within [`Device::loads`]).
    fn load(&mut self, version: u32, state: &Value) -> Result<(), String>;
}

/// A serde device: any `Serialize + DeserializeOwned` state behind a lock.
pub struct SerdeDevice<T> {
    name: String,
    type_name: String,
    version: u32,
    state: std::sync::Arc<std::sync::Mutex<T>>,
}

impl<T> fmt::Debug for SerdeDevice<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SerdeDevice")
            .field("name", &self.name)
            .field("type_name", &self.type_name)
            .field("version", &self.version)
            .finish()
    }
}

impl<T> SerdeDevice<T> {
    /// A device whose state is `state` (shared with the VMM, which keeps using it).
    pub fn new(
        name: &str,
        type_name: &str,
        version: u32,
        state: std::sync::Arc<std::sync::Mutex<T>>,
    ) -> SerdeDevice<T> {
        SerdeDevice {
            name: name.to_owned(),
            type_name: type_name.to_owned(),
            version,
            state,
        }
    }
}

impl<T: Serialize + DeserializeOwned + Send> Device for SerdeDevice<T> {
    fn name(&self) -> &str {
        &self.name
    }
    fn type_name(&self) -> &str {
        &self.type_name
    }
    fn version(&self) -> u32 {
        self.version
    }
    fn save(&self) -> Result<Value, String> {
        let s = self
            .state
            .lock()
            .map_err(|_| "device state lock poisoned")?;
        vmstream::to_value(&*s).map_err(|e| e.to_string())
    }
    fn load(&mut self, _version: u32, state: &Value) -> Result<(), String> {
        let v: T = vmstream::from_value(state).map_err(|e| e.to_string())?;
        *self
            .state
            .lock()
            .map_err(|_| "device state lock poisoned")? = v;
        Ok(())
    }
}

/// The devices of a VM, in registration order (which is save and load order).
#[derive(Default)]
pub struct DeviceRegistry {
    devices: Vec<Box<dyn Device>>,
}

impl fmt::Debug for DeviceRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.devices.iter().map(|d| d.name()))
            .finish()
    }
}

impl DeviceRegistry {
    /// An empty registry.
    pub fn new() -> DeviceRegistry {
        DeviceRegistry::default()
    }

    /// Adds a device; names must be unique.
    pub fn register(&mut self, device: Box<dyn Device>) -> Result<(), String> {
        if self.devices.iter().any(|d| d.name() == device.name()) {
            return Err(format!("device {} registered twice", device.name()));
        }
        self.devices.push(device);
        Ok(())
    }

    /// The devices.
    pub fn iter(&self) -> impl Iterator<Item = &dyn Device> {
        self.devices.iter().map(|d| d.as_ref())
    }

    /// The device named `name`.
    pub fn get_mut(&mut self, name: &str) -> Option<&mut (dyn Device + 'static)> {
        self.devices
            .iter_mut()
            .find(|d| d.name() == name)
            .map(|d| d.as_mut())
    }

    /// Number of devices.
    pub fn len(&self) -> usize {
        self.devices.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.devices.is_empty()
    }
}

/// Everything the engine needs of one VM.
pub struct Vm {
    /// Guest memory.
    pub memory: std::sync::Arc<dyn GuestMemory>,
    /// Its dirty log (source side).
    pub dirty: std::sync::Arc<dyn DirtyLog>,
    /// The vCPUs.
    pub vcpus: std::sync::Arc<dyn Vcpus>,
    /// The devices.
    pub devices: std::sync::Arc<std::sync::Mutex<DeviceRegistry>>,
}

impl fmt::Debug for Vm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Vm")
            .field("regions", &self.memory.regions())
            .field("devices", &self.devices)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bitmap_runs_and_counts() {
        let mut b = DirtyBitmap::new(200);
        for i in [0, 1, 2, 63, 64, 65, 130, 199, 250] {
            b.set(i);
        }
        assert_eq!(b.count(), 8);
        assert_eq!(b.runs(), vec![(0, 3), (63, 3), (130, 1), (199, 1)]);
        assert!(b.get(64) && !b.get(66) && !b.get(250));
        let f = DirtyBitmap::full(130);
        assert_eq!(f.count(), 130);
        assert_eq!(f.runs(), vec![(0, 130)]);
        let k = DirtyBitmap::from_words(vec![u64::MAX, u64::MAX, u64::MAX], 70);
        assert_eq!(k.count(), 70);
    }
}
