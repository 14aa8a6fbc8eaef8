//! The exported PKCS#11 v2.40 functions and the function list.
//!
//! Each entry point reads its arguments through `ffi` (null pointers and
//! impossible lengths become `CKR_ARGUMENTS_BAD`), calls the safe
//! implementation in `api`, and writes the results back. Each body runs
//! under `catch_unwind`: a panic becomes `CKR_GENERAL_ERROR` and never
//! crosses into the application.
#![allow(non_snake_case)]

use std::os::raw::c_void;
use std::panic::{AssertUnwindSafe, catch_unwind};

use cryptoki_sys::*;

use crate::api::{self, Operation, Produced};
use crate::ffi;
use crate::library;

type Result<T> = std::result::Result<T, CK_RV>;

/// Run an entry point's body; a panic is `CKR_GENERAL_ERROR`.
fn guard(body: impl FnOnce() -> Result<()>) -> CK_RV {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(())) => CKR_OK,
        Ok(Err(rv)) => rv,
        Err(_) => CKR_GENERAL_ERROR,
    }
}

/// Functions this library does not offer (after the usual checks).
fn not_supported() -> CK_RV {
    guard(|| {
        library::get()?;
        Err(CKR_FUNCTION_NOT_SUPPORTED)
    })
}

/// Read an operation call's arguments; bad ones end the operation.
fn arguments<T>(
    lib: &library::Library,
    session: CK_SESSION_HANDLE,
    kind: Operation,
    read: impl FnOnce() -> Result<T>,
) -> Result<T> {
    read().inspect_err(|_| api::end_operation(lib, session, kind))
}

/// Hand an operation's output to the caller.
///
/// # Safety
/// `len` is null or valid for reads and writes of a `CK_ULONG`; `out` is
/// null or valid for writes of `*len` bytes.
unsafe fn deliver(out: *mut u8, len: *mut CK_ULONG, produced: Produced) -> Result<()> {
    match produced {
        // SAFETY: forwarded contract.
        Produced::Length(n) => unsafe { ffi::write(len, n as CK_ULONG) },
        Produced::TooSmall(n) => {
            // SAFETY: forwarded contract.
            unsafe { ffi::write(len, n as CK_ULONG) }?;
            Err(CKR_BUFFER_TOO_SMALL)
        }
        // SAFETY: forwarded contract.
        Produced::Bytes(bytes) => match unsafe { ffi::output(out, len, &bytes) } {
            CKR_OK => Ok(()),
            rv => Err(rv),
        },
    }
}

// ---------------------------------------------------------- general purpose

/// # Safety
/// `args` is null or points to a `CK_C_INITIALIZE_ARGS`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn C_Initialize(args: *mut c_void) -> CK_RV {
    guard(|| {
        if !args.is_null() {
            // SAFETY: a non-null pInitArgs is a CK_C_INITIALIZE_ARGS (PKCS#11 §5.4).
            let a = unsafe { ffi::read(args as *const CK_C_INITIALIZE_ARGS) }?;
            if !a.pReserved.is_null() {
                return Err(CKR_ARGUMENTS_BAD);
            }
            let given = [
                a.CreateMutex.is_some(),
                a.DestroyMutex.is_some(),
                a.LockMutex.is_some(),
                a.UnlockMutex.is_some(),
            ];
            if given.iter().any(|g| *g) && !given.iter().all(|g| *g) {
                return Err(CKR_ARGUMENTS_BAD);
            }
            // The library locks with the operating system's primitives; it
            // cannot use the application's.
            if given[0] && a.flags & CKF_OS_LOCKING_OK == 0 {
                return Err(CKR_CANT_LOCK);
            }
            if a.flags & CKF_LIBRARY_CANT_CREATE_OS_THREADS != 0 {
                return Err(CKR_NEED_TO_CREATE_THREADS);
            }
        }
        library::initialize()
    })
}

/// # Safety
/// `reserved` must be null.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn C_Finalize(reserved: *mut c_void) -> CK_RV {
    guard(|| {
        if !reserved.is_null() {
            return Err(CKR_ARGUMENTS_BAD);
        }
        library::finalize()
    })
}

/// # Safety
/// `info` is null or valid for a write of a `CK_INFO`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn C_GetInfo(info: *mut CK_INFO) -> CK_RV {
    guard(|| {
        library::get()?;
        // SAFETY: the caller's output argument.
        unsafe { ffi::write(info, api::info()) }
    })
}

/// # Safety
/// `list` is null or valid for a write of a pointer.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn C_GetFunctionList(list: *mut *mut CK_FUNCTION_LIST) -> CK_RV {
    guard(|| {
        let table = &FUNCTION_LIST as *const CK_FUNCTION_LIST as *mut CK_FUNCTION_LIST;
        // SAFETY: the caller's output argument. The table is never written
        // through this pointer (PKCS#11 treats it as read-only).
        unsafe { ffi::write(list, table) }
    })
}

// ------------------------------------------------------ slots and tokens

/// # Safety
/// `count` is valid for a read and write; `list` null or valid for `*count` slot ids.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn C_GetSlotList(
    _token_present: CK_BBOOL,
    list: *mut CK_SLOT_ID,
    count: *mut CK_ULONG,
) -> CK_RV {
    guard(|| {
        let lib = library::get()?;
        // Every slot always has its token.
        let slots = api::slot_list(&lib);
        // SAFETY: the caller's list and count arguments.
        match unsafe { ffi::output_list(list, count, &slots) } {
            CKR_OK => Ok(()),
            rv => Err(rv),
        }
    })
}

