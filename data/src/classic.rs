//! Truncation check of NetCDF classic files.
//!
//! libnetcdf reads past the end of a truncated classic (CDF-1/2/5) file as if the missing
//! bytes were fill values, without an error. So before converting a classic file, its header
//! is parsed (NetCDF Classic Format Specification, "The NetCDF Classic Format Specification"
//! in the NetCDF User's Guide: magic, numrecs, dim_list, gatt_list, var_list with `vsize` and
//! `begin`) and the file must be at least as long as its last variable's data ends.

use std::io::Read;
use std::path::Path;

use crate::DataError;

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    /// CDF-5: 64-bit counts and dimension ids.
    wide: bool,
    /// CDF-2 and CDF-5: 64-bit `begin` offsets.
    wide_offsets: bool,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Option<&[u8]> {
        let s = self.buf.get(self.pos..self.pos.checked_add(n)?)?;
        self.pos += n;
        Some(s)
    }
    fn u32(&mut self) -> Option<u64> {
        Some(u64::from(u32::from_be_bytes(
            self.take(4)?.try_into().ok()?,
        )))
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_be_bytes(self.take(8)?.try_into().ok()?))
    }
    fn count(&mut self) -> Option<u64> {
        if self.wide {
            self.u64()
        } else {
            self.u32()
        }
    }
    fn offset(&mut self) -> Option<u64> {
        if self.wide_offsets {
            self.u64()
        } else {
            self.u32()
        }
    }
    fn name(&mut self) -> Option<()> {
        let n = self.count()? as usize;
        self.take(n.checked_add(3)? / 4 * 4)?;
        Some(())
    }
    fn type_size(t: u64) -> Option<u64> {
        Some(match t {
            1 | 2 | 7 => 1,   // byte, char, ubyte
            3 | 8 => 2,       // short, ushort
            4 | 5 | 9 => 4,   // int, float, uint
            6 | 10 | 11 => 8, // double, int64, uint64
            _ => return None,
        })
    }
    fn atts(&mut self) -> Option<()> {
        let tag = self.u32()?;
        let n = self.count()?;
        if tag == 0 {
            return Some(());
        }
        if tag != 0x0C {
            return None;
        }
        for _ in 0..n {
            self.name()?;
            let t = self.u32()?;
            let k = self.count()?;
            let bytes = k.checked_mul(Self::type_size(t)?)?;
            self.take(usize::try_from(bytes.checked_add(3)? / 4 * 4).ok()?)?;
        }
        Some(())
    }
}

/// The number of bytes a classic file needs, from its header; `None` if the header cannot be
/// parsed (then libnetcdf's own error is reported) or uses streaming numrecs.
fn required_len(head: &[u8]) -> Option<u64> {
    if head.get(..3)? != b"CDF" {
        return None;
    }
    let version = *head.get(3)?;
    let mut r = Reader {
        buf: head,
        pos: 4,
        wide: version == 5,
        wide_offsets: version == 2 || version == 5,
    };
    let numrecs = r.count()?;
    if numrecs == u64::from(u32::MAX) || numrecs == u64::MAX {
        return None; // streaming
    }
    // Dimensions: lengths (0 = the record dimension).
    let tag = r.u32()?;
    let n = r.count()?;
    let mut dims = Vec::new();
    if tag == 0x0A {
        for _ in 0..n {
            r.name()?;
            dims.push(r.count()?);
        }
    } else if tag != 0 {
        return None;
    }
    r.atts()?;
    let tag = r.u32()?;
    let n = r.count()?;
    if tag == 0 {
        return Some(r.pos as u64);
    }
    if tag != 0x0B {
        return None;
    }
    // (begin, bytes of one record or of the whole variable, is record variable)
    let mut vars = Vec::new();
    for _ in 0..n {
        r.name()?;
        let nd = r.count()?;
        let mut ids = Vec::new();
        for _ in 0..nd {
            ids.push(r.count()? as usize);
        }
        r.atts()?;
        let t = r.u32()?;
        let vsize = r.count()?;
        let begin = r.offset()?;
        let is_rec = ids
            .first()
            .map(|&i| dims.get(i) == Some(&0))
            .unwrap_or(false);
        let mut elems: u64 = 1;
        for (k, &i) in ids.iter().enumerate() {
            let len = *dims.get(i)?;
            if !(k == 0 && is_rec) {
                elems = elems.checked_mul(len)?;
            }
        }
        let bytes = elems.checked_mul(Reader::type_size(t)?)?;
        vars.push((begin, bytes, is_rec, vsize));
    }
    let recsize: u64 = vars.iter().filter(|v| v.2).map(|v| v.3).sum();
    let mut need = r.pos as u64;
    for &(begin, bytes, is_rec, _) in &vars {
        let end = if is_rec {
            if numrecs == 0 {
                continue;
            }
            begin + (numrecs - 1) * recsize + bytes
        } else {
            begin + bytes
        };
        need = need.max(end);
    }
    Some(need)
}

/// Fails if `path` is a NetCDF classic file shorter than its header says.
pub(crate) fn check_truncation(path: &Path) -> Result<(), DataError> {
    let mut f = std::fs::File::open(path)
        .map_err(|e| DataError::io(format!("reading {}", path.display()), e))?;
    let len = f
        .metadata()
        .map_err(|e| DataError::io(format!("reading {}", path.display()), e))?
        .len();
    // Headers are small; read up to 16 MiB of it.
    let mut head = Vec::new();
    f.by_ref()
        .take(16 << 20)
        .read_to_end(&mut head)
        .map_err(|e| DataError::io(format!("reading {}", path.display()), e))?;
    if let Some(need) = required_len(&head) {
        if len < need {
            return Err(DataError::UnreadableSource {
                path: path.to_path_buf(),
                reason: format!(
                    "truncated NetCDF classic file: its header describes {need} bytes of data but the file has {len}"
                ),
            });
        }
    }
    Ok(())
}
