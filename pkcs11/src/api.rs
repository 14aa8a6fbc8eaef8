//! What each PKCS#11 function does, in safe Rust: the C entry points
//! (`entry.rs`) read the caller's arguments and call these.

use std::future::Future;
use std::sync::Arc;

use cryptoki_sys::*;
use hsmgate_client::{ClientError, KeyInfo, OaepHash, Session as HsmSession};
use zeroize::Zeroizing;

use crate::cipher::{Cipher, CipherOp};
use crate::error::{rv_name, rv_of, worth_retrying};
use crate::ffi::{self, Attr, AttrValue, Mechanism, OutBuf};
use crate::keygen::{self, KeyPlan};
use crate::library::Library;
use crate::mechanism;
use crate::objects::{Object, ObjectId, SESSION_LABEL_PREFIX, SessionObject};
use crate::session::{Find, Session};
use crate::sign::{DigestOp, NodeRequest, SignOp};
use crate::slot::Slot;

type Result<T> = std::result::Result<T, CK_RV>;

/// Library version reported by `C_GetInfo` and the token.
const VERSION: CK_VERSION = CK_VERSION { major: 0, minor: 1 };
/// Longest PIN (passphrase) `C_Login` takes.
const MAX_PIN_LEN: usize = 1024;

/// What an output-producing call gives back to its entry point.
pub enum Produced {
    /// A size query: the length the output will have.
    Length(usize),
    /// The caller's buffer is too small for this many bytes; the operation
    /// stays active.
    TooSmall(usize),
    /// The output; the operation is over.
    Bytes(Zeroizing<Vec<u8>>),
}

// ------------------------------------------------------------------ HSM calls

/// Run an SDK call on one of the slot's connections, on the library's
/// runtime. A call that may safely run twice (`idempotent`) is retried
/// once on a fresh connection when the first one turns out dead (a gateway
/// restarted since). Failures are logged and mapped to their code, with
/// `not_found` for an unknown label.
fn hsm<T, F, Fut>(
    lib: &Library,
    slot: &Arc<Slot>,
    what: &str,
    idempotent: bool,
    not_found: CK_RV,
    call: F,
) -> Result<T>
where
    F: Fn(HsmSession) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = std::result::Result<T, ClientError>> + Send + 'static,
    T: Send + 'static,
{
    let config = slot.config()?;
    let pool = slot.clone();
    let outcome = lib.block_on(async move {
        let first = match pool.session(&config).await {
            Ok(session) => call(session).await,
            Err(e) => Err(e),
        };
        match first {
            Err(e) if idempotent && worth_retrying(&e) => {
                let session = pool.session(&config).await?;
                call(session).await
            }
            other => other,
        }
    })?;
    outcome.map_err(|e| {
        let rv = rv_of(&e, not_found);
        lib.log.warn(&format!(
            "{what} on slot {} ({}): {e}: {}",
            slot.id,
            slot.partition,
            rv_name(rv)
        ));
        rv
    })
}

// ------------------------------------------------------------- general info

pub fn info() -> CK_INFO {
    CK_INFO {
        cryptokiVersion: CK_VERSION {
            major: 2,
            minor: 40,
        },
        manufacturerID: ffi::padded("hsmgate"),
        flags: 0,
        libraryDescription: ffi::padded("hsmgate PKCS#11 library"),
        libraryVersion: VERSION,
    }
}

pub fn slot_list(lib: &Library) -> Vec<CK_SLOT_ID> {
    lib.slots.iter().map(|s| s.id).collect()
}

pub fn slot_info(lib: &Library, slot: CK_SLOT_ID) -> Result<CK_SLOT_INFO> {
    let slot = lib.slot(slot)?;
    Ok(CK_SLOT_INFO {
        slotDescription: ffi::padded(&format!("hsmgate partition {}", slot.partition)),
        manufacturerID: ffi::padded("hsmgate"),
        flags: CKF_TOKEN_PRESENT,
        hardwareVersion: VERSION,
        firmwareVersion: VERSION,
    })
}

