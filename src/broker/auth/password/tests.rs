//! The password file and its hashes: `$7$` and `$6$` vectors from Python's hashlib, load errors
//! that name file and line but never a hash, and the edits `mqtt2es passwd` makes.

use super::*;

fn parse(text: &str) -> Result<PasswordFile, PasswordFileError> {
    PasswordFile::parse(Path::new("/etc/mqtt2es/passwd"), text)
}

fn error_text(text: &str) -> String {
    parse(text).expect_err("a malformed file").to_string()
}

#[test]
fn a_created_hash_is_pbkdf2_with_101_iterations_and_a_12_byte_salt_like_mosquitto_2() {
    let hash = PasswordHash::create(b"password123").expect("random salt");
    let encoded = hash.encode();
    let parts: Vec<&str> = encoded.split('$').collect();
    assert_eq!(parts[..3], ["", "7", "101"], "{encoded}");
    assert_eq!(BASE64.decode(parts[3]).expect("salt").len(), 12);
    assert_eq!(BASE64.decode(parts[4]).expect("hash").len(), 64);
    assert_eq!(PasswordHash::parse(&encoded), Ok(hash));
}

#[test]
fn a_created_hash_verifies_its_password_and_refuses_another() {
    let hash = PasswordHash::create(b"password123").expect("random salt");
    assert!(hash.verify(b"password123"));
    assert!(!hash.verify(b"password124"));
    assert!(!hash.verify(b""));
}

#[test]
fn two_hashes_of_one_password_differ_by_their_salt() {
    let a = PasswordHash::create(b"password123").expect("random salt");
    let b = PasswordHash::create(b"password123").expect("random salt");
    assert_ne!(a.encode(), b.encode());
}

/// Vector derived independently with Python's hashlib:
/// `hashlib.pbkdf2_hmac('sha512', b'password123', b'0123456789ab', 101)`, base64 encoded.
#[test]
fn a_pbkdf2_vector_from_python_hashlib_verifies() {
    let hash = PasswordHash::parse(PBKDF2_VECTOR).expect("a $7$ hash");
    assert!(hash.verify(b"password123"));
    assert!(!hash.verify(b"Password123"));
}
const PBKDF2_VECTOR: &str = "$7$101$MDEyMzQ1Njc4OWFi$07f8vZ7stGMssBiYuyZpX+IZKuEuL1aAXu+yqN/P69gvQS6BBTJqqexMaWtK0k6SAk0TMQ0DT32DJQlSNKV+dQ==";

/// Vector derived independently with Python's hashlib:
/// `hashlib.sha512(b'password123' + b'0123456789ab').digest()`, base64 encoded.
#[test]
fn a_sha512_vector_from_python_hashlib_verifies() {
    let hash = PasswordHash::parse(SHA512_VECTOR).expect("a $6$ hash");
    assert!(hash.verify(b"password123"));
    assert!(!hash.verify(b"password12"));
}
const SHA512_VECTOR: &str = "$6$MDEyMzQ1Njc4OWFi$egeA2lOtzwN99AT+mMhPqc1AhVtSXlxUT8RfS2n++CExDmX6LXn6MiyLgOU508MPto+GvKcd82ItJnwDP+i7Xw==";

#[test]
fn a_password_file_verifies_known_users_and_refuses_unknown_ones() {
    let file = parse(&format!(
        "# made by hand\n\nrajan:{PBKDF2_VECTOR}\nold:{SHA512_VECTOR}\r\n"
    ))
    .expect("a valid file");
    assert!(file.verify("rajan", Some(b"password123")));
    assert!(file.verify("old", Some(b"password123")));
    assert!(!file.verify("rajan", Some(b"wrong")));
    assert!(!file.verify("rajan", None));
    assert!(!file.verify("nobody", Some(b"password123")));
    assert!(!file.verify("nobody", None));
}

#[test]
fn an_unknown_hash_type_is_a_load_error_naming_file_line_and_user_but_not_the_hash() {
    let text = error_text("# users\nrajan:$5$c2FsdA==$c2VjcmV0aGFzaA==\n");
    assert!(text.contains("\"/etc/mqtt2es/passwd\" line 2"), "{text}");
    assert!(text.contains("\"rajan\""), "{text}");
    assert!(text.contains("unknown hash type"), "{text}");
    assert!(!text.contains("c2VjcmV0aGFzaA"), "{text}");
}

#[test]
fn a_plain_text_password_is_a_load_error_that_does_not_show_it() {
    let text = error_text("rajan:password123\n");
    assert!(text.contains("line 1"), "{text}");
    assert!(!text.contains("password123"), "{text}");
}