/// # Safety
/// `info` is null or valid for a write of a `CK_SLOT_INFO`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn C_GetSlotInfo(slot: CK_SLOT_ID, info: *mut CK_SLOT_INFO) -> CK_RV {
    guard(|| {
        let lib = library::get()?;
        let value = api::slot_info(&lib, slot)?;
        // SAFETY: the caller's output argument.
        unsafe { ffi::write(info, value) }
    })
}

/// # Safety
/// `info` is null or valid for a write of a `CK_TOKEN_INFO`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn C_GetTokenInfo(slot: CK_SLOT_ID, info: *mut CK_TOKEN_INFO) -> CK_RV {
    guard(|| {
        let lib = library::get()?;
        let value = api::token_info(&lib, slot)?;
        // SAFETY: the caller's output argument.
        unsafe { ffi::write(info, value) }
    })
}

/// # Safety
/// `count` is valid for a read and write; `list` null or valid for `*count` entries.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn C_GetMechanismList(
    slot: CK_SLOT_ID,
    list: *mut CK_MECHANISM_TYPE,
    count: *mut CK_ULONG,
) -> CK_RV {
    guard(|| {
        let lib = library::get()?;
        let mechanisms = api::mechanism_list(&lib, slot)?;
        // SAFETY: the caller's list and count arguments.
        match unsafe { ffi::output_list(list, count, &mechanisms) } {
            CKR_OK => Ok(()),
            rv => Err(rv),
        }
    })
}

/// # Safety
/// `info` is null or valid for a write of a `CK_MECHANISM_INFO`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn C_GetMechanismInfo(
    slot: CK_SLOT_ID,
    kind: CK_MECHANISM_TYPE,
    info: *mut CK_MECHANISM_INFO,
) -> CK_RV {
    guard(|| {
        let lib = library::get()?;
        let value = api::mechanism_info(&lib, slot, kind)?;
        // SAFETY: the caller's output argument.
        unsafe { ffi::write(info, value) }
    })
}

#[unsafe(no_mangle)]
pub extern "C" fn C_InitToken(
    _slot: CK_SLOT_ID,
    _pin: *mut CK_UTF8CHAR,
    _len: CK_ULONG,
    _label: *mut CK_UTF8CHAR,
) -> CK_RV {
    not_supported()
}

#[unsafe(no_mangle)]
pub extern "C" fn C_InitPIN(
    _session: CK_SESSION_HANDLE,
    _pin: *mut CK_UTF8CHAR,
    _len: CK_ULONG,
) -> CK_RV {
    not_supported()
}

#[unsafe(no_mangle)]
pub extern "C" fn C_SetPIN(
    _session: CK_SESSION_HANDLE,
    _old: *mut CK_UTF8CHAR,
    _old_len: CK_ULONG,
    _new: *mut CK_UTF8CHAR,
    _new_len: CK_ULONG,
) -> CK_RV {
    not_supported()
}

// ---------------------------------------------------------------- sessions

/// # Safety
/// `session` is null or valid for a write of a session handle.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn C_OpenSession(
    slot: CK_SLOT_ID,
    flags: CK_FLAGS,
    _application: *mut c_void,
    _notify: CK_NOTIFY,
    session: *mut CK_SESSION_HANDLE,
) -> CK_RV {
    guard(|| {
        let lib = library::get()?;
        if session.is_null() {
            return Err(CKR_ARGUMENTS_BAD);
        }
        let handle = api::open_session(&lib, slot, flags)?;
        // SAFETY: the caller's output argument (checked non-null above).
        unsafe { ffi::write(session, handle) }
    })
}

#[unsafe(no_mangle)]
pub extern "C" fn C_CloseSession(session: CK_SESSION_HANDLE) -> CK_RV {
    guard(|| api::close_session(&*library::get()?, session))
}

#[unsafe(no_mangle)]
pub extern "C" fn C_CloseAllSessions(slot: CK_SLOT_ID) -> CK_RV {
    guard(|| api::close_all_sessions(&*library::get()?, slot))
}

/// # Safety
/// `info` is null or valid for a write of a `CK_SESSION_INFO`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn C_GetSessionInfo(
    session: CK_SESSION_HANDLE,
    info: *mut CK_SESSION_INFO,
) -> CK_RV {
    guard(|| {
        let value = api::session_info(&*library::get()?, session)?;
        // SAFETY: the caller's output argument.
        unsafe { ffi::write(info, value) }
    })
}

#[unsafe(no_mangle)]
pub extern "C" fn C_GetOperationState(
    _session: CK_SESSION_HANDLE,
    _state: *mut CK_BYTE,
    _len: *mut CK_ULONG,
) -> CK_RV {
    not_supported()
}

#[unsafe(no_mangle)]
pub extern "C" fn C_SetOperationState(
    _session: CK_SESSION_HANDLE,
    _state: *mut CK_BYTE,
    _len: CK_ULONG,
    _encryption_key: CK_OBJECT_HANDLE,
    _authentication_key: CK_OBJECT_HANDLE,
) -> CK_RV {
    not_supported()
}

