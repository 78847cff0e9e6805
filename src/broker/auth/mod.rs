//! Who may connect, publish and subscribe: Mosquitto's password file, JWT as the password,
//! and per-user topic ACLs. The broker core asks three questions (`authenticate`,
//! `may_publish`, `may_subscribe`); everything behind them is loaded and checked at start.
//!
//! The decision a reader might question: the password decides which check applies, not the
//! user name. When JWT is configured, a password shaped like a token (`xxx.yyy.zzz`, base64url)
//! is verified as a token and never tried against the password file, and anything else is
//! checked against the password file only. One path per password means one answer per
//! password: no fallback that could turn a failed token into a second guess.
//!
//! - `password` — the `user:$7$…` file format, verifying and writing entries.
//! - `jwt`      — HS256/RS256 token verification and the `mqtt2es` topic claim.
//! - `acl`      — rules from YAML or a Mosquitto `acl_file`, with `%u`/`%c`.

pub mod acl;
pub mod jwt;
pub mod password;

use std::path::PathBuf;
use std::sync::Arc;

use serde::Deserialize;

use self::acl::{Acl, AclRule};
use self::jwt::{Jwt, JwtSettings, TokenGrants};
use self::password::PasswordFile;
use crate::config::ConfigError;
use crate::topic::TopicFilter;

/// `broker.auth`.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct AuthSettings {
    /// Clients without a user name. Off unless configured.
    pub allow_anonymous: bool,
    /// A password file in Mosquitto's format (`mosquitto_passwd` or `mqtt2es passwd`).
    pub password_file: Option<PathBuf>,
    /// JWT as the password; absent means tokens are not accepted.
    pub jwt: Option<JwtSettings>,
    /// Per-user publish/subscribe rules. With none here and no `acl_file`, every client that
    /// connected may publish and subscribe anywhere; with any, what no rule grants is denied.
    pub acl: Vec<AclRule>,
    /// Rules in Mosquitto's `acl_file` format, added to `acl`.
    pub acl_file: Option<PathBuf>,
}

impl AuthSettings {
    pub fn resolve_paths(&mut self, resolve: &dyn Fn(&mut PathBuf)) {
        for path in [&mut self.password_file, &mut self.acl_file]
            .into_iter()
            .flatten()
        {
            resolve(path);
        }
        if let Some(jwt) = &mut self.jwt {
            jwt.resolve_paths(resolve);
        }
    }

    /// What can be checked without reading files; `Auth::load` reads them.
    pub fn check(&self) -> Result<(), ConfigError> {
        if let Some(jwt) = &self.jwt {
            jwt.check()?;
        }
        Acl::from_rules(&self.acl).map_err(|e| ConfigError::Key {
            key: "broker.auth.acl",
            message: e.to_string(),
        })?;
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

/// A file named in `broker.auth` could not be used. Messages name the key and file, never a
/// password, hash or key.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("broker.auth.password_file: {0}")]
    PasswordFile(#[from] password::PasswordFileError),
    #[error("{0}")]
    Jwt(#[from] jwt::JwtLoadError),
    #[error("broker.auth.acl_file: {0}")]
    Acl(#[from] acl::AclError),
}

/// An authenticated client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The user name, or for a token the `sub` claim; `None` for anonymous clients.
    pub username: Option<String>,
    pub client_id: String,
    /// Topic restrictions carried by the token the client connected with.
    grants: Option<Arc<TokenGrants>>,
}

impl Identity {
    /// An identity without token restrictions (anonymous, password, or restored state).
    pub fn new(username: Option<String>, client_id: String) -> Identity {
        Identity {
            username,
            client_id,
            grants: None,
        }
    }
}

pub struct Auth {
    allow_anonymous: bool,
    passwords: Option<PasswordFile>,
    jwt: Option<Jwt>,
    /// `None`: no rules configured, everything allowed.
    acl: Option<Acl>,
}

/// What is configured, never a hash or key: safe for `?auth` in a log line.
impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth")
            .field("allow_anonymous", &self.allow_anonymous)
            .field("password_users", &self.passwords.as_ref().map(|p| p.len()))
            .field("jwt", &self.jwt.as_ref().map(|j| j.accepted()))
            .field("acl_rules", &self.acl.as_ref().map(|a| a.len()))
            .finish()
    }
}

impl Auth {
    /// Reads password files and keys; errors name the key and file.
    pub fn load(settings: &AuthSettings) -> Result<Auth, AuthError> {
        let passwords = settings
            .password_file
            .as_deref()
            .map(PasswordFile::load)
            .transpose()?;
        let jwt = settings.jwt.as_ref().map(Jwt::load).transpose()?;
        let acl = if settings.acl.is_empty() && settings.acl_file.is_none() {
            None
        } else {
            let mut acl = Acl::from_rules(&settings.acl)?;
            if let Some(path) = &settings.acl_file {
                acl.add_mosquitto_file(path)?;
            }
            Some(acl)
        };
        Ok(Auth {
            allow_anonymous: settings.allow_anonymous,
            passwords,
            jwt,
            acl,
        })
    }

