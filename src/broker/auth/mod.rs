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
//! The other one: anonymous clients are judged by where they connect from. Unless configured
//! otherwise, and while no password file or JWT is configured, they are let in from loopback
//! only (Mosquitto 2 does the same by listening on loopback only). We refuse non-loopback
//! anonymous clients at CONNECT rather than bind loopback only: the listeners then stay where
//! the config puts them, so a device with credentials can connect from the network at once,
//! `mosquitto_pub -h localhost` works with nothing configured, and a refused device learns why
//! (CONNACK "not authorized", and one log line naming the setting) instead of timing out.
//!
//! - `password` — the `user:$7$…` file format, verifying and writing entries.
//! - `jwt`      — HS256/RS256 token verification and the `mqtt2es` topic claim.
//! - `acl`      — rules from YAML or a Mosquitto `acl_file`, with `%u`/`%c`.
//! - `template` — filters holding `%u`/`%c`, shared by `acl` and `jwt`.
//! - `identity` — who a connected client is, as authentication decided.

pub mod acl;
mod identity;
pub mod jwt;
pub mod password;
pub mod template;

use std::collections::HashSet;
use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use self::acl::{Acl, AclRule};
pub use self::identity::Identity;
use self::jwt::{Jwt, JwtSettings};
use self::password::PasswordFile;
use crate::settings::SettingsError;
use crate::topic::TopicFilter;

/// Where clients without a user name are let in from: `broker.auth.allow_anonymous`, which
/// takes `true` (anywhere), `false` (nowhere) or `loopback`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(try_from = "AnonymousValue", into = "AnonymousValue")]
pub enum Anonymous {
    Refused,
    /// From 127.0.0.0/8 and ::1 (also as IPv4-mapped IPv6): processes on this machine.
    Loopback,
    Anywhere,
}

/// What YAML or the environment may say: a boolean or the word `loopback`.
#[derive(Deserialize, Serialize)]
#[serde(untagged)]
enum AnonymousValue {
    Flag(bool),
    Word(String),
}

impl TryFrom<AnonymousValue> for Anonymous {
    type Error = String;

    fn try_from(value: AnonymousValue) -> Result<Self, Self::Error> {
        match value {
            AnonymousValue::Flag(true) => Ok(Anonymous::Anywhere),
            AnonymousValue::Flag(false) => Ok(Anonymous::Refused),
            AnonymousValue::Word(word) => match word.as_str() {
                "loopback" => Ok(Anonymous::Loopback),
                // The environment gives strings; a YAML `"true"` means the same.
                "true" => Ok(Anonymous::Anywhere),
                "false" => Ok(Anonymous::Refused),
                _ => Err(format!("expected true, false or loopback, not {word:?}")),
            },
        }
    }
}

/// Written back the way a config file would say it (the configuration reference's test).
impl From<Anonymous> for AnonymousValue {
    fn from(anonymous: Anonymous) -> Self {
        match anonymous {
            Anonymous::Refused => AnonymousValue::Flag(false),
            Anonymous::Loopback => AnonymousValue::Word("loopback".to_owned()),
            Anonymous::Anywhere => AnonymousValue::Flag(true),
        }
    }
}

impl Anonymous {
    /// Whether an anonymous client connecting from `peer` is let in.
    pub fn admits(self, peer: IpAddr) -> bool {
        match self {
            Anonymous::Refused => false,
            // A dual-stack listener ([::]) sees IPv4 loopback as ::ffff:127.0.0.1.
            Anonymous::Loopback => peer.to_canonical().is_loopback(),
            Anonymous::Anywhere => true,
        }
    }
}

impl fmt::Display for Anonymous {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Anonymous::Refused => "refused",
            Anonymous::Loopback => "from loopback only",
            Anonymous::Anywhere => "allowed from anywhere",
        })
    }
}