pub fn token_info(lib: &Library, slot: CK_SLOT_ID) -> Result<CK_TOKEN_INFO> {
    let slot = lib.slot(slot)?;
    let (sessions, rw) = lib.session_counts(slot.id);
    let mut flags = CKF_RNG | CKF_TOKEN_INITIALIZED | CKF_USER_PIN_INITIALIZED;
    if slot.login_required {
        flags |= CKF_LOGIN_REQUIRED;
    }
    // A serial number that stays the same for a partition: the first bytes
    // of its name's SHA-256, in hex.
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, slot.partition.as_bytes());
    Ok(CK_TOKEN_INFO {
        label: ffi::padded(&slot.partition),
        manufacturerID: ffi::padded("hsmgate"),
        model: ffi::padded("hsmgate"),
        serialNumber: ffi::padded(&hex::encode(&digest.as_ref()[..8])),
        flags,
        ulMaxSessionCount: CK_EFFECTIVELY_INFINITE,
        ulSessionCount: sessions as CK_ULONG,
        ulMaxRwSessionCount: CK_EFFECTIVELY_INFINITE,
        ulRwSessionCount: rw as CK_ULONG,
        ulMaxPinLen: MAX_PIN_LEN as CK_ULONG,
        ulMinPinLen: hsmgate_wire::sealed::MIN_PASSPHRASE_LEN as CK_ULONG,
        ulTotalPublicMemory: CK_UNAVAILABLE_INFORMATION,
        ulFreePublicMemory: CK_UNAVAILABLE_INFORMATION,
        ulTotalPrivateMemory: CK_UNAVAILABLE_INFORMATION,
        ulFreePrivateMemory: CK_UNAVAILABLE_INFORMATION,
        hardwareVersion: VERSION,
        firmwareVersion: VERSION,
        utcTime: [b' '; 16],
    })
}

pub fn mechanism_list(lib: &Library, slot: CK_SLOT_ID) -> Result<Vec<CK_MECHANISM_TYPE>> {
    lib.slot(slot)?;
    Ok(mechanism::list())
}

pub fn mechanism_info(
    lib: &Library,
    slot: CK_SLOT_ID,
    kind: CK_MECHANISM_TYPE,
) -> Result<CK_MECHANISM_INFO> {
    lib.slot(slot)?;
    mechanism::info(kind).ok_or(CKR_MECHANISM_INVALID)
}

// ----------------------------------------------------------------- sessions

pub fn open_session(lib: &Library, slot: CK_SLOT_ID, flags: CK_FLAGS) -> Result<CK_SESSION_HANDLE> {
    let slot = lib.slot(slot)?;
    if flags & CKF_SERIAL_SESSION == 0 {
        return Err(CKR_SESSION_PARALLEL_NOT_SUPPORTED);
    }
    // Connect now when the keys are at hand, so that an unreachable or
    // refusing gateway shows here rather than at the first operation.
    if slot.config().is_ok() {
        hsm(
            lib,
            &slot,
            "open session",
            true,
            CKR_DEVICE_ERROR,
            |_s| async { Ok(()) },
        )?;
    }
    let handle = lib.next_session_handle();
    let session = Session::new(handle, slot, flags & CKF_RW_SESSION != 0);
    lib.sessions().insert(handle, Arc::new(session));
    Ok(handle)
}

/// Close a session: its session objects are deleted from the HSM.
pub fn close_session(lib: &Library, handle: CK_SESSION_HANDLE) -> Result<()> {
    let session = lib
        .sessions()
        .remove(&handle)
        .ok_or(CKR_SESSION_HANDLE_INVALID)?;
    let mut labels: Vec<String> = Vec::new();
    for object in lib.objects.owned_by(handle) {
        let label = object.id.label().to_owned();
        lib.objects.remove_label(object.slot, true, &label);
        if !labels.contains(&label) {
            labels.push(label);
        }
    }
    for label in labels {
        let doomed = label.clone();
        let deleted = hsm(
            lib,
            &session.slot,
            "delete session key",
            true,
            CKR_OK,
            move |s| {
                let label = doomed.clone();
                async move { s.delete_key(&label).await }
            },
        );
        if let Err(rv) = deleted
            && rv != CKR_OK
        {
            lib.log.warn(&format!(
                "session key {label} was left on the HSM: delete it with `hsmgate-client delete --key {label}`"
            ));
        }
    }
    Ok(())
}

pub fn close_all_sessions(lib: &Library, slot: CK_SLOT_ID) -> Result<()> {
    lib.slot(slot)?;
    let handles: Vec<_> = lib
        .sessions()
        .values()
        .filter(|s| s.slot.id == slot)
        .map(|s| s.handle)
        .collect();
    for h in handles {
        let _ = close_session(lib, h);
    }
    Ok(())
}

pub fn session_info(lib: &Library, handle: CK_SESSION_HANDLE) -> Result<CK_SESSION_INFO> {
    let s = lib.session(handle)?;
    Ok(CK_SESSION_INFO {
        slotID: s.slot.id,
        state: s.state(),
        flags: CKF_SERIAL_SESSION | if s.rw { CKF_RW_SESSION } else { 0 },
        ulDeviceError: 0,
    })
}

