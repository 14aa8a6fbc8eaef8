//! The library's C API called in-process (the rlib exports the same
//! functions the shared library does), wrapped for the tests. Each call
//! passes pointers to live locals sized as the call expects.

use std::ptr::null_mut;

use cryptoki_sys::*;
use hsmgate_pkcs11 as p11;

pub type Rv<T> = Result<T, CK_RV>;

fn check(rv: CK_RV) -> Rv<()> {
    if rv == CKR_OK { Ok(()) } else { Err(rv) }
}

pub fn initialize() -> CK_RV {
    // SAFETY: null init args are allowed.
    unsafe { p11::C_Initialize(null_mut()) }
}

pub fn finalize() -> CK_RV {
    // SAFETY: the reserved argument is null.
    unsafe { p11::C_Finalize(null_mut()) }
}

pub fn slots() -> Rv<Vec<CK_SLOT_ID>> {
    let mut count: CK_ULONG = 0;
    // SAFETY: size query: a null list and a valid count.
    check(unsafe { p11::C_GetSlotList(CK_TRUE, null_mut(), &mut count) })?;
    let mut slots = vec![0; count as usize];
    // SAFETY: `slots` holds `count` entries.
    check(unsafe { p11::C_GetSlotList(CK_TRUE, slots.as_mut_ptr(), &mut count) })?;
    slots.truncate(count as usize);
    Ok(slots)
}

pub fn token_flags(slot: CK_SLOT_ID) -> Rv<CK_FLAGS> {
    // SAFETY: an all-zero CK_TOKEN_INFO is a valid value of the struct.
    let mut info: CK_TOKEN_INFO = unsafe { std::mem::zeroed() };
    // SAFETY: `info` is a valid output structure.
    check(unsafe { p11::C_GetTokenInfo(slot, &mut info) })?;
    Ok(info.flags)
}

pub fn open_session(slot: CK_SLOT_ID) -> Rv<CK_SESSION_HANDLE> {
    let mut session = 0;
    // SAFETY: valid output handle; no application callback.
    check(unsafe {
        p11::C_OpenSession(
            slot,
            CKF_SERIAL_SESSION | CKF_RW_SESSION,
            null_mut(),
            None,
            &mut session,
        )
    })?;
    Ok(session)
}

pub fn close_session(session: CK_SESSION_HANDLE) -> CK_RV {
    p11::C_CloseSession(session)
}

pub fn login(session: CK_SESSION_HANDLE, pin: &[u8]) -> CK_RV {
    // SAFETY: `pin` is readable for its length; the library only reads it.
    unsafe {
        p11::C_Login(
            session,
            CKU_USER,
            pin.as_ptr() as *mut u8,
            pin.len() as CK_ULONG,
        )
    }
}

pub fn logout(session: CK_SESSION_HANDLE) -> CK_RV {
    p11::C_Logout(session)
}

pub fn random(session: CK_SESSION_HANDLE, n: usize) -> Rv<Vec<u8>> {
    let mut out = vec![0u8; n];
    // SAFETY: `out` holds `n` bytes.
    check(unsafe { p11::C_GenerateRandom(session, out.as_mut_ptr(), n as CK_ULONG) })?;
    Ok(out)
}

fn attribute(kind: CK_ATTRIBUTE_TYPE, value: &[u8]) -> CK_ATTRIBUTE {
    CK_ATTRIBUTE {
        type_: kind,
        pValue: value.as_ptr() as *mut _,
        ulValueLen: value.len() as CK_ULONG,
    }
}

