//! Writes a small snapshot of a made-up VM with serde device state, then reads
//! it back: the library's whole round trip in one page.
//!
//! ```text
//! cargo run -p vmstream --example snapshot -- /tmp/vm.vms
//! vmstream inspect /tmp/vm.vms
//! ```

use serde::{Deserialize, Serialize};
use vmstream::{
    Arch, Compression, Header, Limits, RamBlock, Record, StreamKind, StreamReader, StreamWriter,
    Value, WriterOptions,
};

/// A 16550 UART.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Uart {
    ier: u8,
    lcr: u8,
    mcr: u8,
    divisor: u16,
    rx_fifo: Vec<u8>,
}

/// A virtio queue's ring positions.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Queue {
    size: u16,
    desc_addr: u64,
    last_avail: u16,
    enabled: bool,
}

/// A virtio-net device.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
enum LinkState {
    Up,
    Down { reason: String },
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct VirtioNet {
    mac: [u8; 6],
    status: u8,
    link: LinkState,
    queues: Vec<Queue>,
    mtu: Option<u16>,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "vm.vms".to_owned());
    let page = 4096usize;
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
        link: LinkState::Up,
        queues: (0..2)
            .map(|i| Queue {
                size: 256,
                desc_addr: 0x10_0000 + i * 0x1000,
                last_avail: 17 + i as u16,
                enabled: true,
            })
            .collect(),
        mtu: Some(1500),
    };

    let mut header = Header::new(StreamKind::Snapshot, Arch::X86_64, page as u32);
    header.writer = "vmstream-example 1".to_owned();
    let options = WriterOptions::default().with_compression(Compression::Zstd(3));
    let file = std::io::BufWriter::new(std::fs::File::create(&path)?);
    let mut w = StreamWriter::new(file, header, options)?;
    w.write_info(&Value::Struct(vec![
        ("vmm".into(), Value::String("example-vmm 0.1".into())),
        ("vcpus".into(), Value::U32(2)),
    ]))?;
    w.write_ram_blocks(&[
        RamBlock {
            id: 0,
            name: "ram-low".into(),
            size: 1 << 20,
            page_size: 4096,
            flags: 0,
        },
        RamBlock {
            id: 1,
            name: "bios".into(),
            size: 64 << 10,
            page_size: 4096,
            flags: RamBlock::FLAG_READONLY,
        },
    ])?;
    // Round 0: every page of the low RAM (most are zero), round 1: two dirtied pages.
    let mut data = vec![0u8; page];
    for index in 0..256u64 {
        data.fill(0);
        if index % 16 == 0 {
            data[..8].copy_from_slice(&index.to_le_bytes());
            data[page - 1] = 0xa5;
        }
        w.write_page(0, 0, index, &data)?;
    }
    w.write_page(1, 0, 15, &[0xf4; 4096])?;
    w.write_epoch(0)?;
    data.fill(0x77);
    w.write_page(0, 1, 3, &data)?;
    w.write_page(0, 1, 16, &data)?;
    w.write_epoch(1)?;
    w.write_device_serde("serial0", 0, "uart-16550", 1, &uart)?;
    w.write_device_serde("0000:00:03.0/virtio-net", 0, "virtio-net", 2, &net)?;
    let _ = w.finish()?;

    let mut r = StreamReader::new(
        std::io::BufReader::new(std::fs::File::open(&path)?),
        Limits::default(),
    )?;
    while let Some(item) = r.next()? {
        if let Record::Device(dev) = item.record {
            match dev.type_name.as_str() {
                "uart-16550" => assert_eq!(vmstream::from_device::<Uart>(&dev)?, uart),
                "virtio-net" => assert_eq!(vmstream::from_device::<VirtioNet>(&dev)?, net),
                _ => {}
            }
        }
    }
    println!("wrote and checked {path}");
    Ok(())
}
