//! `Auth` as the broker sees it, with hashes and tokens made by independent tools: the real
//! `mosquitto_passwd`, and JWTs built by a Python script from the standard library (HMAC) and
//! the `openssl` command (RSA signatures), besides jsonwebtoken's own encoder.

use std::fs;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::process::Command;

use jsonwebtoken::{EncodingKey, Header};
use serde_json::json;

use super::*;
use crate::secret::Secret;

const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
const NETWORK: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7));

const SECRET: &str = "an-hs256-secret-of-at-least-32-bytes!!";

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

fn settings_with(edit: impl FnOnce(&mut AuthSettings)) -> AuthSettings {
    let mut settings = AuthSettings::default();
    edit(&mut settings);
    settings.check().expect("settings pass check");
    settings
}

fn auth(settings: &AuthSettings) -> Auth {
    Auth::load(settings).expect("auth loads")
}

fn hs256_settings() -> JwtSettings {
    JwtSettings {
        hs256_secret: Some(Secret::new(SECRET)),
        ..JwtSettings::default()
    }
}

fn run(command: &mut Command) -> String {
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"));
    assert!(
        output.status.success(),
        "{command:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("utf-8 output")
}

/// An RSA key pair made by openssl: (private PKCS#8 PEM, public SPKI PEM).
fn rsa_keys(dir: &Path) -> (PathBuf, PathBuf) {
    let private = dir.join("private.pem");
    let public = dir.join("public.pem");
    run(Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
        ])
        .arg(&private));
    run(Command::new("openssl")
        .args(["pkey", "-pubout", "-in"])
        .arg(&private)
        .arg("-out")
        .arg(&public));
    (private, public)
}

/// A JWT made without jsonwebtoken: Python's standard library encodes and HMACs, `openssl dgst`
/// makes RSA signatures. `key` is the HMAC secret's file for HS256, the private key for RS256,
/// unused for `none`.
fn independent_token(alg: &str, key: &Path, claims: serde_json::Value) -> String {
    const SCRIPT: &str = r#"
import base64, hashlib, hmac, json, subprocess, sys
alg, key, claims = sys.argv[1], sys.argv[2], sys.argv[3]
b64 = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=").decode()
signing_input = b64(json.dumps({"alg": alg, "typ": "JWT"}).encode()) + "." + b64(claims.encode())
if alg == "HS256":
    signature = hmac.new(open(key, "rb").read(), signing_input.encode(), hashlib.sha256).digest()
elif alg == "RS256":
    signature = subprocess.run(["openssl", "dgst", "-sha256", "-sign", key],
        input=signing_input.encode(), capture_output=True, check=True).stdout
else:
    signature = b""
print(signing_input + "." + b64(signature))
"#;
    run(Command::new("python3")
        .args(["-c", SCRIPT, alg])
        .arg(key)
        .arg(claims.to_string()))
    .trim()
    .to_owned()
}

fn secret_file(dir: &Path, secret: &str) -> PathBuf {
    let path = dir.join(format!("hs256-{}.secret", secret.len()));
    fs::write(&path, secret).expect("write secret");
    path
}

fn connect(auth: &Auth, username: Option<&str>, password: &str) -> Result<Identity, Refusal> {
    auth.authenticate("client-1", username, Some(password.as_bytes()), NETWORK)
}

// --- anonymous clients and missing configuration ---

/// Loopback in every form a listener can see it, and addresses that are not loopback.
const LOOPBACKS: [IpAddr; 4] = [
    LOOPBACK,
    IpAddr::V4(Ipv4Addr::new(127, 1, 2, 3)),
    IpAddr::V6(Ipv6Addr::LOCALHOST),
    // What a dual-stack listener on [::] sees of 127.0.0.1.
    IpAddr::V6(Ipv4Addr::LOCALHOST.to_ipv6_mapped()),
];
const NETWORKS: [IpAddr; 4] = [
    NETWORK,
    IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)),
    IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1)),
    IpAddr::V6(Ipv4Addr::new(192, 0, 2, 7).to_ipv6_mapped()),
];

#[test]
fn by_default_anonymous_clients_are_let_in_from_loopback_and_refused_from_the_network() {
    let auth = auth(&AuthSettings::default());
    for peer in LOOPBACKS {
        assert!(auth.authenticate("c", None, None, peer).is_ok(), "{peer}");
    }
    for peer in NETWORKS {
        assert_eq!(
            auth.authenticate("c", None, None, peer),
            Err(Refusal::AnonymousFromNetwork),
            "{peer}"
        );
    }
}