pub fn login(
    lib: &Library,
    handle: CK_SESSION_HANDLE,
    user: CK_USER_TYPE,
    pin: &[u8],
) -> Result<()> {
    let s = lib.session(handle)?;
    match user {
        CKU_USER => {}
        CKU_CONTEXT_SPECIFIC => return Err(CKR_OPERATION_NOT_INITIALIZED),
        _ => return Err(CKR_USER_TYPE_INVALID),
    }
    if pin.len() > MAX_PIN_LEN {
        return Err(CKR_PIN_LEN_RANGE);
    }
    let result = s.slot.login(pin);
    match result {
        Ok(()) => lib.log.info(&format!(
            "slot {} ({}): logged in",
            s.slot.id, s.slot.partition
        )),
        Err(CKR_PIN_INCORRECT) => lib.log.warn(&format!(
            "slot {} ({}): login refused: wrong PIN",
            s.slot.id, s.slot.partition
        )),
        Err(_) => {}
    }
    result
}

pub fn logout(lib: &Library, handle: CK_SESSION_HANDLE) -> Result<()> {
    let s = lib.session(handle)?;
    let connections = s.slot.logout()?;
    let _ = lib.block_on(async move {
        for c in connections {
            c.close().await;
        }
    });
    Ok(())
}

// ------------------------------------------------------------------ objects

/// The object `handle` as seen from session `s`: it must be of the same
/// slot.
fn object(
    lib: &Library,
    s: &Session,
    handle: CK_OBJECT_HANDLE,
    invalid: CK_RV,
) -> Result<Arc<Object>> {
    let object = lib.objects.get(handle).map_err(|_| invalid)?;
    if object.slot != s.slot.id {
        return Err(invalid);
    }
    Ok(object)
}

/// Bring the slot's objects up to date with the partition.
fn refresh(lib: &Library, slot: &Arc<Slot>) -> Result<()> {
    let (keys, certs) = hsm(
        lib,
        slot,
        "list objects",
        true,
        CKR_DEVICE_ERROR,
        |s| async move {
            let keys = s.list_keys().await?;
            let certs = s.list_objects().await?;
            Ok((keys, certs))
        },
    )?;
    lib.objects.sync_slot(slot.id, &keys, &certs);
    Ok(())
}

/// Fetch the values of the slot's certificates not fetched yet.
fn fetch_certificates(lib: &Library, slot: &Arc<Slot>, labels: Vec<String>) -> Result<()> {
    for label in labels {
        let wanted = label.clone();
        let fetched = hsm(
            lib,
            slot,
            "get certificate",
            true,
            CKR_OBJECT_HANDLE_INVALID,
            move |s| {
                let label = wanted.clone();
                async move { s.get_object(&label).await }
            },
        );
        match fetched {
            Ok((info, value)) => {
                lib.objects
                    .add_certificate(slot.id, info, Some(Arc::new(value)));
            }
            Err(CKR_OBJECT_HANDLE_INVALID) => lib.objects.remove_label(slot.id, false, &label),
            Err(rv) => return Err(rv),
        }
    }
    Ok(())
}

/// Attributes whose value needs a certificate's DER.
fn needs_certificate_value(kind: CK_ATTRIBUTE_TYPE) -> bool {
    matches!(
        kind,
        CKA_VALUE | CKA_SUBJECT | CKA_ISSUER | CKA_SERIAL_NUMBER
    )
}

pub fn create_object(
    lib: &Library,
    handle: CK_SESSION_HANDLE,
    template: &[Attr],
) -> Result<CK_OBJECT_HANDLE> {
    let s = lib.session(handle)?;
    let plan = keygen::certificate(template)?;
    if !s.rw {
        return Err(CKR_SESSION_READ_ONLY);
    }
    let label = plan
        .label
        .clone()
        .unwrap_or_else(|| keygen::random_label("cert-"));
    let value = Arc::new(plan.value);
    let (l, id, v) = (label.clone(), plan.id.clone(), value.clone());
    let info = hsm(
        lib,
        &s.slot,
        "store certificate",
        false,
        CKR_DEVICE_ERROR,
        move |session| {
            let (l, id, v) = (l.clone(), id.clone(), v.clone());
            async move { session.put_object(&l, &id, &v).await }
        },
    )?;
    Ok(lib.objects.add_certificate(s.slot.id, info, Some(value)))
}

pub fn destroy_object(
    lib: &Library,
    handle: CK_SESSION_HANDLE,
    obj: CK_OBJECT_HANDLE,
) -> Result<()> {
    let s = lib.session(handle)?;
    let object = object(lib, &s, obj, CKR_OBJECT_HANDLE_INVALID)?;
    if object.session.is_none() && !s.rw {
        return Err(CKR_SESSION_READ_ONLY);
    }
    let label = object.id.label().to_owned();
    let doomed = label.clone();
    match &object.id {
        ObjectId::PublicKey(_) => Err(CKR_ACTION_PROHIBITED),
        ObjectId::PrivateKey(_) | ObjectId::SecretKey(_) => {
            let result = hsm(
                lib,
                &s.slot,
                "delete key",
                false,
                CKR_OBJECT_HANDLE_INVALID,
                move |session| {
                    let l = doomed.clone();
                    async move { session.delete_key(&l).await }
                },
            );
            if matches!(result, Ok(()) | Err(CKR_OBJECT_HANDLE_INVALID)) {
                lib.objects.remove_label(s.slot.id, true, &label);
            }
            result
        }
        ObjectId::Certificate(_) => {
            let result = hsm(
                lib,
                &s.slot,
                "delete certificate",
                false,
                CKR_OBJECT_HANDLE_INVALID,
                move |session| {
                    let l = doomed.clone();
                    async move { session.delete_object(&l).await }
                },
            );
            if matches!(result, Ok(()) | Err(CKR_OBJECT_HANDLE_INVALID)) {
                lib.objects.remove_label(s.slot.id, false, &label);
            }
            result
        }
    }
}

