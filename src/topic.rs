//! MQTT topic filters (`+`, `#`, `$share/<group>/…`) and topic patterns that turn topic levels
//! into fields (`sensors/{site}/{device}/telemetry`).
//!
//! Both are parsed once into levels and never re-checked; matching is a walk over `/`-split
//! levels with no allocation. The decision a reader might question: a `TopicPattern` is not a
//! regex. Captures are whole levels only, which is what MQTT hierarchies mean and what keeps a
//! pattern convertible into the subscription filter it implies (`{site}` becomes `+`).

use std::fmt;
use std::str::FromStr;

use thiserror::Error;

/// MQTT's limit on a topic or filter (a two-byte length prefix).
const MAX_LEN: usize = 65_535;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum TopicError {
    #[error("empty topic filter")]
    Empty,
    #[error("topic filter \"{0}…\" is longer than 65535 bytes")]
    TooLong(String),
    #[error("topic filter \"{0}\" contains a NUL character")]
    Nul(String),
    #[error("topic filter \"{filter}\": `{wildcard}` must be a whole level")]
    PartialWildcard { filter: String, wildcard: char },
    #[error("topic filter \"{0}\": `#` must be the last level")]
    HashNotLast(String),
    #[error(
        "shared subscription \"{0}\": expected $share/<group>/<filter> with a non-empty group \
         without `+` or `#`"
    )]
    BadShare(String),
    #[error("topic pattern \"{pattern}\": level \"{level}\" must be a literal, {{name}}, + or #")]
    BadPatternLevel { pattern: String, level: String },
    #[error(
        "topic pattern \"{pattern}\": capture name \"{name}\" must be letters, digits, `_` or `-`"
    )]
    BadCaptureName { pattern: String, name: String },
    #[error("topic pattern \"{pattern}\": capture \"{name}\" appears twice")]
    DuplicateCapture { pattern: String, name: String },
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Level {
    Literal(String),
    Plus,
    Hash,
}

/// A subscription filter. `$share/<group>/` is split off: it says who receives a message,
/// not which topics match.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicFilter {
    raw: String,
    share_group: Option<String>,
    levels: Vec<Level>,
}

impl TopicFilter {
    pub fn parse(raw: &str) -> Result<TopicFilter, TopicError> {
        if raw.is_empty() {
            return Err(TopicError::Empty);
        }
        if raw.len() > MAX_LEN {
            return Err(TopicError::TooLong(prefix_of(raw, 64).to_owned()));
        }
        if raw.contains('\0') {
            return Err(TopicError::Nul(raw.to_owned()));
        }
        let (share_group, filter) = match raw.strip_prefix("$share/") {
            Some(rest) => {
                let bad = || TopicError::BadShare(raw.to_owned());
                let (group, filter) = rest.split_once('/').ok_or_else(bad)?;
                if group.is_empty() || group.contains(['+', '#']) || filter.is_empty() {
                    return Err(bad());
                }
                (Some(group.to_owned()), filter)
            }
            None => (None, raw),
        };
        let levels = parse_levels(raw, filter)?;
        Ok(TopicFilter {
            raw: raw.to_owned(),
            share_group,
            levels,
        })
    }

    /// The filter as written, `$share/…` included: what goes into SUBSCRIBE.
    pub fn as_str(&self) -> &str {
        &self.raw
    }

    pub fn share_group(&self) -> Option<&str> {
        self.share_group.as_deref()
    }

    /// Whether a message published on `topic` matches (MQTT 3.1.1 §4.7, MQTT 5 §4.7).
    pub fn matches(&self, topic: &str) -> bool {
        walk(&self.levels, topic, |_, _| {})
    }

    /// Whether every topic `other` matches is matched by this filter too, for the same receivers
    /// (the same share group or none). Subscribing to both would only invite a broker that sends
    /// one copy per matching subscription to send two.
    pub fn covers(&self, other: &TopicFilter) -> bool {
        if self.share_group != other.share_group {
            return false;
        }
        // A leading wildcard does not match `$` topics, which a literal `$…` level would.
        let dollar = |f: &TopicFilter| matches!(f.levels.first(), Some(Level::Literal(l)) if l.starts_with('$'));
        if dollar(other) && !dollar(self) {
            return false;
        }
        let mut theirs = other.levels.iter();
        for mine in &self.levels {
            match (mine, theirs.next()) {
                // `a/#` also matches `a` itself, so it covers whatever remains, or nothing.
                (Level::Hash, _) => return true,
                (_, None | Some(Level::Hash)) => return false,
                (Level::Plus, Some(_)) => {}
                (Level::Literal(a), Some(Level::Literal(b))) if a == b => {}
                (Level::Literal(_), Some(_)) => return false,
            }
        }
        theirs.next().is_none()
    }
}

