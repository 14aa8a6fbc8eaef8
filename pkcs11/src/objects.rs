//! PKCS#11 objects over the partition's keys and certificates.
//!
//! Each key of the partition shows as objects the way applications look for
//! them: an asymmetric key as a private key and a public key with the same
//! `CKA_LABEL` and `CKA_ID`, an AES key as a secret key; each stored
//! certificate as an X.509 certificate object. Handles are stable for the
//! library's lifetime: the same key keeps its handle across searches, and a
//! key deleted elsewhere leaves a handle that answers
//! `CKR_OBJECT_HANDLE_INVALID` (or `CKR_KEY_HANDLE_INVALID`) once the
//! library learns of it.
//!
//! Session objects (`CKA_TOKEN = false`) are real keys on the HSM under a
//! reserved label (`_s.` and 16 hex digits), deleted when their session
//! closes; other processes' session keys are never shown.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use cryptoki_sys::*;
use hsmgate_client::{KeyInfo, KeyType, ObjectInfo};

use crate::der::{self, CertNames};
use crate::ffi::{Attr, AttrValue, bool_value, ulong};
use crate::mechanism;

/// Prefix of the HSM labels of session keys.
pub const SESSION_LABEL_PREFIX: &str = "_s.";

/// Which object of the partition: the HSM label and the object's class.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ObjectId {
    PrivateKey(String),
    PublicKey(String),
    SecretKey(String),
    Certificate(String),
}

impl ObjectId {
    pub fn label(&self) -> &str {
        match self {
            ObjectId::PrivateKey(l)
            | ObjectId::PublicKey(l)
            | ObjectId::SecretKey(l)
            | ObjectId::Certificate(l) => l,
        }
    }

    pub fn is_key(&self) -> bool {
        !matches!(self, ObjectId::Certificate(_))
    }

    /// The objects a key shows as.
    pub fn of_key(key: &KeyInfo) -> Vec<ObjectId> {
        let label = key.label.clone();
        if key.kind == KeyType::Aes256 {
            vec![ObjectId::SecretKey(label)]
        } else {
            vec![
                ObjectId::PrivateKey(label.clone()),
                ObjectId::PublicKey(label),
            ]
        }
    }
}

/// What the library knows of an object's content.
#[derive(Debug, Clone)]
pub enum Content {
    Key(KeyInfo),
    Certificate {
        info: ObjectInfo,
        /// The DER value, once fetched.
        value: Option<Arc<Vec<u8>>>,
        names: CertNames,
    },
}

/// A session object's owner and the label the application gave it.
#[derive(Debug, Clone)]
pub struct SessionObject {
    pub owner: CK_SESSION_HANDLE,
    pub label: Vec<u8>,
}

#[derive(Debug, Clone)]
pub struct Object {
    pub handle: CK_OBJECT_HANDLE,
    pub slot: CK_SLOT_ID,
    pub id: ObjectId,
    pub content: Content,
    pub session: Option<SessionObject>,
}

#[derive(Default)]
pub struct Objects {
    table: Mutex<Table>,
}

#[derive(Default)]
struct Table {
    by_handle: HashMap<CK_OBJECT_HANDLE, Arc<Object>>,
    by_id: HashMap<(CK_SLOT_ID, ObjectId), CK_OBJECT_HANDLE>,
    last: CK_OBJECT_HANDLE,
}

impl Table {
    /// Insert or replace, keeping the handle and any session ownership.
    fn upsert(
        &mut self,
        slot: CK_SLOT_ID,
        id: ObjectId,
        content: Content,
        session: Option<SessionObject>,
    ) -> CK_OBJECT_HANDLE {
        let key = (slot, id.clone());
        let handle = match self.by_id.get(&key) {
            Some(h) => *h,
            None => {
                self.last += 1;
                self.by_id.insert(key, self.last);
                self.last
            }
        };
        let session =
            session.or_else(|| self.by_handle.get(&handle).and_then(|o| o.session.clone()));
        self.by_handle.insert(
            handle,
            Arc::new(Object {
                handle,
                slot,
                id,
                content,
                session,
            }),
        );
        handle
    }

    fn remove(&mut self, handle: CK_OBJECT_HANDLE) {
        if let Some(o) = self.by_handle.remove(&handle) {
            self.by_id.remove(&(o.slot, o.id.clone()));
        }
    }
}