#[test]
fn allow_anonymous_true_lets_anonymous_clients_in_from_anywhere() {
    let auth = auth(&settings_with(|s| {
        s.allow_anonymous = Some(Anonymous::Anywhere)
    }));
    for peer in LOOPBACKS.into_iter().chain(NETWORKS) {
        assert!(auth.authenticate("c", None, None, peer).is_ok(), "{peer}");
    }
}

#[test]
fn allow_anonymous_false_refuses_anonymous_clients_even_from_loopback() {
    let auth = auth(&settings_with(|s| {
        s.allow_anonymous = Some(Anonymous::Refused)
    }));
    for peer in LOOPBACKS.into_iter().chain(NETWORKS) {
        assert_eq!(
            auth.authenticate("c", None, None, peer),
            Err(Refusal::NotAuthorized),
            "{peer}"
        );
    }
}

#[test]
fn allow_anonymous_loopback_beside_a_password_file_keeps_loopback_open_and_users_get_in_from_anywhere()
 {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = mosquitto_passwd_file(dir.path());
    let auth = auth(&settings_with(|s| {
        s.allow_anonymous = Some(Anonymous::Loopback);
        s.password_file = Some(path);
    }));
    assert!(auth.authenticate("c", None, None, LOOPBACK).is_ok());
    assert_eq!(
        auth.authenticate("c", None, None, NETWORK),
        Err(Refusal::AnonymousFromNetwork)
    );
    assert!(connect(&auth, Some("rajan"), "password123").is_ok());
}

#[test]
fn a_refused_anonymous_address_is_reported_first_once_per_address() {
    let auth = auth(&AuthSettings::default());
    assert!(auth.first_refusal_from(NETWORK));
    assert!(!auth.first_refusal_from(NETWORK));
    let other = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1));
    assert!(auth.first_refusal_from(other));
}

#[test]
fn refused_addresses_remembered_for_the_log_are_bounded() {
    let auth = auth(&AuthSettings::default());
    let mut first = 0;
    for n in 0..(REFUSED_ADDRESSES_LOGGED as u32 + 10) {
        if auth.first_refusal_from(IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + n))) {
            first += 1;
        }
    }
    assert_eq!(first, REFUSED_ADDRESSES_LOGGED);
}

#[test]
fn describe_says_who_gets_in_and_why() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = mosquitto_passwd_file(dir.path());
    let cases: [(AuthSettings, &str); 4] = [
        (
            AuthSettings::default(),
            "anonymous clients from loopback only (the default while no password_file or jwt is set); \
             no users are configured (broker.auth.password_file, jwt)",
        ),
        (
            settings_with(|s| s.password_file = Some(path.clone())),
            "anonymous clients refused (the default once a password_file or jwt is set); others need a password",
        ),
        (
            settings_with(|s| {
                s.allow_anonymous = Some(Anonymous::Loopback);
                s.password_file = Some(path.clone());
            }),
            "anonymous clients from loopback only (broker.auth.allow_anonymous: loopback); others need a password",
        ),
        (
            settings_with(|s| {
                s.allow_anonymous = Some(Anonymous::Anywhere);
                s.jwt = Some(hs256_settings());
            }),
            "anonymous clients allowed from anywhere (broker.auth.allow_anonymous: true); others need a token",
        ),
    ];
    for (settings, expected) in cases {
        assert_eq!(settings.describe(), expected);
    }
}

#[test]
fn an_anonymous_client_connects_when_allowed_and_may_do_anything_without_rules() {
    let auth = auth(&settings_with(|s| {
        s.allow_anonymous = Some(Anonymous::Anywhere)
    }));
    let who = auth
        .authenticate("c", None, None, LOOPBACK)
        .expect("anonymous allowed");
    assert_eq!(who, Identity::new(None, "c".into()));
    assert!(auth.may_publish(&who, "greetings"));
    assert!(auth.may_subscribe(&who, "#"));
}

#[test]
fn a_user_name_without_a_password_file_or_jwt_is_bad_credentials() {
    let auth = auth(&settings_with(|s| {
        s.allow_anonymous = Some(Anonymous::Anywhere)
    }));
    assert_eq!(
        connect(&auth, Some("rajan"), "password123"),
        Err(Refusal::BadCredentials)
    );
}

// --- password files ---