/// A P-256 key pair: `(public, private)`.
pub fn generate_p256(
    session: CK_SESSION_HANDLE,
    label: &str,
    token: bool,
) -> Rv<(CK_OBJECT_HANDLE, CK_OBJECT_HANDLE)> {
    let params = [0x06u8, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
    let token = [u8::from(token)];
    let public = [
        attribute(CKA_EC_PARAMS, &params),
        attribute(CKA_TOKEN, &token),
    ];
    let private = [
        attribute(CKA_LABEL, label.as_bytes()),
        attribute(CKA_TOKEN, &token),
    ];
    let mut mechanism = CK_MECHANISM {
        mechanism: CKM_EC_KEY_PAIR_GEN,
        pParameter: null_mut(),
        ulParameterLen: 0,
    };
    let (mut public_key, mut private_key) = (0, 0);
    // SAFETY: the templates point at live locals; the outputs are valid.
    check(unsafe {
        p11::C_GenerateKeyPair(
            session,
            &mut mechanism,
            public.as_ptr() as *mut _,
            public.len() as CK_ULONG,
            private.as_ptr() as *mut _,
            private.len() as CK_ULONG,
            &mut public_key,
            &mut private_key,
        )
    })?;
    Ok((public_key, private_key))
}

pub fn sign_init(
    session: CK_SESSION_HANDLE,
    key: CK_OBJECT_HANDLE,
    mechanism: CK_MECHANISM_TYPE,
) -> CK_RV {
    let mut mechanism = CK_MECHANISM {
        mechanism,
        pParameter: null_mut(),
        ulParameterLen: 0,
    };
    // SAFETY: a valid mechanism without parameters.
    unsafe { p11::C_SignInit(session, &mut mechanism, key) }
}

/// `C_Sign` with a size query first, as applications do.
pub fn sign(session: CK_SESSION_HANDLE, data: &[u8]) -> Rv<Vec<u8>> {
    let mut len: CK_ULONG = 0;
    // SAFETY: size query: null output, valid length; `data` readable.
    check(unsafe {
        p11::C_Sign(
            session,
            data.as_ptr() as *mut u8,
            data.len() as CK_ULONG,
            null_mut(),
            &mut len,
        )
    })?;
    let mut out = vec![0u8; len as usize];
    // SAFETY: `out` holds `len` bytes.
    check(unsafe {
        p11::C_Sign(
            session,
            data.as_ptr() as *mut u8,
            data.len() as CK_ULONG,
            out.as_mut_ptr(),
            &mut len,
        )
    })?;
    out.truncate(len as usize);
    Ok(out)
}

pub fn find(session: CK_SESSION_HANDLE, label: &str) -> Rv<Vec<CK_OBJECT_HANDLE>> {
    let template = [attribute(CKA_LABEL, label.as_bytes())];
    // SAFETY: the template points at a live local.
    check(unsafe { p11::C_FindObjectsInit(session, template.as_ptr() as *mut _, 1) })?;
    let mut found = vec![0; 64];
    let mut count: CK_ULONG = 0;
    // SAFETY: `found` holds 64 handles.
    let rv = unsafe { p11::C_FindObjects(session, found.as_mut_ptr(), 64, &mut count) };
    check(p11::C_FindObjectsFinal(session))?;
    check(rv)?;
    found.truncate(count as usize);
    Ok(found)
}

/// One attribute's value; `Err` with the call's code.
pub fn attribute_value(
    session: CK_SESSION_HANDLE,
    object: CK_OBJECT_HANDLE,
    kind: CK_ATTRIBUTE_TYPE,
) -> Rv<Vec<u8>> {
    let mut attr = CK_ATTRIBUTE {
        type_: kind,
        pValue: null_mut(),
        ulValueLen: 0,
    };
    // SAFETY: one attribute, size query.
    check(unsafe { p11::C_GetAttributeValue(session, object, &mut attr, 1) })?;
    let mut value = vec![0u8; attr.ulValueLen as usize];
    attr.pValue = value.as_mut_ptr() as *mut _;
    // SAFETY: `value` holds `ulValueLen` bytes.
    check(unsafe { p11::C_GetAttributeValue(session, object, &mut attr, 1) })?;
    value.truncate(attr.ulValueLen as usize);
    Ok(value)
}

/// `C_GetSlotList` with a null count: must be refused, not crash.
pub fn slot_list_without_count() -> CK_RV {
    // SAFETY: the library checks the null pointers before any access.
    unsafe { p11::C_GetSlotList(CK_TRUE, null_mut(), null_mut()) }
}

/// `C_Sign` with null everything.
pub fn sign_with_null_pointers(session: CK_SESSION_HANDLE) -> CK_RV {
    // SAFETY: as above.
    unsafe { p11::C_Sign(session, null_mut(), 8, null_mut(), null_mut()) }
}

/// `C_Initialize` with init args asking for the application's mutexes
/// without allowing OS locking.
pub fn initialize_with_app_mutexes_only() -> CK_RV {
    unsafe extern "C" fn create(_m: *mut *mut std::os::raw::c_void) -> CK_RV {
        CKR_OK
    }
    unsafe extern "C" fn other(_m: *mut std::os::raw::c_void) -> CK_RV {
        CKR_OK
    }
    let mut args = CK_C_INITIALIZE_ARGS {
        CreateMutex: Some(create),
        DestroyMutex: Some(other),
        LockMutex: Some(other),
        UnlockMutex: Some(other),
        flags: 0,
        pReserved: null_mut(),
    };
    // SAFETY: valid init args.
    unsafe { p11::C_Initialize(&mut args as *mut _ as *mut _) }
}
