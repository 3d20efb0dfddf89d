//! Test helpers for vmstream: the committed sample stream, random pages, and a
//! framing helper for hand-made (possibly invalid) records.
//!
//! Only ever a dev-dependency.

pub mod qemu;

use serde::{Deserialize, Serialize};
use vmstream::{
    Arch, Compression, Header, RamBlock, StreamKind, StreamWriter, Value, WriterOptions,
};

/// A 16550 UART's state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Uart {
    /// Interrupt enable register.
    pub ier: u8,
    /// Line control register.
    pub lcr: u8,
    /// Modem control register.
    pub mcr: u8,
    /// Baud divisor.
    pub divisor: u16,
    /// Bytes waiting in the receive FIFO.
    pub rx_fifo: Vec<u8>,
}

/// One virtqueue.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Queue {
    /// Ring size.
    pub size: u16,
    /// Guest address of the descriptor table.
    pub desc_addr: u64,
    /// Next available index.
    pub last_avail: u16,
    /// Whether the driver enabled the queue.
    pub enabled: bool,
}

/// Link state of a network device.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Link {
    /// Up.
    Up,
    /// Down, with why.
    Down {
        /// Why.
        reason: String,
    },
}

/// A virtio-net device's state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VirtioNet {
    /// MAC address.
    pub mac: [u8; 6],
    /// Device status byte.
    pub status: u8,
    /// Link state.
    pub link: Link,
    /// Virtqueues.
    pub queues: Vec<Queue>,
    /// MTU, if negotiated.
    pub mtu: Option<u16>,
    /// Signed counter (to cover signed widths).
    pub credit: i32,
}

/// The devices in [`sample_stream`].
pub fn sample_devices() -> (Uart, VirtioNet) {
    let uart = Uart {
        ier: 0x01,
        lcr: 0x03,
        mcr: 0x0b,
        divisor: 1,
        rx_fifo: b"login:".to_vec(),
    };
    let net = VirtioNet {
        mac: [0x52, 0x54, 0x00, 0x12, 0x34, 0x56],
        status: 0x0f,
        link: Link::Down {
            reason: "cable".into(),
        },
        queues: (0..2u16)
            .map(|i| Queue {
                size: 256,
                desc_addr: 0x10_0000 + u64::from(i) * 0x1000,
                last_avail: 17 + i,
                enabled: i == 0,
            })
            .collect(),
        mtu: Some(1500),
        credit: -42,
    };
    (uart, net)
}

/// Page size of the sample.
pub const PAGE: usize = 4096;

/// The sample stream committed as `testdata/good/sample.vms`: info, a schema,
/// two serde devices, two RAM blocks, data and zero pages over two epochs with
/// barriers, and an index. Deterministic.
pub fn sample_stream() -> Vec<u8> {
    sample_stream_with(WriterOptions::default())
}

/// [`sample_stream`] with other writer options (compression, index).
pub fn sample_stream_with(options: WriterOptions) -> Vec<u8> {
    let build = || -> vmstream::Result<Vec<u8>> {
        let (uart, net) = sample_devices();
        let mut header = Header::new(StreamKind::Snapshot, Arch::X86_64, PAGE as u32);
        header.writer = "vmstream-testkit 1".into();
        let mut w = StreamWriter::new(Vec::new(), header, options)?;
        w.write_info(&Value::Struct(vec![
            ("vmm".into(), Value::String("testkit-vmm 1.0".into())),
            ("vcpus".into(), Value::U32(2)),
            (
                "capabilities".into(),
                Value::Seq(vec![Value::String("zero-pages".into())]),
            ),
        ]))?;
        let uart_value = vmstream::to_value(&uart)?;
        w.write_schema(&vmstream::record::SchemaRecord {
            type_name: "uart-16550".into(),
            version: 1,
            schema: vmstream::schema::of(&uart_value),
        })?;
        w.write_ram_blocks(&[
            RamBlock {
                id: 0,
                name: "ram-low".into(),
                size: 16 * PAGE as u64,
                page_size: 4096,
                flags: 0,
            },
            RamBlock {
                id: 1,
                name: "bios".into(),
                size: 4 * PAGE as u64,
                page_size: 4096,
                flags: RamBlock::FLAG_READONLY,
            },
        ])?;
        let mut data = vec![0u8; PAGE];
        for index in 0..16u64 {
            data.fill(0);
            if index % 8 == 0 {
                fill_pattern(&mut data, index);
            }
            w.write_page(0, 0, index, &data)?;
        }
        data.fill(0xf4);
        w.write_page(1, 0, 3, &data)?;
        w.write_epoch(0)?;
        fill_pattern(&mut data, 1000);
        w.write_page(0, 1, 3, &data)?;
        data.fill(0);
        w.write_page(0, 1, 8, &data)?;
        w.write_epoch(1)?;
        w.write_device_serde("serial0", 0, "uart-16550", 1, &uart)?;
        w.write_device_serde("0000:00:03.0/virtio-net", 0, "virtio-net", 2, &net)?;
        w.finish()
    };
    match build() {
        Ok(b) => b,
        Err(e) => panic!("the sample stream must build: {e}"),
    }
}

/// Fills a page with a deterministic pattern derived from `seed`.
pub fn fill_pattern(page: &mut [u8], seed: u64) {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    for chunk in page.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let b = x.to_le_bytes();
        chunk.copy_from_slice(&b[..chunk.len()]);
    }
}

/// `n` pages of pseudo-random bytes.
pub fn random_pages(n: usize, seed: u64) -> Vec<u8> {
    let mut v = vec![0u8; n * PAGE];
    for (i, p) in v.chunks_mut(PAGE).enumerate() {
        fill_pattern(p, seed.wrapping_add(i as u64));
    }
    v
}

/// Frames a record exactly as `docs/format.md` §3 says, whatever the body: for
/// hand-made inputs the writer would refuse.
pub fn frame(kind: u16, flags: u16, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&kind.to_le_bytes());
    out.extend_from_slice(&flags.to_le_bytes());
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(body);
    let padded = (body.len() + 4).div_ceil(8) * 8 - 4;
    out.resize(8 + padded, 0);
    let crc = crc32c(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// A header for hand-made streams.
pub fn header_bytes() -> Vec<u8> {
    match Header::new(StreamKind::Snapshot, Arch::X86_64, PAGE as u32).encode() {
        Ok(b) => b,
        Err(e) => panic!("header must encode: {e}"),
    }
}

/// The 32-byte `end` record for a stream with `records` records before it.
pub fn end_record(records: u64) -> Vec<u8> {
    let mut body = records.to_le_bytes().to_vec();
    body.extend_from_slice(&0u64.to_le_bytes());
    frame(0x00ff, 0, &body)
}

/// CRC32C (Castagnoli), bitwise: independent of the implementation under test.
pub fn crc32c(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0x82f6_3b78
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// A compressed variant of the sample, for tests.
pub fn sample_compressed(c: Compression) -> Vec<u8> {
    sample_stream_with(WriterOptions::default().with_compression(c))
}
