//! Per-user topic rules: who may publish where and subscribe to what, from `broker.auth.acl`
//! in YAML and, for sites moving from Mosquitto, its `acl_file` format.
//!
//! Decisions a reader might question:
//! - A subscription is allowed only when one granted filter *covers* it (every topic the
//!   subscription can match, the grant matches too): a grant of `sensors/#` does not allow
//!   subscribing to `#`, which would deliver everything else as well. A deny that covers a
//!   subscription refuses it; one that only overlaps it (a deny of `secret/#` beside a
//!   subscription to `#`) is carved out of it: the subscription is granted with that deny as
//!   an exception, and messages on the denied topics never reach it. Mosquitto checks each
//!   message on delivery instead; deciding at SUBSCRIBE time costs nothing per message for the
//!   subscriptions no deny touches.
//! - `%u` and `%c` are substituted only with names that cannot change a filter's shape: a user
//!   name or client id that is empty or contains `+`, `#`, `/` or NUL makes a grant that uses
//!   it match nothing and a deny that uses it deny everything, so `alice/#` as a user name
//!   cannot turn `devices/%u` into a wildcard. A `%u` rule does not apply to anonymous clients.
//! - Any matching deny wins over any grant (Mosquitto orders user denies before pattern grants
//!   but pattern denies after user grants; one rule is easier to reason about).

use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::identity::Identity;
use super::template::{Resolved, Template};
use crate::topic::TopicFilter;

/// One entry of `broker.auth.acl`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AclRule {
    /// The user name this rule is for; `"*"` for every client, anonymous ones included.
    pub user: String,
    /// Topic filters the user may publish to (`%u` user name, `%c` client id).
    #[serde(default)]
    pub publish: Vec<String>,
    /// Topic filters the user may subscribe to, or to anything they cover.
    #[serde(default)]
    pub subscribe: Vec<String>,
    /// Topic filters the user may neither publish to nor receive from, whatever else grants
    /// (Mosquitto's `topic deny`).
    #[serde(default)]
    pub deny: Vec<String>,
}

