//! Mosquitto's password file: `user:hash` lines whose hashes are `$7$` (PBKDF2-HMAC-SHA512,
//! what `mosquitto_passwd` 2.x writes) or `$6$` (one round of SHA-512 over password and salt,
//! what 1.x wrote). Read by the broker, edited by `mqtt2es passwd`.
//!
//! The decision a reader might question: reading is stricter than Mosquitto's. Mosquitto logs
//! a line it cannot decode and drops that user; we refuse the whole file at startup, naming the
//! file and line, because a dropped line is a device silently locked out, or an operator who
//! believes a password changed when it did not. Errors never quote a hash, only its shape.

use std::collections::HashMap;
use std::fmt;
use std::fs;
use std::io::Write;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use ring::pbkdf2;
use ring::rand::{SecureRandom, SystemRandom};
use sha2::{Digest, Sha512};
use subtle::ConstantTimeEq;

/// Mosquitto 2's `PW_DEFAULT_ITERATIONS`: what `mosquitto_passwd` writes and we write.
pub const ITERATIONS: u32 = 101;
/// Mosquitto accepts exactly these lengths and drops entries with any other.
const SALT_LEN: usize = 12;
const HASH_LEN: usize = 64;

/// Standard alphabet as OpenSSL's BIO writes it (padded); reading tolerates missing padding.
const BASE64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

#[derive(Clone, PartialEq, Eq)]
pub enum PasswordHash {
    /// `$6$<salt>$<hash>`: SHA-512(password ‖ salt).
    Sha512 {
        salt: [u8; SALT_LEN],
        hash: [u8; HASH_LEN],
    },
    /// `$7$<iterations>$<salt>$<hash>`: PBKDF2-HMAC-SHA512.
    Pbkdf2 {
        iterations: NonZeroU32,
        salt: [u8; SALT_LEN],
        hash: [u8; HASH_LEN],
    },
}

/// What is wrong with a hash, described by its shape only.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HashError {
    #[error("unknown hash type (expected $7$ or $6$ as mosquitto_passwd writes)")]
    UnknownType,
    #[error("malformed $7$ hash (expected $7$<iterations>$<salt>$<hash>)")]
    MalformedPbkdf2,
    #[error("malformed $6$ hash (expected $6$<salt>$<hash>)")]
    MalformedSha512,
    #[error("the iteration count of a $7$ hash must be a number from 1 up")]
    Iterations,
    #[error("the salt must be {SALT_LEN} bytes in base64")]
    Salt,
    #[error("the hash must be {HASH_LEN} bytes in base64")]
    Hash,
}

impl PasswordHash {
    pub fn parse(text: &str) -> Result<PasswordHash, HashError> {
        if let Some(rest) = text.strip_prefix("$7$") {
            let mut parts = rest.split('$');
            let (Some(iterations), Some(salt), Some(hash), None) =
                (parts.next(), parts.next(), parts.next(), parts.next())
            else {
                return Err(HashError::MalformedPbkdf2);
            };
            let iterations = iterations
                .parse::<NonZeroU32>()
                .map_err(|_| HashError::Iterations)?;
            Ok(PasswordHash::Pbkdf2 {
                iterations,
                salt: decode(salt).ok_or(HashError::Salt)?,
                hash: decode(hash).ok_or(HashError::Hash)?,
            })
        } else if let Some(rest) = text.strip_prefix("$6$") {
            let Some((salt, hash)) = rest.split_once('$') else {
                return Err(HashError::MalformedSha512);
            };
            Ok(PasswordHash::Sha512 {
                salt: decode(salt).ok_or(HashError::Salt)?,
                hash: decode(hash).ok_or(HashError::Hash)?,
            })
        } else {
            Err(HashError::UnknownType)
        }
    }

    /// A `$7$` hash of `password` with a fresh random salt, as `mosquitto_passwd` makes.
    pub fn create(password: &[u8]) -> Result<PasswordHash, ring::error::Unspecified> {
        let mut salt = [0; SALT_LEN];
        SystemRandom::new().fill(&mut salt)?;
        let iterations = NonZeroU32::new(ITERATIONS).expect("the default iteration count is not 0");
        Ok(PasswordHash::pbkdf2(password, salt, iterations))
    }

    pub fn pbkdf2(password: &[u8], salt: [u8; SALT_LEN], iterations: NonZeroU32) -> PasswordHash {
        let mut hash = [0; HASH_LEN];
        pbkdf2::derive(
            pbkdf2::PBKDF2_HMAC_SHA512,
            iterations,
            &salt,
            password,
            &mut hash,
        );
        PasswordHash::Pbkdf2 {
            iterations,
            salt,
            hash,
        }
    }

