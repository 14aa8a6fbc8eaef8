//! The `/v1` API: routes, request bodies, and the HSM request each one
//! becomes. Binary fields are base64url (RFC 4648 §5; padding accepted on
//! input, never written). docs/REST.md and `openapi.json` describe the same
//! routes; a test checks that every route here is in the OpenAPI document.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hsmgate_client::{KeyType, OaepHash, Reply, Request, Session, SignScheme};
use http::{Method, StatusCode};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::keys;
use crate::problem::{Kind, Problem};

/// What a request asks for, before authentication.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    OpenApi,
    /// An HSM operation on a partition.
    Partition {
        partition: String,
        op: PartitionOp,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PartitionOp {
    ListKeys,
    GenerateKey,
    GetKey(String),
    DeleteKey(String),
    Sign(String),
    Verify(String),
    Encrypt(String),
    Decrypt(String),
    Random,
    /// Set or clear a key's id (PKCS#11 `CKA_ID`).
    SetKeyId(String),
    ListCertificates,
    PutCertificate,
    GetCertificate(String),
    DeleteCertificate(String),
}

impl PartitionOp {
    /// Whether the route takes a JSON body.
    pub fn has_body(&self) -> bool {
        !matches!(
            self,
            PartitionOp::ListKeys
                | PartitionOp::GetKey(_)
                | PartitionOp::DeleteKey(_)
                | PartitionOp::ListCertificates
                | PartitionOp::GetCertificate(_)
                | PartitionOp::DeleteCertificate(_)
        )
    }

    /// Whether the route's label names a certificate (its 404 says so).
    pub fn is_certificate(&self) -> bool {
        matches!(
            self,
            PartitionOp::ListCertificates
                | PartitionOp::PutCertificate
                | PartitionOp::GetCertificate(_)
                | PartitionOp::DeleteCertificate(_)
        )
    }
}

/// Every route: method, path template (the metric label), as the OpenAPI
/// document spells them.
pub const ROUTES: &[(&str, &str)] = &[
    ("GET", "/v1/openapi.json"),
    ("GET", "/v1/partitions/{partition}/keys"),
    ("POST", "/v1/partitions/{partition}/keys"),
    ("GET", "/v1/partitions/{partition}/keys/{label}"),
    ("DELETE", "/v1/partitions/{partition}/keys/{label}"),
    ("PATCH", "/v1/partitions/{partition}/keys/{label}"),
    ("POST", "/v1/partitions/{partition}/keys/{label}/sign"),
    ("POST", "/v1/partitions/{partition}/keys/{label}/verify"),
    ("POST", "/v1/partitions/{partition}/keys/{label}/encrypt"),
    ("POST", "/v1/partitions/{partition}/keys/{label}/decrypt"),
    ("POST", "/v1/partitions/{partition}/random"),
    ("GET", "/v1/partitions/{partition}/certificates"),
    ("POST", "/v1/partitions/{partition}/certificates"),
    ("GET", "/v1/partitions/{partition}/certificates/{label}"),
    ("DELETE", "/v1/partitions/{partition}/certificates/{label}"),
];

/// The template label of requests that match no route.
pub const UNMATCHED: &str = "unmatched";

/// Match a request line: the call and its route template, or the problem
/// (404 no such path, 405 no such method on it).
pub fn route(method: &Method, path: &str) -> Result<(Call, &'static str), Problem> {
    let path = path.split('?').next().unwrap_or_default();
    let segments: Vec<&str> = path.split('/').collect();
    let not_found = || Problem::new(Kind::RouteNotFound, "no such resource under /v1");
    let wrong_method = || {
        Problem::new(
            Kind::MethodNotAllowed,
            format!("{method} is not allowed here"),
        )
    };
    let pick = |template: &'static str, call: Call| -> Result<(Call, &'static str), Problem> {
        if ROUTES
            .iter()
            .any(|(m, t)| *t == template && *m == method.as_str())
        {
            Ok((call, template))
        } else {
            Err(wrong_method())
        }
    };
    let partition_call = |p: &str, op| Call::Partition {
        partition: p.to_owned(),
        op,
    };
    match segments.as_slice() {
        ["", "v1", "openapi.json"] => pick("/v1/openapi.json", Call::OpenApi),
        ["", "v1", "partitions", p, "keys"] if !p.is_empty() => {
            let op = if method == Method::POST {
                PartitionOp::GenerateKey
            } else {
                PartitionOp::ListKeys
            };
            pick("/v1/partitions/{partition}/keys", partition_call(p, op))
        }
        ["", "v1", "partitions", p, "keys", l] if !p.is_empty() && !l.is_empty() => {
            let l = (*l).to_owned();
            let op = match *method {
                Method::DELETE => PartitionOp::DeleteKey(l),
                Method::PATCH => PartitionOp::SetKeyId(l),
                _ => PartitionOp::GetKey(l),
            };
            pick(
                "/v1/partitions/{partition}/keys/{label}",
                partition_call(p, op),
            )
        }
        ["", "v1", "partitions", p, "certificates"] if !p.is_empty() => {
            let op = if method == Method::POST {
                PartitionOp::PutCertificate
            } else {
                PartitionOp::ListCertificates
            };
            pick(
                "/v1/partitions/{partition}/certificates",
                partition_call(p, op),
            )
        }
        ["", "v1", "partitions", p, "certificates", l] if !p.is_empty() && !l.is_empty() => {
            let l = (*l).to_owned();
            let op = if method == Method::DELETE {
                PartitionOp::DeleteCertificate(l)
            } else {
                PartitionOp::GetCertificate(l)
            };
            pick(
                "/v1/partitions/{partition}/certificates/{label}",
                partition_call(p, op),
            )
        }
        ["", "v1", "partitions", p, "keys", l, action] if !p.is_empty() && !l.is_empty() => {
            let l = (*l).to_owned();
            let (template, op) = match *action {
                "sign" => (
                    "/v1/partitions/{partition}/keys/{label}/sign",
                    PartitionOp::Sign(l),
                ),
                "verify" => (
                    "/v1/partitions/{partition}/keys/{label}/verify",
                    PartitionOp::Verify(l),
                ),
                "encrypt" => (
                    "/v1/partitions/{partition}/keys/{label}/encrypt",
                    PartitionOp::Encrypt(l),
                ),
                "decrypt" => (
                    "/v1/partitions/{partition}/keys/{label}/decrypt",
                    PartitionOp::Decrypt(l),
                ),
                _ => return Err(not_found()),
            };
            pick(template, partition_call(p, op))
        }
        ["", "v1", "partitions", p, "random"] if !p.is_empty() => pick(
            "/v1/partitions/{partition}/random",
            partition_call(p, PartitionOp::Random),
        ),
        _ => Err(not_found()),
    }
}

