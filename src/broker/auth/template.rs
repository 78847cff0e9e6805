//! Topic filters of ACL rules and token grants that may hold `%u` (the user name) and `%c` (the
//! client id), filled in per client. Apart from `acl` because tokens (`jwt`) carry them too.

use std::borrow::Cow;

use crate::topic::TopicFilter;

/// A topic filter that may hold `%u`/`%c`, parsed once when it has none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Template {
    Fixed(TopicFilter),
    Substituted(String),
}

impl Template {
    /// `substitute: false` keeps `%u`/`%c` literal, as Mosquitto does on `topic` lines.
    pub fn parse(raw: &str, substitute: bool) -> Result<Template, String> {
        if raw.starts_with("$share/") {
            return Err(format!(
                "\"{raw}\": rules name topics, not shared subscriptions ($share/…)"
            ));
        }
        if substitute && (raw.contains("%u") || raw.contains("%c")) {
            // Checked with stand-in names so a bad filter fails at load, not per client.
            TopicFilter::parse(&raw.replace("%u", "u").replace("%c", "c")).map_err(|e| {
                format!("\"{raw}\" is no valid filter once %u/%c are filled in: {e}")
            })?;
            return Ok(Template::Substituted(raw.to_owned()));
        }
        TopicFilter::parse(raw)
            .map(Template::Fixed)
            .map_err(|e| e.to_string())
    }

    /// The filter for this client: `Filter`, or why there is none.
    pub fn resolve(&self, username: Option<&str>, client_id: &str) -> Resolved<'_> {
        let raw = match self {
            Template::Fixed(filter) => return Resolved::Filter(Cow::Borrowed(filter)),
            Template::Substituted(raw) => raw,
        };
        // One pass, so that a `%c` inside a user name is not substituted in turn.
        let mut text = String::with_capacity(raw.len() + 32);
        let mut rest = raw.as_str();
        while let Some(at) = rest.find('%') {
            text.push_str(&rest[..at]);
            let name = match rest.as_bytes().get(at + 1) {
                Some(b'u') => match username {
                    Some(username) => safe(username),
                    None => return Resolved::Anonymous,
                },
                Some(b'c') => safe(client_id),
                _ => {
                    text.push('%');
                    rest = &rest[at + 1..];
                    continue;
                }
            };
            let Some(name) = name else {
                return Resolved::Unsafe;
            };
            text.push_str(name);
            rest = &rest[at + 2..];
        }
        text.push_str(rest);
        match TopicFilter::parse(&text) {
            Ok(filter) => Resolved::Filter(Cow::Owned(filter)),
            // Only a name can make a filter that passed `parse` invalid (too long, say).
            Err(_) => Resolved::Unsafe,
        }
    }
}

/// A template filled in for one client.
pub enum Resolved<'a> {
    Filter(Cow<'a, TopicFilter>),
    /// It needs `%u` and the client has no user name: the rule is not about this client.
    Anonymous,
    /// The user name or client id is empty or contains `+`, `#`, `/` or NUL.
    Unsafe,
}

impl Resolved<'_> {
    /// For grants: only a filled-in filter can grant anything.
    pub fn grants(&self, test: impl Fn(&TopicFilter) -> bool) -> bool {
        matches!(self, Resolved::Filter(filter) if test(filter))
    }
}

fn safe(name: &str) -> Option<&str> {
    (!name.is_empty() && !name.contains(['+', '#', '/', '\0'])).then_some(name)
}