    /// Whether `password` hashes to this; the comparison takes the same time wherever the
    /// first differing byte is.
    pub fn verify(&self, password: &[u8]) -> bool {
        let (expected, actual) = match self {
            PasswordHash::Sha512 { salt, hash } => {
                let mut digest = Sha512::new();
                digest.update(password);
                digest.update(salt);
                let actual: [u8; HASH_LEN] = digest.finalize().into();
                (hash, actual)
            }
            PasswordHash::Pbkdf2 {
                iterations,
                salt,
                hash,
            } => {
                let mut actual = [0; HASH_LEN];
                pbkdf2::derive(
                    pbkdf2::PBKDF2_HMAC_SHA512,
                    *iterations,
                    salt,
                    password,
                    &mut actual,
                );
                (hash, actual)
            }
        };
        expected.ct_eq(&actual).into()
    }

    /// The hash as it appears after `user:` in the file.
    pub fn encode(&self) -> String {
        match self {
            PasswordHash::Sha512 { salt, hash } => {
                format!("$6${}${}", BASE64.encode(salt), BASE64.encode(hash))
            }
            PasswordHash::Pbkdf2 {
                iterations,
                salt,
                hash,
            } => format!(
                "$7${iterations}${}${}",
                BASE64.encode(salt),
                BASE64.encode(hash)
            ),
        }
    }
}

/// Never prints salt or hash: a hash in a log is an offline guessing target.
impl fmt::Debug for PasswordHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PasswordHash::Sha512 { .. } => f.write_str("PasswordHash($6$, [redacted])"),
            PasswordHash::Pbkdf2 { iterations, .. } => {
                write!(f, "PasswordHash($7$, {iterations} iterations, [redacted])")
            }
        }
    }
}

fn decode<const N: usize>(text: &str) -> Option<[u8; N]> {
    BASE64.decode(text).ok()?.try_into().ok()
}

#[derive(Debug, thiserror::Error)]
pub enum PasswordFileError {
    #[error("cannot read password file {path:?}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("password file {path:?} line {line}: {message}")]
    Line {
        path: PathBuf,
        line: usize,
        message: String,
    },
}

/// The users of a password file and their hashes.
#[derive(Debug, Default)]
pub struct PasswordFile {
    users: HashMap<String, PasswordHash>,
}

impl PasswordFile {
    pub fn load(path: &Path) -> Result<PasswordFile, PasswordFileError> {
        let text = fs::read_to_string(path).map_err(|source| PasswordFileError::Read {
            path: path.to_owned(),
            source,
        })?;
        PasswordFile::parse(path, &text)
    }

    /// Blank lines and lines starting with `#` are skipped, as Mosquitto does.
    pub fn parse(path: &Path, text: &str) -> Result<PasswordFile, PasswordFileError> {
        let mut users = HashMap::new();
        for (index, line) in text.lines().enumerate() {
            let error = |message: String| PasswordFileError::Line {
                path: path.to_owned(),
                line: index + 1,
                message,
            };
            let Some((username, hash)) = entry(line) else {
                continue;
            };
            let username = username.map_err(|m| error(m.to_owned()))?;
            let hash =
                PasswordHash::parse(hash).map_err(|e| error(format!("user {username:?}: {e}")))?;
            if users.insert(username.to_owned(), hash).is_some() {
                return Err(error(format!("user {username:?} appears twice")));
            }
        }
        Ok(PasswordFile { users })
    }

    pub fn len(&self) -> usize {
        self.users.len()
    }

    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    pub fn contains(&self, username: &str) -> bool {
        self.users.contains_key(username)
    }

    /// Whether `username` is in the file and `password` is theirs. An unknown user (or a
    /// missing password) costs one hash of a stand-in entry, so that the answer's timing does
    /// not tell which user names exist.
    pub fn verify(&self, username: &str, password: Option<&[u8]>) -> bool {
        let known = self.users.get(username);
        let hash = known.unwrap_or_else(|| stand_in());
        let matches = hash.verify(password.unwrap_or_default());
        known.is_some() && password.is_some() && matches
    }
}

/// The hash unknown users are checked against: same algorithm and cost as what we write.
fn stand_in() -> &'static PasswordHash {
    static STAND_IN: std::sync::OnceLock<PasswordHash> = std::sync::OnceLock::new();
    STAND_IN.get_or_init(|| {
        let iterations = NonZeroU32::new(ITERATIONS).expect("the default iteration count is not 0");
        PasswordHash::pbkdf2(b"", [0; SALT_LEN], iterations)
    })
}

/// Splits a line into user name and hash text; `None` for blank lines and comments.
fn entry(line: &str) -> Option<(Result<&str, &'static str>, &str)> {
    let trimmed = line.trim();
    if trimmed.is_empty() || trimmed.starts_with('#') {
        return None;
    }
    let Some((username, hash)) = trimmed.split_once(':') else {
        return Some((Err("expected <user>:<hash>"), ""));
    };
    let username = username.trim();
    if username.is_empty() {
        return Some((Err("empty user name before `:`"), ""));
    }
    Some((Ok(username), hash.trim()))
}

