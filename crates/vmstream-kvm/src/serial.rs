//! A 16550 UART at 0x3f8, emulated as far as a polling driver needs: THR
//! writes, LSR reads that report the transmitter empty, and the other
//! registers as plain storage. Its state is a serde struct, migrated as the
//! device `serial0` (`uart-16550`, version 1): the line the guest is in the
//! middle of writing moves with it and is finished on the destination.

use serde::{Deserialize, Serialize};

/// The first I/O port.
pub const PORT: u16 = 0x3f8;

/// The registers of a 16550 and the output line being written.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Uart {
    /// Interrupt enable register.
    pub ier: u8,
    /// FIFO control register (as last written).
    pub fcr: u8,
    /// Line control register (bit 7: divisor latch access).
    pub lcr: u8,
    /// Modem control register.
    pub mcr: u8,
    /// Scratch register.
    pub scr: u8,
    /// Divisor latch, low byte.
    pub dll: u8,
    /// Divisor latch, high byte.
    pub dlm: u8,
    /// Bytes the guest has sent.
    pub bytes_out: u64,
    /// The bytes of the current line, not yet passed on.
    pub line: Vec<u8>,
}

const DLAB: u8 = 0x80;
/// LSR: transmit holding register empty, transmitter empty.
const LSR_THR_EMPTY: u8 = 0x60;
/// MSR: clear to send, data set ready, carrier detect.
const MSR_LINES: u8 = 0xb0;
const MAX_LINE: usize = 4096;

impl Uart {
    /// A write of `value` to port `PORT + offset`; returns a finished line.
    pub fn write(&mut self, offset: u16, value: u8) -> Option<String> {
        match (offset, self.lcr & DLAB != 0) {
            (0, true) => self.dll = value,
            (1, true) => self.dlm = value,
            (0, false) => {
                self.bytes_out += 1;
                if value == b'\n' || self.line.len() >= MAX_LINE {
                    let line = String::from_utf8_lossy(&self.line).into_owned();
                    self.line.clear();
                    if value != b'\n' {
                        self.line.push(value);
                    }
                    return Some(line);
                }
                self.line.push(value);
            }
            (1, false) => self.ier = value & 0x0f,
            (2, _) => self.fcr = value,
            (3, _) => self.lcr = value,
            (4, _) => self.mcr = value & 0x1f,
            (7, _) => self.scr = value,
            _ => {}
        }
        None
    }

    /// A read of port `PORT + offset`.
    pub fn read(&self, offset: u16) -> u8 {
        match (offset, self.lcr & DLAB != 0) {
            (0, true) => self.dll,
            (1, true) => self.dlm,
            (0, false) => 0, // nothing is ever received
            (1, false) => self.ier,
            (2, _) => 0x01, // no interrupt pending
            (3, _) => self.lcr,
            (4, _) => self.mcr,
            (5, _) => LSR_THR_EMPTY,
            (6, _) => MSR_LINES,
            (7, _) => self.scr,
            _ => 0xff,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_and_registers() {
        let mut u = Uart::default();
        assert_eq!(u.read(5) & 0x20, 0x20);
        for b in b"coun" {
            assert_eq!(u.write(0, *b), None);
        }
        // The half-written line survives a save and load.
        let mut v: Uart = vmstream::from_value(&vmstream::to_value(&u).unwrap()).unwrap();
        for b in b"ter 7" {
            assert_eq!(v.write(0, *b), None);
        }
        assert_eq!(v.write(0, b'\n').as_deref(), Some("counter 7"));
        assert_eq!(v.bytes_out, 10);
        v.write(3, 0x80);
        v.write(0, 0x0c);
        assert_eq!((v.dll, v.read(0)), (0x0c, 0x0c));
        v.write(3, 0x03);
        assert_eq!(v.read(3), 0x03);
        assert!(v.line.is_empty());
    }
}