/// `C_GetAttributeValue`: fills `attrs` and returns the call's code.
pub fn get_attribute_value(
    lib: &Library,
    handle: CK_SESSION_HANDLE,
    obj: CK_OBJECT_HANDLE,
    attrs: &mut [CK_ATTRIBUTE],
) -> Result<CK_RV> {
    let s = lib.session(handle)?;
    let mut object = object(lib, &s, obj, CKR_OBJECT_HANDLE_INVALID)?;
    if let crate::objects::Content::Certificate {
        value: None, info, ..
    } = &object.content
        && attrs.iter().any(|a| needs_certificate_value(a.type_))
    {
        fetch_certificates(lib, &s.slot, vec![info.label.clone()])?;
        object = lib.objects.get(obj)?;
    }
    let mut rv = CKR_OK;
    for attr in attrs.iter_mut() {
        let value = object.attribute(attr.type_, s.slot.login_required);
        // SAFETY: the entry point obtained `attrs` from the caller's array,
        // whose buffers the caller sized by `ulValueLen` (PKCS#11 contract).
        let this = unsafe { ffi::fill_attribute(attr, &value) };
        if rv == CKR_OK {
            rv = this;
        }
    }
    Ok(rv)
}

pub fn set_attribute_value(
    lib: &Library,
    handle: CK_SESSION_HANDLE,
    obj: CK_OBJECT_HANDLE,
    template: &[Attr],
) -> Result<()> {
    let s = lib.session(handle)?;
    let object = object(lib, &s, obj, CKR_OBJECT_HANDLE_INVALID)?;
    let mut new_id = None;
    for attr in template {
        let current = object.attribute(attr.kind, s.slot.login_required);
        match (attr.kind, &object.content, current) {
            (_, _, AttrValue::Value(v)) if v == attr.value => {}
            (CKA_ID, crate::objects::Content::Key(_), _) => {
                if attr.value.len() > hsmgate_wire::ops::MAX_ID {
                    return Err(CKR_ATTRIBUTE_VALUE_INVALID);
                }
                new_id = Some(attr.value.clone());
            }
            (_, _, AttrValue::Invalid) => return Err(CKR_ATTRIBUTE_TYPE_INVALID),
            _ => return Err(CKR_ATTRIBUTE_READ_ONLY),
        }
    }
    let (Some(id), Some(key)) = (new_id, object.key()) else {
        return Ok(());
    };
    if object.session.is_none() && !s.rw {
        return Err(CKR_SESSION_READ_ONLY);
    }
    let label = key.label.clone();
    let wanted = id.clone();
    hsm(
        lib,
        &s.slot,
        "set key id",
        true,
        CKR_OBJECT_HANDLE_INVALID,
        move |session| {
            let (l, id) = (label.clone(), wanted.clone());
            async move { session.set_key_id(&l, &id).await }
        },
    )?;
    let updated = KeyInfo { id, ..key.clone() };
    lib.objects
        .add_key(s.slot.id, &updated, object.session.clone());
    Ok(())
}

pub fn find_init(lib: &Library, handle: CK_SESSION_HANDLE, template: &[Attr]) -> Result<()> {
    let s = lib.session(handle)?;
    let mut ops = s.ops();
    if ops.find.is_some() {
        return Err(CKR_OPERATION_ACTIVE);
    }
    // A sealed token shows nothing before login: there is no connection.
    if s.slot.config().is_ok() {
        refresh(lib, &s.slot)?;
        if template.iter().any(|a| needs_certificate_value(a.kind)) {
            let missing = lib.objects.certificates_without_value(s.slot.id);
            fetch_certificates(lib, &s.slot, missing)?;
        }
    }
    let handles = lib.objects.find(s.slot.id, template, s.slot.login_required);
    ops.find = Some(Find { handles, next: 0 });
    Ok(())
}

