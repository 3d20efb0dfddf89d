//! RAM section records: flags, and decoding of the encoded page payloads.

use std::io::Read;

use vmstream::{Error, ErrorKind, Result};

/// Obsolete full-page flag; never sent.
pub const FLAG_FULL: u64 = 0x001;
/// The whole page equals one fill byte.
pub const FLAG_ZERO: u64 = 0x002;
/// The RAM block list.
pub const FLAG_MEM_SIZE: u64 = 0x004;
/// A raw page.
pub const FLAG_PAGE: u64 = 0x008;
/// End of the section's RAM records.
pub const FLAG_EOS: u64 = 0x010;
/// Same block as the previous page record: the name is left out.
pub const FLAG_CONTINUE: u64 = 0x020;
/// An XBZRLE delta against the previous copy of the page.
pub const FLAG_XBZRLE: u64 = 0x040;
/// RDMA hook; never in a file.
pub const FLAG_HOOK: u64 = 0x080;
/// A zlib-compressed page (QEMU 7.2 to 9.0).
pub const FLAG_COMPRESS_PAGE: u64 = 0x100;
/// Multifd flush point (8.1+).
pub const FLAG_MULTIFD_FLUSH: u64 = 0x200;

/// How a page-carrying record changes its page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PageUpdate<'a> {
    /// Every byte becomes `fill`.
    Fill(u8),
    /// An XBZRLE delta to apply to the current contents.
    Xbzrle(&'a [u8]),
    /// A zlib stream that inflates to the whole page.
    Zlib(&'a [u8]),
}

/// The page update a verbatim RAM record carries, if any (`None` for records
/// that touch no page, such as MULTIFD_FLUSH).
pub fn page_update(header: u64, payload: &[u8], page_size: u64) -> Result<Option<PageUpdate<'_>>> {
    if !page_size.is_power_of_two() {
        return Err(Error::new(
            ErrorKind::Usage,
            format!("page size {page_size} is not a power of two"),
        ));
    }
    let flags = header & (page_size - 1) & !FLAG_CONTINUE;
    let bad = |what: &str| {
        Error::new(
            ErrorKind::Malformed,
            format!("{what} RAM record payload is {} bytes", payload.len()),
        )
    };
    Ok(match flags {
        FLAG_ZERO => Some(PageUpdate::Fill(
            *payload.first().ok_or_else(|| bad("zero"))?,
        )),
        FLAG_XBZRLE => Some(PageUpdate::Xbzrle(
            payload.get(3..).ok_or_else(|| bad("XBZRLE"))?,
        )),
        FLAG_COMPRESS_PAGE => Some(PageUpdate::Zlib(
            payload.get(4..).ok_or_else(|| bad("compressed"))?,
        )),
        _ => None,
    })
}

/// Applies `update` to `page` (its current contents).
pub fn apply(update: PageUpdate<'_>, page: &mut [u8]) -> Result<()> {
    match update {
        PageUpdate::Fill(b) => page.fill(b),
        PageUpdate::Xbzrle(delta) => xbzrle_decode(delta, page)?,
        PageUpdate::Zlib(z) => {
            let mut d = flate2::read::ZlibDecoder::new(z);
            let mut got = 0;
            while got < page.len() {
                let n = d.read(&mut page[got..]).map_err(|e| {
                    Error::new(
                        ErrorKind::Malformed,
                        format!("compressed page does not inflate: {e}"),
                    )
                })?;
                if n == 0 {
                    break;
                }
                got += n;
            }
            let mut extra = [0u8; 1];
            let more = d.read(&mut extra).unwrap_or(1);
            if got != page.len() || more != 0 {
                return Err(Error::new(
                    ErrorKind::Malformed,
                    format!(
                        "compressed page inflates to {} bytes, expected exactly {}",
                        if more != 0 { got + 1 } else { got },
                        page.len()
                    ),
                ));
            }
        }
    }
    Ok(())
}

fn uleb(delta: &[u8], pos: &mut usize) -> Result<usize> {
    let mut v = 0usize;
    for shift in [0, 7, 14, 21] {
        let b = *delta.get(*pos).ok_or_else(|| {
            Error::new(
                ErrorKind::Malformed,
                format!("XBZRLE delta ends inside a run length at byte {}", *pos),
            )
        })?;
        *pos += 1;
        v |= usize::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Ok(v);
        }
    }
    Err(Error::new(
        ErrorKind::Malformed,
        format!("XBZRLE run length too long at byte {}", *pos),
    ))
}

/// Applies an XBZRLE delta (pairs of unchanged-run and new-bytes-run lengths,
/// LEB128) to `page` in place.
pub fn xbzrle_decode(delta: &[u8], page: &mut [u8]) -> Result<()> {
    let past_end = || Error::new(ErrorKind::Malformed, "XBZRLE delta runs past the page end");
    let (mut pos, mut at) = (0usize, 0usize);
    while pos < delta.len() {
        let zrun = uleb(delta, &mut pos)?;
        at = at
            .checked_add(zrun)
            .filter(|&a| a <= page.len())
            .ok_or_else(past_end)?;
        if pos == delta.len() {
            break;
        }
        let nzrun = uleb(delta, &mut pos)?;
        let src = pos.checked_add(nzrun).and_then(|e| delta.get(pos..e));
        let dst = at.checked_add(nzrun).and_then(|e| page.get_mut(at..e));
        match (src, dst) {
            (Some(s), Some(d)) if nzrun > 0 => d.copy_from_slice(s),
            _ => {
                return Err(Error::new(
                    ErrorKind::Malformed,
                    format!("XBZRLE run of {nzrun} bytes at page offset {at} does not fit (delta byte {pos})"),
                ))
            }
        }
        // both fit in slices, so neither sum overflows
        pos += nzrun;
        at += nzrun;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xbzrle_applies_runs() {
        let mut page = vec![0u8; 16];
        // 2 unchanged, 3 new bytes, 4 unchanged, 1 new byte
        xbzrle_decode(&[2, 3, 7, 8, 9, 4, 1, 0xaa], &mut page).unwrap();
        assert_eq!(page, [0, 0, 7, 8, 9, 0, 0, 0, 0, 0xaa, 0, 0, 0, 0, 0, 0]);
        assert!(xbzrle_decode(&[15, 5, 1, 2, 3, 4, 5], &mut page).is_err());
        assert!(xbzrle_decode(&[0x80], &mut page).is_err());
    }

    #[test]
    fn zlib_page_must_inflate_exactly() {
        use std::io::Write;
        let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(&[5u8; 64]).unwrap();
        let z = e.finish().unwrap();
        let mut page = vec![0u8; 64];
        apply(PageUpdate::Zlib(&z), &mut page).unwrap();
        assert_eq!(page, [5u8; 64]);
        let mut small = vec![0u8; 32];
        assert!(apply(PageUpdate::Zlib(&z), &mut small).is_err());
        assert!(apply(PageUpdate::Zlib(&z[..z.len() - 3]), &mut page).is_err());
    }
}
