//! Delimiting a device section no description covers: by its footer.

use std::io::Read;

use vmstream::Result;

use super::QemuReader;
use crate::wire::{COMMAND, COMMAND_NAMES, EOF, FOOTER, VMDESC};

impl<R: Read> QemuReader<R> {
    /// Finds the end of a device body by its footer: the first `0x7e` + section
    /// id that is followed by a well-formed record start. Needs footers.
    pub(super) fn footer_scan(&mut self, id: u32) -> Result<Option<usize>> {
        self.buffer_rest()?;
        let data = self.input.avail();
        let idb = id.to_be_bytes();
        let known = |sid: u32| self.sections.get(&sid);
        let plausible = |rest: &[u8]| -> bool {
            let be32 = |b: &[u8]| u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
            match rest.first() {
                Some(&EOF) => rest.len() == 1 || rest[1] == VMDESC,
                Some(&(0x01 | 0x04)) if rest.len() >= 6 => {
                    let n = usize::from(rest[5]);
                    n > 0
                        && rest.len() >= 14 + n
                        && known(be32(&rest[1..])).is_none()
                        && rest[6..6 + n].iter().all(|c| (0x20..0x7f).contains(c))
                }
                Some(&(0x02 | 0x03)) if rest.len() >= 5 => {
                    known(be32(&rest[1..])).is_some_and(|s| s.ram || s.iterative.is_some())
                }
                Some(&COMMAND) if rest.len() >= 5 => {
                    let cmd = usize::from(u16::from_be_bytes([rest[1], rest[2]]));
                    (1..COMMAND_NAMES.len()).contains(&cmd)
                }
                _ => false,
            }
        };
        Ok((0..data.len().saturating_sub(5))
            .find(|&p| data[p] == FOOTER && data[p + 1..p + 5] == idb && plausible(&data[p + 5..])))
    }
}