fn mosquitto_passwd_file(dir: &Path) -> PathBuf {
    let path = dir.join("passwd");
    run(Command::new("mosquitto_passwd")
        .args(["-c", "-b"])
        .arg(&path)
        .args(["rajan", "password123"]));
    run(Command::new("mosquitto_passwd")
        .arg("-b")
        .arg(&path)
        .args(["pi", "raspberry"]));
    path
}

#[test]
fn a_file_written_by_the_real_mosquitto_passwd_verifies_the_right_password_only() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = mosquitto_passwd_file(dir.path());
    let text = fs::read_to_string(&path).expect("read");
    assert!(
        text.starts_with("rajan:$7$101$"),
        "mosquitto 2 writes $7$: {text}"
    );
    let auth = auth(&settings_with(|s| s.password_file = Some(path)));
    let who = connect(&auth, Some("rajan"), "password123").expect("right password");
    assert_eq!(who.username.as_deref(), Some("rajan"));
    assert_eq!(who.client_id, "client-1");
    assert!(connect(&auth, Some("pi"), "raspberry").is_ok());
    assert_eq!(
        connect(&auth, Some("rajan"), "password124"),
        Err(Refusal::BadCredentials)
    );
    assert_eq!(
        connect(&auth, Some("pi"), "password123"),
        Err(Refusal::BadCredentials)
    );
    assert_eq!(
        connect(&auth, Some("nobody"), "password123"),
        Err(Refusal::BadCredentials)
    );
    assert_eq!(
        auth.authenticate("c", Some("rajan"), None, NETWORK),
        Err(Refusal::BadCredentials)
    );
}

#[test]
fn sha512_and_other_iteration_counts_written_by_the_real_mosquitto_passwd_verify() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("passwd");
    run(Command::new("mosquitto_passwd")
        .args(["-H", "sha512", "-c", "-b"])
        .arg(&path)
        .args(["old", "password123"]));
    run(Command::new("mosquitto_passwd")
        .args(["-H", "sha512-pbkdf2", "-I", "1000", "-b"])
        .arg(&path)
        .args(["slow", "password123"]));
    let text = fs::read_to_string(&path).expect("read");
    assert!(
        text.contains("old:$6$") && text.contains("slow:$7$1000$"),
        "{text}"
    );
    let auth = auth(&settings_with(|s| s.password_file = Some(path)));
    for user in ["old", "slow"] {
        assert!(connect(&auth, Some(user), "password123").is_ok(), "{user}");
        assert_eq!(
            connect(&auth, Some(user), "password12"),
            Err(Refusal::BadCredentials),
            "{user}"
        );
    }
}

#[test]
fn a_password_file_does_not_let_anonymous_clients_in() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = mosquitto_passwd_file(dir.path());
    let auth = auth(&settings_with(|s| s.password_file = Some(path)));
    assert_eq!(
        auth.authenticate("c", None, None, LOOPBACK),
        Err(Refusal::NotAuthorized)
    );
}

#[test]
fn a_file_edited_by_mqtt2es_passwd_keeps_the_users_mosquitto_passwd_wrote() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = mosquitto_passwd_file(dir.path());
    password::edit(
        &path,
        password::Edit::Set {
            username: "device-7",
            password: b"s3cret",
            create: false,
        },
    )
    .expect("add a user");
    let auth = auth(&settings_with(|s| s.password_file = Some(path.clone())));
    assert!(connect(&auth, Some("rajan"), "password123").is_ok());
    assert!(connect(&auth, Some("device-7"), "s3cret").is_ok());
    // And mosquitto_passwd can still edit the file we wrote.
    run(Command::new("mosquitto_passwd")
        .arg("-D")
        .arg(&path)
        .arg("pi"));
    let auth = self::auth(&settings_with(|s| s.password_file = Some(path)));
    assert!(connect(&auth, Some("device-7"), "s3cret").is_ok());
    assert!(connect(&auth, Some("pi"), "raspberry").is_err());
}

#[test]
fn a_broken_password_file_is_a_load_error_naming_key_file_and_line_without_the_hash() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("passwd");
    fs::write(&path, "rajan:$2y$10$bcrypthashbcrypthash\n").expect("write");
    let settings = settings_with(|s| s.password_file = Some(path.clone()));
    let error = Auth::load(&settings).expect_err("a load error").to_string();
    assert!(error.contains("broker.auth.password_file"), "{error}");
    assert!(error.contains(&format!("{path:?} line 1")), "{error}");
    assert!(!error.contains("bcrypthash"), "{error}");
}

// --- JWT ---

