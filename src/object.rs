//! The top level of a document as pipelines build it: its members in the order they arrived,
//! found by a scan rather than a tree.
//!
//! Why not `serde_json::Map` (a `BTreeMap`): a telemetry reading has a dozen members, each
//! looked up a few times by the stages and written out once. Building, searching and freeing a
//! B-tree for that cost about a fifth of mqtt2es's CPU per reading (issue 9's profile); a vector
//! of pairs does the same work in a fraction of it. Nested objects stay `serde_json::Value`s:
//! they are few and small (`mqtt`, `mqtt2es`), and the stages' leaves are plain `Value`s either
//! way.
//!
//! Keys are `CompactString`s, held inline up to 24 bytes: the dozen keys of a reading then cost
//! no allocation each (a third of the allocations per reading before).
//!
//! Semantics are those of a JSON object: one value per key (a payload that repeats a key keeps
//! the last value, as `serde_json` does), equality ignores order. Members keep their arrival
//! order when written, so a document reads as its device sent it, with what the pipeline added
//! after.

use std::collections::HashMap;
use std::fmt;

use compact_str::CompactString;
use serde::de::{Deserialize, DeserializeSeed, Deserializer, MapAccess, Visitor};
use serde::ser::{Serialize, SerializeMap, Serializer};
use serde_json::{Map, Value};

/// A member's name.
pub type Key = CompactString;

#[derive(Debug, Clone, Default)]
pub struct Object(Vec<(Key, Value)>);

/// Whether member name `k` is `key`. Every lookup scans the members, and a reading's names
/// share few lengths but many of them (`humidity`, `rssi_dbm`, `firmware`, `location`): the
/// first byte tells most of those apart before a call to `memcmp` (5 % of the pipeline's time
/// in a profile when it was a plain `==`).
#[inline]
fn same(k: &Key, key: &str) -> bool {
    let (a, b) = (k.as_bytes(), key.as_bytes());
    a.len() == b.len() && a.first() == b.first() && a == b
}

/// Past this many members, a decoded object finds repeated keys with a hash map instead of a
/// scan per key, so a hostile payload with tens of thousands of keys costs linear time.
const SCAN_LIMIT: usize = 32;

impl Object {
    pub fn new() -> Object {
        Object(Vec::new())
    }

    /// Room for a reading's members and what a pipeline adds, so that it does not grow twice.
    fn for_reading() -> Object {
        Object(Vec::with_capacity(16))
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn position(&self, key: &str) -> Option<usize> {
        self.0.iter().position(|(k, _)| same(k, key))
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.0.iter().find(|(k, _)| same(k, key)).map(|(_, v)| v)
    }

    pub fn get_mut(&mut self, key: &str) -> Option<&mut Value> {
        self.0
            .iter_mut()
            .find(|(k, _)| same(k, key))
            .map(|(_, v)| v)
    }

    /// Sets `key`, in its place when it is there already (returning the old value), else last.
    pub fn insert(&mut self, key: impl Into<Key> + AsRef<str>, value: Value) -> Option<Value> {
        match self.get_mut(key.as_ref()) {
            Some(slot) => Some(std::mem::replace(slot, value)),
            None => {
                self.0.push((key.into(), value));
                None
            }
        }
    }

    /// The value under `key`, inserted from `make` first when there is none.
    pub fn get_or_insert_with(&mut self, key: &str, make: impl FnOnce() -> Value) -> &mut Value {
        let at = match self.position(key) {
            Some(at) => at,
            None => {
                self.0.push((Key::from(key), make()));
                self.0.len() - 1
            }
        };
        &mut self.0[at].1
    }

    /// Takes `key` out; the members after it keep their order.
    pub fn remove(&mut self, key: &str) -> Option<Value> {
        self.position(key).map(|at| self.0.remove(at).1)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &Value)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// As a `serde_json` object (sorted by key), for output that compares or prints documents.
    pub fn into_map(self) -> Map<String, Value> {
        self.0
            .into_iter()
            .map(|(k, v)| (k.into_string(), v))
            .collect()
    }

    /// Drops all but the last value of each repeated key, keeping the first one's place.
    fn dedupe(&mut self) {
        if self.0.len() <= SCAN_LIMIT {
            let mut at = 1;
            while at < self.0.len() {
                let key = &self.0[at].0;
                match self.0[..at].iter().position(|(k, _)| same(k, key)) {
                    Some(first) => self.0[first].1 = self.0.remove(at).1,
                    None => at += 1,
                }
            }
            return;
        }
        let mut first: HashMap<Key, usize> = HashMap::with_capacity(self.0.len());
        let mut kept: Vec<(Key, Value)> = Vec::with_capacity(self.0.len());
        for (key, value) in std::mem::take(&mut self.0) {
            match first.get(&key) {
                Some(&at) => kept[at].1 = value,
                None => {
                    first.insert(key.clone(), kept.len());
                    kept.push((key, value));
                }
            }
        }
        self.0 = kept;
    }
}

impl From<Map<String, Value>> for Object {
    fn from(map: Map<String, Value>) -> Object {
        Object(map.into_iter().map(|(k, v)| (Key::from(k), v)).collect())
    }
}

impl From<Object> for Value {
    fn from(object: Object) -> Value {
        Value::Object(object.into_map())
    }
}

impl FromIterator<(String, Value)> for Object {
    fn from_iter<I: IntoIterator<Item = (String, Value)>>(members: I) -> Object {
        let mut object = Object(
            members
                .into_iter()
                .map(|(k, v)| (Key::from(k), v))
                .collect(),
        );
        object.dedupe();
        object
    }
}

/// Equal when they hold the same members, in whatever order (JSON's object equality).
impl PartialEq for Object {
    fn eq(&self, other: &Object) -> bool {
        self.len() == other.len() && self.iter().all(|(k, v)| other.get(k) == Some(v))
    }
}

impl Serialize for Object {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (key, value) in &self.0 {
            map.serialize_entry(key.as_str(), value)?;
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for Object {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Object, D::Error> {
        deserializer.deserialize_map(ObjectVisitor)
    }
}

struct ObjectVisitor;

impl<'de> Visitor<'de> for ObjectVisitor {
    type Value = Object;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Object, A::Error> {
        let mut object = Object::for_reading();
        while let Some(key) = access.next_key_seed(KeySeed)? {
            let value: Value = access.next_value()?;
            object.0.push((key, value));
        }
        object.dedupe();
        Ok(object)
    }
}

/// Reads a member's name straight into a `Key` (no `String` in between when it is short).
struct KeySeed;

impl<'de> DeserializeSeed<'de> for KeySeed {
    type Value = Key;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Key, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeySeed {
    type Value = Key;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a member name")
    }

