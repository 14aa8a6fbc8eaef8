//! The raw side of the C interface: reading what the caller's pointers
//! point at and writing results back by the PKCS#11 conventions.
//!
//! Every dereference of a caller's pointer in this library happens in this
//! module. Each function states what the caller promised (the PKCS#11
//! contract for that argument); null pointers are checked here and become
//! `CKR_ARGUMENTS_BAD`, never a crash.

use cryptoki_sys::*;

pub type Result<T> = std::result::Result<T, CK_RV>;

/// Most attributes a template may carry (a bound on what one call reads).
const MAX_TEMPLATE: CK_ULONG = 256;
/// Longest attribute value read from a template (a certificate fits).
const MAX_ATTRIBUTE_VALUE: CK_ULONG = 64 * 1024;
/// Longest input buffer read in one call.
const MAX_INPUT: CK_ULONG = 16 * 1024 * 1024;

/// The caller's input bytes.
///
/// # Safety
/// `ptr` is null or valid for reads of `len` bytes for the duration of the
/// call (PKCS#11 input buffers).
pub unsafe fn bytes<'a>(ptr: *const u8, len: CK_ULONG) -> Result<&'a [u8]> {
    if len == 0 {
        return Ok(&[]);
    }
    if ptr.is_null() || len > MAX_INPUT {
        return Err(CKR_ARGUMENTS_BAD);
    }
    let len = usize::try_from(len).map_err(|_| CKR_ARGUMENTS_BAD)?;
    // SAFETY: non-null, and the caller promises `len` readable bytes.
    Ok(unsafe { std::slice::from_raw_parts(ptr, len) })
}

/// Store `value` where the caller's output pointer points.
///
/// # Safety
/// `ptr` is null or valid for a write of one `T` (PKCS#11 output argument).
pub unsafe fn write<T>(ptr: *mut T, value: T) -> Result<()> {
    if ptr.is_null() {
        return Err(CKR_ARGUMENTS_BAD);
    }
    // SAFETY: non-null, and the caller promises room for one `T`.
    unsafe { ptr.write(value) };
    Ok(())
}

/// Read one `T` from the caller.
///
/// # Safety
/// `ptr` is null or valid for a read of one `T`.
pub unsafe fn read<T: Copy>(ptr: *const T) -> Result<T> {
    if ptr.is_null() {
        return Err(CKR_ARGUMENTS_BAD);
    }
    // SAFETY: non-null, and the caller promises one readable `T`.
    Ok(unsafe { ptr.read_unaligned() })
}

/// What an output buffer is, before anything is computed: a size query (a
/// null buffer) or a buffer of some capacity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutBuf {
    SizeQuery,
    Capacity(usize),
}

/// Inspect the caller's `(pData, pulDataLen)` output pair.
///
/// # Safety
/// `len` is null or valid for a read of a `CK_ULONG`.
pub unsafe fn out_buf(out: *const u8, len: *const CK_ULONG) -> Result<OutBuf> {
    // SAFETY: forwarded contract.
    let capacity = unsafe { read(len) }?;
    if out.is_null() {
        return Ok(OutBuf::SizeQuery);
    }
    Ok(OutBuf::Capacity(
        usize::try_from(capacity).unwrap_or(usize::MAX),
    ))
}

/// Write `data` to the caller's output pair (§5.2 of the PKCS#11 base
/// specification): a null buffer only learns the length, a short buffer
/// gets `CKR_BUFFER_TOO_SMALL` with the length set.
///
/// # Safety
/// `len` is null or valid for a read and a write of a `CK_ULONG`; `out` is
/// null or valid for writes of `*len` bytes.
pub unsafe fn output(out: *mut u8, len: *mut CK_ULONG, data: &[u8]) -> CK_RV {
    // SAFETY: forwarded contract.
    let capacity = match unsafe { out_buf(out, len) } {
        Ok(c) => c,
        Err(rv) => return rv,
    };
    let needed = data.len() as CK_ULONG;
    // SAFETY: `len` was read above, so it is non-null and writable.
    unsafe { len.write(needed) };
    match capacity {
        OutBuf::SizeQuery => CKR_OK,
        OutBuf::Capacity(c) if c < data.len() => CKR_BUFFER_TOO_SMALL,
        OutBuf::Capacity(_) => {
            // SAFETY: `out` is non-null with room for at least `data.len()`
            // bytes (the caller's capacity), and cannot overlap our `data`.
            unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), out, data.len()) };
            CKR_OK
        }
    }
}