fn parse_levels(raw: &str, filter: &str) -> Result<Vec<Level>, TopicError> {
    let count = filter.split('/').count();
    filter
        .split('/')
        .enumerate()
        .map(|(i, level)| match level {
            "+" => Ok(Level::Plus),
            "#" if i + 1 == count => Ok(Level::Hash),
            "#" => Err(TopicError::HashNotLast(raw.to_owned())),
            _ => match level.chars().find(|c| matches!(c, '+' | '#')) {
                Some(wildcard) => Err(TopicError::PartialWildcard {
                    filter: raw.to_owned(),
                    wildcard,
                }),
                None => Ok(Level::Literal(level.to_owned())),
            },
        })
        .collect()
}

/// Matches `topic` against `levels`, calling `on_plus(index, value)` for each level a `+`
/// matched, so that patterns can capture without a second walk.
fn walk<'t>(levels: &[Level], topic: &'t str, mut on_plus: impl FnMut(usize, &'t str)) -> bool {
    // Bytes, not chars: the three are ASCII, which no byte of a multi-byte UTF-8 sequence
    // equals, and a byte loop is several times faster than a char searcher on every match.
    if topic.is_empty()
        || topic.len() > MAX_LEN
        || topic.bytes().any(|b| matches!(b, b'+' | b'#' | 0))
    {
        return false;
    }
    // Topics such as `$SYS/…` are server-internal: wildcards in the first level never match them.
    if topic.starts_with('$') && matches!(levels.first(), Some(Level::Plus | Level::Hash)) {
        return false;
    }
    let mut parts = Levels(Some(topic));
    for (i, level) in levels.iter().enumerate() {
        match level {
            Level::Hash => return true,
            Level::Plus => match parts.next() {
                Some(part) => on_plus(i, part),
                None => return false,
            },
            Level::Literal(literal) => {
                if parts.next() != Some(literal.as_str()) {
                    return false;
                }
            }
        }
    }
    parts.next().is_none()
}

/// A topic's levels, as `split('/')` gives them, found by a byte loop: `str::split` with a char
/// goes through a char searcher, which cost more than the rest of matching (topics are short,
/// and every reading's topic is matched against every pipeline's filters).
struct Levels<'t>(Option<&'t str>);

impl<'t> Iterator for Levels<'t> {
    type Item = &'t str;

    fn next(&mut self) -> Option<&'t str> {
        let rest = self.0?;
        match rest.bytes().position(|b| b == b'/') {
            Some(at) => {
                self.0 = Some(&rest[at + 1..]);
                Some(&rest[..at])
            }
            None => {
                self.0 = None;
                Some(rest)
            }
        }
    }
}

fn prefix_of(s: &str, max: usize) -> &str {
    let mut end = max.min(s.len());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

impl FromStr for TopicFilter {
    type Err = TopicError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        TopicFilter::parse(s)
    }
}

impl fmt::Display for TopicFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.raw)
    }
}

/// A topic shape whose levels become fields: `sensors/{site}/{device}/telemetry`.
/// Levels are literals, `{name}` captures, `+` (match without capturing) or a trailing `#`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicPattern {
    raw: String,
    levels: Vec<Level>,
    /// Capture name per level (`None` for literals, `+`, `#`).
    names: Vec<Option<String>>,
}

