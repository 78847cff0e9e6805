//! `route`: `{index: "mqtt2es-telemetry-{{site}}"}` picks the target data stream.
//!
//! The name is rendered when the stage runs, from the fields as they are at that point, and
//! confined to the configured prefix (see `pipeline::index`). A later `route` replaces an
//! earlier one; without any, documents go to the policy's `default_index`.

use serde::Deserialize;
use serde_json::Value;

use super::draft::{Draft, options};
use crate::pipeline::error::{ConfigError, StageError};
use crate::pipeline::index::{IndexPolicy, IndexTemplate};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    index: IndexTemplate,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "route options: {index}")]
struct Options {
    index: String,
}

impl Route {
    pub fn parse(config: Value, policy: &IndexPolicy) -> Result<Route, ConfigError> {
        let options: Options = options(config)?;
        Ok(Route {
            index: IndexTemplate::parse(&options.index, policy)?,
        })
    }

    pub fn apply(&self, draft: &mut Draft) -> Result<(), StageError> {
        draft.index = Some(self.index.render(&draft.source)?);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::test_support::{config_error, draft, message, stage};

    #[test]
    fn route_sets_the_rendered_index() {
        let s = stage("route", json!({"index": "mqtt2es-telemetry-{{site}}"}));
        let mut d = draft(json!({"site": "Home"}));
        s.apply(&mut d, &message("a")).expect("routes");
        assert_eq!(d.index.as_deref(), Some("mqtt2es-telemetry-home"));
    }

    #[test]
    fn a_hostile_value_is_an_invalid_index_rejection() {
        let s = stage("route", json!({"index": "mqtt2es-telemetry-{{site}}"}));
        let err = s
            .apply(&mut draft(json!({"site": "A,B*"})), &message("a"))
            .expect_err("bad");
        assert_eq!(err.reason(), "invalid_index");
        assert_eq!(
            err.to_string(),
            "index name \"mqtt2es-telemetry-a,b*\" is invalid: field \"site\" gives \"a,b*\": \
             it contains ','; only a-z, 0-9, '_' and '-' are allowed"
        );
    }

    #[test]
    fn bad_route_options_are_config_errors() {
        let cases = [
            (json!({}), "missing field `index`"),
            (json!({"index": "x-{{site"}), "index: template \"x-{{site\""),
            (
                json!({"index": "Sensors-{{site}}"}),
                "index: \"Sensors-{{site}}\" contains 'S'",
            ),
            (
                json!({"index": "x", "pipeline": "y"}),
                "unknown field `pipeline`",
            ),
        ];
        for (config, expected) in cases {
            let err = config_error("route", config);
            assert!(err.contains(expected), "{err}");
        }
    }
}
