//! Which search engine mqtt2es is talking to, and what it can do: found once at setup from
//! `GET _nodes/_local` (version, build flavour, modules) and the `X-elastic-product` header.
//!
//! `GET /` would be the usual probe, but Elasticsearch's minimal distributions have no handler
//! for it, and `_nodes/_local` also lists the modules, which is what actually decides whether
//! time bounds (`index.look_back_time`) and the data stream lifecycle service exist. Features
//! are derived from that, never from guessing by version alone. Pure: parsing and the feature
//! table are tested without a node.

use std::fmt;

use serde_json::Value;

/// The oldest Elasticsearch `mqtt2es setup` supports: time-series data streams are GA since
/// 8.7 and the data stream lifecycle since 8.14; below that the templates would be refused.
pub const MIN_ELASTICSEARCH: Version = Version::new(8, 14, 0);
/// The oldest OpenSearch supported: composable templates and data streams, no time series.
pub const MIN_OPENSEARCH: Version = Version::new(2, 0, 0);

/// The request that identifies the engine, with the response cut to what we read.
pub const PROBE_PATH: &str =
    "/_nodes/_local?filter_path=nodes.*.version,nodes.*.build_flavor,nodes.*.modules.name";

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Version {
    pub major: u32,
    pub minor: u32,
    pub patch: u32,
}

impl Version {
    pub const fn new(major: u32, minor: u32, patch: u32) -> Self {
        Version {
            major,
            minor,
            patch,
        }
    }

    /// `9.2.0`, `8.19.0-SNAPSHOT`, `2.19.1`; a missing minor or patch counts as 0.
    pub fn parse(text: &str) -> Option<Version> {
        let mut parts = text.split(['.', '-']).map(|p| p.parse::<u32>().ok());
        let major = parts.next()??;
        let minor = parts.next().flatten().unwrap_or(0);
        let patch = parts.next().flatten().unwrap_or(0);
        Some(Version::new(major, minor, patch))
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Distribution {
    Elasticsearch,
    OpenSearch,
}

impl fmt::Display for Distribution {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Distribution::Elasticsearch => "elasticsearch",
            Distribution::OpenSearch => "opensearch",
        })
    }
}

/// The node that answered the probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Engine {
    pub distribution: Distribution,
    pub version: Version,
    /// Module names (`data-streams`, `x-pack-ilm`, ...): minimal distributions lack most.
    pub modules: Vec<String>,
}

/// What setup may use on this engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Features {
    /// `index.mode: time_series` and the `time_series_*` mapping parameters.
    pub time_series: bool,
    /// `index.look_back_time`: registered by the `data-streams` module, refused without it.
    pub look_back_time: bool,
    /// `lifecycle` in templates (data stream lifecycle).
    pub lifecycle: bool,
    /// Whether a lifecycle service runs to apply it (the `data-streams` module); without one,
    /// retention is recorded in the template but nothing enforces it.
    pub lifecycle_enforced: bool,
}

impl Features {
    /// A full Elasticsearch distribution (8.14 or newer, with the data-streams module).
    pub const ELASTICSEARCH: Features = Features {
        time_series: true,
        look_back_time: true,
        lifecycle: true,
        lifecycle_enforced: true,
    };
    /// OpenSearch: plain data streams only.
    pub const OPENSEARCH: Features = Features {
        time_series: false,
        look_back_time: false,
        lifecycle: false,
        lifecycle_enforced: false,
    };
}