/// What the rules say to a subscription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Refused,
    /// Granted, but messages on topics matching `except` (the denies it overlaps) are not
    /// delivered through it.
    Granted {
        except: Vec<TopicFilter>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AclError {
    #[error("broker.auth.acl[{index}] ({user:?}): {message}")]
    Rule {
        index: usize,
        user: String,
        message: String,
    },
    #[error("cannot read acl file {path:?}: {message}")]
    Read { path: PathBuf, message: String },
    #[error("acl file {path:?} line {line}: {message}")]
    Line {
        path: PathBuf,
        line: usize,
        message: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Access {
    Publish,
    Subscribe,
    Both,
    Deny,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Who {
    User(String),
    Everyone,
    /// Mosquitto's `topic` lines before any `user` line.
    Anonymous,
}

#[derive(Debug, Clone)]
struct Rule {
    who: Who,
    access: Access,
    filter: Template,
}

/// Compiled rules. Built only when some are configured: then whatever no rule grants is denied.
#[derive(Debug, Clone, Default)]
pub struct Acl {
    rules: Vec<Rule>,
}

impl Acl {
    pub fn from_rules(rules: &[AclRule]) -> Result<Acl, AclError> {
        let mut acl = Acl::default();
        for (index, rule) in rules.iter().enumerate() {
            let error = |message: String| AclError::Rule {
                index,
                user: rule.user.clone(),
                message,
            };
            if rule.user.is_empty() {
                return Err(error("empty user (use \"*\" for every client)".into()));
            }
            let who = match rule.user.as_str() {
                "*" => Who::Everyone,
                name => Who::User(name.to_owned()),
            };
            for (filters, access) in [
                (&rule.publish, Access::Publish),
                (&rule.subscribe, Access::Subscribe),
                (&rule.deny, Access::Deny),
            ] {
                for raw in filters {
                    acl.rules.push(Rule {
                        who: who.clone(),
                        access,
                        filter: Template::parse(raw, true).map_err(&error)?,
                    });
                }
            }
        }
        Ok(acl)
    }

    /// Adds the rules of a Mosquitto `acl_file`: `user <name>`, then
    /// `topic [read|write|readwrite|deny] <filter>` lines for that user (`topic` lines before
    /// any `user` line are for anonymous clients), and `pattern …` lines for every client with
    /// `%u`/`%c` substituted. `read` means subscribe, `write` publish.
    pub fn add_mosquitto_file(&mut self, path: &Path) -> Result<(), AclError> {
        let text = fs::read_to_string(path).map_err(|e| AclError::Read {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        let mut user = Who::Anonymous;
        for (index, line) in text.lines().enumerate() {
            let error = |message: String| AclError::Line {
                path: path.to_owned(),
                line: index + 1,
                message,
            };
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (keyword, rest) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
            let rest = rest.trim();
            match keyword {
                "user" if !rest.is_empty() => user = Who::User(rest.to_owned()),
                "user" => return Err(error("missing user name".into())),
                "topic" | "pattern" => {
                    let (first, after) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
                    let (access, filter) = match first {
                        "read" => (Access::Subscribe, after.trim()),
                        "write" => (Access::Publish, after.trim()),
                        "readwrite" => (Access::Both, after.trim()),
                        "deny" => (Access::Deny, after.trim()),
                        _ => (Access::Both, rest),
                    };
                    if filter.is_empty() {
                        return Err(error(format!("`{keyword}` without a topic")));
                    }
                    let pattern = keyword == "pattern";
                    self.rules.push(Rule {
                        who: if pattern { Who::Everyone } else { user.clone() },
                        access,
                        filter: Template::parse(filter, pattern).map_err(&error)?,
                    });
                }
                other => {
                    return Err(error(format!(
                        "unknown keyword \"{other}\" (expected user, topic or pattern)"
                    )));
                }
            }
        }
        Ok(())
    }

    /// How many rules (one per filter) there are.
    pub fn len(&self) -> usize {
        self.rules.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    pub fn may_publish(&self, who: &Identity, topic: &str) -> bool {
        self.decide(
            who,
            Access::Publish,
            |filter| filter.matches(topic),
            |deny| deny.matches(topic),
        )
    }

    /// Whether `filter` may be subscribed to at all (see `subscription`).
    pub fn may_subscribe(&self, who: &Identity, filter: &TopicFilter) -> bool {
        self.subscription(who, filter) != Verdict::Refused
    }

    /// `filter` has no `$share/` prefix: sharing says who receives, not what.
    pub fn subscription(&self, who: &Identity, filter: &TopicFilter) -> Verdict {
        let mut allowed = false;
        let mut except = Vec::new();
        for rule in self.applicable(who) {
            match (
                rule.access,
                rule.filter.resolve(who.username.as_deref(), &who.client_id),
            ) {
                // A deny we cannot evaluate safely denies: fail closed.
                (Access::Deny, Resolved::Unsafe) => return Verdict::Refused,
                (Access::Deny, Resolved::Filter(deny)) if deny.covers(filter) => {
                    return Verdict::Refused;
                }
                (Access::Deny, Resolved::Filter(deny))
                    if overlaps(deny.as_str(), filter.as_str()) =>
                {
                    except.push(deny.into_owned());
                }
                (Access::Deny, _) => {}
                (access, grant) => {
                    if (access == Access::Subscribe || access == Access::Both) && !allowed {
                        allowed = grant.grants(|g| g.covers(filter));
                    }
                }
            }
        }
        match allowed {
            true => Verdict::Granted { except },
            false => Verdict::Refused,
        }
    }

    fn applicable<'a>(&'a self, who: &'a Identity) -> impl Iterator<Item = &'a Rule> {
        self.rules.iter().filter(|rule| match &rule.who {
            Who::Everyone => true,
            Who::User(name) => who.username.as_deref() == Some(name),
            Who::Anonymous => who.username.is_none(),
        })
    }

    fn decide(
        &self,
        who: &Identity,
        wanted: Access,
        granted: impl Fn(&TopicFilter) -> bool,
        denied: impl Fn(&TopicFilter) -> bool,
    ) -> bool {
        let mut allowed = false;
        for rule in self.applicable(who) {
            let filter = rule.filter.resolve(who.username.as_deref(), &who.client_id);
            match (rule.access, filter) {
                // A deny we cannot evaluate safely denies: fail closed.
                (Access::Deny, Resolved::Unsafe) => return false,
                (Access::Deny, Resolved::Filter(filter)) if denied(&filter) => return false,
                (Access::Deny, _) => {}
                (access, filter) => {
                    if (access == wanted || access == Access::Both) && !allowed {
                        allowed = filter.grants(&granted);
                    }
                }
            }
        }
        allowed
    }
}

/// Whether some topic matches both filters (no `$share/` prefixes).
pub fn overlaps(a: &str, b: &str) -> bool {
    let dollar = |f: &str| f.starts_with('$');
    let wild_first = |f: &str| f.starts_with('+') || f.starts_with('#');
    // A leading wildcard never matches a `$` topic.
    if (dollar(a) && wild_first(b)) || (dollar(b) && wild_first(a)) {
        return false;
    }
    let mut left = a.split('/');
    let mut right = b.split('/');
    loop {
        match (left.next(), right.next()) {
            (Some("#"), _) | (_, Some("#")) => return true,
            (None, None) => return true,
            // `x/#` also matches `x` itself.
            (None, Some(rest)) | (Some(rest), None) => {
                return rest == "#" && left.next().is_none() && right.next().is_none();
            }
            (Some(l), Some(r)) => {
                if l != "+" && r != "+" && l != r {
                    return false;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity(username: Option<&str>, client_id: &str) -> Identity {
        Identity::new(username.map(str::to_owned), client_id.to_owned())
    }

    fn rule(user: &str, publish: &[&str], subscribe: &[&str]) -> AclRule {
        AclRule {
            user: user.to_owned(),
            publish: publish.iter().map(|s| s.to_string()).collect(),
            subscribe: subscribe.iter().map(|s| s.to_string()).collect(),
            deny: Vec::new(),
        }
    }

    #[test]
    fn a_deny_refuses_what_it_covers_and_is_carved_out_of_what_it_overlaps() {
        let mut everything = rule("*", &["#"], &["#"]);
        everything.deny = vec!["test/nosubscribe".into()];
        let acl = Acl::from_rules(&[everything]).expect("rules");
        let who = identity(None, "c");
        assert_eq!(
            acl.subscription(&who, &filter("test/nosubscribe")),
            Verdict::Refused
        );
        assert_eq!(
            acl.subscription(&who, &filter("#")),
            Verdict::Granted {
                except: vec![filter("test/nosubscribe")]
            }
        );
        assert_eq!(
            acl.subscription(&who, &filter("other/#")),
            Verdict::Granted { except: Vec::new() }
        );
        assert!(!acl.may_publish(&who, "test/nosubscribe"));
        assert!(acl.may_publish(&who, "test/other"));
    }

    fn filter(raw: &str) -> TopicFilter {
        TopicFilter::parse(raw).expect("a valid filter")
    }

    #[test]
    fn a_user_publishes_only_where_a_rule_grants_it() {
        let acl = Acl::from_rules(&[rule("rajan", &["greetings", "sensors/+/rajan"], &[])])
            .expect("valid rules");
        let rajan = identity(Some("rajan"), "pub-1");
        assert!(acl.may_publish(&rajan, "greetings"));
        assert!(acl.may_publish(&rajan, "sensors/lab/rajan"));
        assert!(!acl.may_publish(&rajan, "sensors/lab/other"));
        assert!(!acl.may_publish(&rajan, "greetings/more"));
    }

    #[test]
    fn users_without_rules_are_denied_once_any_rule_exists() {
        let acl = Acl::from_rules(&[rule("rajan", &["#"], &["#"])]).expect("valid rules");
        let other = identity(Some("other"), "c");
        let anonymous = identity(None, "c");
        assert!(!acl.may_publish(&other, "greetings"));
        assert!(!acl.may_subscribe(&other, &filter("greetings")));
        assert!(!acl.may_publish(&anonymous, "greetings"));
    }

    #[test]
    fn a_star_rule_applies_to_every_client_including_anonymous_ones() {
        let acl = Acl::from_rules(&[rule("*", &["public/#"], &["public/#"])]).expect("rules");
        for who in [identity(Some("x"), "c"), identity(None, "c")] {
            assert!(acl.may_publish(&who, "public/a"));
            assert!(acl.may_subscribe(&who, &filter("public/+")));
            assert!(!acl.may_publish(&who, "private/a"));
        }
    }

    #[test]
    fn publish_grants_do_not_allow_subscribing_and_the_reverse() {
        let acl = Acl::from_rules(&[rule("rajan", &["up/#"], &["down/#"])]).expect("rules");
        let rajan = identity(Some("rajan"), "c");
        assert!(!acl.may_subscribe(&rajan, &filter("up/a")));
        assert!(!acl.may_publish(&rajan, "down/a"));
    }

    #[test]
    fn a_hash_subscription_is_not_allowed_by_a_narrower_grant() {
        let acl = Acl::from_rules(&[rule("rajan", &[], &["sensors/#"])]).expect("rules");
        let rajan = identity(Some("rajan"), "c");
        assert!(acl.may_subscribe(&rajan, &filter("sensors/#")));
        assert!(acl.may_subscribe(&rajan, &filter("sensors/+/pi/telemetry")));
        assert!(acl.may_subscribe(&rajan, &filter("sensors")));
        assert!(!acl.may_subscribe(&rajan, &filter("#")));
        assert!(!acl.may_subscribe(&rajan, &filter("+/pi/telemetry")));
        assert!(!acl.may_subscribe(&rajan, &filter("other/#")));
    }

    #[test]
    fn a_hash_grant_does_not_reach_dollar_topics() {
        let acl = Acl::from_rules(&[rule("rajan", &["#"], &["#"])]).expect("rules");
        let rajan = identity(Some("rajan"), "c");
        assert!(!acl.may_publish(&rajan, "$SYS/broker/uptime"));
        assert!(!acl.may_subscribe(&rajan, &filter("$SYS/#")));
    }

    #[test]
    fn percent_u_and_percent_c_are_the_clients_user_name_and_client_id() {
        let acl =
            Acl::from_rules(&[rule("*", &["devices/%u/%c/#"], &["cmd/%u/#"])]).expect("rules");
        let pi = identity(Some("pi"), "pi-01");
        assert!(acl.may_publish(&pi, "devices/pi/pi-01/telemetry"));
        assert!(!acl.may_publish(&pi, "devices/pi/pi-02/telemetry"));
        assert!(!acl.may_publish(&pi, "devices/other/pi-01/telemetry"));
        assert!(acl.may_subscribe(&pi, &filter("cmd/pi/#")));
        assert!(!acl.may_subscribe(&pi, &filter("cmd/+/#")));
    }

    #[test]
    fn substitution_is_one_pass_and_leaves_other_percent_signs() {
        let acl = Acl::from_rules(&[rule("*", &["d/%u/%c/100%"], &[])]).expect("rules");
        let tricky = identity(Some("x%cy"), "pi");
        assert!(acl.may_publish(&tricky, "d/x%cy/pi/100%"));
        assert!(!acl.may_publish(&tricky, "d/xpiy/pi/100%"));
    }

    #[test]
    fn percent_u_never_matches_an_anonymous_client() {
        let acl = Acl::from_rules(&[rule("*", &["devices/%u/#"], &[])]).expect("rules");
        assert!(!acl.may_publish(&identity(None, "c"), "devices/%u/x"));
        assert!(!acl.may_publish(&identity(None, "c"), "devices//x"));
    }

    #[test]
    fn a_user_name_or_client_id_with_wildcards_or_slashes_cannot_widen_a_pattern() {
        let acl = Acl::from_rules(&[rule("*", &["devices/%u"], &["devices/%c/#"])]).expect("rules");
        for name in ["#", "+", "a/b", "a/#", ""] {
            let who = identity(Some(name), name);
            assert!(!acl.may_publish(&who, "devices/a/b"), "{name:?}");
            assert!(!acl.may_publish(&who, "devices/x"), "{name:?}");
            assert!(!acl.may_subscribe(&who, &filter("devices/#")), "{name:?}");
            assert!(
                !acl.may_subscribe(&who, &filter("devices/a/b/#")),
                "{name:?}"
            );
        }
    }

    #[test]
    fn invalid_filters_in_rules_are_config_errors_naming_the_rule() {
        let error = Acl::from_rules(&[rule("pi", &["ok"], &[]), rule("rajan", &["a/#/b"], &[])])
            .expect_err("a bad filter");
        let text = error.to_string();
        assert!(text.contains("acl[1]") && text.contains("rajan"), "{text}");
        assert!(text.contains("a/#/b"), "{text}");
        let shared = Acl::from_rules(&[rule("pi", &[], &["$share/g/x"])]).expect_err("share");
        assert!(shared.to_string().contains("$share"), "{shared}");
        let partial = Acl::from_rules(&[rule("pi", &["a/%u+"], &[])]).expect_err("partial +");
        assert!(partial.to_string().contains("a/%u+"), "{partial}");
        let nobody = Acl::from_rules(&[rule("", &["a"], &[])]).expect_err("empty user");
        assert!(nobody.to_string().contains("empty user"), "{nobody}");
    }

    #[test]
    fn overlapping_filters_are_those_some_topic_matches_both() {
        for (a, b) in [
            ("a/b", "a/b"),
            ("a/+", "+/b"),
            ("#", "a/b/c"),
            ("a/#", "a"),
            ("a/+/c", "a/b/#"),
            ("$SYS/x", "$SYS/#"),
        ] {
            assert!(overlaps(a, b), "{a} {b}");
            assert!(overlaps(b, a), "{b} {a}");
        }
        for (a, b) in [
            ("a/b", "a/c"),
            ("a/+", "a"),
            ("a/b", "a/b/c"),
            ("#", "$SYS/x"),
            ("+/x", "$SYS/x"),
        ] {
            assert!(!overlaps(a, b), "{a} {b}");
            assert!(!overlaps(b, a), "{b} {a}");
        }
    }

    fn mosquitto_acl(text: &str) -> Result<Acl, AclError> {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("acl");
        fs::write(&path, text).expect("write");
        let mut acl = Acl::default();
        acl.add_mosquitto_file(&path).map(|()| acl)
    }

    #[test]
    fn a_mosquitto_acl_file_grants_read_as_subscribe_and_write_as_publish() {
        let acl = mosquitto_acl(
            "# anonymous clients\ntopic read public/#\n\n\
             user rajan\ntopic write greetings\ntopic readwrite rajan/#\ntopic deny rajan/secret\n\
             pattern write devices/%u/telemetry\n",
        )
        .expect("a valid acl file");
        let rajan = identity(Some("rajan"), "c");
        let anonymous = identity(None, "c");
        assert!(acl.may_publish(&rajan, "greetings"));
        assert!(!acl.may_subscribe(&rajan, &filter("greetings")));
        assert!(acl.may_publish(&rajan, "rajan/x"));
        assert!(acl.may_subscribe(&rajan, &filter("rajan/x/+")));
        assert!(!acl.may_publish(&rajan, "rajan/secret"));
        assert_eq!(
            acl.subscription(&rajan, &filter("rajan/+")),
            Verdict::Granted {
                except: vec![filter("rajan/secret")]
            },
            "granted without rajan/secret"
        );
        assert!(!acl.may_subscribe(&rajan, &filter("rajan/secret")));
        assert!(acl.may_publish(&rajan, "devices/rajan/telemetry"));
        assert!(
            !acl.may_subscribe(&rajan, &filter("public/#")),
            "not rajan's"
        );
        assert!(acl.may_subscribe(&anonymous, &filter("public/#")));
        assert!(!acl.may_publish(&anonymous, "greetings"));
    }

    #[test]
    fn a_deny_pattern_with_percent_u_denies_everything_to_an_unsafe_name_but_skips_anonymous() {
        let acl = mosquitto_acl(
            "topic read public/#\npattern deny devices/%u/secret\n\
             pattern read devices/%u/#\npattern read shared/#\n",
        )
        .expect("valid");
        let anonymous = identity(None, "c");
        let unsafe_name = identity(Some("a/b"), "c");
        let pi = identity(Some("pi"), "c");
        assert!(acl.may_subscribe(&anonymous, &filter("public/#")));
        assert!(acl.may_subscribe(&anonymous, &filter("shared/#")));
        assert!(acl.may_subscribe(&pi, &filter("shared/#")));
        assert!(
            !acl.may_subscribe(&unsafe_name, &filter("shared/#")),
            "fails closed"
        );
        assert!(acl.may_subscribe(&pi, &filter("devices/pi/data/#")));
        assert_eq!(
            acl.subscription(&pi, &filter("devices/pi/#")),
            Verdict::Granted {
                except: vec![filter("devices/pi/secret")]
            },
            "granted without the secret"
        );
        assert!(!acl.may_subscribe(&pi, &filter("devices/pi/secret")));
    }

    #[test]
    fn a_mosquitto_topic_line_keeps_percent_u_literal_as_mosquitto_does() {
        let acl = mosquitto_acl("user rajan\ntopic write a/%u\n").expect("valid");
        let rajan = identity(Some("rajan"), "c");
        assert!(!acl.may_publish(&rajan, "a/rajan"));
        assert!(acl.may_publish(&rajan, "a/%u"));
    }

    #[test]
    fn a_malformed_mosquitto_acl_file_is_an_error_naming_the_line() {
        for (text, expected) in [
            ("user rajan\ntopic\n", "line 2"),
            ("user\n", "missing user name"),
            ("usr rajan\n", "unknown keyword \"usr\""),
            ("topic read a/#/b\n", "a/#/b"),
        ] {
            let error = mosquitto_acl(text).expect_err("malformed").to_string();
            assert!(error.contains(expected), "{text:?}: {error}");
        }
    }
}