/// A successful answer: status, JSON body (none for 204) and `Location`.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub body: Option<Value>,
    pub location: Option<String>,
}

impl Answer {
    fn ok(body: Value) -> Answer {
        Answer {
            status: StatusCode::OK,
            body: Some(body),
            location: None,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GenerateBody {
    label: String,
    #[serde(rename = "type")]
    kind: String,
    id: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SignBody {
    data: Option<String>,
    digest: Option<String>,
    scheme: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct VerifyBody {
    data: String,
    signature: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EncryptBody {
    plaintext: String,
    aad: Option<String>,
    iv: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DecryptBody {
    ciphertext: String,
    aad: Option<String>,
    iv: Option<String>,
    oaep_hash: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RandomBody {
    length: u16,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SetIdBody {
    /// The new id; empty clears it.
    id: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CertificateBody {
    label: String,
    id: Option<String>,
    /// The certificate, DER.
    der: String,
}

fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, Problem> {
    serde_json::from_slice(body).map_err(|e| {
        // serde's message names the field and the line, never the value
        // for the types used here (strings are not echoed on type errors
        // of this schema's fields).
        Problem::new(
            Kind::MalformedRequest,
            format!(
                "the JSON body does not fit this route: {}",
                e.classify_message()
            ),
        )
    })
}

trait ClassifyMessage {
    fn classify_message(&self) -> String;
}

impl ClassifyMessage for serde_json::Error {
    fn classify_message(&self) -> String {
        use serde_json::error::Category;
        match self.classify() {
            Category::Syntax | Category::Eof => {
                format!(
                    "not valid JSON (line {}, column {})",
                    self.line(),
                    self.column()
                )
            }
            Category::Data => {
                let text = self.to_string();
                // "unknown field `x`, expected ..." and "missing field `x`"
                // name fields only; other data errors are summarized.
                if text.starts_with("unknown field") || text.starts_with("missing field") {
                    text
                } else {
                    format!(
                        "a field has the wrong type or range (line {}, column {})",
                        self.line(),
                        self.column()
                    )
                }
            }
            Category::Io => "unreadable".into(),
        }
    }
}

fn bytes(field: &str, text: &str) -> Result<Vec<u8>, Problem> {
    URL_SAFE_NO_PAD
        .decode(text.trim_end_matches('='))
        .map_err(|_| Problem::new(Kind::MalformedRequest, format!("{field}: not base64url")))
}

fn optional_bytes(field: &str, text: &Option<String>) -> Result<Vec<u8>, Problem> {
    text.as_deref().map_or(Ok(Vec::new()), |t| bytes(field, t))
}

fn label(text: &str) -> Result<String, Problem> {
    hsmgate_wire::text::validate_name(text)
        .map(|()| text.to_owned())
        .map_err(|reason| Problem::new(Kind::InvalidArgument, format!("label: {reason}")))
}

fn key_type(text: &str) -> Result<KeyType, Problem> {
    KeyType::ALL
        .into_iter()
        .find(|k| k.as_str() == text)
        .ok_or_else(|| {
            Problem::new(
                Kind::InvalidArgument,
                "type: one of ed25519, p256, p384, rsa2048, rsa3072, rsa4096, aes256",
            )
        })
}

fn sign_scheme(text: &str) -> Result<SignScheme, Problem> {
    text.parse()
        .map_err(|names| Problem::new(Kind::InvalidArgument, format!("scheme: {names}")))
}

fn oaep_hash(text: &str) -> Result<OaepHash, Problem> {
    Ok(match text {
        "sha1" => OaepHash::Sha1,
        "sha256" => OaepHash::Sha256,
        "sha384" => OaepHash::Sha384,
        "sha512" => OaepHash::Sha512,
        _ => {
            return Err(Problem::new(
                Kind::InvalidArgument,
                "oaep_hash: one of sha1, sha256, sha384, sha512",
            ));
        }
    })
}

/// The HSM work of one partition call, checked and decoded from its body
/// before any session is used.
#[derive(Debug, Clone)]
pub enum Work {
    ListKeys,
    Generate {
        kind: KeyType,
        label: String,
        id: Vec<u8>,
    },
    /// Set a key's id, then show the key.
    SetKeyId {
        label: String,
        id: Vec<u8>,
    },
    /// One request, answered by one reply.
    One(Request),
}

/// Decode a partition call's body into its HSM work: every malformed or
/// invalid field is a 400 here, before the HSM path is touched.
pub fn work(op: &PartitionOp, body: &[u8]) -> Result<Work, Problem> {
    Ok(match op {
        PartitionOp::ListKeys => Work::ListKeys,
        PartitionOp::GenerateKey => {
            let b: GenerateBody = parse(body)?;
            let id = optional_bytes("id", &b.id)?;
            if id.len() > hsmgate_wire::ops::MAX_ID {
                return Err(Problem::new(Kind::InvalidArgument, "id: at most 64 bytes"));
            }
            Work::Generate {
                kind: key_type(&b.kind)?,
                label: label(&b.label)?,
                id,
            }
        }
        PartitionOp::GetKey(l) => Work::One(Request::GetKey { label: label(l)? }),
        PartitionOp::DeleteKey(l) => Work::One(Request::DeleteKey { label: label(l)? }),
        PartitionOp::Sign(l) => {
            let b: SignBody = parse(body)?;
            let label = label(l)?;
            match (b.data, b.digest, b.scheme) {
                (Some(data), None, None) => Work::One(Request::Sign {
                    label,
                    data: bytes("data", &data)?,
                }),
                (None, Some(digest), Some(scheme)) => Work::One(Request::SignDigest {
                    label,
                    scheme: sign_scheme(&scheme)?,
                    digest: bytes("digest", &digest)?,
                }),
                _ => {
                    return Err(Problem::new(
                        Kind::MalformedRequest,
                        "give either data, or digest and scheme",
                    ));
                }
            }
        }
        PartitionOp::Verify(l) => {
            let b: VerifyBody = parse(body)?;
            Work::One(Request::Verify {
                label: label(l)?,
                data: bytes("data", &b.data)?,
                signature: bytes("signature", &b.signature)?,
            })
        }
        PartitionOp::Encrypt(l) => {
            let b: EncryptBody = parse(body)?;
            let (label, plaintext, aad) = (
                label(l)?,
                bytes("plaintext", &b.plaintext)?,
                optional_bytes("aad", &b.aad)?,
            );
            match b.iv {
                None => Work::One(Request::Encrypt {
                    label,
                    plaintext,
                    aad,
                }),
                Some(iv) => Work::One(Request::EncryptGcm {
                    label,
                    iv: bytes("iv", &iv)?,
                    plaintext,
                    aad,
                }),
            }
        }
        PartitionOp::Decrypt(l) => {
            let b: DecryptBody = parse(body)?;
            let (label, ciphertext, aad) = (
                label(l)?,
                bytes("ciphertext", &b.ciphertext)?,
                optional_bytes("aad", &b.aad)?,
            );
            match (b.iv, b.oaep_hash) {
                (None, None) => Work::One(Request::Decrypt {
                    label,
                    ciphertext,
                    aad,
                }),
                (Some(iv), None) => Work::One(Request::DecryptGcm {
                    label,
                    iv: bytes("iv", &iv)?,
                    ciphertext,
                    aad,
                }),
                (None, Some(hash)) if aad.is_empty() => Work::One(Request::DecryptRsa {
                    label,
                    hash: oaep_hash(&hash)?,
                    ciphertext,
                }),
                _ => {
                    return Err(Problem::new(
                        Kind::MalformedRequest,
                        "give iv (AES-GCM with your IV), or oaep_hash (RSA-OAEP, no aad), or neither",
                    ));
                }
            }
        }
        PartitionOp::Random => {
            let b: RandomBody = parse(body)?;
            if !(1..=hsmgate_wire::ops::MAX_RANDOM as u16).contains(&b.length) {
                return Err(Problem::new(Kind::InvalidArgument, "length: 1 to 4096"));
            }
            Work::One(Request::Random { len: b.length })
        }
        PartitionOp::SetKeyId(l) => {
            let b: SetIdBody = parse(body)?;
            let id = bytes("id", &b.id)?;
            if id.len() > hsmgate_wire::ops::MAX_ID {
                return Err(Problem::new(Kind::InvalidArgument, "id: at most 64 bytes"));
            }
            Work::SetKeyId {
                label: label(l)?,
                id,
            }
        }
        PartitionOp::ListCertificates => Work::One(Request::ListObjects),
        PartitionOp::PutCertificate => {
            let b: CertificateBody = parse(body)?;
            let id = optional_bytes("id", &b.id)?;
            if id.len() > hsmgate_wire::ops::MAX_ID {
                return Err(Problem::new(Kind::InvalidArgument, "id: at most 64 bytes"));
            }
            let value = bytes("der", &b.der)?;
            if value.is_empty() || value.len() > hsmgate_wire::ops::MAX_OBJECT {
                return Err(Problem::new(Kind::InvalidArgument, "der: 1 to 16384 bytes"));
            }
            Work::One(Request::PutObject {
                label: label(&b.label)?,
                id,
                value,
            })
        }
        PartitionOp::GetCertificate(l) => Work::One(Request::GetObject { label: label(l)? }),
        PartitionOp::DeleteCertificate(l) => Work::One(Request::DeleteObject { label: label(l)? }),
    })
}

/// Run the work on a session: the answer (or the problem of a reply that
/// does not belong to the request), or the SDK's error.
pub async fn run(
    session: Session,
    work: Work,
    partition: &str,
) -> Result<Result<Answer, Problem>, hsmgate_client::ClientError> {
    match work {
        Work::ListKeys => {
            let keys = session.list_keys().await?;
            let list: Vec<Value> = keys
                .iter()
                .map(|k| keys::summary(k.kind, &k.label, &k.id))
                .collect();
            Ok(Ok(Answer::ok(json!({ "keys": list }))))
        }
        Work::Generate { kind, label, id } => {
            let mut key = session.generate_key(kind, &label).await?;
            if !id.is_empty() {
                // The key exists now: a session that breaks here must not
                // make the pool run the whole work again (a second
                // generate would answer 409), so it is not SessionBroken.
                session.set_key_id(&label, &id).await.map_err(|e| match e {
                    hsmgate_client::ClientError::SessionBroken { addr, .. } => {
                        hsmgate_client::ClientError::Closed {
                            addr,
                            phase: hsmgate_client::Phase::Request,
                        }
                    }
                    e => e,
                })?;
                key.id = id;
            }
            Ok(Ok(Answer {
                status: StatusCode::CREATED,
                body: Some(keys::detail(&key)),
                location: Some(format!("/v1/partitions/{partition}/keys/{label}")),
            }))
        }
        Work::SetKeyId { label, id } => {
            session.set_key_id(&label, &id).await?;
            let key = session.get_key(&label).await?;
            Ok(Ok(Answer::ok(keys::detail(&key))))
        }
        Work::One(request) => {
            let stored = match &request {
                Request::PutObject { label, .. } => Some(label.clone()),
                _ => None,
            };
            let mut answer = reply_answer(session.call(request).await?);
            if let (Ok(a), Some(label)) = (&mut answer, stored) {
                a.status = StatusCode::CREATED;
                a.location = Some(format!("/v1/partitions/{partition}/certificates/{label}"));
            }
            Ok(answer)
        }
    }
}

fn reply_answer(reply: Reply) -> Result<Answer, Problem> {
    let b = keys::b64;
    Ok(match reply {
        Reply::KeyDeleted | Reply::ObjectDeleted => Answer {
            status: StatusCode::NO_CONTENT,
            body: None,
            location: None,
        },
        Reply::Objects(list) => Answer::ok(json!({
            "certificates": list.iter().map(keys::object).collect::<Vec<_>>(),
        })),
        Reply::ObjectStored(info) => Answer::ok(keys::object(&info)),
        Reply::Object { info, value } => Answer::ok(keys::certificate(&info, &value)),
        Reply::KeyDetails(key) | Reply::Key(key) => Answer::ok(keys::detail(&key)),
        Reply::Signature(sig) | Reply::DigestSignature(sig) => {
            Answer::ok(json!({ "signature": b(&sig) }))
        }
        Reply::Verified(valid) => Answer::ok(json!({ "valid": valid })),
        Reply::Ciphertext(c) | Reply::GcmCiphertext(c) => {
            Answer::ok(json!({ "ciphertext": b(&c) }))
        }
        Reply::Plaintext(p) | Reply::GcmPlaintext(p) | Reply::RsaPlaintext(p) => {
            Answer::ok(json!({ "plaintext": b(&p) }))
        }
        Reply::Random(data) => Answer::ok(json!({ "data": b(&data) })),
        // Replies of requests this API does not send: the SDK matches
        // replies to requests, so this is a node that broke the protocol.
        _ => {
            return Err(Problem::new(
                Kind::HsmError,
                "the HSM node answered with a reply of another operation",
            ));
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_matches_its_template() {
        for (method, template) in ROUTES {
            let path = template
                .replace("{partition}", "demo")
                .replace("{label}", "k1");
            let method: Method = method.parse().unwrap();
            let (_, matched) = route(&method, &path).unwrap();
            assert_eq!(&matched, template);
        }
    }

    #[test]
    fn unknown_paths_and_methods_are_refused() {
        let kinds = |m: Method, p: &str| route(&m, p).unwrap_err().kind;
        assert_eq!(kinds(Method::GET, "/v2/x"), Kind::RouteNotFound);
        assert_eq!(
            kinds(Method::GET, "/v1/partitions//keys"),
            Kind::RouteNotFound
        );
        assert_eq!(
            kinds(Method::POST, "/v1/partitions/p/keys/k/wrap"),
            Kind::RouteNotFound
        );
        assert_eq!(
            kinds(Method::PUT, "/v1/partitions/p/keys"),
            Kind::MethodNotAllowed
        );
        assert_eq!(
            kinds(Method::GET, "/v1/partitions/p/keys/k/sign"),
            Kind::MethodNotAllowed
        );
    }

    #[test]
    fn bodies_are_checked_before_any_hsm_work() {
        let sign = PartitionOp::Sign("k".into());
        assert!(matches!(
            work(&sign, br#"{"data":"AAEC"}"#),
            Ok(Work::One(Request::Sign { .. }))
        ));
        for bad in [
            &br#"{"data":"AAEC","digest":"AA"}"#[..],
            br#"{"data":"not base64!"}"#,
            br#"{"data":"AA","extra":1}"#,
            br#"{"data":"#,
            b"",
        ] {
            assert!(
                work(&sign, bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        let bad_label = PartitionOp::GetKey("a b".into());
        assert_eq!(
            work(&bad_label, b"").unwrap_err().kind,
            Kind::InvalidArgument
        );
        let random = PartitionOp::Random;
        assert_eq!(
            work(&random, br#"{"length":0}"#).unwrap_err().kind,
            Kind::InvalidArgument
        );
        assert_eq!(
            work(&random, br#"{"length":70000}"#).unwrap_err().kind,
            Kind::MalformedRequest
        );
    }
}