impl Objects {
    fn table(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn get(&self, handle: CK_OBJECT_HANDLE) -> Result<Arc<Object>, CK_RV> {
        self.table()
            .by_handle
            .get(&handle)
            .cloned()
            .ok_or(CKR_OBJECT_HANDLE_INVALID)
    }

    /// Record a key's objects; returns their handles (private or secret
    /// first).
    pub fn add_key(
        &self,
        slot: CK_SLOT_ID,
        key: &KeyInfo,
        session: Option<SessionObject>,
    ) -> Vec<CK_OBJECT_HANDLE> {
        let mut table = self.table();
        ObjectId::of_key(key)
            .into_iter()
            .map(|id| table.upsert(slot, id, Content::Key(key.clone()), session.clone()))
            .collect()
    }

    pub fn add_certificate(
        &self,
        slot: CK_SLOT_ID,
        info: ObjectInfo,
        value: Option<Arc<Vec<u8>>>,
    ) -> CK_OBJECT_HANDLE {
        let names = value
            .as_deref()
            .and_then(|v| der::cert_names(v))
            .unwrap_or_default();
        let id = ObjectId::Certificate(info.label.clone());
        self.table()
            .upsert(slot, id, Content::Certificate { info, value, names }, None)
    }

    /// Forget every object of the key or certificate `label` on `slot`.
    pub fn remove_label(&self, slot: CK_SLOT_ID, key: bool, label: &str) {
        let mut table = self.table();
        let doomed: Vec<_> = table
            .by_handle
            .values()
            .filter(|o| o.slot == slot && o.id.is_key() == key && o.id.label() == label)
            .map(|o| o.handle)
            .collect();
        for h in doomed {
            table.remove(h);
        }
    }

    /// Make the slot's objects what the partition holds now: new keys and
    /// certificates get handles, changed ones are updated, and those gone
    /// are forgotten (their handles become invalid). Session keys of other
    /// processes (reserved labels this library did not make) are left out.
    pub fn sync_slot(&self, slot: CK_SLOT_ID, keys: &[KeyInfo], certs: &[ObjectInfo]) {
        let mut table = self.table();
        let mut present = std::collections::HashSet::new();
        for key in keys {
            let ours = ObjectId::of_key(key)
                .iter()
                .any(|id| table.by_id.contains_key(&(slot, id.clone())));
            if key.label.starts_with(SESSION_LABEL_PREFIX) && !ours {
                continue;
            }
            for id in ObjectId::of_key(key) {
                present.insert(id.clone());
                table.upsert(slot, id, Content::Key(key.clone()), None);
            }
        }
        for info in certs {
            let id = ObjectId::Certificate(info.label.clone());
            present.insert(id.clone());
            // Keep a fetched value while the certificate is unchanged.
            let kept = table
                .by_id
                .get(&(slot, id.clone()))
                .and_then(|h| table.by_handle.get(h))
                .and_then(|o| match &o.content {
                    Content::Certificate {
                        info: old,
                        value,
                        names,
                    } if old == info => Some((value.clone(), names.clone())),
                    _ => None,
                });
            let (value, names) = kept.unwrap_or_default();
            table.upsert(
                slot,
                id,
                Content::Certificate {
                    info: info.clone(),
                    value,
                    names,
                },
                None,
            );
        }
        let gone: Vec<_> = table
            .by_handle
            .values()
            .filter(|o| o.slot == slot && !present.contains(&o.id))
            .map(|o| o.handle)
            .collect();
        for h in gone {
            table.remove(h);
        }
    }

    /// Certificates of `slot` whose value has not been fetched yet.
    pub fn certificates_without_value(&self, slot: CK_SLOT_ID) -> Vec<String> {
        self.table()
            .by_handle
            .values()
            .filter(|o| o.slot == slot)
            .filter_map(|o| match &o.content {
                Content::Certificate {
                    info, value: None, ..
                } => Some(info.label.clone()),
                _ => None,
            })
            .collect()
    }

    /// The objects of `slot` matching `template`, in handle order.
    pub fn find(
        &self,
        slot: CK_SLOT_ID,
        template: &[Attr],
        login_required: bool,
    ) -> Vec<CK_OBJECT_HANDLE> {
        let table = self.table();
        let mut found: Vec<_> = table
            .by_handle
            .values()
            .filter(|o| o.slot == slot)
            .filter(|o| {
                template.iter().all(|a| {
                    matches!(o.attribute(a.kind, login_required), AttrValue::Value(v) if v == a.value)
                })
            })
            .map(|o| o.handle)
            .collect();
        found.sort_unstable();
        found
    }

    /// Session objects owned by `owner`.
    pub fn owned_by(&self, owner: CK_SESSION_HANDLE) -> Vec<Arc<Object>> {
        self.table()
            .by_handle
            .values()
            .filter(|o| o.session.as_ref().is_some_and(|s| s.owner == owner))
            .cloned()
            .collect()
    }
}

impl Object {
    pub fn class(&self) -> CK_OBJECT_CLASS {
        match self.id {
            ObjectId::PrivateKey(_) => CKO_PRIVATE_KEY,
            ObjectId::PublicKey(_) => CKO_PUBLIC_KEY,
            ObjectId::SecretKey(_) => CKO_SECRET_KEY,
            ObjectId::Certificate(_) => CKO_CERTIFICATE,
        }
    }