/// # Safety
/// `pin` is null or valid for reads of `len` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn C_Login(
    session: CK_SESSION_HANDLE,
    user: CK_USER_TYPE,
    pin: *mut CK_UTF8CHAR,
    len: CK_ULONG,
) -> CK_RV {
    guard(|| {
        let lib = library::get()?;
        // SAFETY: the caller's PIN buffer of `len` bytes.
        let pin = unsafe { ffi::bytes(pin, len) }?;
        api::login(&lib, session, user, pin)
    })
}

#[unsafe(no_mangle)]
pub extern "C" fn C_Logout(session: CK_SESSION_HANDLE) -> CK_RV {
    guard(|| api::logout(&*library::get()?, session))
}

// ----------------------------------------------------------------- objects

/// # Safety
/// `template` is null or valid for `count` attributes; `object` is null or
/// valid for a write of a handle.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn C_CreateObject(
    session: CK_SESSION_HANDLE,
    template: *mut CK_ATTRIBUTE,
    count: CK_ULONG,
    object: *mut CK_OBJECT_HANDLE,
) -> CK_RV {
    guard(|| {
        let lib = library::get()?;
        // SAFETY: the caller's template of `count` attributes.
        let template = unsafe { ffi::template(template, count) }?;
        if object.is_null() {
            return Err(CKR_ARGUMENTS_BAD);
        }
        let handle = api::create_object(&lib, session, &template)?;
        // SAFETY: the caller's output argument (checked non-null above).
        unsafe { ffi::write(object, handle) }
    })
}

#[unsafe(no_mangle)]
pub extern "C" fn C_CopyObject(
    _session: CK_SESSION_HANDLE,
    _object: CK_OBJECT_HANDLE,
    _template: *mut CK_ATTRIBUTE,
    _count: CK_ULONG,
    _new_object: *mut CK_OBJECT_HANDLE,
) -> CK_RV {
    not_supported()
}

#[unsafe(no_mangle)]
pub extern "C" fn C_DestroyObject(session: CK_SESSION_HANDLE, object: CK_OBJECT_HANDLE) -> CK_RV {
    guard(|| api::destroy_object(&*library::get()?, session, object))
}

#[unsafe(no_mangle)]
pub extern "C" fn C_GetObjectSize(
    _session: CK_SESSION_HANDLE,
    _object: CK_OBJECT_HANDLE,
    _size: *mut CK_ULONG,
) -> CK_RV {
    not_supported()
}

/// # Safety
/// `template` is null or valid for reads and writes of `count` attributes,
/// each `pValue` null or valid for writes of `ulValueLen` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn C_GetAttributeValue(
    session: CK_SESSION_HANDLE,
    object: CK_OBJECT_HANDLE,
    template: *mut CK_ATTRIBUTE,
    count: CK_ULONG,
) -> CK_RV {
    match catch_unwind(AssertUnwindSafe(|| {
        let lib = library::get()?;
        // SAFETY: the caller's attribute array, ours for the call.
        let attrs = unsafe { ffi::attributes_mut(template, count) }?;
        api::get_attribute_value(&lib, session, object, attrs)
    })) {
        Ok(Ok(rv) | Err(rv)) => rv,
        Err(_) => CKR_GENERAL_ERROR,
    }
}

/// # Safety
/// `template` is null or valid for reads of `count` attributes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn C_SetAttributeValue(
    session: CK_SESSION_HANDLE,
    object: CK_OBJECT_HANDLE,
    template: *mut CK_ATTRIBUTE,
    count: CK_ULONG,
) -> CK_RV {
    guard(|| {
        let lib = library::get()?;
        // SAFETY: the caller's template of `count` attributes.
        let template = unsafe { ffi::template(template, count) }?;
        api::set_attribute_value(&lib, session, object, &template)
    })
}

/// # Safety
/// `template` is null or valid for reads of `count` attributes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn C_FindObjectsInit(
    session: CK_SESSION_HANDLE,
    template: *mut CK_ATTRIBUTE,
    count: CK_ULONG,
) -> CK_RV {
    guard(|| {
        let lib = library::get()?;
        // SAFETY: the caller's template of `count` attributes.
        let template = unsafe { ffi::template(template, count) }?;
        api::find_init(&lib, session, &template)
    })
}

/// # Safety
/// `objects` is null or valid for writes of `max` handles; `count` is null
/// or valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn C_FindObjects(
    session: CK_SESSION_HANDLE,
    objects: *mut CK_OBJECT_HANDLE,
    max: CK_ULONG,
    count: *mut CK_ULONG,
) -> CK_RV {
    guard(|| {
        let lib = library::get()?;
        if count.is_null() || (objects.is_null() && max > 0) {
            return Err(CKR_ARGUMENTS_BAD);
        }
        let found = api::find(&lib, session, usize::try_from(max).unwrap_or(usize::MAX))?;
        if !found.is_empty() {
            // SAFETY: `objects` holds `max >= found.len()` handles.
            unsafe { std::ptr::copy_nonoverlapping(found.as_ptr(), objects, found.len()) };
        }
        // SAFETY: the caller's output argument (checked non-null above).
        unsafe { ffi::write(count, found.len() as CK_ULONG) }
    })
}

#[unsafe(no_mangle)]
pub extern "C" fn C_FindObjectsFinal(session: CK_SESSION_HANDLE) -> CK_RV {
    guard(|| api::find_final(&*library::get()?, session))
}