    fn visit_str<E: serde::de::Error>(self, name: &str) -> Result<Key, E> {
        Ok(Key::from(name))
    }

    fn visit_string<E: serde::de::Error>(self, name: String) -> Result<Key, E> {
        Ok(Key::from(name))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn decode(text: &str) -> Object {
        serde_json::from_str(text).expect("a JSON object")
    }

    #[test]
    fn members_are_written_in_the_order_they_arrived() {
        let mut object = decode(r#"{"temp_c":21.4,"b":1,"a":{"y":1,"x":2}}"#);
        object.insert("site".to_owned(), json!("home"));
        assert_eq!(
            serde_json::to_string(&object).expect("serialises"),
            r#"{"temp_c":21.4,"b":1,"a":{"x":2,"y":1},"site":"home"}"#
        );
    }

    #[test]
    fn a_repeated_key_keeps_the_last_value_in_the_first_place_as_serde_json_does() {
        let object = decode(r#"{"a":1,"b":2,"a":3}"#);
        assert_eq!(object.len(), 2);
        assert_eq!(object.get("a"), Some(&json!(3)));
        assert_eq!(
            serde_json::to_string(&object).expect("serialises"),
            r#"{"a":3,"b":2}"#
        );
        let from_serde: Value = serde_json::from_str(r#"{"a":1,"b":2,"a":3}"#).expect("json");
        assert_eq!(Value::Object(object.into_map()), from_serde);
    }

    #[test]
    fn tens_of_thousands_of_repeated_keys_decode_to_one_member_each() {
        // Past SCAN_LIMIT the repeats are found by hash: this must not take quadratic time,
        // and the result must be the same as serde_json's.
        let text = format!(
            "{{{}}}",
            (0..40_000)
                .map(|i| format!(r#""k{}":{i}"#, i % 20_000))
                .collect::<Vec<_>>()
                .join(",")
        );
        let object = decode(&text);
        assert_eq!(object.len(), 20_000);
        assert_eq!(object.get("k7"), Some(&json!(20_007)));
        let from_serde: Value = serde_json::from_str(&text).expect("json");
        assert_eq!(Value::Object(object.into_map()), from_serde);
    }

    #[test]
    fn insert_replaces_in_place_and_remove_keeps_the_order_of_the_rest() {
        let mut object = decode(r#"{"a":1,"b":2,"c":3}"#);
        assert_eq!(object.insert("b".to_owned(), json!(20)), Some(json!(2)));
        assert_eq!(object.remove("a"), Some(json!(1)));
        assert_eq!(object.remove("a"), None);
        assert_eq!(
            serde_json::to_string(&object).expect("serialises"),
            r#"{"b":20,"c":3}"#
        );
    }

    #[test]
    fn get_or_insert_with_makes_the_value_only_when_missing() {
        let mut object = decode(r#"{"mqtt2es":{"a":1}}"#);
        object.get_or_insert_with("mqtt2es", || panic!("it is there"));
        *object.get_or_insert_with("other", || json!({})) = json!(1);
        assert_eq!(object.get("other"), Some(&json!(1)));
    }

    #[test]
    fn equality_ignores_order() {
        assert_eq!(decode(r#"{"a":1,"b":2}"#), decode(r#"{"b":2,"a":1}"#));
        assert_ne!(decode(r#"{"a":1,"b":2}"#), decode(r#"{"a":1}"#));
        assert_ne!(decode(r#"{"a":1}"#), decode(r#"{"a":2}"#));
    }

    #[test]
    fn anything_but_an_object_is_refused_with_serdes_message() {
        let err = serde_json::from_str::<Object>("[1]").expect_err("not an object");
        assert!(err.to_string().contains("a JSON object"), "{err}");
    }
}