/// Write `items` to a caller's `(pList, pulCount)` pair with the same
/// conventions as [`output`].
///
/// # Safety
/// `count` is null or valid for a read and write of a `CK_ULONG`; `list` is
/// null or valid for writes of `*count` items.
pub unsafe fn output_list<T: Copy>(list: *mut T, count: *mut CK_ULONG, items: &[T]) -> CK_RV {
    // SAFETY: forwarded contract.
    let capacity = match unsafe { read(count) } {
        Ok(c) => c,
        Err(rv) => return rv,
    };
    // SAFETY: `count` was just read, so it is non-null and writable.
    unsafe { count.write(items.len() as CK_ULONG) };
    if list.is_null() {
        return CKR_OK;
    }
    if (capacity as usize) < items.len() {
        return CKR_BUFFER_TOO_SMALL;
    }
    // SAFETY: `list` has room for `capacity >= items.len()` items.
    unsafe { std::ptr::copy_nonoverlapping(items.as_ptr(), list, items.len()) };
    CKR_OK
}

/// One attribute of a caller's template, copied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attr {
    pub kind: CK_ATTRIBUTE_TYPE,
    pub value: Vec<u8>,
}

/// Copy a caller's template (`C_FindObjectsInit`, `C_GenerateKeyPair`…).
///
/// # Safety
/// `ptr` is null or valid for reads of `count` `CK_ATTRIBUTE`s, each of
/// whose `pValue` is null or valid for `ulValueLen` bytes.
pub unsafe fn template(ptr: *const CK_ATTRIBUTE, count: CK_ULONG) -> Result<Vec<Attr>> {
    if count == 0 {
        return Ok(Vec::new());
    }
    if ptr.is_null() || count > MAX_TEMPLATE {
        return Err(CKR_ARGUMENTS_BAD);
    }
    // SAFETY: non-null, `count` readable attributes by the caller's contract.
    let attrs = unsafe { std::slice::from_raw_parts(ptr, count as usize) };
    attrs
        .iter()
        .map(|a| {
            if a.ulValueLen > MAX_ATTRIBUTE_VALUE {
                return Err(CKR_ATTRIBUTE_VALUE_INVALID);
            }
            // SAFETY: the caller promises `ulValueLen` readable bytes at `pValue`.
            let value = unsafe { bytes(a.pValue as *const u8, a.ulValueLen) }?;
            Ok(Attr {
                kind: a.type_,
                value: value.to_vec(),
            })
        })
        .collect()
}

/// The caller's attribute array of `C_GetAttributeValue`, to fill in.
///
/// # Safety
/// `ptr` is null or valid for reads and writes of `count` `CK_ATTRIBUTE`s,
/// each of whose `pValue` is null or valid for writes of `ulValueLen` bytes;
/// nothing else refers to them during the call.
pub unsafe fn attributes_mut<'a>(
    ptr: *mut CK_ATTRIBUTE,
    count: CK_ULONG,
) -> Result<&'a mut [CK_ATTRIBUTE]> {
    if count == 0 {
        return Ok(&mut []);
    }
    if ptr.is_null() || count > MAX_TEMPLATE {
        return Err(CKR_ARGUMENTS_BAD);
    }
    // SAFETY: non-null, `count` attributes, exclusively ours for the call.
    Ok(unsafe { std::slice::from_raw_parts_mut(ptr, count as usize) })
}

/// What one attribute of an object is, for `C_GetAttributeValue`.
pub enum AttrValue {
    Value(Vec<u8>),
    /// Exists but may not be revealed (`CKR_ATTRIBUTE_SENSITIVE`).
    Sensitive,
    /// The object has no such attribute (`CKR_ATTRIBUTE_TYPE_INVALID`).
    Invalid,
}

/// Fill one attribute of the caller's array (PKCS#11 base §5.7.5: size
/// query, too small, sensitive, invalid). Returns the code for this
/// attribute.
///
/// # Safety
/// `attr.pValue` is null or valid for writes of `attr.ulValueLen` bytes.
pub unsafe fn fill_attribute(attr: &mut CK_ATTRIBUTE, value: &AttrValue) -> CK_RV {
    match value {
        AttrValue::Sensitive => {
            attr.ulValueLen = CK_UNAVAILABLE_INFORMATION;
            CKR_ATTRIBUTE_SENSITIVE
        }
        AttrValue::Invalid => {
            attr.ulValueLen = CK_UNAVAILABLE_INFORMATION;
            CKR_ATTRIBUTE_TYPE_INVALID
        }
        AttrValue::Value(v) => {
            if attr.pValue.is_null() {
                attr.ulValueLen = v.len() as CK_ULONG;
                CKR_OK
            } else if (attr.ulValueLen as usize) < v.len() {
                attr.ulValueLen = CK_UNAVAILABLE_INFORMATION;
                CKR_BUFFER_TOO_SMALL
            } else {
                // SAFETY: `pValue` has room for `ulValueLen >= v.len()` bytes.
                unsafe {
                    std::ptr::copy_nonoverlapping(v.as_ptr(), attr.pValue as *mut u8, v.len())
                };
                attr.ulValueLen = v.len() as CK_ULONG;
                CKR_OK
            }
        }
    }
}