    pub fn authenticate(
        &self,
        client_id: &str,
        username: Option<&str>,
        password: Option<&[u8]>,
    ) -> Result<Identity, Refusal> {
        let token = self
            .jwt
            .as_ref()
            .zip(password.and_then(jwt::as_token))
            .filter(|(jwt, _)| username.is_some() || jwt.accepts_any_username());
        if let Some((jwt, token)) = token {
            return match jwt.verify(token, username) {
                Ok(verified) => Ok(Identity {
                    username: Some(verified.sub),
                    client_id: client_id.to_owned(),
                    grants: verified.grants.map(Arc::new),
                }),
                Err(reason) => {
                    tracing::debug!(client_id, username, %reason, "token refused");
                    Err(Refusal::BadCredentials)
                }
            };
        }
        let Some(username) = username else {
            if self.allow_anonymous {
                return Ok(Identity::new(None, client_id.to_owned()));
            }
            tracing::debug!(client_id, "anonymous client refused");
            return Err(Refusal::NotAuthorized);
        };
        match &self.passwords {
            Some(file) if file.verify(username, password) => Ok(Identity::new(
                Some(username.to_owned()),
                client_id.to_owned(),
            )),
            Some(_) => {
                tracing::debug!(client_id, username, "wrong password or unknown user");
                Err(Refusal::BadCredentials)
            }
            None => {
                tracing::debug!(
                    client_id,
                    username,
                    "no password file configured and the password is not a token"
                );
                Err(Refusal::BadCredentials)
            }
        }
    }

    pub fn may_publish(&self, who: &Identity, topic: &str) -> bool {
        let by_acl = self
            .acl
            .as_ref()
            .is_none_or(|acl| acl.may_publish(who, topic));
        let by_token = match who.grants.as_ref().and_then(|g| g.publish.as_ref()) {
            Some(filters) => filters
                .iter()
                .any(|t| t.resolve(who).grants(|f| f.matches(topic))),
            None => true,
        };
        by_acl && by_token
    }

    pub fn may_subscribe(&self, who: &Identity, filter: &str) -> bool {
        self.subscription(who, filter).is_some()
    }

    /// Whether `who` may subscribe to `filter`: `None` if not, else the topic filters whose
    /// messages it must not receive through it (denies the subscription overlaps: see `acl`).
    pub fn subscription(&self, who: &Identity, filter: &str) -> Option<Vec<TopicFilter>> {
        let filter = topic_part(filter)?;
        let by_token = match who.grants.as_ref().and_then(|g| g.subscribe.as_ref()) {
            Some(filters) => filters
                .iter()
                .any(|t| t.resolve(who).grants(|f| f.covers(&filter))),
            None => true,
        };
        if !by_token {
            return None;
        }
        match self.acl.as_ref().map(|acl| acl.subscription(who, &filter)) {
            None => Some(Vec::new()),
            Some(acl::Verdict::Refused) => None,
            Some(acl::Verdict::Granted { except }) => Some(except),
        }
    }
}

/// The filter without its `$share/<group>/` prefix; `None` when it is not a valid filter.
fn topic_part(raw: &str) -> Option<TopicFilter> {
    let filter = TopicFilter::parse(raw).ok()?;
    match filter.share_group() {
        Some(group) => {
            let prefix = format!("$share/{group}/");
            TopicFilter::parse(raw.strip_prefix(&prefix)?).ok()
        }
        None => Some(filter),
    }
}

#[cfg(test)]
// figment::Jail fixes its closures' error type to figment's own, which clippy finds large.
#[allow(clippy::result_large_err)]
mod tests;