#[test]
fn an_hs256_token_from_an_independent_implementation_is_accepted_as_the_password() {
    let dir = tempfile::tempdir().expect("temp dir");
    let key = secret_file(dir.path(), SECRET);
    let token = independent_token("HS256", &key, json!({"sub": "pi-01", "exp": now() + 600}));
    let auth = auth(&settings_with(|s| s.jwt = Some(hs256_settings())));
    let who = connect(&auth, Some("pi-01"), &token).expect("valid token");
    assert_eq!(who.username.as_deref(), Some("pi-01"));
}

#[test]
fn an_hs256_secret_can_come_from_a_file_with_a_trailing_line_break() {
    let dir = tempfile::tempdir().expect("temp dir");
    let key = secret_file(dir.path(), SECRET);
    let file = secret_file(dir.path(), &format!("{SECRET}\n"));
    let token = independent_token("HS256", &key, json!({"sub": "pi-01", "exp": now() + 600}));
    let jwt = JwtSettings {
        hs256_secret_file: Some(file),
        ..JwtSettings::default()
    };
    let auth = auth(&settings_with(|s| s.jwt = Some(jwt)));
    assert!(connect(&auth, Some("pi-01"), &token).is_ok());
}

#[test]
fn an_rs256_token_from_openssl_is_accepted_with_the_public_key() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (private, public) = rsa_keys(dir.path());
    let token = independent_token(
        "RS256",
        &private,
        json!({"sub": "pi-01", "exp": now() + 600}),
    );
    let jwt = JwtSettings {
        rs256_public_key_file: Some(public),
        ..JwtSettings::default()
    };
    let auth = auth(&settings_with(|s| s.jwt = Some(jwt)));
    assert!(connect(&auth, Some("pi-01"), &token).is_ok());
}

#[test]
fn tokens_made_by_jsonwebtoken_are_accepted_for_both_algorithms() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (private, public) = rsa_keys(dir.path());
    let claims = json!({"sub": "pi-01", "exp": now() + 600});
    let hs = jsonwebtoken::encode(
        &Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .expect("encode");
    let rs = jsonwebtoken::encode(
        &Header::new(jsonwebtoken::Algorithm::RS256),
        &claims,
        &EncodingKey::from_rsa_pem(&fs::read(private).expect("read")).expect("private key"),
    )
    .expect("encode");
    let jwt = JwtSettings {
        rs256_public_key_file: Some(public),
        ..hs256_settings()
    };
    let auth = auth(&settings_with(|s| s.jwt = Some(jwt)));
    assert!(connect(&auth, Some("pi-01"), &hs).is_ok());
    assert!(connect(&auth, Some("pi-01"), &rs).is_ok());
}

#[test]
fn an_expired_token_is_refused_and_one_within_the_leeway_is_not() {
    let dir = tempfile::tempdir().expect("temp dir");
    let key = secret_file(dir.path(), SECRET);
    let expired = independent_token("HS256", &key, json!({"sub": "pi", "exp": now() - 600}));
    let just = independent_token("HS256", &key, json!({"sub": "pi", "exp": now() - 5}));
    let auth = auth(&settings_with(|s| s.jwt = Some(hs256_settings())));
    assert_eq!(
        connect(&auth, Some("pi"), &expired),
        Err(Refusal::BadCredentials)
    );
    assert!(connect(&auth, Some("pi"), &just).is_ok(), "30 s leeway");
}

#[test]
fn a_token_not_yet_valid_is_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let key = secret_file(dir.path(), SECRET);
    let claims = json!({"sub": "pi", "nbf": now() + 600, "exp": now() + 1200});
    let token = independent_token("HS256", &key, claims);
    let auth = auth(&settings_with(|s| s.jwt = Some(hs256_settings())));
    assert_eq!(
        connect(&auth, Some("pi"), &token),
        Err(Refusal::BadCredentials)
    );
}

#[test]
fn a_token_without_exp_is_refused_unless_exp_is_optional() {
    let dir = tempfile::tempdir().expect("temp dir");
    let key = secret_file(dir.path(), SECRET);
    let token = independent_token("HS256", &key, json!({"sub": "pi"}));
    let strict = auth(&settings_with(|s| s.jwt = Some(hs256_settings())));
    assert_eq!(
        connect(&strict, Some("pi"), &token),
        Err(Refusal::BadCredentials)
    );
    let lenient = auth(&settings_with(|s| {
        s.jwt = Some(JwtSettings {
            require_exp: false,
            ..hs256_settings()
        })
    }));
    assert!(connect(&lenient, Some("pi"), &token).is_ok());
}