#[test]
fn malformed_lines_are_load_errors_with_their_line_number() {
    let cases = [
        ("rajan\n", "expected <user>:<hash>"),
        (":$7$101$x$y\n", "empty user name"),
        ("rajan:$7$101$MDEyMzQ1Njc4OWFi\n", "malformed $7$"),
        ("rajan:$7$0$MDEyMzQ1Njc4OWFi$aGFzaA==\n", "iteration count"),
        (
            "rajan:$7$lots$MDEyMzQ1Njc4OWFi$aGFzaA==\n",
            "iteration count",
        ),
        ("rajan:$7$101$c2FsdA==$aGFzaA==\n", "salt must be 12 bytes"),
        (
            "rajan:$7$101$MDEyMzQ1Njc4OWFi$aGFzaA==\n",
            "hash must be 64 bytes",
        ),
        ("rajan:$6$MDEyMzQ1Njc4OWFi\n", "malformed $6$"),
        ("rajan:$6$MDEyMzQ1Njc4OWFi$!!!\n", "hash must be 64 bytes"),
    ];
    for (line, expected) in cases {
        let text = error_text(line);
        assert!(
            text.contains(expected) && text.contains("line 1"),
            "{line}: {text}"
        );
    }
}

#[test]
fn a_user_listed_twice_is_a_load_error() {
    let text = error_text(&format!("rajan:{PBKDF2_VECTOR}\nrajan:{PBKDF2_VECTOR}\n"));
    assert!(text.contains("line 2") && text.contains("twice"), "{text}");
}

#[test]
fn a_missing_password_file_is_a_load_error_naming_it() {
    let error = PasswordFile::load(Path::new("/nonexistent/passwd")).expect_err("missing");
    assert!(error.to_string().contains("/nonexistent/passwd"), "{error}");
}

#[test]
fn the_debug_form_of_a_hash_hides_salt_and_hash() {
    let hash = PasswordHash::parse(PBKDF2_VECTOR).expect("a $7$ hash");
    let shown = format!("{hash:?}");
    assert!(
        !shown.contains("MDEy") && !shown.contains("07f8"),
        "{shown}"
    );
    assert!(shown.contains("101 iterations"), "{shown}");
}

#[test]
fn setting_a_user_replaces_their_line_and_keeps_the_others() {
    let hash = PasswordHash::parse(PBKDF2_VECTOR).expect("a $7$ hash");
    let text = "# devices\nrajan:$6$old$old\npi:$7$1$a$b\n";
    let updated = set_entry(text, "rajan", &hash);
    assert_eq!(
        updated,
        format!("# devices\nrajan:{PBKDF2_VECTOR}\npi:$7$1$a$b\n")
    );
    let appended = set_entry("pi:$7$1$a$b", "rajan", &hash);
    assert_eq!(appended, format!("pi:$7$1$a$b\nrajan:{PBKDF2_VECTOR}\n"));
}

#[test]
fn removing_a_user_drops_only_their_line() {
    let text = "# devices\nrajan:x\npi:y\n";
    assert_eq!(
        remove_entry(text, "rajan").as_deref(),
        Some("# devices\npi:y\n")
    );
    assert_eq!(remove_entry(text, "nobody"), None);
}

#[test]
fn editing_a_file_creates_updates_deletes_and_keeps_it_private() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("passwd");
    let set = |username, password: &'static str, create| Edit::Set {
        username,
        password: password.as_bytes(),
        create,
    };
    let missing = edit(&path, set("rajan", "password123", false));
    assert!(
        matches!(missing, Err(EditError::Read { .. })),
        "{missing:?}"
    );
    edit(&path, set("rajan", "password123", true)).expect("create");
    edit(&path, set("pi", "raspberry", false)).expect("add");
    edit(&path, set("rajan", "changed", false)).expect("update");
    let file = PasswordFile::load(&path).expect("a valid file");
    assert!(file.verify("rajan", Some(b"changed")));
    assert!(file.verify("pi", Some(b"raspberry")));
    edit(&path, Edit::Delete { username: "pi" }).expect("delete");
    let file = PasswordFile::load(&path).expect("a valid file");
    assert!(!file.contains("pi") && file.contains("rajan"));
    let gone = edit(&path, Edit::Delete { username: "pi" });
    assert!(
        matches!(gone, Err(EditError::NoSuchUser { .. })),
        "{gone:?}"
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(&path).expect("stat").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}

#[test]
fn user_names_with_a_colon_or_line_break_and_empty_passwords_are_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("passwd");
    for username in ["a:b", "a\nb", "", " rajan"] {
        let result = edit(
            &path,
            Edit::Set {
                username,
                password: b"x",
                create: true,
            },
        );
        assert!(
            matches!(result, Err(EditError::Username(_))),
            "{username:?}"
        );
    }
}

#[test]
fn upgrading_hashes_plain_text_lines_and_leaves_hashed_ones() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("auth.txt");
    fs::write(
        &path,
        format!("# seed\nrajan:password123\nold:{SHA512_VECTOR}\n"),
    )
    .expect("write");
    edit(&path, Edit::Upgrade).expect("upgrade");
    let text = fs::read_to_string(&path).expect("read");
    assert!(!text.contains("password123"), "{text}");
    assert!(
        text.contains(SHA512_VECTOR) && text.starts_with("# seed\n"),
        "{text}"
    );
    let file = PasswordFile::load(&path).expect("a valid file");
    assert!(file.verify("rajan", Some(b"password123")));
}