/// `broker.auth`.
#[derive(Debug, Clone, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct AuthSettings {
    /// Clients without a user name: `true`, `false` or `loopback`. Unset: `loopback` while no
    /// `password_file` or `jwt` is configured, `false` once one is (see `anonymous`).
    pub allow_anonymous: Option<Anonymous>,
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

    /// Where anonymous clients are let in from: `allow_anonymous`, or when it is unset, from
    /// loopback while no user can log in any other way, and nowhere once one can. Configuring
    /// users is the sign that anonymous access was a stopgap.
    pub fn anonymous(&self) -> Anonymous {
        self.allow_anonymous
            .unwrap_or(if self.password_file.is_none() && self.jwt.is_none() {
                Anonymous::Loopback
            } else {
                Anonymous::Refused
            })
    }

    /// Who gets in, for `mqtt2es check`: "anonymous clients from loopback only (the default
    /// ...); others need a password".
    pub fn describe(&self) -> String {
        let anonymous = self.anonymous();
        let why = match self.allow_anonymous {
            Some(Anonymous::Anywhere) => "broker.auth.allow_anonymous: true",
            Some(Anonymous::Refused) => "broker.auth.allow_anonymous: false",
            Some(Anonymous::Loopback) => "broker.auth.allow_anonymous: loopback",
            None if anonymous == Anonymous::Loopback => {
                "the default while no password_file or jwt is set"
            }
            None => "the default once a password_file or jwt is set",
        };
        let others = match (self.password_file.is_some(), self.jwt.is_some()) {
            (true, true) => "others need a password or a token",
            (true, false) => "others need a password",
            (false, true) => "others need a token",
            (false, false) => "no users are configured (broker.auth.password_file, jwt)",
        };
        format!("anonymous clients {anonymous} ({why}); {others}")
    }

    /// What can be checked without reading files; `Auth::load` reads them.
    pub fn check(&self) -> Result<(), SettingsError> {
        if let Some(jwt) = &self.jwt {
            jwt.check()?;
        }
        Acl::from_rules(&self.acl).map_err(|e| SettingsError::Key {
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
    /// An anonymous client from beyond loopback where only loopback may be anonymous; answered
    /// as `NotAuthorized`, logged with the setting that would let it in.
    #[error("anonymous clients are let in from loopback only")]
    AnonymousFromNetwork,
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

pub struct Auth {
    anonymous: Anonymous,
    passwords: Option<PasswordFile>,
    jwt: Option<Jwt>,
    /// `None`: no rules configured, everything allowed.
    acl: Option<Acl>,
    /// Addresses whose anonymous clients were refused and logged: see `first_refusal_from`.
    refused: Mutex<HashSet<IpAddr>>,
}

/// How many addresses `first_refusal_from` remembers; past that, refusals from new addresses
/// are logged at debug only, so a scan of the internet cannot grow memory or the log.
const REFUSED_ADDRESSES_LOGGED: usize = 1024;

/// What is configured, never a hash or key: safe for `?auth` in a log line.
impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth")
            .field("anonymous", &self.anonymous)
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
            anonymous: settings.anonymous(),
            passwords,
            jwt,
            acl,
            refused: Mutex::new(HashSet::new()),
        })
    }

    /// True the first time an anonymous client from `peer`'s address is refused for not being
    /// on loopback (so the broker logs it once per address, at most
    /// `REFUSED_ADDRESSES_LOGGED` addresses).
    pub fn first_refusal_from(&self, peer: IpAddr) -> bool {
        let Ok(mut refused) = self.refused.lock() else {
            return false;
        };
        if refused.len() >= REFUSED_ADDRESSES_LOGGED {
            return false;
        }
        refused.insert(peer)
    }

    /// `peer` is where the connection comes from: it decides whether an anonymous client may
    /// connect (`Anonymous`); clients with a user name are judged by their credentials alone.
    pub fn authenticate(
        &self,
        client_id: &str,
        username: Option<&str>,
        password: Option<&[u8]>,
        peer: IpAddr,
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
            if self.anonymous.admits(peer) {
                return Ok(Identity::new(None, client_id.to_owned()));
            }
            tracing::debug!(client_id, %peer, "anonymous client refused");
            return Err(match self.anonymous {
                Anonymous::Loopback => Refusal::AnonymousFromNetwork,
                _ => Refusal::NotAuthorized,
            });
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
            Some(filters) => filters.iter().any(|t| {
                t.resolve(who.username.as_deref(), &who.client_id)
                    .grants(|f| f.matches(topic))
            }),
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
            Some(filters) => filters.iter().any(|t| {
                t.resolve(who.username.as_deref(), &who.client_id)
                    .grants(|f| f.covers(&filter))
            }),
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