/// A mechanism with its parameters copied out of the caller's memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mechanism {
    pub kind: CK_MECHANISM_TYPE,
    pub params: Params,
}

/// The mechanism parameters this library understands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Params {
    None,
    Gcm {
        iv: Vec<u8>,
        aad: Vec<u8>,
        tag_bits: CK_ULONG,
    },
    Pss {
        hash: CK_MECHANISM_TYPE,
        mgf: CK_RSA_PKCS_MGF_TYPE,
        salt_len: CK_ULONG,
    },
    Oaep {
        hash: CK_MECHANISM_TYPE,
        mgf: CK_RSA_PKCS_MGF_TYPE,
        label: Vec<u8>,
    },
    EdDsa {
        prehash: bool,
        context: Vec<u8>,
    },
}

/// The PKCS#11 v2.40 errata layout of `CK_GCM_PARAMS`, without `ulIvBits`
/// (some callers, e.g. older Java releases, still pass it).
#[repr(C)]
#[derive(Clone, Copy)]
struct GcmParamsV240 {
    p_iv: *mut CK_BYTE,
    ul_iv_len: CK_ULONG,
    p_aad: *mut CK_BYTE,
    ul_aad_len: CK_ULONG,
    ul_tag_bits: CK_ULONG,
}

/// Copy the caller's mechanism and its parameters.
///
/// # Safety
/// `ptr` is null or valid for a read of a `CK_MECHANISM` whose `pParameter`
/// is null or points to `ulParameterLen` bytes laid out as the mechanism's
/// parameter structure, whose own pointers are valid for their lengths.
pub unsafe fn mechanism(ptr: *const CK_MECHANISM) -> Result<Mechanism> {
    // SAFETY: forwarded contract.
    let m = unsafe { read(ptr) }?;
    let len = m.ulParameterLen as usize;
    let param = m.pParameter as *const u8;
    let params = match m.mechanism {
        CKM_AES_GCM if len == size_of::<CK_GCM_PARAMS>() => {
            // SAFETY: the parameter is a CK_GCM_PARAMS (its length says so).
            let p = unsafe { read(param as *const CK_GCM_PARAMS) }?;
            Params::Gcm {
                // SAFETY: the structure's pointers are valid for their lengths.
                iv: unsafe { bytes(p.pIv, p.ulIvLen) }?.to_vec(),
                // SAFETY: as above.
                aad: unsafe { bytes(p.pAAD, p.ulAADLen) }?.to_vec(),
                tag_bits: p.ulTagBits,
            }
        }
        CKM_AES_GCM if len == size_of::<GcmParamsV240>() => {
            // SAFETY: the parameter is the v2.40 errata layout (its length says so).
            let p = unsafe { read(param as *const GcmParamsV240) }?;
            Params::Gcm {
                // SAFETY: the structure's pointers are valid for their lengths.
                iv: unsafe { bytes(p.p_iv, p.ul_iv_len) }?.to_vec(),
                // SAFETY: as above.
                aad: unsafe { bytes(p.p_aad, p.ul_aad_len) }?.to_vec(),
                tag_bits: p.ul_tag_bits,
            }
        }
        CKM_AES_GCM => return Err(CKR_MECHANISM_PARAM_INVALID),
        CKM_RSA_PKCS_PSS
        | CKM_SHA256_RSA_PKCS_PSS
        | CKM_SHA384_RSA_PKCS_PSS
        | CKM_SHA512_RSA_PKCS_PSS => {
            if len != size_of::<CK_RSA_PKCS_PSS_PARAMS>() {
                return Err(CKR_MECHANISM_PARAM_INVALID);
            }
            // SAFETY: the parameter is a CK_RSA_PKCS_PSS_PARAMS.
            let p = unsafe { read(param as *const CK_RSA_PKCS_PSS_PARAMS) }?;
            Params::Pss {
                hash: p.hashAlg,
                mgf: p.mgf,
                salt_len: p.sLen,
            }
        }
        CKM_RSA_PKCS_OAEP => {
            if len != size_of::<CK_RSA_PKCS_OAEP_PARAMS>() {
                return Err(CKR_MECHANISM_PARAM_INVALID);
            }
            // SAFETY: the parameter is a CK_RSA_PKCS_OAEP_PARAMS.
            let p = unsafe { read(param as *const CK_RSA_PKCS_OAEP_PARAMS) }?;
            let label = if p.source == CKZ_DATA_SPECIFIED {
                // SAFETY: the source data pointer is valid for its length.
                unsafe { bytes(p.pSourceData as *const u8, p.ulSourceDataLen) }?.to_vec()
            } else if p.source == 0 {
                Vec::new()
            } else {
                return Err(CKR_MECHANISM_PARAM_INVALID);
            };
            Params::Oaep {
                hash: p.hashAlg,
                mgf: p.mgf,
                label,
            }
        }
        CKM_EDDSA if len == size_of::<CK_EDDSA_PARAMS>() => {
            // SAFETY: the parameter is a CK_EDDSA_PARAMS.
            let p = unsafe { read(param as *const CK_EDDSA_PARAMS) }?;
            Params::EdDsa {
                prehash: p.phFlag != 0,
                // SAFETY: the context data pointer is valid for its length.
                context: unsafe { bytes(p.pContextData, p.ulContextDataLen) }?.to_vec(),
            }
        }
        _ if len == 0 => Params::None,
        _ => return Err(CKR_MECHANISM_PARAM_INVALID),
    };
    Ok(Mechanism {
        kind: m.mechanism,
        params,
    })
}