#[test]
fn an_alg_none_token_is_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let unused = dir.path().join("unused");
    let token = independent_token("none", &unused, json!({"sub": "pi", "exp": now() + 600}));
    assert!(token.ends_with('.'), "{token}");
    let auth = auth(&settings_with(|s| s.jwt = Some(hs256_settings())));
    assert_eq!(
        connect(&auth, Some("pi"), &token),
        Err(Refusal::BadCredentials)
    );
}

#[test]
fn an_hs256_token_signed_with_the_rsa_public_key_is_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (_, public) = rsa_keys(dir.path());
    let forged = independent_token("HS256", &public, json!({"sub": "pi", "exp": now() + 600}));
    let rs_only = JwtSettings {
        rs256_public_key_file: Some(public.clone()),
        ..JwtSettings::default()
    };
    let both = JwtSettings {
        rs256_public_key_file: Some(public),
        ..hs256_settings()
    };
    for jwt in [rs_only, both] {
        let auth = auth(&settings_with(|s| s.jwt = Some(jwt)));
        assert_eq!(
            connect(&auth, Some("pi"), &forged),
            Err(Refusal::BadCredentials)
        );
    }
}

#[test]
fn a_token_signed_with_another_secret_is_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let key = secret_file(dir.path(), "another-secret-that-is-also-32-bytes-long");
    let token = independent_token("HS256", &key, json!({"sub": "pi", "exp": now() + 600}));
    let auth = auth(&settings_with(|s| s.jwt = Some(hs256_settings())));
    assert_eq!(
        connect(&auth, Some("pi"), &token),
        Err(Refusal::BadCredentials)
    );
}

#[test]
fn an_rs256_token_is_refused_when_only_hs256_is_configured() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (private, _) = rsa_keys(dir.path());
    let token = independent_token("RS256", &private, json!({"sub": "pi", "exp": now() + 600}));
    let auth = auth(&settings_with(|s| s.jwt = Some(hs256_settings())));
    assert_eq!(
        connect(&auth, Some("pi"), &token),
        Err(Refusal::BadCredentials)
    );
}

#[test]
fn the_user_name_must_equal_sub_unless_configured_otherwise() {
    let dir = tempfile::tempdir().expect("temp dir");
    let key = secret_file(dir.path(), SECRET);
    let token = independent_token("HS256", &key, json!({"sub": "pi-01", "exp": now() + 600}));
    let strict = auth(&settings_with(|s| s.jwt = Some(hs256_settings())));
    assert_eq!(
        connect(&strict, Some("pi-02"), &token),
        Err(Refusal::BadCredentials)
    );
    assert_eq!(connect(&strict, None, &token), Err(Refusal::NotAuthorized));
    let any = auth(&settings_with(|s| {
        s.jwt = Some(JwtSettings {
            username_must_match_sub: false,
            ..hs256_settings()
        })
    }));
    let who = connect(&any, Some("mqtt_user"), &token).expect("any user name");
    assert_eq!(
        who.username.as_deref(),
        Some("pi-01"),
        "sub is the identity"
    );
    let who = connect(&any, None, &token).expect("MQTT 5 password without user name");
    assert_eq!(who.username.as_deref(), Some("pi-01"));
}

#[test]
fn issuer_and_audience_are_checked_when_configured() {
    let dir = tempfile::tempdir().expect("temp dir");
    let key = secret_file(dir.path(), SECRET);
    let token = |claims| independent_token("HS256", &key, claims);
    let auth = auth(&settings_with(|s| {
        s.jwt = Some(JwtSettings {
            issuer: Some("https://id.example".into()),
            audience: Some("mqtt2es".into()),
            ..hs256_settings()
        })
    }));
    let exp = now() + 600;
    let good =
        token(json!({"sub": "pi", "exp": exp, "iss": "https://id.example", "aud": "mqtt2es"}));
    let bad_iss = token(json!({"sub": "pi", "exp": exp, "iss": "https://evil", "aud": "mqtt2es"}));
    let no_iss = token(json!({"sub": "pi", "exp": exp, "aud": "mqtt2es"}));
    let bad_aud = token(json!({"sub": "pi", "exp": exp, "iss": "https://id.example", "aud": "x"}));
    let no_aud = token(json!({"sub": "pi", "exp": exp, "iss": "https://id.example"}));
    assert!(connect(&auth, Some("pi"), &good).is_ok());
    for bad in [bad_iss, no_iss, bad_aud, no_aud] {
        assert_eq!(
            connect(&auth, Some("pi"), &bad),
            Err(Refusal::BadCredentials)
        );
    }
}

