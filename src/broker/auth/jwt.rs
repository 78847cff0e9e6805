//! JWT as the MQTT password, as VerneMQ deployments use it: HS256 with a shared secret or
//! RS256 with the issuer's public key; `exp` and `nbf` checked with a small leeway.
//!
//! Decisions a reader might question:
//! - The key is chosen by the token's `alg` header, and each algorithm has its own configured
//!   key or none: an HS256 token is checked only against the HS256 secret, never against the
//!   RSA public key, which closes the classic confusion where the public key (known to all) is
//!   used as an HMAC secret. `none` and every other algorithm are refused.
//! - The `sub` claim is the identity. By default the MQTT user name must equal it, so a token
//!   issued to one device cannot be presented under another device's name (which `%u` ACL
//!   rules would trust); `username_must_match_sub: false` accepts any user name and uses `sub`.
//! - The optional `mqtt2es` claim (`{"publish": [filters], "subscribe": [filters]}`, `%u` and
//!   `%c` allowed) narrows what ACLs allow; it never widens it. A missing list leaves that
//!   direction to the ACLs; an empty list allows nothing. Unknown keys inside it refuse the token: a misspelt
//!   `publsh` must not silently lift a restriction its issuer meant to impose.

use std::fs;
use std::path::PathBuf;

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::{Deserialize, Serialize};

use super::template::Template;
use crate::secret::Secret;
use crate::settings::SettingsError;

/// `broker.auth.jwt`: present means tokens are accepted as passwords.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct JwtSettings {
    /// Shared secret for HS256 tokens, inline (or from `MQTT2ES_BROKER__AUTH__JWT__HS256_SECRET`).
    pub hs256_secret: Option<Secret>,
    /// Shared secret for HS256 tokens, read from a file (one trailing line break ignored).
    pub hs256_secret_file: Option<PathBuf>,
    /// PEM public key (`BEGIN PUBLIC KEY` or `BEGIN RSA PUBLIC KEY`) for RS256 tokens.
    pub rs256_public_key_file: Option<PathBuf>,
    /// Clock skew tolerated on `exp` and `nbf`.
    pub leeway_secs: u64,
    /// Refuse tokens without `exp` (a token that never expires cannot be revoked here).
    pub require_exp: bool,
    /// When set, the `iss` claim must equal it.
    pub issuer: Option<String>,
    /// When set, the `aud` claim must be present and contain it; when unset, `aud` is ignored.
    pub audience: Option<String>,
    /// The MQTT user name must equal the token's `sub`; off: any user name, identity is `sub`.
    pub username_must_match_sub: bool,
}

impl Default for JwtSettings {
    fn default() -> Self {
        JwtSettings {
            hs256_secret: None,
            hs256_secret_file: None,
            rs256_public_key_file: None,
            leeway_secs: 30,
            require_exp: true,
            issuer: None,
            audience: None,
            username_must_match_sub: true,
        }
    }
}

/// Leeway covers clock skew; more than an hour would quietly extend every token's life.
const MAX_LEEWAY_SECS: u64 = 3600;

/// RFC 7518 §3.2: an HS256 key must be at least as long as the hash output.
const MIN_SECRET_BYTES: usize = 32;

impl JwtSettings {
    pub fn resolve_paths(&mut self, resolve: &dyn Fn(&mut PathBuf)) {
        if let Some(path) = &mut self.hs256_secret_file {
            resolve(path);
        }
        if let Some(path) = &mut self.rs256_public_key_file {
            resolve(path);
        }
    }