impl TopicPattern {
    pub fn parse(raw: &str) -> Result<TopicPattern, TopicError> {
        let mut levels = Vec::new();
        let mut names: Vec<Option<String>> = Vec::new();
        for level in raw.split('/') {
            let name = match level.strip_prefix('{').and_then(|l| l.strip_suffix('}')) {
                Some(name) => name,
                None if level.contains(['{', '}']) => {
                    return Err(TopicError::BadPatternLevel {
                        pattern: raw.to_owned(),
                        level: level.to_owned(),
                    });
                }
                None => {
                    levels.push(level);
                    names.push(None);
                    continue;
                }
            };
            let valid = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-';
            if name.is_empty() || !name.chars().all(valid) {
                return Err(TopicError::BadCaptureName {
                    pattern: raw.to_owned(),
                    name: name.to_owned(),
                });
            }
            if names.iter().flatten().any(|n| n == name) {
                return Err(TopicError::DuplicateCapture {
                    pattern: raw.to_owned(),
                    name: name.to_owned(),
                });
            }
            levels.push("+");
            names.push(Some(name.to_owned()));
        }
        let filter = levels.join("/");
        let levels = parse_levels(raw, &filter)?;
        Ok(TopicPattern {
            raw: raw.to_owned(),
            levels,
            names,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.raw
    }

    /// The capture names, in topic order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.names.iter().flatten().map(String::as_str)
    }

    /// `(name, value)` for every capture, or `None` when the topic does not fit the pattern.
    pub fn captures<'p, 't>(&'p self, topic: &'t str) -> Option<Vec<(&'p str, &'t str)>> {
        let mut found = Vec::new();
        let matched = walk(&self.levels, topic, |i, value| {
            if let Some(Some(name)) = self.names.get(i) {
                found.push((name.as_str(), value));
            }
        });
        matched.then_some(found)
    }

    /// The subscription filter this pattern implies: captures become `+`.
    pub fn filter(&self) -> TopicFilter {
        let raw = self
            .levels
            .iter()
            .map(|level| match level {
                Level::Literal(literal) => literal.as_str(),
                Level::Plus => "+",
                Level::Hash => "#",
            })
            .collect::<Vec<_>>()
            .join("/");
        TopicFilter {
            raw,
            share_group: None,
            levels: self.levels.clone(),
        }
    }
}

impl fmt::Display for TopicPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.raw)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_are_what_split_on_a_slash_gives_for_empty_doubled_and_trailing_levels() {
        for topic in [
            "",
            "a",
            "a/",
            "/a",
            "/",
            "a//b",
            "é/ü/x",
            "sensors/lab/pi-1/telemetry",
        ] {
            let ours: Vec<&str> = Levels(Some(topic)).collect();
            let std: Vec<&str> = topic.split('/').collect();
            assert_eq!(ours, std, "{topic:?}");
        }
    }

    fn covers(a: &str, b: &str) -> bool {
        let parse = |f: &str| TopicFilter::parse(f).expect("a valid filter");
        parse(a).covers(&parse(b))
    }

    #[test]
    fn a_hash_filter_covers_everything_below_it_and_its_parent_level() {
        assert!(covers("#", "sensors/+/+/telemetry"));
        assert!(covers("sensors/#", "sensors/lab/pi/telemetry"));
        assert!(covers("sensors/#", "sensors"));
        assert!(!covers("sensors/#", "other/x"));
    }

    #[test]
    fn a_plus_covers_one_level_only() {
        assert!(covers("sensors/+/telemetry", "sensors/lab/telemetry"));
        assert!(covers("sensors/+/telemetry", "sensors/+/telemetry"));
        assert!(!covers("sensors/+", "sensors/lab/telemetry"));
        assert!(!covers("sensors/+", "sensors/#"));
        assert!(!covers("sensors/lab", "sensors/+"));
    }

    #[test]
    fn wildcards_do_not_cover_dollar_topics_or_other_share_groups() {
        assert!(!covers("#", "$SYS/broker/load"));
        assert!(covers("$SYS/#", "$SYS/broker/load"));
        assert!(!covers("#", "$share/g/sensors/#"));
        assert!(covers("$share/g/#", "$share/g/sensors/#"));
    }

    fn filter(s: &str) -> TopicFilter {
        TopicFilter::parse(s).expect("a valid filter")
    }

    #[test]
    fn literal_filters_match_only_the_same_topic() {
        assert!(filter("a/b").matches("a/b"));
        assert!(!filter("a/b").matches("a/b/c"));
        assert!(!filter("a/b").matches("a"));
        assert!(!filter("a/b").matches("A/b"));
    }

    #[test]
    fn plus_matches_exactly_one_level_including_an_empty_one() {
        let f = filter("sensors/+/+/telemetry");
        assert!(f.matches("sensors/home/pi1/telemetry"));
        assert!(f.matches("sensors//pi1/telemetry"));
        assert!(!f.matches("sensors/home/telemetry"));
        assert!(!f.matches("sensors/home/pi1/x/telemetry"));
        assert!(filter("sport/+").matches("sport/"));
        assert!(!filter("sport/+").matches("sport"));
    }

    #[test]
    fn hash_matches_the_parent_and_any_number_of_levels() {
        let f = filter("sport/#");
        assert!(f.matches("sport"));
        assert!(f.matches("sport/tennis"));
        assert!(f.matches("sport/tennis/player1/ranking"));
        assert!(!f.matches("sports"));
        assert!(filter("#").matches("anything/at/all"));
    }

    #[test]
    fn leading_wildcards_do_not_match_dollar_topics() {
        assert!(!filter("#").matches("$SYS/broker/load"));
        assert!(!filter("+/broker/load").matches("$SYS/broker/load"));
        assert!(filter("$SYS/#").matches("$SYS/broker/load"));
        assert!(filter("$SYS/+/load").matches("$SYS/broker/load"));
    }

    #[test]
    fn topics_containing_wildcards_or_nothing_never_match() {
        assert!(!filter("#").matches(""));
        assert!(!filter("#").matches("a/+"));
        assert!(!filter("#").matches("a/#"));
    }

    #[test]
    fn shared_subscriptions_split_off_the_group_and_match_on_the_rest() {
        let f = filter("$share/ingest/sensors/#");
        assert_eq!(f.share_group(), Some("ingest"));
        assert_eq!(f.as_str(), "$share/ingest/sensors/#");
        assert!(f.matches("sensors/a/b"));
        assert!(!f.matches("$share/ingest/sensors/a"));
    }

    #[test]
    fn malformed_shared_subscriptions_are_errors_quoting_the_filter() {
        for bad in [
            "$share/",
            "$share/g",
            "$share//a",
            "$share/g/",
            "$share/g+/a",
        ] {
            let err = TopicFilter::parse(bad).expect_err(bad);
            assert_eq!(err, TopicError::BadShare(bad.to_owned()));
            assert!(err.to_string().contains(bad));
        }
    }

    #[test]
    fn wildcards_inside_a_level_are_errors() {
        let err = TopicFilter::parse("a/b+/c").expect_err("partial +");
        assert_eq!(
            err.to_string(),
            "topic filter \"a/b+/c\": `+` must be a whole level"
        );
        assert!(matches!(
            TopicFilter::parse("a/#b"),
            Err(TopicError::PartialWildcard { wildcard: '#', .. })
        ));
    }

    #[test]
    fn hash_before_the_last_level_is_an_error() {
        assert_eq!(
            TopicFilter::parse("a/#/b"),
            Err(TopicError::HashNotLast("a/#/b".to_owned()))
        );
    }

    #[test]
    fn empty_nul_and_oversized_filters_are_errors() {
        assert_eq!(TopicFilter::parse(""), Err(TopicError::Empty));
        assert!(matches!(
            TopicFilter::parse("a\0b"),
            Err(TopicError::Nul(_))
        ));
        let long = "a".repeat(MAX_LEN + 1);
        assert!(matches!(
            TopicFilter::parse(&long),
            Err(TopicError::TooLong(_))
        ));
    }

    #[test]
    fn patterns_capture_named_levels() {
        let p = TopicPattern::parse("sensors/{site}/{device}/telemetry").expect("valid");
        assert_eq!(
            p.captures("sensors/home/pi1/telemetry"),
            Some(vec![("site", "home"), ("device", "pi1")])
        );
        assert_eq!(p.captures("sensors/home/pi1/status"), None);
        assert_eq!(p.names().collect::<Vec<_>>(), ["site", "device"]);
    }

    #[test]
    fn patterns_skip_plus_and_accept_a_trailing_hash() {
        let p = TopicPattern::parse("+/{device}/#").expect("valid");
        assert_eq!(p.captures("home/pi1/a/b"), Some(vec![("device", "pi1")]));
        assert_eq!(p.captures("home"), None);
    }

    #[test]
    fn patterns_imply_their_subscription_filter() {
        let p = TopicPattern::parse("sensors/{site}/{device}/telemetry").expect("valid");
        let f = p.filter();
        assert_eq!(f.as_str(), "sensors/+/+/telemetry");
        assert_eq!(f, filter("sensors/+/+/telemetry"));
    }

    #[test]
    fn malformed_patterns_are_errors_quoting_the_pattern() {
        let cases = [
            ("a/x{b}", "level \"x{b}\""),
            ("a/{}", "capture name \"\""),
            ("a/{b.c}", "capture name \"b.c\""),
            ("{a}/{a}", "capture \"a\" appears twice"),
            ("a/#/{b}", "`#` must be the last level"),
            ("a/b+", "`+` must be a whole level"),
        ];
        for (pattern, expected) in cases {
            let err = TopicPattern::parse(pattern).expect_err(pattern).to_string();
            assert!(err.contains(pattern), "{err}");
            assert!(err.contains(expected), "{err}");
        }
    }
}