// ------------------------------------------------------ encrypt, decrypt

/// # Safety
/// `mechanism` is null or a valid `CK_MECHANISM` with valid parameters.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn C_EncryptInit(
    session: CK_SESSION_HANDLE,
    mechanism: *mut CK_MECHANISM,
    key: CK_OBJECT_HANDLE,
) -> CK_RV {
    guard(|| {
        let lib = library::get()?;
        // SAFETY: the caller's mechanism.
        let m = unsafe { ffi::mechanism(mechanism) }?;
        api::crypt_init(&lib, session, &m, key, true)
    })
}

/// # Safety
/// Input `(data, len)` readable; output `(out, out_len)` by the PKCS#11 rules.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn C_Encrypt(
    session: CK_SESSION_HANDLE,
    data: *mut CK_BYTE,
    len: CK_ULONG,
    out: *mut CK_BYTE,
    out_len: *mut CK_ULONG,
) -> CK_RV {
    // SAFETY: forwarded contract.
    unsafe { crypt(session, data, len, out, out_len, true) }
}

/// # Safety
/// Input `(data, len)` readable; `out_len` valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn C_EncryptUpdate(
    session: CK_SESSION_HANDLE,
    data: *mut CK_BYTE,
    len: CK_ULONG,
    _out: *mut CK_BYTE,
    out_len: *mut CK_ULONG,
) -> CK_RV {
    // SAFETY: forwarded contract.
    unsafe { crypt_update(session, data, len, out_len, true) }
}

/// # Safety
/// Output `(out, out_len)` by the PKCS#11 rules.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn C_EncryptFinal(
    session: CK_SESSION_HANDLE,
    out: *mut CK_BYTE,
    out_len: *mut CK_ULONG,
) -> CK_RV {
    // SAFETY: forwarded contract; no input.
    unsafe { crypt_final(session, out, out_len, true) }
}

/// # Safety
/// `mechanism` is null or a valid `CK_MECHANISM` with valid parameters.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn C_DecryptInit(
    session: CK_SESSION_HANDLE,
    mechanism: *mut CK_MECHANISM,
    key: CK_OBJECT_HANDLE,
) -> CK_RV {
    guard(|| {
        let lib = library::get()?;
        // SAFETY: the caller's mechanism.
        let m = unsafe { ffi::mechanism(mechanism) }?;
        api::crypt_init(&lib, session, &m, key, false)
    })
}

/// # Safety
/// Input `(data, len)` readable; output `(out, out_len)` by the PKCS#11 rules.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn C_Decrypt(
    session: CK_SESSION_HANDLE,
    data: *mut CK_BYTE,
    len: CK_ULONG,
    out: *mut CK_BYTE,
    out_len: *mut CK_ULONG,
) -> CK_RV {
    // SAFETY: forwarded contract.
    unsafe { crypt(session, data, len, out, out_len, false) }
}

/// # Safety
/// Input `(data, len)` readable; `out_len` valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn C_DecryptUpdate(
    session: CK_SESSION_HANDLE,
    data: *mut CK_BYTE,
    len: CK_ULONG,
    _out: *mut CK_BYTE,
    out_len: *mut CK_ULONG,
) -> CK_RV {
    // SAFETY: forwarded contract.
    unsafe { crypt_update(session, data, len, out_len, false) }
}

/// # Safety
/// Output `(out, out_len)` by the PKCS#11 rules.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn C_DecryptFinal(
    session: CK_SESSION_HANDLE,
    out: *mut CK_BYTE,
    out_len: *mut CK_ULONG,
) -> CK_RV {
    // SAFETY: forwarded contract; no input.
    unsafe { crypt_final(session, out, out_len, false) }
}

/// # Safety
/// As `C_Encrypt` / `C_Decrypt`.
unsafe fn crypt(
    session: CK_SESSION_HANDLE,
    data: *mut CK_BYTE,
    len: CK_ULONG,
    out: *mut CK_BYTE,
    out_len: *mut CK_ULONG,
    encrypt: bool,
) -> CK_RV {
    guard(|| {
        let lib = library::get()?;
        let kind = if encrypt {
            Operation::Encrypt
        } else {
            Operation::Decrypt
        };
        // SAFETY: the caller's input buffer and output pair.
        let (data, capacity) = arguments(&lib, session, kind, || unsafe {
            Ok((ffi::bytes(data, len)?, ffi::out_buf(out, out_len)?))
        })?;
        let produced = api::crypt(&lib, session, Some(data), capacity, encrypt)?;
        // SAFETY: the caller's output pair.
        unsafe { deliver(out, out_len, produced) }
    })
}

/// # Safety
/// As `C_EncryptUpdate` / `C_DecryptUpdate`.
unsafe fn crypt_update(
    session: CK_SESSION_HANDLE,
    data: *mut CK_BYTE,
    len: CK_ULONG,
    out_len: *mut CK_ULONG,
    encrypt: bool,
) -> CK_RV {
    guard(|| {
        let lib = library::get()?;
        let kind = if encrypt {
            Operation::Encrypt
        } else {
            Operation::Decrypt
        };
        let data = arguments(&lib, session, kind, || {
            if out_len.is_null() {
                return Err(CKR_ARGUMENTS_BAD);
            }
            // SAFETY: the caller's input buffer.
            unsafe { ffi::bytes(data, len) }
        })?;
        api::crypt_update(&lib, session, data, encrypt)?;
        // GCM releases nothing before the final call.
        // SAFETY: the caller's output length (checked non-null above).
        unsafe { ffi::write(out_len, 0) }
    })
}