pub fn find(lib: &Library, handle: CK_SESSION_HANDLE, max: usize) -> Result<Vec<CK_OBJECT_HANDLE>> {
    let s = lib.session(handle)?;
    let mut ops = s.ops();
    let find = ops.find.as_mut().ok_or(CKR_OPERATION_NOT_INITIALIZED)?;
    let end = (find.next + max).min(find.handles.len());
    let out = find.handles[find.next..end].to_vec();
    find.next = end;
    Ok(out)
}

pub fn find_final(lib: &Library, handle: CK_SESSION_HANDLE) -> Result<()> {
    let s = lib.session(handle)?;
    s.ops()
        .find
        .take()
        .map(drop)
        .ok_or(CKR_OPERATION_NOT_INITIALIZED)
}

/// The kinds of operation a session runs, one of each at a time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    Sign,
    Verify,
    Encrypt,
    Decrypt,
    Digest,
}

/// End the session's operation of `kind`: a call that fails (but for
/// `CKR_BUFFER_TOO_SMALL` and size queries) ends its operation, bad
/// arguments included (PKCS#11 base §5.12).
pub fn end_operation(lib: &Library, handle: CK_SESSION_HANDLE, kind: Operation) {
    if let Ok(s) = lib.session(handle) {
        let mut ops = s.ops();
        match kind {
            Operation::Sign => ops.sign = None,
            Operation::Verify => ops.verify = None,
            Operation::Encrypt => ops.encrypt = None,
            Operation::Decrypt => ops.decrypt = None,
            Operation::Digest => ops.digest = None,
        }
    }
}

// --------------------------------------------------------- sign and verify

/// The key of `obj` for an operation: it must be of `classes` and allow
/// `mechanism`.
fn operation_key(
    lib: &Library,
    s: &Session,
    obj: CK_OBJECT_HANDLE,
    classes: &[CK_OBJECT_CLASS],
    mechanism: CK_MECHANISM_TYPE,
) -> Result<KeyInfo> {
    let object = object(lib, s, obj, CKR_KEY_HANDLE_INVALID)?;
    let key = object.key().ok_or(CKR_KEY_HANDLE_INVALID)?;
    if !classes.contains(&object.class()) {
        return Err(CKR_KEY_FUNCTION_NOT_PERMITTED);
    }
    if mechanism::info(mechanism).is_some()
        && !mechanism::allowed(key.kind, object.class()).contains(&mechanism)
    {
        return Err(CKR_KEY_TYPE_INCONSISTENT);
    }
    Ok(key.clone())
}

pub fn sign_init(
    lib: &Library,
    handle: CK_SESSION_HANDLE,
    m: &Mechanism,
    key: CK_OBJECT_HANDLE,
) -> Result<()> {
    let s = lib.session(handle)?;
    let mut ops = s.ops();
    if ops.sign.is_some() {
        return Err(CKR_OPERATION_ACTIVE);
    }
    let key = operation_key(lib, &s, key, &[CKO_PRIVATE_KEY], m.kind)?;
    ops.sign = Some(SignOp::new(m, &key)?);
    Ok(())
}

pub fn sign_update(lib: &Library, handle: CK_SESSION_HANDLE, data: &[u8]) -> Result<()> {
    let s = lib.session(handle)?;
    let mut ops = s.ops();
    let op = ops.sign.as_mut().ok_or(CKR_OPERATION_NOT_INITIALIZED)?;
    op.multi_part = true;
    let result = op.update(data);
    if result.is_err() {
        ops.sign = None;
    }
    result
}

/// `C_Sign` (with `data`) or `C_SignFinal` (without).
pub fn sign(
    lib: &Library,
    handle: CK_SESSION_HANDLE,
    data: Option<&[u8]>,
    out: OutBuf,
) -> Result<Produced> {
    let s = lib.session(handle)?;
    let mut ops = s.ops();
    let op = ops.sign.as_mut().ok_or(CKR_OPERATION_NOT_INITIALIZED)?;
    let signature = match op.pending.take() {
        Some(sig) => sig,
        None => {
            let expected = op.signature_len();
            match out {
                OutBuf::SizeQuery => return Ok(Produced::Length(expected)),
                OutBuf::Capacity(c) if c < expected => return Ok(Produced::TooSmall(expected)),
                OutBuf::Capacity(_) => {}
            }
            let signed = data
                .map_or(Ok(()), |d| op.update(d))
                .and_then(|()| op.node_request())
                .and_then(|request| node_sign(lib, &s.slot, &op.key, request));
            match signed {
                Ok(sig) => sig,
                Err(rv) => {
                    ops.sign = None;
                    return Err(rv);
                }
            }
        }
    };
    match out {
        OutBuf::Capacity(c) if c >= signature.len() => {
            ops.sign = None;
            Ok(Produced::Bytes(Zeroizing::new(signature)))
        }
        _ => {
            let len = signature.len();
            if let Some(op) = ops.sign.as_mut() {
                op.pending = Some(signature);
            }
            Ok(Produced::TooSmall(len))
        }
    }
}

