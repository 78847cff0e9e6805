//! README.md's "Configuration reference" checked against the config types, so that it cannot go
//! stale: every key the types accept is documented with the default they give, and every
//! documented key exists.
//!
//! The keys come from the types: `Config` is loaded from [`skeleton`], written back with serde
//! and flattened into dotted keys (`broker.listeners[].bind`: `[]` is "each element of the
//! list"). A key's default is what loading gives when the key is left out; a key whose absence
//! makes loading fail is required. A documented default is checked by loading it: written at
//! its key it must give what leaving the key out gives, so values are compared as settings,
//! not as text (`"0.0.0.0:9464"` and `0.0.0.0:9464` are the same address).
//!
//! The decision a reader might question: sections that are absent by default (`upstream`) and
//! lists of sections (`broker.listeners`) are named by hand in [`skeleton`], because
//! `Config::default()` written out has `null` or an empty list there and says nothing of the
//! keys inside. So that a new one cannot slip past, every key whose default is `null` or `[]`
//! is probed with `{}` or `[{}]`, which only a section (or a list of them) accepts.

use std::collections::BTreeMap;

use figment::Figment;
use figment::providers::{Format, Yaml};
use serde_json::{Value, json};

use super::Config;

const README: &str = include_str!("../../README.md");
const SECTION: &str = "## Configuration reference";

/// Opens the sections that are absent by default and one element of each list of sections,
/// with the values of the keys they cannot do without.
fn skeleton() -> Value {
    json!({
        "upstream": {"tls": {"ca_file": "ca.pem"}},
        "kibana": {},
        "broker": {
            "listeners": [{}],
            "auth": {"jwt": {}, "acl": [{"user": "device-1"}]},
        },
    })
}

#[derive(Debug, Clone, PartialEq)]
enum KeyDefault {
    Value(Value),
    Required,
}

/// `value` loaded as a `Config` (serde only: no paths resolved, no cross-field checks) and
/// written back; serde's message when it does not load.
fn load(value: &Value) -> Result<Value, String> {
    let config: Config = serde_json::from_value(value.clone()).map_err(|e| e.to_string())?;
    Ok(serde_json::to_value(config).expect("settings serialize"))
}

fn get<'v>(value: &'v Value, key: &str) -> Option<&'v Value> {
    key.split('.')
        .try_fold(value, |value, segment| match segment.strip_suffix("[]") {
            Some(list) => value.get(list)?.get(0),
            None => value.get(segment),
        })
}

/// `value` with `key` set to `to`, or removed when `to` is `None`.
fn with(value: &Value, key: &str, to: Option<Value>) -> Value {
    fn edit(value: &mut Value, segments: &[&str], to: Option<Value>) {
        let Some(map) = value.as_object_mut() else {
            return;
        };
        let (segment, rest) = segments.split_first().expect("a key has a segment");
        if rest.is_empty() {
            match to {
                Some(to) => map.insert((*segment).to_owned(), to),
                None => map.remove(*segment),
            };
            return;
        }
        let (name, list) = match segment.strip_suffix("[]") {
            Some(name) => (name, true),
            None => (*segment, false),
        };
        if to.is_none() && !map.contains_key(name) {
            return;
        }
        let child = map.entry(name).or_insert_with(|| match list {
            true => json!([{}]),
            false => json!({}),
        });
        let child = match list {
            true => child.get_mut(0),
            false => Some(child),
        };
        if let Some(child) = child {
            edit(child, rest, to);
        }
    }
    let mut value = value.clone();
    edit(&mut value, &key.split('.').collect::<Vec<_>>(), to);
    value
}

fn join(prefix: &str, name: &str) -> String {
    match prefix {
        "" => name.to_owned(),
        _ => format!("{prefix}.{name}"),
    }
}

/// The keys of a written-out config: its leaves, descending into the first element of a list
/// of sections.
fn leaves(value: &Value, prefix: &str, keys: &mut Vec<String>) {
    match value {
        Value::Object(map) if !map.is_empty() => {
            for (name, value) in map {
                leaves(value, &join(prefix, name), keys);
            }
        }
        Value::Array(items) if items.first().is_some_and(Value::is_object) => {
            leaves(&items[0], &format!("{prefix}[]"), keys);
        }
        _ => keys.push(prefix.to_owned()),
    }
}