/// # Safety
/// As `C_EncryptFinal` / `C_DecryptFinal`.
unsafe fn crypt_final(
    session: CK_SESSION_HANDLE,
    out: *mut CK_BYTE,
    out_len: *mut CK_ULONG,
    encrypt: bool,
) -> CK_RV {
    guard(|| {
        let lib = library::get()?;
        let kind = if encrypt {
            Operation::Encrypt
        } else {
            Operation::Decrypt
        };
        // SAFETY: the caller's output pair.
        let capacity = arguments(&lib, session, kind, || unsafe {
            ffi::out_buf(out, out_len)
        })?;
        let produced = api::crypt(&lib, session, None, capacity, encrypt)?;
        // SAFETY: the caller's output pair.
        unsafe { deliver(out, out_len, produced) }
    })
}

// ------------------------------------------------------------------ digest

/// # Safety
/// `mechanism` is null or a valid `CK_MECHANISM`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn C_DigestInit(
    session: CK_SESSION_HANDLE,
    mechanism: *mut CK_MECHANISM,
) -> CK_RV {
    guard(|| {
        let lib = library::get()?;
        // SAFETY: the caller's mechanism.
        let m = unsafe { ffi::mechanism(mechanism) }?;
        api::digest_init(&lib, session, &m)
    })
}

/// # Safety
/// Input `(data, len)` readable; output `(out, out_len)` by the PKCS#11 rules.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn C_Digest(
    session: CK_SESSION_HANDLE,
    data: *mut CK_BYTE,
    len: CK_ULONG,
    out: *mut CK_BYTE,
    out_len: *mut CK_ULONG,
) -> CK_RV {
    guard(|| {
        let lib = library::get()?;
        // SAFETY: the caller's input buffer and output pair.
        let (data, capacity) = arguments(&lib, session, Operation::Digest, || unsafe {
            Ok((ffi::bytes(data, len)?, ffi::out_buf(out, out_len)?))
        })?;
        let produced = api::digest(&lib, session, Some(data), capacity)?;
        // SAFETY: the caller's output pair.
        unsafe { deliver(out, out_len, produced) }
    })
}

/// # Safety
/// Input `(data, len)` readable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn C_DigestUpdate(
    session: CK_SESSION_HANDLE,
    data: *mut CK_BYTE,
    len: CK_ULONG,
) -> CK_RV {
    guard(|| {
        let lib = library::get()?;
        // SAFETY: the caller's input buffer.
        let data = arguments(&lib, session, Operation::Digest, || unsafe {
            ffi::bytes(data, len)
        })?;
        api::digest_update(&lib, session, data)
    })
}

#[unsafe(no_mangle)]
pub extern "C" fn C_DigestKey(_session: CK_SESSION_HANDLE, _key: CK_OBJECT_HANDLE) -> CK_RV {
    not_supported()
}

/// # Safety
/// Output `(out, out_len)` by the PKCS#11 rules.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn C_DigestFinal(
    session: CK_SESSION_HANDLE,
    out: *mut CK_BYTE,
    out_len: *mut CK_ULONG,
) -> CK_RV {
    guard(|| {
        let lib = library::get()?;
        // SAFETY: the caller's output pair.
        let capacity = arguments(&lib, session, Operation::Digest, || unsafe {
            ffi::out_buf(out, out_len)
        })?;
        let produced = api::digest(&lib, session, None, capacity)?;
        // SAFETY: the caller's output pair.
        unsafe { deliver(out, out_len, produced) }
    })
}

// ------------------------------------------------------ sign and verify

/// # Safety
/// `mechanism` is null or a valid `CK_MECHANISM` with valid parameters.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn C_SignInit(
    session: CK_SESSION_HANDLE,
    mechanism: *mut CK_MECHANISM,
    key: CK_OBJECT_HANDLE,
) -> CK_RV {
    guard(|| {
        let lib = library::get()?;
        // SAFETY: the caller's mechanism.
        let m = unsafe { ffi::mechanism(mechanism) }?;
        api::sign_init(&lib, session, &m, key)
    })
}

/// # Safety
/// Input `(data, len)` readable; output `(out, out_len)` by the PKCS#11 rules.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn C_Sign(
    session: CK_SESSION_HANDLE,
    data: *mut CK_BYTE,
    len: CK_ULONG,
    out: *mut CK_BYTE,
    out_len: *mut CK_ULONG,
) -> CK_RV {
    guard(|| {
        let lib = library::get()?;
        // SAFETY: the caller's input buffer and output pair.
        let (data, capacity) = arguments(&lib, session, Operation::Sign, || unsafe {
            Ok((ffi::bytes(data, len)?, ffi::out_buf(out, out_len)?))
        })?;
        let produced = api::sign(&lib, session, Some(data), capacity)?;
        // SAFETY: the caller's output pair.
        unsafe { deliver(out, out_len, produced) }
    })
}