fn node_sign(
    lib: &Library,
    slot: &Arc<Slot>,
    key: &KeyInfo,
    request: NodeRequest,
) -> Result<Vec<u8>> {
    let label = key.label.clone();
    let request = Arc::new(request);
    let result = hsm(lib, slot, "sign", true, CKR_KEY_HANDLE_INVALID, move |s| {
        let (label, request) = (label.clone(), request.clone());
        async move {
            match &*request {
                NodeRequest::Message(m) => s.sign(&label, m).await,
                NodeRequest::Digest(scheme, d) => s.sign_digest(&label, *scheme, d).await,
            }
        }
    });
    forget_if_gone(lib, slot, &key.label, &result);
    result.map_err(unsupported_parameters)
}

/// An HSM that cannot run an operation with these parameters (a token
/// behind the node without OAEP-SHA-256, say) answers `unsupported`: for a
/// cryptographic call that is the mechanism's parameters, which
/// applications (pkcs11-tool's self-test, for one) skip.
fn unsupported_parameters(rv: CK_RV) -> CK_RV {
    if rv == CKR_FUNCTION_NOT_SUPPORTED {
        CKR_MECHANISM_PARAM_INVALID
    } else {
        rv
    }
}

/// A key the HSM no longer has: forget its objects.
fn forget_if_gone<T>(lib: &Library, slot: &Arc<Slot>, label: &str, result: &Result<T>) {
    if matches!(result, Err(CKR_KEY_HANDLE_INVALID)) {
        lib.objects.remove_label(slot.id, true, label);
    }
}

pub fn verify_init(
    lib: &Library,
    handle: CK_SESSION_HANDLE,
    m: &Mechanism,
    key: CK_OBJECT_HANDLE,
) -> Result<()> {
    let s = lib.session(handle)?;
    let mut ops = s.ops();
    if ops.verify.is_some() {
        return Err(CKR_OPERATION_ACTIVE);
    }
    // The public key is known for both halves of a pair.
    let key = operation_key(lib, &s, key, &[CKO_PUBLIC_KEY, CKO_PRIVATE_KEY], m.kind)?;
    ops.verify = Some(SignOp::new(m, &key)?);
    Ok(())
}

pub fn verify_update(lib: &Library, handle: CK_SESSION_HANDLE, data: &[u8]) -> Result<()> {
    let s = lib.session(handle)?;
    let mut ops = s.ops();
    let op = ops.verify.as_mut().ok_or(CKR_OPERATION_NOT_INITIALIZED)?;
    op.multi_part = true;
    let result = op.update(data);
    if result.is_err() {
        ops.verify = None;
    }
    result
}

/// `C_Verify` (with `data`) or `C_VerifyFinal` (without). The operation
/// ends either way.
pub fn verify(
    lib: &Library,
    handle: CK_SESSION_HANDLE,
    data: Option<&[u8]>,
    signature: &[u8],
) -> Result<()> {
    let s = lib.session(handle)?;
    let mut op = s.ops().verify.take().ok_or(CKR_OPERATION_NOT_INITIALIZED)?;
    if let Some(d) = data {
        op.update(d)?;
    }
    op.verify(signature)
}

// ---------------------------------------------------- encrypt and decrypt

pub fn crypt_init(
    lib: &Library,
    handle: CK_SESSION_HANDLE,
    m: &Mechanism,
    key: CK_OBJECT_HANDLE,
    encrypt: bool,
) -> Result<()> {
    let s = lib.session(handle)?;
    let mut ops = s.ops();
    let slot = if encrypt {
        &mut ops.encrypt
    } else {
        &mut ops.decrypt
    };
    if slot.is_some() {
        return Err(CKR_OPERATION_ACTIVE);
    }
    let classes: &[CK_OBJECT_CLASS] = if encrypt {
        &[CKO_SECRET_KEY, CKO_PUBLIC_KEY]
    } else {
        &[CKO_SECRET_KEY, CKO_PRIVATE_KEY]
    };
    let key = operation_key(lib, &s, key, classes, m.kind)?;
    let op = CipherOp::new(m, &key, encrypt)?;
    if let Cipher::Oaep(hash) = op.cipher {
        check_oaep_support(lib, &s.slot, &key, hash)?;
    }
    *slot = Some(op);
    Ok(())
}