#[test]
fn topic_claims_narrow_what_the_token_holder_may_do() {
    let dir = tempfile::tempdir().expect("temp dir");
    let key = secret_file(dir.path(), SECRET);
    let claims = json!({
        "sub": "pi-01",
        "exp": now() + 600,
        "mqtt2es": {"publish": ["sensors/%u/+/telemetry"], "subscribe": ["cmd/%c/#"]}
    });
    let silent = independent_token(
        "HS256",
        &key,
        json!({"sub": "pi-01", "exp": now() + 600, "mqtt2es": {"subscribe": []}}),
    );
    let token = independent_token("HS256", &key, claims);
    let auth = auth(&settings_with(|s| s.jwt = Some(hs256_settings())));
    let who = auth
        .authenticate("client-1", Some("pi-01"), Some(token.as_bytes()), NETWORK)
        .expect("valid token");
    assert!(auth.may_publish(&who, "sensors/pi-01/lab/telemetry"));
    assert!(!auth.may_publish(&who, "sensors/pi-02/lab/telemetry"));
    assert!(!auth.may_publish(&who, "greetings"));
    assert!(auth.may_subscribe(&who, "cmd/client-1/#"));
    assert!(!auth.may_subscribe(&who, "cmd/#"));
    assert!(!auth.may_subscribe(&who, "#"));
    let who = connect(&auth, Some("pi-01"), &silent).expect("valid token");
    assert!(
        auth.may_publish(&who, "anything"),
        "no publish list: the ACL decides"
    );
    assert!(
        !auth.may_subscribe(&who, "anything"),
        "an empty list allows nothing"
    );
}

#[test]
fn topic_claims_do_not_widen_what_the_acl_allows() {
    let dir = tempfile::tempdir().expect("temp dir");
    let key = secret_file(dir.path(), SECRET);
    let claims = json!({"sub": "pi", "exp": now() + 600, "mqtt2es": {"publish": ["#"]}});
    let token = independent_token("HS256", &key, claims);
    let auth = auth(&settings_with(|s| {
        s.jwt = Some(hs256_settings());
        s.acl = vec![AclRule {
            user: "pi".into(),
            publish: vec!["sensors/#".into()],
            subscribe: vec![],
            deny: vec![],
        }];
    }));
    let who = connect(&auth, Some("pi"), &token).expect("valid token");
    assert!(auth.may_publish(&who, "sensors/x"));
    assert!(!auth.may_publish(&who, "greetings"));
    assert!(
        !auth.may_subscribe(&who, "sensors/#"),
        "no subscribe grant in the ACL"
    );
}

#[test]
fn a_misspelt_or_invalid_topic_claim_refuses_the_token() {
    let dir = tempfile::tempdir().expect("temp dir");
    let key = secret_file(dir.path(), SECRET);
    let auth = auth(&settings_with(|s| s.jwt = Some(hs256_settings())));
    for topics in [
        json!({"publsh": ["a"]}),
        json!({"publish": ["a/#/b"]}),
        json!(["a"]),
    ] {
        let claims = json!({"sub": "pi", "exp": now() + 600, "mqtt2es": topics});
        let token = independent_token("HS256", &key, claims);
        assert_eq!(
            connect(&auth, Some("pi"), &token),
            Err(Refusal::BadCredentials),
            "{topics}"
        );
    }
}

#[test]
fn a_non_token_password_still_goes_to_the_password_file_when_jwt_is_configured() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = mosquitto_passwd_file(dir.path());
    let auth = auth(&settings_with(|s| {
        s.password_file = Some(path);
        s.jwt = Some(hs256_settings());
    }));
    assert!(connect(&auth, Some("rajan"), "password123").is_ok());
    assert_eq!(
        connect(&auth, Some("rajan"), "a.b.c"),
        Err(Refusal::BadCredentials)
    );
}

#[test]
fn only_token_shaped_passwords_are_taken_for_tokens() {
    assert!(jwt::as_token(b"eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJwaSJ9.c2ln").is_some());
    assert!(jwt::as_token(b"eyJhbGciOiJub25lIn0.eyJzdWIiOiJwaSJ9.").is_some());
    for password in [
        &b"password123"[..],
        b"a.b",
        b"a.b.c.d",
        b".b.c",
        b"a b.c.d",
        b"\xff.a.b",
    ] {
        assert!(jwt::as_token(password).is_none(), "{password:?}");
    }
}

// --- ACLs through Auth ---