/// The sections and lists the skeleton opens.
fn opened(value: &Value, prefix: &str, keys: &mut Vec<String>) {
    let Value::Object(map) = value else { return };
    for (name, value) in map {
        let key = join(prefix, name);
        match value {
            Value::Object(_) => {
                keys.push(key.clone());
                opened(value, &key, keys);
            }
            Value::Array(items) => {
                keys.push(key.clone());
                opened(&items[0], &format!("{key}[]"), keys);
            }
            _ => {}
        }
    }
}

/// Every key the config types accept, with its default: what loading gives without it.
fn config_keys() -> BTreeMap<String, KeyDefault> {
    let skeleton = skeleton();
    let loaded = load(&skeleton).expect("the skeleton loads");
    let default_of = |key: &str| match load(&with(&skeleton, key, None)) {
        Ok(without) => KeyDefault::Value(get(&without, key).cloned().unwrap_or(Value::Null)),
        Err(_) => KeyDefault::Required,
    };
    let mut keys = BTreeMap::new();
    let mut found = Vec::new();
    leaves(&loaded, "", &mut found);
    for key in found {
        let default = default_of(&key);
        keys.insert(key, default);
    }
    // Of the sections the skeleton opens, those absent or in a list by default are keys of
    // their own (`upstream`: unset); the others (`broker`, `broker.auth`) are always there.
    let mut sections = Vec::new();
    opened(&skeleton, "", &mut sections);
    for key in sections {
        if let KeyDefault::Value(value @ (Value::Null | Value::Array(_))) = default_of(&key) {
            keys.insert(key, KeyDefault::Value(value));
        }
    }
    keys
}

/// A row of the reference: a default cell and the README line it is on.
#[derive(Debug)]
struct Row {
    default: Result<KeyDefault, String>,
    line: usize,
}

/// The reference's rows, `| `key` | default | meaning |`, where the default is `unset` (no
/// value), `required` or one YAML value in backticks.
fn documented_keys() -> BTreeMap<String, Row> {
    let start = README
        .lines()
        .position(|line| line == SECTION)
        .unwrap_or_else(|| panic!("README.md has a section {SECTION:?}"));
    let mut rows = BTreeMap::new();
    for (index, line) in README.lines().enumerate().skip(start + 1) {
        if line.starts_with("## ") {
            break;
        }
        let Some(row) = line.strip_prefix("| `") else {
            continue;
        };
        let cells: Vec<&str> = row
            .trim_end_matches('|')
            .split('|')
            .map(str::trim)
            .collect();
        let line = index + 1;
        let [key, default, meaning] = cells[..] else {
            panic!("README.md line {line}: a reference row has three cells: {row:?}");
        };
        let key = key.strip_suffix('`').expect("a key in backticks");
        assert!(
            !meaning.is_empty(),
            "README.md line {line}: `{key}` says what it means"
        );
        let default = parse_default(default);
        let previous = rows.insert(key.to_owned(), Row { default, line });
        assert!(
            previous.is_none(),
            "README.md line {line}: `{key}` is documented twice"
        );
    }
    rows
}

fn parse_default(cell: &str) -> Result<KeyDefault, String> {
    match cell {
        "unset" => Ok(KeyDefault::Value(Value::Null)),
        "required" => Ok(KeyDefault::Required),
        _ => {
            let yaml = cell
                .strip_prefix('`')
                .and_then(|cell| cell.strip_suffix('`'))
                .ok_or_else(|| format!("{cell:?} is not unset, required or a `value`"))?;
            parse_yaml(yaml).map(KeyDefault::Value)
        }
    }
}

fn parse_yaml(yaml: &str) -> Result<Value, String> {
    Figment::from(Yaml::string(&format!("value: {yaml}")))
        .extract_inner("value")
        .map_err(|e| format!("`{yaml}` is not a YAML value: {e}"))
}