#[derive(Debug, thiserror::Error)]
pub enum EditError {
    #[error("cannot read password file {path:?}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write password file {path:?}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "user name {0:?} is not allowed: it must be non-empty and contain no `:` or line break"
    )]
    Username(String),
    #[error("empty password")]
    EmptyPassword,
    #[error("user {username:?} is not in {path:?}")]
    NoSuchUser { username: String, path: PathBuf },
    #[error("{path:?} line {line}: expected <user>:<password>")]
    PlainLine { path: PathBuf, line: usize },
    #[error("no random numbers for a salt")]
    Random,
}

/// What `mqtt2es passwd` does to a file.
pub enum Edit<'a> {
    /// Add or replace `username`; `create` starts from an empty file instead of the existing one.
    Set {
        username: &'a str,
        password: &'a [u8],
        create: bool,
    },
    /// Remove `username`.
    Delete { username: &'a str },
    /// Hash every `user:plaintext` line in place (mosquitto_passwd -U); lines that already
    /// hold a `$6$`/`$7$` hash are left as they are, so running it twice does no harm.
    Upgrade,
}

/// Applies `edit` to the file at `path`, replacing it atomically (write beside, then rename)
/// so that a broker reading it never sees half a file. Other lines, comments included, stay.
pub fn edit(path: &Path, edit: Edit<'_>) -> Result<(), EditError> {
    let read = || {
        fs::read_to_string(path).map_err(|source| EditError::Read {
            path: path.to_owned(),
            source,
        })
    };
    let text = match edit {
        Edit::Set {
            username,
            password,
            create,
        } => {
            check_username(username)?;
            if password.is_empty() {
                return Err(EditError::EmptyPassword);
            }
            let hash = PasswordHash::create(password).map_err(|_| EditError::Random)?;
            let existing = if create { String::new() } else { read()? };
            set_entry(&existing, username, &hash)
        }
        Edit::Delete { username } => {
            remove_entry(&read()?, username).ok_or_else(|| EditError::NoSuchUser {
                username: username.to_owned(),
                path: path.to_owned(),
            })?
        }
        Edit::Upgrade => upgrade(path, &read()?)?,
    };
    write_atomically(path, &text).map_err(|source| EditError::Write {
        path: path.to_owned(),
        source,
    })
}

fn check_username(username: &str) -> Result<(), EditError> {
    if username.is_empty() || username.contains([':', '\n', '\r']) || username.trim() != username {
        return Err(EditError::Username(username.to_owned()));
    }
    Ok(())
}

/// `text` with `username`'s line replaced by one with `hash`, or the line appended.
pub fn set_entry(text: &str, username: &str, hash: &PasswordHash) -> String {
    let new_line = format!("{username}:{}", hash.encode());
    let mut replaced = false;
    let mut out = String::with_capacity(text.len() + new_line.len() + 1);
    for line in text.lines() {
        if !replaced && matches!(entry(line), Some((Ok(user), _)) if user == username) {
            out.push_str(&new_line);
            replaced = true;
        } else {
            out.push_str(line);
        }
        out.push('\n');
    }
    if !replaced {
        out.push_str(&new_line);
        out.push('\n');
    }
    out
}

/// `text` without `username`'s line, or `None` when it has none.
pub fn remove_entry(text: &str, username: &str) -> Option<String> {
    let mut removed = false;
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        if matches!(entry(line), Some((Ok(user), _)) if user == username) {
            removed = true;
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    removed.then_some(out)
}

fn upgrade(path: &Path, text: &str) -> Result<String, EditError> {
    let mut out = String::with_capacity(text.len() * 4);
    for (index, line) in text.lines().enumerate() {
        match entry(line) {
            Some((Ok(username), password))
                if PasswordHash::parse(password) == Err(HashError::UnknownType) =>
            {
                let hash =
                    PasswordHash::create(password.as_bytes()).map_err(|_| EditError::Random)?;
                out.push_str(username);
                out.push(':');
                out.push_str(&hash.encode());
            }
            Some((Err(_), _)) => {
                return Err(EditError::PlainLine {
                    path: path.to_owned(),
                    line: index + 1,
                });
            }
            _ => out.push_str(line),
        }
        out.push('\n');
    }
    Ok(out)
}

fn write_atomically(path: &Path, text: &str) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let temp = dir.join(format!(".{name}.mqtt2es-tmp"));
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        // Hashes are guessing targets: a new file is readable by its owner only, as
        // mosquitto_passwd 2 insists; an existing file keeps its mode.
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        let mode = fs::metadata(path)
            .map(|m| m.permissions().mode() & 0o777)
            .unwrap_or(0o600);
        options.mode(mode);
    }
    let result = (|| {
        let mut file = options.open(&temp)?;
        file.write_all(text.as_bytes())?;
        file.sync_all()?;
        fs::rename(&temp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&temp);
    }
    result
}

#[cfg(test)]
mod tests;