#[test]
fn no_rules_let_every_connected_client_publish_and_subscribe_anywhere() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = mosquitto_passwd_file(dir.path());
    let auth = auth(&settings_with(|s| s.password_file = Some(path)));
    let who = connect(&auth, Some("rajan"), "password123").expect("valid");
    assert!(auth.may_publish(&who, "anything/at/all"));
    assert!(auth.may_subscribe(&who, "#"));
}

#[test]
fn an_acl_file_without_yaml_rules_still_denies_by_default() {
    let dir = tempfile::tempdir().expect("temp dir");
    let acl_file = dir.path().join("acl");
    fs::write(&acl_file, "user rajan\ntopic readwrite greetings\n").expect("write");
    let auth = auth(&settings_with(|s| {
        s.allow_anonymous = Some(Anonymous::Anywhere);
        s.acl_file = Some(acl_file);
    }));
    let rajan = Identity::new(Some("rajan".into()), "c".into());
    let anonymous = auth
        .authenticate("c", None, None, LOOPBACK)
        .expect("anonymous");
    assert!(auth.may_publish(&rajan, "greetings"));
    assert!(auth.may_subscribe(&rajan, "greetings"));
    assert!(!auth.may_publish(&anonymous, "greetings"));
}

#[test]
fn a_shared_subscription_is_judged_by_its_topic_filter() {
    let auth = auth(&settings_with(|s| {
        s.acl = vec![AclRule {
            user: "*".into(),
            publish: vec![],
            subscribe: vec!["sensors/#".into()],
            deny: vec![],
        }];
    }));
    let who = Identity::new(Some("x".into()), "c".into());
    assert!(auth.may_subscribe(&who, "$share/ingest/sensors/+/+/telemetry"));
    assert!(!auth.may_subscribe(&who, "$share/ingest/#"));
    assert!(!auth.may_subscribe(&who, "sensors/#/x"), "invalid filter");
}

// --- configuration ---

#[test]
fn allow_anonymous_reads_true_false_and_loopback_from_yaml_and_the_environment() {
    let cases = [
        ("true", Anonymous::Anywhere),
        ("false", Anonymous::Refused),
        ("loopback", Anonymous::Loopback),
    ];
    for (value, expected) in cases {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "mqtt2es.yaml",
                &format!("broker:\n  auth:\n    allow_anonymous: {value}\n"),
            )?;
            let (config, _) = crate::config::Config::load(&jail.directory().join("mqtt2es.yaml"))
                .expect("a valid config");
            assert_eq!(config.broker.auth.allow_anonymous, Some(expected));
            jail.create_file("empty.yaml", "")?;
            jail.set_env("MQTT2ES_BROKER__AUTH__ALLOW_ANONYMOUS", value);
            let (config, _) = crate::config::Config::load(&jail.directory().join("empty.yaml"))
                .expect("a valid config");
            assert_eq!(config.broker.auth.allow_anonymous, Some(expected));
            Ok(())
        });
    }
}

#[test]
fn an_unknown_allow_anonymous_value_is_an_error_naming_the_key_and_the_choices() {
    figment::Jail::expect_with(|jail| {
        jail.create_file(
            "mqtt2es.yaml",
            "broker:\n  auth:\n    allow_anonymous: everyone\n",
        )?;
        let error = crate::config::Config::load(&jail.directory().join("mqtt2es.yaml"))
            .expect_err("not a valid value")
            .to_string();
        for part in ["allow_anonymous", "loopback", "\"everyone\""] {
            assert!(error.contains(part), "{part}: {error}");
        }
        Ok(())
    });
}

#[test]
fn the_auth_section_reads_from_yaml_and_resolves_paths_against_the_config_file() {
    figment::Jail::expect_with(|jail| {
        jail.create_file(
            "mqtt2es.yaml",
            "broker:\n  auth:\n    allow_anonymous: true\n    password_file: passwd\n    \
             acl_file: acl\n    jwt:\n      hs256_secret_file: jwt.secret\n      \
             rs256_public_key_file: /keys/issuer.pem\n      leeway_secs: 5\n    \
             acl:\n      - {user: rajan, publish: [\"sensors/%u/#\"], subscribe: [\"#\"]}\n",
        )?;
        let (config, _) = crate::config::Config::load(&jail.directory().join("mqtt2es.yaml"))
            .expect("a valid config");
        let auth = &config.broker.auth;
        assert_eq!(auth.allow_anonymous, Some(Anonymous::Anywhere));
        assert_eq!(auth.password_file, Some(jail.directory().join("passwd")));
        assert_eq!(auth.acl_file, Some(jail.directory().join("acl")));
        let jwt = auth.jwt.as_ref().expect("jwt section");
        assert_eq!(
            jwt.hs256_secret_file,
            Some(jail.directory().join("jwt.secret"))
        );
        assert_eq!(
            jwt.rs256_public_key_file,
            Some(PathBuf::from("/keys/issuer.pem"))
        );
        assert_eq!(jwt.leeway_secs, 5);
        assert_eq!(auth.acl[0].user, "rajan");
        Ok(())
    });
}