    pub fn check(&self) -> Result<(), SettingsError> {
        let key = |message: &str| SettingsError::Key {
            key: "broker.auth.jwt",
            message: message.to_owned(),
        };
        if self.hs256_secret.is_some() && self.hs256_secret_file.is_some() {
            return Err(key("set hs256_secret or hs256_secret_file, not both"));
        }
        if self.hs256_secret.is_none()
            && self.hs256_secret_file.is_none()
            && self.rs256_public_key_file.is_none()
        {
            return Err(key(
                "no key: set hs256_secret, hs256_secret_file or rs256_public_key_file",
            ));
        }
        if self.leeway_secs > MAX_LEEWAY_SECS {
            return Err(SettingsError::Key {
                key: "broker.auth.jwt.leeway_secs",
                message: format!(
                    "{} is more than {MAX_LEEWAY_SECS}: leeway is for clock skew; issue tokens that live longer instead",
                    self.leeway_secs
                ),
            });
        }
        if let Some(secret) = &self.hs256_secret {
            check_secret_length(secret.expose().len()).map_err(|m| SettingsError::Key {
                key: "broker.auth.jwt.hs256_secret",
                message: m,
            })?;
        }
        Ok(())
    }
}

fn check_secret_length(len: usize) -> Result<(), String> {
    if len < MIN_SECRET_BYTES {
        return Err(format!(
            "an HS256 secret must be at least {MIN_SECRET_BYTES} bytes (RFC 7518 §3.2); this one has {len}"
        ));
    }
    Ok(())
}

#[derive(Debug, thiserror::Error)]
pub enum JwtLoadError {
    #[error("broker.auth.jwt.{key}: cannot read {path:?}: {source}")]
    Read {
        key: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("broker.auth.jwt.{key}: {path:?}: {message}")]
    Key {
        key: &'static str,
        path: PathBuf,
        message: String,
    },
}

/// Why a token was refused; for debug logs, never containing the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("token algorithm is not accepted (configured: {accepted})")]
    Algorithm { accepted: &'static str },
    #[error("token rejected: {0}")]
    Invalid(String),
    #[error("token sub {sub:?} does not match the user name")]
    Username { sub: String },
    #[error("token claim mqtt2es: {0}")]
    Claim(String),
}

/// Topic filters a token restricts its holder to; `None` lists do not restrict.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TokenGrants {
    pub publish: Option<Vec<Template>>,
    pub subscribe: Option<Vec<Template>>,
}

#[derive(Debug, Deserialize)]
struct Claims {
    sub: String,
    #[serde(default)]
    mqtt2es: Option<TopicClaims>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TopicClaims {
    publish: Option<Vec<String>>,
    subscribe: Option<Vec<String>>,
}

/// A verified token: who it names and what it restricts.
#[derive(Debug)]
pub struct Verified {
    pub sub: String,
    pub grants: Option<TokenGrants>,
}

pub struct Jwt {
    hs256: Option<DecodingKey>,
    rs256: Option<DecodingKey>,
    validation: Validation,
    username_must_match_sub: bool,
}

impl Jwt {
    pub fn load(settings: &JwtSettings) -> Result<Jwt, JwtLoadError> {
        let hs256 = match (&settings.hs256_secret, &settings.hs256_secret_file) {
            (Some(secret), _) => Some(DecodingKey::from_secret(secret.expose().as_bytes())),
            (None, Some(path)) => {
                let text = fs::read(path).map_err(|source| JwtLoadError::Read {
                    key: "hs256_secret_file",
                    path: path.clone(),
                    source,
                })?;
                let secret = text
                    .strip_suffix(b"\n")
                    .map(|s| s.strip_suffix(b"\r").unwrap_or(s))
                    .unwrap_or(&text);
                check_secret_length(secret.len()).map_err(|message| JwtLoadError::Key {
                    key: "hs256_secret_file",
                    path: path.clone(),
                    message,
                })?;
                Some(DecodingKey::from_secret(secret))
            }
            (None, None) => None,
        };
        let rs256 = match &settings.rs256_public_key_file {
            Some(path) => {
                let key_error = |message: &str| JwtLoadError::Key {
                    key: "rs256_public_key_file",
                    path: path.clone(),
                    message: message.to_owned(),
                };
                let pem = fs::read(path).map_err(|source| JwtLoadError::Read {
                    key: "rs256_public_key_file",
                    path: path.clone(),
                    source,
                })?;
                // jsonwebtoken would take a private key PEM too, and then never verify.
                if pem.windows(11).any(|w| w == b"PRIVATE KEY") {
                    return Err(key_error(
                        "this is a private key; give the issuer's public key (openssl rsa -pubout)",
                    ));
                }
                Some(
                    DecodingKey::from_rsa_pem(&pem)
                        .map_err(|e| key_error(&format!("not an RSA public key in PEM: {e}")))?,
                )
            }
            None => None,
        };
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = settings.leeway_secs;
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.required_spec_claims.clear();
        if settings.require_exp {
            validation.required_spec_claims.insert("exp".to_owned());
        }
        validation.validate_aud = settings.audience.is_some();
        if let Some(audience) = &settings.audience {
            validation.set_audience(&[audience]);
            // jsonwebtoken checks `aud` only when present; a configured audience means required.
            validation.required_spec_claims.insert("aud".to_owned());
        }
        if let Some(issuer) = &settings.issuer {
            validation.set_issuer(&[issuer]);
            validation.required_spec_claims.insert("iss".to_owned());
        }
        Ok(Jwt {
            hs256,
            rs256,
            validation,
            username_must_match_sub: settings.username_must_match_sub,
        })
    }