impl Engine {
    /// Reads the probe's answer. `product` is the `X-elastic-product` header, which
    /// Elasticsearch sends on every response since 7.14; `build_flavor` marks older ones.
    pub fn from_probe(product: Option<&str>, body: &Value) -> Result<Engine, String> {
        let node = body
            .get("nodes")
            .and_then(Value::as_object)
            .and_then(|nodes| nodes.values().next())
            .ok_or_else(|| format!("no node in the answer to GET {PROBE_PATH}: {body}"))?;
        let version_text = node
            .get("version")
            .and_then(Value::as_str)
            .ok_or_else(|| format!("no version in the answer to GET {PROBE_PATH}: {body}"))?;
        let version = Version::parse(version_text)
            .ok_or_else(|| format!("unreadable version {version_text:?}"))?;
        let distribution = if product == Some("Elasticsearch") || node.get("build_flavor").is_some()
        {
            Distribution::Elasticsearch
        } else {
            Distribution::OpenSearch
        };
        let modules = node
            .get("modules")
            .and_then(Value::as_array)
            .map(|list| {
                list.iter()
                    .filter_map(|m| m.get("name").and_then(Value::as_str))
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default();
        Ok(Engine {
            distribution,
            version,
            modules,
        })
    }

    fn has_module(&self, name: &str) -> bool {
        self.modules.iter().any(|m| m == name)
    }

    /// The oldest supported version of this distribution.
    pub fn minimum(&self) -> Version {
        match self.distribution {
            Distribution::Elasticsearch => MIN_ELASTICSEARCH,
            Distribution::OpenSearch => MIN_OPENSEARCH,
        }
    }

    /// What setup may use, or `Err(minimum)` when the engine is older than we support.
    pub fn features(&self) -> Result<Features, Version> {
        if self.version < self.minimum() {
            return Err(self.minimum());
        }
        Ok(match self.distribution {
            Distribution::Elasticsearch => Features {
                look_back_time: self.has_module("data-streams"),
                lifecycle_enforced: self.has_module("data-streams"),
                ..Features::ELASTICSEARCH
            },
            // OpenSearch has neither time-series indices nor the data stream lifecycle; its
            // equivalent of the latter is an ISM policy, which mqtt2es does not install.
            Distribution::OpenSearch => Features::OPENSEARCH,
        })
    }
}

impl fmt::Display for Engine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.distribution, self.version)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    // Cut-down answers of the real nodes to PROBE_PATH.
    fn elasticsearch_9_2_minimal() -> Value {
        json!({"nodes": {"OM7v": {"version": "9.2.0", "build_flavor": "default", "modules": [
            {"name": "apm"}, {"name": "transport-netty4"}, {"name": "x-pack-core"},
            {"name": "x-pack-security"}]}}})
    }

    fn opensearch_2_19() -> Value {
        json!({"nodes": {"AXwF": {"version": "2.19.1", "modules": [{"name": "transport-netty4"}]}}})
    }

    #[test]
    fn versions_parse_with_and_without_suffixes() {
        assert_eq!(Version::parse("9.2.0"), Some(Version::new(9, 2, 0)));
        assert_eq!(
            Version::parse("8.19.0-SNAPSHOT"),
            Some(Version::new(8, 19, 0))
        );
        assert_eq!(Version::parse("2"), Some(Version::new(2, 0, 0)));
        assert_eq!(Version::parse("x.1"), None);
        assert!(Version::new(8, 9, 0) < Version::new(8, 14, 0));
    }

    #[test]
    fn the_minimal_elasticsearch_distribution_gets_time_series_without_time_bounds() {
        let engine =
            Engine::from_probe(Some("Elasticsearch"), &elasticsearch_9_2_minimal()).expect("ok");
        assert_eq!(engine.distribution, Distribution::Elasticsearch);
        assert_eq!(engine.to_string(), "elasticsearch 9.2.0");
        let features = engine.features().expect("supported");
        assert!(features.time_series && features.lifecycle);
        assert!(!features.look_back_time && !features.lifecycle_enforced);
    }

    #[test]
    fn a_full_elasticsearch_distribution_gets_time_bounds_and_an_enforced_lifecycle() {
        let mut body = elasticsearch_9_2_minimal();
        body["nodes"]["OM7v"]["modules"]
            .as_array_mut()
            .expect("modules")
            .push(json!({"name": "data-streams"}));
        let features = Engine::from_probe(None, &body)
            .expect("ok")
            .features()
            .expect("supported");
        assert!(features.look_back_time && features.lifecycle_enforced);
    }

    #[test]
    fn opensearch_is_recognised_by_the_missing_product_header_and_build_flavor() {
        let engine = Engine::from_probe(None, &opensearch_2_19()).expect("ok");
        assert_eq!(engine.distribution, Distribution::OpenSearch);
        let features = engine.features().expect("supported");
        assert!(!features.time_series && !features.lifecycle);
    }

    #[test]
    fn an_elasticsearch_older_than_8_14_is_refused_with_the_minimum() {
        let body = json!({"nodes": {"n": {"version": "8.10.4", "build_flavor": "default"}}});
        let engine = Engine::from_probe(Some("Elasticsearch"), &body).expect("ok");
        assert_eq!(engine.features(), Err(MIN_ELASTICSEARCH));
        let body = json!({"nodes": {"n": {"version": "1.3.20"}}});
        let engine = Engine::from_probe(None, &body).expect("ok");
        assert_eq!(engine.features(), Err(MIN_OPENSEARCH));
    }

    #[test]
    fn an_answer_without_a_node_or_version_is_an_error_that_quotes_it() {
        let err = Engine::from_probe(None, &json!({"nodes": {}})).expect_err("no node");
        assert!(err.contains("no node"), "{err}");
        let err = Engine::from_probe(None, &json!({"nodes": {"n": {"version": "banana"}}}))
            .expect_err("bad version");
        assert!(err.contains("\"banana\""), "{err}");
    }
}