/// A default as the reference writes it, for a row to paste.
fn render(default: &KeyDefault) -> String {
    match default {
        KeyDefault::Required => "required".to_owned(),
        KeyDefault::Value(Value::Null) => "unset".to_owned(),
        KeyDefault::Value(Value::String(text)) if parse_yaml(text).ok() == Some(json!(text)) => {
            format!("`{text}`")
        }
        KeyDefault::Value(value) => format!("`{value}`"),
    }
}

#[test]
fn every_config_key_is_in_the_readme_reference_with_its_default() {
    let skeleton = skeleton();
    let documented = documented_keys();
    let mut problems = Vec::new();
    for (key, default) in config_keys() {
        let Some(row) = documented.get(&key) else {
            problems.push(format!(
                "`{key}` is not documented; its row: | `{key}` | {} | (meaning) |",
                render(&default)
            ));
            continue;
        };
        let line = row.line;
        let said = match &row.default {
            Ok(said) => said,
            Err(why) => {
                problems.push(format!("README.md line {line}: `{key}`: {why}"));
                continue;
            }
        };
        let wrong = match (said, &default) {
            (KeyDefault::Required, KeyDefault::Required) => false,
            (KeyDefault::Value(said), KeyDefault::Value(code)) => {
                match load(&with(&skeleton, &key, Some(said.clone()))) {
                    Ok(loaded) => get(&loaded, &key) != Some(code),
                    Err(why) => {
                        problems.push(format!("README.md line {line}: `{key}`: {why}"));
                        continue;
                    }
                }
            }
            _ => true,
        };
        if wrong {
            problems.push(format!(
                "README.md line {line}: `{key}` defaults to {}, not {}",
                render(&default),
                render(said)
            ));
        }
    }
    assert!(problems.is_empty(), "\n{}\n", problems.join("\n"));
}

#[test]
fn every_key_in_the_readme_reference_is_a_config_key() {
    let keys = config_keys();
    let unknown: Vec<String> = documented_keys()
        .into_iter()
        .filter(|(key, _)| !keys.contains_key(key))
        .map(|(key, row)| format!("README.md line {}: `{key}`", row.line))
        .collect();
    assert!(
        unknown.is_empty(),
        "documented, but no config type has them:\n{}\n",
        unknown.join("\n")
    );
}

#[test]
fn every_section_absent_by_default_is_opened_by_the_skeleton() {
    let skeleton = skeleton();
    let mut open = Vec::new();
    opened(&skeleton, "", &mut open);
    let hidden: Vec<String> = config_keys()
        .into_iter()
        .filter(|(key, _)| !open.contains(key))
        .filter_map(|(key, default)| {
            let probe = match default {
                KeyDefault::Value(Value::Null) => json!({}),
                KeyDefault::Value(Value::Array(items)) if items.is_empty() => json!([{}]),
                _ => return None,
            };
            let section = match load(&with(&skeleton, &key, Some(probe))) {
                Ok(_) => true,
                Err(why) => why.contains("missing field"),
            };
            section.then_some(key)
        })
        .collect();
    assert!(
        hidden.is_empty(),
        "sections (or lists of them) that skeleton() does not open, so their keys go \
         unchecked: {hidden:?}"
    );
}

#[test]
fn a_reference_default_is_unset_required_or_a_yaml_value() {
    assert_eq!(parse_default("unset"), Ok(KeyDefault::Value(Value::Null)));
    assert_eq!(parse_default("required"), Ok(KeyDefault::Required));
    assert_eq!(
        parse_default("`0.0.0.0:9464`"),
        Ok(KeyDefault::Value(json!("0.0.0.0:9464")))
    );
    assert_eq!(
        parse_default("`[{bind: \"0.0.0.0:1883\"}]`"),
        Ok(KeyDefault::Value(json!([{"bind": "0.0.0.0:1883"}])))
    );
    assert_eq!(parse_default("`[]`"), Ok(KeyDefault::Value(json!([]))));
    assert!(parse_default("1000").is_err(), "a value goes in backticks");
}
