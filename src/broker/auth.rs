//! Who may connect, publish and subscribe. STUB (anonymous only, everything allowed) until the
//! auth work lands; the public interface below is the contract the broker core codes against.

use std::path::PathBuf;

use serde::Deserialize;

use crate::config::ConfigError;

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct AuthSettings {
    /// Clients without a username. Off unless configured.
    pub allow_anonymous: bool,
}

impl AuthSettings {
    pub fn resolve_paths(&mut self, _resolve: &dyn Fn(&mut PathBuf)) {}

    pub fn check(&self) -> Result<(), ConfigError> {
        Ok(())
    }
}

/// Why a CONNECT is refused; the broker maps it to the protocol's return / reason code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// MQTT 5 0x86, 3.1.1 return code 4.
    #[error("bad user name or password")]
    BadCredentials,
    /// MQTT 5 0x87, 3.1.1 return code 5.
    #[error("not authorized")]
    NotAuthorized,
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("{0}")]
    Load(String),
}

/// An authenticated client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub username: Option<String>,
    pub client_id: String,
}

pub struct Auth {
    allow_anonymous: bool,
}

impl Auth {
    /// Reads password files and keys; errors name the key and file.
    pub fn load(settings: &AuthSettings) -> Result<Auth, AuthError> {
        Ok(Auth {
            allow_anonymous: settings.allow_anonymous,
        })
    }

    pub fn authenticate(
        &self,
        client_id: &str,
        username: Option<&str>,
        _password: Option<&[u8]>,
    ) -> Result<Identity, Refusal> {
        match username {
            None if self.allow_anonymous => Ok(Identity {
                username: None,
                client_id: client_id.to_owned(),
            }),
            None => Err(Refusal::NotAuthorized),
            Some(_) => Err(Refusal::BadCredentials),
        }
    }

    pub fn may_publish(&self, _who: &Identity, _topic: &str) -> bool {
        true
    }

    pub fn may_subscribe(&self, _who: &Identity, _filter: &str) -> bool {
        true
    }
}