/// # Safety
/// Input `(data, len)` readable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn C_SignUpdate(
    session: CK_SESSION_HANDLE,
    data: *mut CK_BYTE,
    len: CK_ULONG,
) -> CK_RV {
    guard(|| {
        let lib = library::get()?;
        // SAFETY: the caller's input buffer.
        let data = arguments(&lib, session, Operation::Sign, || unsafe {
            ffi::bytes(data, len)
        })?;
        api::sign_update(&lib, session, data)
    })
}

/// # Safety
/// Output `(out, out_len)` by the PKCS#11 rules.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn C_SignFinal(
    session: CK_SESSION_HANDLE,
    out: *mut CK_BYTE,
    out_len: *mut CK_ULONG,
) -> CK_RV {
    guard(|| {
        let lib = library::get()?;
        // SAFETY: the caller's output pair.
        let capacity = arguments(&lib, session, Operation::Sign, || unsafe {
            ffi::out_buf(out, out_len)
        })?;
        let produced = api::sign(&lib, session, None, capacity)?;
        // SAFETY: the caller's output pair.
        unsafe { deliver(out, out_len, produced) }
    })
}

#[unsafe(no_mangle)]
pub extern "C" fn C_SignRecoverInit(
    _session: CK_SESSION_HANDLE,
    _mechanism: *mut CK_MECHANISM,
    _key: CK_OBJECT_HANDLE,
) -> CK_RV {
    not_supported()
}

#[unsafe(no_mangle)]
pub extern "C" fn C_SignRecover(
    _session: CK_SESSION_HANDLE,
    _data: *mut CK_BYTE,
    _len: CK_ULONG,
    _out: *mut CK_BYTE,
    _out_len: *mut CK_ULONG,
) -> CK_RV {
    not_supported()
}

/// # Safety
/// `mechanism` is null or a valid `CK_MECHANISM` with valid parameters.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn C_VerifyInit(
    session: CK_SESSION_HANDLE,
    mechanism: *mut CK_MECHANISM,
    key: CK_OBJECT_HANDLE,
) -> CK_RV {
    guard(|| {
        let lib = library::get()?;
        // SAFETY: the caller's mechanism.
        let m = unsafe { ffi::mechanism(mechanism) }?;
        api::verify_init(&lib, session, &m, key)
    })
}

/// # Safety
/// `(data, len)` and `(signature, sig_len)` readable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn C_Verify(
    session: CK_SESSION_HANDLE,
    data: *mut CK_BYTE,
    len: CK_ULONG,
    signature: *mut CK_BYTE,
    sig_len: CK_ULONG,
) -> CK_RV {
    guard(|| {
        let lib = library::get()?;
        // SAFETY: the caller's input buffers.
        let (data, signature) = arguments(&lib, session, Operation::Verify, || unsafe {
            Ok((ffi::bytes(data, len)?, ffi::bytes(signature, sig_len)?))
        })?;
        api::verify(&lib, session, Some(data), signature)
    })
}

/// # Safety
/// Input `(data, len)` readable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn C_VerifyUpdate(
    session: CK_SESSION_HANDLE,
    data: *mut CK_BYTE,
    len: CK_ULONG,
) -> CK_RV {
    guard(|| {
        let lib = library::get()?;
        // SAFETY: the caller's input buffer.
        let data = arguments(&lib, session, Operation::Verify, || unsafe {
            ffi::bytes(data, len)
        })?;
        api::verify_update(&lib, session, data)
    })
}

/// # Safety
/// `(signature, sig_len)` readable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn C_VerifyFinal(
    session: CK_SESSION_HANDLE,
    signature: *mut CK_BYTE,
    sig_len: CK_ULONG,
) -> CK_RV {
    guard(|| {
        let lib = library::get()?;
        // SAFETY: the caller's signature buffer.
        let signature = arguments(&lib, session, Operation::Verify, || unsafe {
            ffi::bytes(signature, sig_len)
        })?;
        api::verify(&lib, session, None, signature)
    })
}

#[unsafe(no_mangle)]
pub extern "C" fn C_VerifyRecoverInit(
    _session: CK_SESSION_HANDLE,
    _mechanism: *mut CK_MECHANISM,
    _key: CK_OBJECT_HANDLE,
) -> CK_RV {
    not_supported()
}

#[unsafe(no_mangle)]
pub extern "C" fn C_VerifyRecover(
    _session: CK_SESSION_HANDLE,
    _signature: *mut CK_BYTE,
    _len: CK_ULONG,
    _out: *mut CK_BYTE,
    _out_len: *mut CK_ULONG,
) -> CK_RV {
    not_supported()
}

/// The dual-function calls (`C_DigestEncryptUpdate` and the like).
#[unsafe(no_mangle)]
pub extern "C" fn C_DigestEncryptUpdate(
    _session: CK_SESSION_HANDLE,
    _data: *mut CK_BYTE,
    _len: CK_ULONG,
    _out: *mut CK_BYTE,
    _out_len: *mut CK_ULONG,
) -> CK_RV {
    not_supported()
}

#[unsafe(no_mangle)]
pub extern "C" fn C_DecryptDigestUpdate(
    _session: CK_SESSION_HANDLE,
    _data: *mut CK_BYTE,
    _len: CK_ULONG,
    _out: *mut CK_BYTE,
    _out_len: *mut CK_ULONG,
) -> CK_RV {
    not_supported()
}