    pub fn key(&self) -> Option<&KeyInfo> {
        match &self.content {
            Content::Key(k) => Some(k),
            Content::Certificate { .. } => None,
        }
    }

    /// The value of attribute `kind` (PKCS#11 base §4, the attributes of
    /// each class). `login_required` is the token's: private and secret
    /// keys are `CKA_PRIVATE` exactly when a PIN guards the token.
    pub fn attribute(&self, kind: CK_ATTRIBUTE_TYPE, login_required: bool) -> AttrValue {
        use AttrValue::{Invalid, Value};
        let class = self.class();
        let common = match kind {
            CKA_CLASS => Some(ulong(class)),
            CKA_TOKEN => Some(bool_value(self.session.is_none())),
            CKA_PRIVATE => Some(bool_value(
                login_required && matches!(class, CKO_PRIVATE_KEY | CKO_SECRET_KEY),
            )),
            CKA_LABEL => Some(match &self.session {
                Some(s) => s.label.clone(),
                None => self.id.label().as_bytes().to_vec(),
            }),
            CKA_MODIFIABLE => Some(bool_value(self.id.is_key())),
            CKA_COPYABLE => Some(bool_value(false)),
            CKA_DESTROYABLE => Some(bool_value(class != CKO_PUBLIC_KEY)),
            _ => None,
        };
        if let Some(v) = common {
            return Value(v);
        }
        match &self.content {
            Content::Certificate { info, value, names } => match kind {
                CKA_CERTIFICATE_TYPE => Value(ulong(CKC_X_509)),
                CKA_TRUSTED => Value(bool_value(false)),
                CKA_CERTIFICATE_CATEGORY => Value(ulong(0)),
                CKA_JAVA_MIDP_SECURITY_DOMAIN => Value(ulong(0)),
                CKA_ID => Value(info.id.clone()),
                CKA_SUBJECT => Value(names.subject.clone()),
                CKA_ISSUER => Value(names.issuer.clone()),
                CKA_SERIAL_NUMBER => Value(names.serial.clone()),
                CKA_START_DATE | CKA_END_DATE | CKA_URL => Value(Vec::new()),
                CKA_VALUE => match value {
                    Some(v) => Value(v.to_vec()),
                    None => Invalid,
                },
                _ => Invalid,
            },
            Content::Key(key) => key_attribute(key, class, kind),
        }
    }
}

fn key_attribute(key: &KeyInfo, class: CK_OBJECT_CLASS, kind: CK_ATTRIBUTE_TYPE) -> AttrValue {
    use AttrValue::{Invalid, Sensitive, Value};
    let private = class == CKO_PRIVATE_KEY;
    let public = class == CKO_PUBLIC_KEY;
    let secret = class == CKO_SECRET_KEY;
    let rsa = key.kind.is_rsa();
    let ec = matches!(key.kind, KeyType::P256 | KeyType::P384 | KeyType::Ed25519);
    let hidden = !public;
    let v = match kind {
        CKA_KEY_TYPE => ulong(match key.kind {
            KeyType::P256 | KeyType::P384 => CKK_EC,
            KeyType::Ed25519 => CKK_EC_EDWARDS,
            KeyType::Aes256 => CKK_AES,
            _ => CKK_RSA,
        }),
        CKA_ID => key.id.clone(),
        CKA_START_DATE | CKA_END_DATE => Vec::new(),
        CKA_DERIVE => bool_value(false),
        CKA_LOCAL => bool_value(true),
        CKA_KEY_GEN_MECHANISM => ulong(mechanism::generator_of(key.kind)),
        CKA_ALLOWED_MECHANISMS => mechanism::allowed(key.kind, class)
            .iter()
            .flat_map(|m| m.to_ne_bytes())
            .collect(),
        CKA_SUBJECT if !secret => Vec::new(),
        CKA_SENSITIVE | CKA_ALWAYS_SENSITIVE | CKA_NEVER_EXTRACTABLE if hidden => bool_value(true),
        CKA_EXTRACTABLE if hidden => bool_value(false),
        CKA_WRAP_WITH_TRUSTED if hidden => bool_value(false),
        CKA_ALWAYS_AUTHENTICATE if private => bool_value(false),
        CKA_SIGN if hidden => bool_value(private),
        CKA_VERIFY if !private => bool_value(public),
        CKA_SIGN_RECOVER if private => bool_value(false),
        CKA_VERIFY_RECOVER if public => bool_value(false),
        CKA_DECRYPT if hidden => bool_value(secret || rsa),
        CKA_ENCRYPT if !private => bool_value(secret),
        CKA_WRAP if !private => bool_value(false),
        CKA_UNWRAP if hidden => bool_value(false),
        CKA_TRUSTED if !private => bool_value(false),
        CKA_VALUE_LEN if secret => ulong(32),
        CKA_VALUE if hidden => return Sensitive,
        CKA_EC_PARAMS if ec => match der::ec_params(key.kind) {
            Some(p) => p.to_vec(),
            None => return Invalid,
        },
        CKA_EC_POINT if ec => der::ec_point(&key.public_key),
        CKA_MODULUS | CKA_PUBLIC_EXPONENT | CKA_MODULUS_BITS if rsa => {
            let Some((n, e)) = der::rsa_public(&key.public_key) else {
                return Invalid;
            };
            match kind {
                CKA_MODULUS => n,
                CKA_PUBLIC_EXPONENT => e,
                _ => ulong((n.len() * 8) as CK_ULONG),
            }
        }
        CKA_PRIVATE_EXPONENT | CKA_PRIME_1 | CKA_PRIME_2 | CKA_EXPONENT_1 | CKA_EXPONENT_2
        | CKA_COEFFICIENT
            if rsa && private =>
        {
            return Sensitive;
        }
        _ => return Invalid,
    };
    Value(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(kind: KeyType, label: &str) -> KeyInfo {
        let public_key = match kind {
            KeyType::P256 => [vec![4], vec![1; 64]].concat(),
            KeyType::Aes256 => Vec::new(),
            _ => vec![2; 32],
        };
        KeyInfo {
            kind,
            label: label.into(),
            public_key,
            id: vec![0xa1],
        }
    }

    fn value(o: &Object, kind: CK_ATTRIBUTE_TYPE) -> Option<Vec<u8>> {
        match o.attribute(kind, false) {
            AttrValue::Value(v) => Some(v),
            _ => None,
        }
    }

    #[test]
    fn a_key_pair_shows_as_private_and_public_objects_with_stable_handles() {
        let objects = Objects::default();
        let handles = objects.add_key(0, &key(KeyType::P256, "k"), None);
        assert_eq!(handles.len(), 2);
        let private = objects.get(handles[0]).unwrap();
        let public = objects.get(handles[1]).unwrap();
        assert_eq!(value(&private, CKA_CLASS), Some(ulong(CKO_PRIVATE_KEY)));
        assert_eq!(value(&public, CKA_CLASS), Some(ulong(CKO_PUBLIC_KEY)));
        assert_eq!(value(&private, CKA_ID), value(&public, CKA_ID));
        assert_eq!(
            value(&public, CKA_EC_PARAMS),
            Some(der::P256_PARAMS.to_vec())
        );
        assert!(matches!(
            private.attribute(CKA_VALUE, false),
            AttrValue::Sensitive
        ));
        assert_eq!(value(&private, CKA_EXTRACTABLE), Some(bool_value(false)));
        assert_eq!(value(&private, CKA_SIGN), Some(bool_value(true)));
        assert!(matches!(
            private.attribute(CKA_MODULUS, false),
            AttrValue::Invalid
        ));

        // The same key found again keeps its handles.
        objects.sync_slot(0, &[key(KeyType::P256, "k")], &[]);
        assert_eq!(
            objects.find(0, &[], false),
            handles,
            "same handles after a refresh"
        );
        // Gone from the partition: the handles become invalid.
        objects.sync_slot(0, &[], &[]);
        assert_eq!(
            objects.get(handles[0]).err(),
            Some(CKR_OBJECT_HANDLE_INVALID)
        );
    }

    #[test]
    fn templates_select_by_class_and_label_and_other_processes_session_keys_are_hidden() {
        let objects = Objects::default();
        objects.sync_slot(
            0,
            &[
                key(KeyType::Aes256, "a"),
                key(KeyType::Ed25519, "e"),
                key(KeyType::Ed25519, "_s.0123456789abcdef"),
            ],
            &[],
        );
        let secret = [Attr {
            kind: CKA_CLASS,
            value: ulong(CKO_SECRET_KEY),
        }];
        let found = objects.find(0, &secret, false);
        assert_eq!(found.len(), 1);
        let label = [Attr {
            kind: CKA_LABEL,
            value: b"e".to_vec(),
        }];
        assert_eq!(objects.find(0, &label, false).len(), 2);
        assert_eq!(objects.find(0, &[], false).len(), 3, "no _s. key");
        assert!(objects.find(1, &[], false).is_empty(), "another slot");
    }
}
