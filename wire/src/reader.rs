//! A bounds-checked cursor for decoding payloads.
//!
//! Every read states what it is reading so that a short or malformed payload
//! is reported by field name; no read allocates more than the bytes present.

use crate::error::WireError;

pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    what: &'static str,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8], what: &'static str) -> Self {
        Reader { buf, what }
    }

    pub(crate) fn u8(&mut self) -> Result<u8, WireError> {
        let (first, rest) = self
            .buf
            .split_first()
            .ok_or_else(|| WireError::malformed(self.what, "truncated"))?;
        self.buf = rest;
        Ok(*first)
    }

    pub(crate) fn u16(&mut self) -> Result<u16, WireError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    pub(crate) fn u32(&mut self) -> Result<u32, WireError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub(crate) fn u64(&mut self) -> Result<u64, WireError> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_be_bytes(a))
    }

    pub(crate) fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        if self.buf.len() < n {
            return Err(WireError::malformed(self.what, "truncated"));
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    /// A name: one length byte, then that many bytes of `[A-Za-z0-9._-]`.
    pub(crate) fn name(&mut self) -> Result<&'a str, WireError> {
        let len = self.u8()? as usize;
        let bytes = self.take(len)?;
        crate::text::check_name(bytes).map_err(|why| WireError::malformed(self.what, why))
    }

    /// A blob: a big-endian u16 length, then that many bytes.
    pub(crate) fn blob(&mut self) -> Result<&'a [u8], WireError> {
        let len = self.u16()? as usize;
        self.take(len)
    }

    pub(crate) fn finish(self) -> Result<(), WireError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(WireError::malformed(self.what, "trailing bytes"))
        }
    }
}

/// Append a name (length byte + bytes). The caller validated it.
pub(crate) fn put_name(out: &mut Vec<u8>, name: &str) {
    debug_assert!(name.len() <= crate::text::MAX_NAME_LEN);
    out.push(name.len() as u8);
    out.extend_from_slice(name.as_bytes());
}

/// Append a blob (u16 length + bytes). The caller bounded its length.
pub(crate) fn put_blob(out: &mut Vec<u8>, blob: &[u8]) {
    debug_assert!(blob.len() <= u16::MAX as usize);
    out.extend_from_slice(&(blob.len() as u16).to_be_bytes());
    out.extend_from_slice(blob);
}
