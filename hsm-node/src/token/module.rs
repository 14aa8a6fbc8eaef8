//! Loading a vendor's PKCS#11 library once per process and finding a token
//! in it.
//!
//! `C_Initialize` may run only once per library and process, and several
//! partitions (or, in tests and `hsmgate dev`, several nodes in one
//! process) may use the same library: the loaded contexts live in a
//! process-wide registry and are shared. They are never finalized while the
//! process runs.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock, PoisonError};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error, RvError};
use cryptoki::slot::Slot;

static MODULES: OnceLock<Mutex<HashMap<PathBuf, Pkcs11>>> = OnceLock::new();

/// The context of the library at `path`, loaded and initialized on first use.
pub(crate) fn load(path: &Path) -> Result<Pkcs11, String> {
    let modules = MODULES.get_or_init(|| Mutex::new(HashMap::new()));
    let mut modules = modules.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(ctx) = modules.get(path) {
        return Ok(ctx.clone());
    }
    let ctx = Pkcs11::new(path).map_err(|e| format!("cannot load {}: {e}", path.display()))?;
    match ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        Ok(()) | Err(Error::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
        Err(e) => return Err(format!("C_Initialize of {}: {e}", path.display())),
    }
    modules.insert(path.to_owned(), ctx.clone());
    Ok(ctx)
}

/// Least time between two resets of one library.
const RESET_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);

static RESETS: OnceLock<Mutex<HashMap<PathBuf, std::time::Instant>>> = OnceLock::new();

/// Re-initialize the library at `path` (`C_Finalize`, `C_Initialize`): the
/// last resort for a token that stays unusable after it came back (SoftHSM2
/// keeps a token it lost invalid until then). Every session of every
/// partition on that library ends; their stores reopen sessions. At most
/// once per [`RESET_INTERVAL`] per library; `false` when it was not done.
pub(crate) fn reset(path: &Path, ctx: &Pkcs11) -> bool {
    let resets = RESETS.get_or_init(|| Mutex::new(HashMap::new()));
    let mut resets = resets.lock().unwrap_or_else(PoisonError::into_inner);
    let now = std::time::Instant::now();
    if resets
        .get(path)
        .is_some_and(|last| now.duration_since(*last) < RESET_INTERVAL)
    {
        return false;
    }
    resets.insert(path.to_owned(), now);
    let _ = ctx.clone().finalize();
    match ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        Ok(()) | Err(Error::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => true,
        Err(e) => {
            tracing::error!(module = %path.display(), error = %e, "re-initializing the PKCS#11 library failed");
            false
        }
    }
}

/// How the configuration names the token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum TokenRef {
    Label(String),
    Serial(String),
}

impl std::fmt::Display for TokenRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TokenRef::Label(l) => write!(f, "token label {l:?}"),
            TokenRef::Serial(s) => write!(f, "token serial {s:?}"),
        }
    }
}

/// The slot holding the token, or why there is none.
pub(crate) fn find_slot(ctx: &Pkcs11, token: &TokenRef) -> Result<Slot, String> {
    let slots = ctx
        .get_slots_with_token()
        .map_err(|e| format!("listing slots: {e}"))?;
    let mut seen = Vec::new();
    for slot in slots {
        let Ok(info) = ctx.get_token_info(slot) else {
            continue;
        };
        let (label, serial) = (info.label().trim(), info.serial_number().trim());
        let hit = match token {
            TokenRef::Label(l) => label == l,
            TokenRef::Serial(s) => serial == s,
        };
        if hit {
            return Ok(slot);
        }
        seen.push(format!("{label:?} (serial {serial:?})"));
    }
    Err(format!(
        "no {token} among the library's tokens: {}",
        if seen.is_empty() {
            "none".to_owned()
        } else {
            seen.join(", ")
        }
    ))
}

/// `CKR_*` name of a token error, for logs and metric labels.
pub(crate) fn rv_name(e: &Error) -> String {
    match e {
        Error::Pkcs11(rv, _) => {
            let debug = format!("{rv:?}");
            let mut name = String::from("CKR");
            for (i, c) in debug.chars().enumerate() {
                if c.is_ascii_uppercase() || (c.is_ascii_digit() && i > 0) {
                    name.push('_');
                }
                name.push(c.to_ascii_uppercase());
            }
            name
        }
        Error::LibraryLoading(_) => "library_loading".into(),
        _ => "other".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cryptoki::context::Function;

    #[test]
    fn errors_are_named_as_the_standard_names_them() {
        let e = Error::Pkcs11(RvError::SessionHandleInvalid, Function::Sign);
        assert_eq!(rv_name(&e), "CKR_SESSION_HANDLE_INVALID");
        let e = Error::Pkcs11(RvError::PinIncorrect, Function::Login);
        assert_eq!(rv_name(&e), "CKR_PIN_INCORRECT");
        assert_eq!(rv_name(&Error::NotSupported), "other");
    }

    #[test]
    fn a_missing_library_is_an_error_naming_it() {
        let e = load(Path::new("/nonexistent/libpkcs11.so")).unwrap_err();
        assert!(e.contains("/nonexistent/libpkcs11.so"), "{e}");
    }
}