#[unsafe(no_mangle)]
pub extern "C" fn C_SignEncryptUpdate(
    _session: CK_SESSION_HANDLE,
    _data: *mut CK_BYTE,
    _len: CK_ULONG,
    _out: *mut CK_BYTE,
    _out_len: *mut CK_ULONG,
) -> CK_RV {
    not_supported()
}

#[unsafe(no_mangle)]
pub extern "C" fn C_DecryptVerifyUpdate(
    _session: CK_SESSION_HANDLE,
    _data: *mut CK_BYTE,
    _len: CK_ULONG,
    _out: *mut CK_BYTE,
    _out_len: *mut CK_ULONG,
) -> CK_RV {
    not_supported()
}

// ------------------------------------------------------------------- keys

/// # Safety
/// `mechanism` valid or null; `template` valid for `count` attributes or
/// null; `key` null or valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn C_GenerateKey(
    session: CK_SESSION_HANDLE,
    mechanism: *mut CK_MECHANISM,
    template: *mut CK_ATTRIBUTE,
    count: CK_ULONG,
    key: *mut CK_OBJECT_HANDLE,
) -> CK_RV {
    guard(|| {
        let lib = library::get()?;
        // SAFETY: the caller's mechanism and template.
        let (m, template) =
            unsafe { (ffi::mechanism(mechanism)?, ffi::template(template, count)?) };
        if key.is_null() {
            return Err(CKR_ARGUMENTS_BAD);
        }
        let handle = api::generate_key(&lib, session, &m, &template)?;
        // SAFETY: the caller's output argument (checked non-null above).
        unsafe { ffi::write(key, handle) }
    })
}

/// # Safety
/// `mechanism` valid or null; the templates valid for their counts or null;
/// the two key outputs null or valid for writes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn C_GenerateKeyPair(
    session: CK_SESSION_HANDLE,
    mechanism: *mut CK_MECHANISM,
    public_template: *mut CK_ATTRIBUTE,
    public_count: CK_ULONG,
    private_template: *mut CK_ATTRIBUTE,
    private_count: CK_ULONG,
    public_key: *mut CK_OBJECT_HANDLE,
    private_key: *mut CK_OBJECT_HANDLE,
) -> CK_RV {
    guard(|| {
        let lib = library::get()?;
        // SAFETY: the caller's mechanism and both templates.
        let (m, public, private) = unsafe {
            (
                ffi::mechanism(mechanism)?,
                ffi::template(public_template, public_count)?,
                ffi::template(private_template, private_count)?,
            )
        };
        if public_key.is_null() || private_key.is_null() {
            return Err(CKR_ARGUMENTS_BAD);
        }
        let (public_handle, private_handle) =
            api::generate_key_pair(&lib, session, &m, &public, &private)?;
        // SAFETY: the caller's output arguments (checked non-null above).
        unsafe {
            ffi::write(public_key, public_handle)?;
            ffi::write(private_key, private_handle)
        }
    })
}

#[unsafe(no_mangle)]
pub extern "C" fn C_WrapKey(
    _session: CK_SESSION_HANDLE,
    _mechanism: *mut CK_MECHANISM,
    _wrapping_key: CK_OBJECT_HANDLE,
    _key: CK_OBJECT_HANDLE,
    _out: *mut CK_BYTE,
    _out_len: *mut CK_ULONG,
) -> CK_RV {
    not_supported()
}

#[unsafe(no_mangle)]
pub extern "C" fn C_UnwrapKey(
    _session: CK_SESSION_HANDLE,
    _mechanism: *mut CK_MECHANISM,
    _unwrapping_key: CK_OBJECT_HANDLE,
    _wrapped: *mut CK_BYTE,
    _len: CK_ULONG,
    _template: *mut CK_ATTRIBUTE,
    _count: CK_ULONG,
    _key: *mut CK_OBJECT_HANDLE,
) -> CK_RV {
    not_supported()
}

#[unsafe(no_mangle)]
pub extern "C" fn C_DeriveKey(
    _session: CK_SESSION_HANDLE,
    _mechanism: *mut CK_MECHANISM,
    _base_key: CK_OBJECT_HANDLE,
    _template: *mut CK_ATTRIBUTE,
    _count: CK_ULONG,
    _key: *mut CK_OBJECT_HANDLE,
) -> CK_RV {
    not_supported()
}

// ------------------------------------------------------------------ random

#[unsafe(no_mangle)]
pub extern "C" fn C_SeedRandom(
    session: CK_SESSION_HANDLE,
    _seed: *mut CK_BYTE,
    _len: CK_ULONG,
) -> CK_RV {
    guard(|| {
        library::get()?.session(session)?;
        Err(CKR_RANDOM_SEED_NOT_SUPPORTED)
    })
}

/// # Safety
/// `out` is null or valid for writes of `len` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn C_GenerateRandom(
    session: CK_SESSION_HANDLE,
    out: *mut CK_BYTE,
    len: CK_ULONG,
) -> CK_RV {
    guard(|| {
        let lib = library::get()?;
        if out.is_null() && len > 0 {
            return Err(CKR_ARGUMENTS_BAD);
        }
        let len = usize::try_from(len).map_err(|_| CKR_ARGUMENTS_BAD)?;
        if len > 16 * 1024 * 1024 {
            return Err(CKR_ARGUMENTS_BAD);
        }
        let bytes = api::generate_random(&lib, session, len)?;
        if len > 0 {
            // SAFETY: `out` has room for `len` bytes (checked non-null above).
            unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), out, len) };
        }
        Ok(())
    })
}

