//! A partition's key store: the software store (`keys.toml`) or a PKCS#11
//! token, behind one interface the session loop calls.

use std::sync::{Arc, Mutex};

use hsmgate_wire::ops::{Reply, Request, Status};

use crate::keystore::KeyStore;
use crate::ops;
use crate::token::TokenStore;

pub enum Store {
    Software(Mutex<KeyStore>),
    Token(Arc<TokenStore>),
}

impl Store {
    /// Run `request` in a session of inner protocol `version`. Blocking for
    /// the requests [`Store::is_blocking`] names.
    pub fn execute(&self, request: Request, version: u8) -> Result<Reply, Status> {
        match self {
            Store::Software(store) => ops::execute(store, request, version),
            Store::Token(token) => token.execute(&request, version),
        }
    }

    /// Whether `request` may block (disk, token): run it on a blocking
    /// thread then.
    pub fn is_blocking(&self, request: &Request) -> bool {
        match self {
            Store::Software(_) => ops::is_blocking(request),
            Store::Token(_) => !matches!(request, Request::Ping),
        }
    }

    /// Whether the store serves now (a software store always does).
    pub fn is_ready(&self) -> bool {
        match self {
            Store::Software(_) => true,
            Store::Token(token) => token.is_ready(),
        }
    }
}