/// Whether the HSM behind the slot can run RSA-OAEP with `hash` (a token
/// may offer OAEP with SHA-1 only): asked once per slot, hash and key size
/// by decrypting an all-zero ciphertext, which fails its padding check
/// where the hash is supported and is `unsupported` where it is not. So
/// `C_DecryptInit` refuses parameters the HSM cannot run, as applications
/// expect, instead of `C_Decrypt` failing later.
fn check_oaep_support(
    lib: &Library,
    slot: &Arc<Slot>,
    key: &KeyInfo,
    hash: OaepHash,
) -> Result<()> {
    let size = key.kind.rsa_bytes().ok_or(CKR_KEY_TYPE_INCONSISTENT)?;
    if let Some(known) = slot.oaep_support(hash, size) {
        return if known {
            Ok(())
        } else {
            Err(CKR_MECHANISM_PARAM_INVALID)
        };
    }
    let label = key.label.clone();
    let probe = hsm(
        lib,
        slot,
        "check OAEP support",
        true,
        CKR_KEY_HANDLE_INVALID,
        move |s| {
            let label = label.clone();
            async move { s.decrypt_rsa(&label, hash, &vec![0; size]).await }
        },
    );
    let supported = match probe {
        Ok(_) | Err(CKR_ENCRYPTED_DATA_INVALID) => true,
        Err(CKR_FUNCTION_NOT_SUPPORTED) => false,
        Err(rv) => return Err(rv),
    };
    slot.set_oaep_support(hash, size, supported);
    if supported {
        Ok(())
    } else {
        Err(CKR_MECHANISM_PARAM_INVALID)
    }
}

/// `C_EncryptUpdate` / `C_DecryptUpdate`: gather; no output yet.
pub fn crypt_update(
    lib: &Library,
    handle: CK_SESSION_HANDLE,
    data: &[u8],
    encrypt: bool,
) -> Result<()> {
    let s = lib.session(handle)?;
    let mut ops = s.ops();
    let slot = if encrypt {
        &mut ops.encrypt
    } else {
        &mut ops.decrypt
    };
    let op = slot.as_mut().ok_or(CKR_OPERATION_NOT_INITIALIZED)?;
    op.multi_part = true;
    let result = op.update(data);
    if result.is_err() {
        *slot = None;
    }
    result
}

/// `C_Encrypt`/`C_Decrypt` (with `data`) or their `Final` (without).
pub fn crypt(
    lib: &Library,
    handle: CK_SESSION_HANDLE,
    data: Option<&[u8]>,
    out: OutBuf,
    encrypt: bool,
) -> Result<Produced> {
    let s = lib.session(handle)?;
    let mut ops = s.ops();
    let slot = if encrypt {
        &mut ops.encrypt
    } else {
        &mut ops.decrypt
    };
    let op = slot.as_mut().ok_or(CKR_OPERATION_NOT_INITIALIZED)?;
    let output = match op.pending.take() {
        Some(o) => o,
        None => {
            let expected = op.output_len(data.map_or(0, <[u8]>::len));
            if out == OutBuf::SizeQuery {
                return Ok(Produced::Length(expected));
            }
            let done = data
                .map_or(Ok(()), |d| op.update(d))
                .and_then(|()| op.check_input())
                .and_then(|()| node_crypt(lib, &s.slot, op));
            match done {
                Ok(o) => o,
                Err(rv) => {
                    *slot = None;
                    return Err(rv);
                }
            }
        }
    };
    match out {
        OutBuf::Capacity(c) if c >= output.len() => {
            *slot = None;
            Ok(Produced::Bytes(output))
        }
        _ => {
            let len = output.len();
            if let Some(op) = slot.as_mut() {
                op.pending = Some(output);
            }
            Ok(Produced::TooSmall(len))
        }
    }
}

fn node_crypt(lib: &Library, slot: &Arc<Slot>, op: &CipherOp) -> Result<Zeroizing<Vec<u8>>> {
    let label = op.key.label.clone();
    let input = Arc::new(op.input.clone());
    let cipher = op.cipher.clone();
    let encrypt = op.encrypt;
    let what = if encrypt { "encrypt" } else { "decrypt" };
    let result = hsm(lib, slot, what, true, CKR_KEY_HANDLE_INVALID, move |s| {
        let (label, input, cipher) = (label.clone(), input.clone(), cipher.clone());
        async move {
            let out = match (&cipher, encrypt) {
                (Cipher::Gcm { iv, aad }, true) => s.encrypt_gcm(&label, iv, &input, aad).await?,
                (Cipher::Gcm { iv, aad }, false) => s.decrypt_gcm(&label, iv, &input, aad).await?,
                (Cipher::Oaep(hash), _) => s.decrypt_rsa(&label, *hash, &input).await?,
            };
            Ok(Zeroizing::new(out))
        }
    });
    forget_if_gone(lib, slot, &op.key.label, &result);
    result.map_err(unsupported_parameters)
}

// ------------------------------------------------------------------ digest

pub fn digest_init(lib: &Library, handle: CK_SESSION_HANDLE, m: &Mechanism) -> Result<()> {
    let s = lib.session(handle)?;
    let mut ops = s.ops();
    if ops.digest.is_some() {
        return Err(CKR_OPERATION_ACTIVE);
    }
    ops.digest = Some(DigestOp::new(m)?);
    Ok(())
}