/// `s` in a blank-padded fixed-size field, as PKCS#11 info structures
/// carry their strings (cut at a character boundary if too long).
pub fn padded<const N: usize>(s: &str) -> [u8; N] {
    let mut out = [b' '; N];
    let mut end = s.len().min(N);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    out[..end].copy_from_slice(&s.as_bytes()[..end]);
    out
}

/// A `CK_ULONG` attribute value in the caller's byte order.
pub fn ulong(v: CK_ULONG) -> Vec<u8> {
    v.to_ne_bytes().to_vec()
}

/// A `CK_BBOOL` attribute value.
pub fn bool_value(v: bool) -> Vec<u8> {
    vec![if v { CK_TRUE } else { CK_FALSE }]
}

/// Read a `CK_ULONG` attribute value.
pub fn as_ulong(value: &[u8]) -> Result<CK_ULONG> {
    let bytes: [u8; size_of::<CK_ULONG>()] =
        value.try_into().map_err(|_| CKR_ATTRIBUTE_VALUE_INVALID)?;
    Ok(CK_ULONG::from_ne_bytes(bytes))
}

/// Read a `CK_BBOOL` attribute value.
pub fn as_bool(value: &[u8]) -> Result<bool> {
    match value {
        [b] => Ok(*b != CK_FALSE),
        _ => Err(CKR_ATTRIBUTE_VALUE_INVALID),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_are_blank_padded_and_cut_at_a_character() {
        assert_eq!(&padded::<8>("ab"), b"ab      ");
        assert_eq!(&padded::<4>("abcdef"), b"abcd");
        // "é" is two bytes: it does not fit after "abc" in 4.
        assert_eq!(&padded::<4>("abcé"), b"abc ");
    }

    #[test]
    fn output_follows_the_size_query_and_too_small_rules() {
        let data = [1u8, 2, 3];
        let mut len: CK_ULONG = 0;
        // SAFETY: valid pointers to local variables.
        let rv = unsafe { output(std::ptr::null_mut(), &mut len, &data) };
        assert_eq!((rv, len), (CKR_OK, 3));
        let mut small = [0u8; 2];
        let mut len: CK_ULONG = 2;
        // SAFETY: as above; the buffer holds `len` bytes.
        let rv = unsafe { output(small.as_mut_ptr(), &mut len, &data) };
        assert_eq!((rv, len), (CKR_BUFFER_TOO_SMALL, 3));
        let mut big = [0u8; 8];
        let mut len: CK_ULONG = 8;
        // SAFETY: as above.
        let rv = unsafe { output(big.as_mut_ptr(), &mut len, &data) };
        assert_eq!((rv, len, &big[..3]), (CKR_OK, 3, &data[..]));
        // SAFETY: a null length pointer is refused before any access.
        let rv = unsafe { output(big.as_mut_ptr(), std::ptr::null_mut(), &data) };
        assert_eq!(rv, CKR_ARGUMENTS_BAD);
    }

    #[test]
    fn null_pointers_with_lengths_are_bad_arguments() {
        // SAFETY: null is checked before any access.
        assert_eq!(
            unsafe { bytes(std::ptr::null(), 4) },
            Err(CKR_ARGUMENTS_BAD)
        );
        // SAFETY: length 0 never reads.
        assert_eq!(unsafe { bytes(std::ptr::null(), 0) }, Ok(&[][..]));
        // SAFETY: as above.
        assert!(unsafe { template(std::ptr::null(), 2) }.is_err());
        // SAFETY: as above.
        assert!(unsafe { mechanism(std::ptr::null()) }.is_err());
    }
}