fn config_error(yaml: &str) -> String {
    let mut text = String::new();
    figment::Jail::expect_with(|jail| {
        jail.create_file("mqtt2es.yaml", yaml)?;
        text = crate::config::Config::load(&jail.directory().join("mqtt2es.yaml"))
            .expect_err("config should be refused")
            .to_string();
        Ok(())
    });
    text
}

#[test]
fn jwt_settings_without_a_key_or_with_two_secrets_are_config_errors() {
    let text = config_error("broker: {auth: {jwt: {leeway_secs: 5}}}\n");
    assert!(
        text.contains("broker.auth.jwt") && text.contains("no key"),
        "{text}"
    );
    let text = config_error(&format!(
        "broker: {{auth: {{jwt: {{hs256_secret: \"{SECRET}\", hs256_secret_file: s}}}}}}\n"
    ));
    assert!(text.contains("not both"), "{text}");
}

#[test]
fn a_leeway_of_more_than_an_hour_is_a_config_error() {
    let text = config_error(&format!(
        "broker: {{auth: {{jwt: {{hs256_secret: \"{SECRET}\", leeway_secs: 86400}}}}}}\n"
    ));
    assert!(
        text.contains("broker.auth.jwt.leeway_secs") && text.contains("86400"),
        "{text}"
    );
}

#[test]
fn a_short_hs256_secret_is_a_config_error_that_does_not_show_it() {
    let text = config_error("broker: {auth: {jwt: {hs256_secret: hunter2}}}\n");
    assert!(text.contains("broker.auth.jwt.hs256_secret"), "{text}");
    assert!(text.contains("at least 32 bytes"), "{text}");
    assert!(!text.contains("hunter2"), "{text}");
}

#[test]
fn an_unknown_key_or_a_bad_acl_filter_is_a_config_error() {
    let text = config_error("broker: {auth: {passwd_file: x}}\n");
    assert!(text.contains("passwd_file"), "{text}");
    let text = config_error("broker: {auth: {acl: [{user: rajan, publish: [\"a/#/b\"]}]}}\n");
    assert!(
        text.contains("broker.auth.acl") && text.contains("a/#/b"),
        "{text}"
    );
    let text = config_error("broker: {auth: {acl: [{user: rajan, read: [\"a\"]}]}}\n");
    assert!(text.contains("read"), "{text}");
}

#[test]
fn a_private_key_given_as_the_rs256_public_key_is_a_load_error() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (private, _) = rsa_keys(dir.path());
    let settings = settings_with(|s| {
        s.jwt = Some(JwtSettings {
            rs256_public_key_file: Some(private.clone()),
            ..JwtSettings::default()
        })
    });
    let error = Auth::load(&settings).expect_err("a load error").to_string();
    assert!(
        error.contains("rs256_public_key_file") && error.contains("private key"),
        "{error}"
    );
    assert!(!error.contains("MII"), "{error}");
}

#[test]
fn settings_and_auth_holding_secrets_do_not_show_them_in_debug_output() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = mosquitto_passwd_file(dir.path());
    let settings = settings_with(|s| {
        s.jwt = Some(hs256_settings());
        s.password_file = Some(path.clone());
    });
    let shown = format!("{settings:?}");
    assert!(!shown.contains(SECRET), "{shown}");
    let shown = format!("{:?}", auth(&settings));
    let hash = fs::read_to_string(&path).expect("read");
    let hash = hash
        .lines()
        .next()
        .expect("a line")
        .split('$')
        .nth(4)
        .expect("hash part");
    assert!(!shown.contains(SECRET) && !shown.contains(hash), "{shown}");
    assert!(
        shown.contains("password_users: Some(2)") && shown.contains("HS256"),
        "{shown}"
    );
}

#[test]
fn auth_can_be_shared_between_connection_tasks() {
    fn shareable<T: Send + Sync + 'static>() {}
    shareable::<Auth>();
    shareable::<Identity>();
}