pub fn digest_update(lib: &Library, handle: CK_SESSION_HANDLE, data: &[u8]) -> Result<()> {
    let s = lib.session(handle)?;
    let mut ops = s.ops();
    let op = ops.digest.as_mut().ok_or(CKR_OPERATION_NOT_INITIALIZED)?;
    op.multi_part = true;
    op.update(data);
    Ok(())
}

pub fn digest(
    lib: &Library,
    handle: CK_SESSION_HANDLE,
    data: Option<&[u8]>,
    out: OutBuf,
) -> Result<Produced> {
    let s = lib.session(handle)?;
    let mut ops = s.ops();
    let op = ops.digest.as_mut().ok_or(CKR_OPERATION_NOT_INITIALIZED)?;
    let len = op.output_len();
    match out {
        OutBuf::SizeQuery => Ok(Produced::Length(len)),
        OutBuf::Capacity(c) if c < len => Ok(Produced::TooSmall(len)),
        OutBuf::Capacity(_) => {
            if let Some(d) = data {
                op.update(d);
            }
            let result = op.finish();
            ops.digest = None;
            Ok(Produced::Bytes(Zeroizing::new(result)))
        }
    }
}

// ------------------------------------------------------------ key creation

/// Generate the key of `plan` on the HSM and register its objects.
fn generate(lib: &Library, s: &Session, plan: KeyPlan) -> Result<Vec<CK_OBJECT_HANDLE>> {
    let (hsm_label, session) = if plan.token {
        if !s.rw {
            return Err(CKR_SESSION_READ_ONLY);
        }
        let label = match &plan.label {
            Some(l) => keygen::hsm_label(l)?,
            None => keygen::random_label("key-"),
        };
        (label, None)
    } else {
        let session = SessionObject {
            owner: s.handle,
            label: plan.label.clone().unwrap_or_default(),
        };
        (keygen::random_label(SESSION_LABEL_PREFIX), Some(session))
    };
    let (label, kind, id) = (hsm_label.clone(), plan.kind, plan.id.clone());
    let mut info = hsm(
        lib,
        &s.slot,
        "generate key",
        false,
        CKR_DEVICE_ERROR,
        move |session| {
            let (label, id) = (label.clone(), id.clone());
            async move {
                let mut info = session.generate_key(kind, &label).await?;
                if !id.is_empty() {
                    session.set_key_id(&label, &id).await?;
                    info.id = id;
                }
                Ok(info)
            }
        },
    )?;
    info.id = plan.id;
    lib.log.info(&format!(
        "slot {} ({}): generated {} key {}",
        s.slot.id, s.slot.partition, info.kind, info.label
    ));
    Ok(lib.objects.add_key(s.slot.id, &info, session))
}

pub fn generate_key(
    lib: &Library,
    handle: CK_SESSION_HANDLE,
    m: &Mechanism,
    template: &[Attr],
) -> Result<CK_OBJECT_HANDLE> {
    let s = lib.session(handle)?;
    if m.params != ffi::Params::None {
        return Err(CKR_MECHANISM_PARAM_INVALID);
    }
    let plan = keygen::secret_key(m.kind, template)?;
    let handles = generate(lib, &s, plan)?;
    handles.first().copied().ok_or(CKR_GENERAL_ERROR)
}

pub fn generate_key_pair(
    lib: &Library,
    handle: CK_SESSION_HANDLE,
    m: &Mechanism,
    public: &[Attr],
    private: &[Attr],
) -> Result<(CK_OBJECT_HANDLE, CK_OBJECT_HANDLE)> {
    let s = lib.session(handle)?;
    if m.params != ffi::Params::None {
        return Err(CKR_MECHANISM_PARAM_INVALID);
    }
    let plan = keygen::key_pair(m.kind, public, private)?;
    match generate(lib, &s, plan)?[..] {
        [private, public] => Ok((public, private)),
        _ => Err(CKR_GENERAL_ERROR),
    }
}

pub fn generate_random(
    lib: &Library,
    handle: CK_SESSION_HANDLE,
    len: usize,
) -> Result<Zeroizing<Vec<u8>>> {
    const CHUNK: usize = hsmgate_wire::ops::MAX_RANDOM;
    let s = lib.session(handle)?;
    let mut out = Zeroizing::new(Vec::with_capacity(len));
    while out.len() < len {
        let n = (len - out.len()).min(CHUNK) as u16;
        let bytes = hsm(
            lib,
            &s.slot,
            "random",
            true,
            CKR_DEVICE_ERROR,
            move |session| async move { session.random(n).await },
        )?;
        out.extend_from_slice(&bytes);
    }
    Ok(out)
}