    /// Whether a client may connect with a token but without a user name (MQTT 5 allows it).
    pub fn accepts_any_username(&self) -> bool {
        !self.username_must_match_sub
    }

    pub fn verify(&self, token: &str, username: Option<&str>) -> Result<Verified, TokenError> {
        let invalid = |e: jsonwebtoken::errors::Error| TokenError::Invalid(e.to_string());
        let header = jsonwebtoken::decode_header(token).map_err(invalid)?;
        let key = match header.alg {
            Algorithm::HS256 => self.hs256.as_ref(),
            Algorithm::RS256 => self.rs256.as_ref(),
            _ => None,
        }
        .ok_or(TokenError::Algorithm {
            accepted: self.accepted(),
        })?;
        let mut validation = self.validation.clone();
        validation.algorithms = vec![header.alg];
        let claims = jsonwebtoken::decode::<Claims>(token, key, &validation)
            .map_err(invalid)?
            .claims;
        if self.username_must_match_sub && username != Some(claims.sub.as_str()) {
            return Err(TokenError::Username { sub: claims.sub });
        }
        let grants = claims
            .mqtt2es
            .map(|topics| {
                let parse = |filters: Option<Vec<String>>| {
                    filters
                        .map(|list| {
                            list.iter()
                                .map(|raw| Template::parse(raw, true))
                                .collect::<Result<Vec<_>, _>>()
                        })
                        .transpose()
                };
                Ok::<_, String>(TokenGrants {
                    publish: parse(topics.publish)?,
                    subscribe: parse(topics.subscribe)?,
                })
            })
            .transpose()
            .map_err(TokenError::Claim)?;
        Ok(Verified {
            sub: claims.sub,
            grants,
        })
    }

    /// The algorithms with a configured key.
    pub fn accepted(&self) -> &'static str {
        match (self.hs256.is_some(), self.rs256.is_some()) {
            (true, true) => "HS256, RS256",
            (true, false) => "HS256",
            (false, true) => "RS256",
            (false, false) => "none",
        }
    }
}

/// The password as a token when it has a JWT's shape: three dot-separated base64url parts, the
/// first two non-empty. Anything else is a password for the password file.
pub fn as_token(password: &[u8]) -> Option<&str> {
    let text = std::str::from_utf8(password).ok()?;
    let parts: Vec<&str> = text.split('.').collect();
    let base64url = |part: &str| {
        part.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'=')
    };
    (parts.len() == 3
        && !parts[0].is_empty()
        && !parts[1].is_empty()
        && parts.iter().all(|p| base64url(p)))
    .then_some(text)
}