// ---------------------------------------------------- parallel functions

#[unsafe(no_mangle)]
pub extern "C" fn C_GetFunctionStatus(_session: CK_SESSION_HANDLE) -> CK_RV {
    guard(|| {
        library::get()?;
        Err(CKR_FUNCTION_NOT_PARALLEL)
    })
}

#[unsafe(no_mangle)]
pub extern "C" fn C_CancelFunction(_session: CK_SESSION_HANDLE) -> CK_RV {
    guard(|| {
        library::get()?;
        Err(CKR_FUNCTION_NOT_PARALLEL)
    })
}

#[unsafe(no_mangle)]
pub extern "C" fn C_WaitForSlotEvent(
    _flags: CK_FLAGS,
    _slot: *mut CK_SLOT_ID,
    _reserved: *mut c_void,
) -> CK_RV {
    not_supported()
}

/// The v2.40 function list `C_GetFunctionList` hands out.
static FUNCTION_LIST: CK_FUNCTION_LIST = CK_FUNCTION_LIST {
    version: CK_VERSION {
        major: 2,
        minor: 40,
    },
    C_Initialize: Some(C_Initialize),
    C_Finalize: Some(C_Finalize),
    C_GetInfo: Some(C_GetInfo),
    C_GetFunctionList: Some(C_GetFunctionList),
    C_GetSlotList: Some(C_GetSlotList),
    C_GetSlotInfo: Some(C_GetSlotInfo),
    C_GetTokenInfo: Some(C_GetTokenInfo),
    C_GetMechanismList: Some(C_GetMechanismList),
    C_GetMechanismInfo: Some(C_GetMechanismInfo),
    C_InitToken: Some(C_InitToken),
    C_InitPIN: Some(C_InitPIN),
    C_SetPIN: Some(C_SetPIN),
    C_OpenSession: Some(C_OpenSession),
    C_CloseSession: Some(C_CloseSession),
    C_CloseAllSessions: Some(C_CloseAllSessions),
    C_GetSessionInfo: Some(C_GetSessionInfo),
    C_GetOperationState: Some(C_GetOperationState),
    C_SetOperationState: Some(C_SetOperationState),
    C_Login: Some(C_Login),
    C_Logout: Some(C_Logout),
    C_CreateObject: Some(C_CreateObject),
    C_CopyObject: Some(C_CopyObject),
    C_DestroyObject: Some(C_DestroyObject),
    C_GetObjectSize: Some(C_GetObjectSize),
    C_GetAttributeValue: Some(C_GetAttributeValue),
    C_SetAttributeValue: Some(C_SetAttributeValue),
    C_FindObjectsInit: Some(C_FindObjectsInit),
    C_FindObjects: Some(C_FindObjects),
    C_FindObjectsFinal: Some(C_FindObjectsFinal),
    C_EncryptInit: Some(C_EncryptInit),
    C_Encrypt: Some(C_Encrypt),
    C_EncryptUpdate: Some(C_EncryptUpdate),
    C_EncryptFinal: Some(C_EncryptFinal),
    C_DecryptInit: Some(C_DecryptInit),
    C_Decrypt: Some(C_Decrypt),
    C_DecryptUpdate: Some(C_DecryptUpdate),
    C_DecryptFinal: Some(C_DecryptFinal),
    C_DigestInit: Some(C_DigestInit),
    C_Digest: Some(C_Digest),
    C_DigestUpdate: Some(C_DigestUpdate),
    C_DigestKey: Some(C_DigestKey),
    C_DigestFinal: Some(C_DigestFinal),
    C_SignInit: Some(C_SignInit),
    C_Sign: Some(C_Sign),
    C_SignUpdate: Some(C_SignUpdate),
    C_SignFinal: Some(C_SignFinal),
    C_SignRecoverInit: Some(C_SignRecoverInit),
    C_SignRecover: Some(C_SignRecover),
    C_VerifyInit: Some(C_VerifyInit),
    C_Verify: Some(C_Verify),
    C_VerifyUpdate: Some(C_VerifyUpdate),
    C_VerifyFinal: Some(C_VerifyFinal),
    C_VerifyRecoverInit: Some(C_VerifyRecoverInit),
    C_VerifyRecover: Some(C_VerifyRecover),
    C_DigestEncryptUpdate: Some(C_DigestEncryptUpdate),
    C_DecryptDigestUpdate: Some(C_DecryptDigestUpdate),
    C_SignEncryptUpdate: Some(C_SignEncryptUpdate),
    C_DecryptVerifyUpdate: Some(C_DecryptVerifyUpdate),
    C_GenerateKey: Some(C_GenerateKey),
    C_GenerateKeyPair: Some(C_GenerateKeyPair),
    C_WrapKey: Some(C_WrapKey),
    C_UnwrapKey: Some(C_UnwrapKey),
    C_DeriveKey: Some(C_DeriveKey),
    C_SeedRandom: Some(C_SeedRandom),
    C_GenerateRandom: Some(C_GenerateRandom),
    C_GetFunctionStatus: Some(C_GetFunctionStatus),
    C_CancelFunction: Some(C_CancelFunction),
    C_WaitForSlotEvent: Some(C_WaitForSlotEvent),
};
