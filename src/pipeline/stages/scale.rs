//! `scale`: linear unit conversion of a number, either by named units
//! `{field: temp_f, target: temperature_c, from_unit: fahrenheit, to_unit: celsius, decimals: 2}`
//! or by factors `{field: raw, multiply: 0.1, add: -40}`.
//!
//! Named units compile to the same `multiply`/`add` pair, so there is one arithmetic path; the
//! unit table only exists to catch `fahrenheit` to `volt` at load time. The source field is
//! kept when `target` differs (follow with `remove` to drop it), as Elasticsearch's processors
//! do with `target_field`. A non-number is `wrong_type`; convert strings first.

use serde::Deserialize;
use serde_json::{Number, Value};

use super::draft::{Draft, options, path, put};
use crate::pipeline::error::{ConfigError, StageError};
use crate::pipeline::path::FieldPath;

#[derive(Debug, Clone, PartialEq)]
pub struct Scale {
    field: FieldPath,
    target: FieldPath,
    multiply: f64,
    add: f64,
    decimals: Option<i32>,
    ignore_missing: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Unit {
    Celsius,
    Fahrenheit,
    Kelvin,
    Pascal,
    Hectopascal,
    Kilopascal,
    Ratio,
    Percent,
    Volt,
    Millivolt,
}

const UNITS: &str =
    "celsius, fahrenheit, kelvin, pascal, hectopascal, kilopascal, ratio, percent, volt, millivolt";

impl Unit {
    fn parse(key: &str, name: &str) -> Result<Unit, ConfigError> {
        Ok(match name {
            "celsius" => Unit::Celsius,
            "fahrenheit" => Unit::Fahrenheit,
            "kelvin" => Unit::Kelvin,
            "pascal" => Unit::Pascal,
            "hectopascal" => Unit::Hectopascal,
            "kilopascal" => Unit::Kilopascal,
            "ratio" => Unit::Ratio,
            "percent" => Unit::Percent,
            "volt" => Unit::Volt,
            "millivolt" => Unit::Millivolt,
            other => return Err(ConfigError::unknown(key, other, UNITS)),
        })
    }

    /// The quantity and `(a, b)` such that `base = value * a + b`.
    fn to_base(self) -> (&'static str, f64, f64) {
        match self {
            Unit::Celsius => ("temperature", 1.0, 0.0),
            Unit::Fahrenheit => ("temperature", 5.0 / 9.0, -160.0 / 9.0),
            Unit::Kelvin => ("temperature", 1.0, -273.15),
            Unit::Pascal => ("pressure", 1.0, 0.0),
            Unit::Hectopascal => ("pressure", 100.0, 0.0),
            Unit::Kilopascal => ("pressure", 1000.0, 0.0),
            Unit::Ratio => ("ratio", 1.0, 0.0),
            Unit::Percent => ("ratio", 0.01, 0.0),
            Unit::Volt => ("voltage", 1.0, 0.0),
            Unit::Millivolt => ("voltage", 0.001, 0.0),
        }
    }
}

#[derive(Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "scale options: {field, target, from_unit, to_unit | multiply, add, decimals, ignore_missing}"
)]
struct Options {
    field: String,
    target: Option<String>,
    from_unit: Option<String>,
    to_unit: Option<String>,
    multiply: Option<f64>,
    add: Option<f64>,
    decimals: Option<u8>,
    #[serde(default)]
    ignore_missing: bool,
}

impl Scale {
    pub fn parse(config: Value) -> Result<Scale, ConfigError> {
        let o: Options = options(config)?;
        let factors = o.multiply.is_some() || o.add.is_some();
        let (multiply, add) = match (o.from_unit.as_deref(), o.to_unit.as_deref()) {
            (Some(_), Some(_)) | (Some(_), None) | (None, Some(_)) if factors => {
                return Err(ConfigError::invalid(
                    "from_unit",
                    "use units (from_unit, to_unit) or factors (multiply, add), not both",
                ));
            }
            (Some(from), Some(to)) => {
                let (from_kind, a1, b1) = Unit::parse("from_unit", from)?.to_base();
                let (to_kind, a2, b2) = Unit::parse("to_unit", to)?.to_base();
                if from_kind != to_kind {
                    return Err(ConfigError::invalid(
                        "to_unit",
                        format!("cannot convert {from} ({from_kind}) to {to} ({to_kind})"),
                    ));
                }
                (a1 / a2, (b1 - b2) / a2)
            }
            (Some(_), None) => {
                return Err(ConfigError::invalid("to_unit", "from_unit needs to_unit"));
            }
            (None, Some(_)) => {
                return Err(ConfigError::invalid("from_unit", "to_unit needs from_unit"));
            }
            (None, None) if factors => (o.multiply.unwrap_or(1.0), o.add.unwrap_or(0.0)),
            (None, None) => {
                return Err(ConfigError::invalid(
                    "scale",
                    "needs from_unit and to_unit, or multiply and/or add",
                ));
            }
        };
        if let Some(d) = o.decimals.filter(|&d| d > 15) {
            return Err(ConfigError::invalid(
                "decimals",
                format!("{d} is more than 15"),
            ));
        }
        let field = path("field", &o.field)?;
        let target = match &o.target {
            Some(target) => path("target", target)?,
            None => field.clone(),
        };
        Ok(Scale {
            field,
            target,
            multiply,
            add,
            decimals: o.decimals.map(i32::from),
            ignore_missing: o.ignore_missing,
        })
    }

    pub fn apply(&self, draft: &mut Draft) -> Result<(), StageError> {
        let value = match self.field.get(&draft.source) {
            None | Some(Value::Null) if self.ignore_missing => return Ok(()),
            None | Some(Value::Null) => {
                return Err(StageError::MissingField(self.field.to_string()));
            }
            Some(value) => value,
        };
        let wrong = || StageError::wrong_type(self.field.as_str(), value, "a number");
        let mut scaled = value.as_f64().ok_or_else(wrong)? * self.multiply + self.add;
        if let Some(decimals) = self.decimals {
            let factor = 10f64.powi(decimals);
            scaled = (scaled * factor).round() / factor;
        }
        let scaled = Number::from_f64(scaled).ok_or_else(wrong)?;
        put(draft, &self.target, Value::Number(scaled))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::test_support::{config_error, run, stage};
    use crate::pipeline::error::StageError;

    #[test]
    fn units_convert_into_a_target_keeping_the_source() {
        let s = stage(
            "scale",
            json!({"field": "temp_f", "target": "temperature_c", "from_unit": "fahrenheit",
                   "to_unit": "celsius", "decimals": 2}),
        );
        assert_eq!(
            run(&s, json!({"temp_f": 70})),
            Ok(json!({"temp_f": 70, "temperature_c": 21.11}))
        );
    }

    #[test]
    fn units_of_every_quantity_convert() {
        let cases = [
            ("celsius", "kelvin", 0.0, 273.15),
            ("celsius", "fahrenheit", 100.0, 212.0),
            ("hectopascal", "kilopascal", 1013.0, 101.3),
            ("ratio", "percent", 0.93, 93.0),
            ("millivolt", "volt", 3300.0, 3.3),
        ];
        for (from, to, input, expected) in cases {
            let s = stage(
                "scale",
                json!({"field": "v", "from_unit": from, "to_unit": to, "decimals": 6}),
            );
            assert_eq!(
                run(&s, json!({"v": input})),
                Ok(json!({"v": expected})),
                "{from}->{to}"
            );
        }
    }

    #[test]
    fn factors_multiply_then_add() {
        let s = stage(
            "scale",
            json!({"field": "raw", "multiply": 0.5, "add": -40}),
        );
        assert_eq!(run(&s, json!({"raw": 130})), Ok(json!({"raw": 25.0})));
    }

    #[test]
    fn scale_of_a_non_number_is_wrong_type() {
        let s = stage("scale", json!({"field": "raw", "multiply": 2}));
        let err = run(&s, json!({"raw": "12"})).expect_err("a string");
        assert_eq!(
            err.to_string(),
            "field \"raw\": cannot use \"12\" as a number"
        );
    }

    #[test]
    fn scale_of_a_missing_field_is_rejected_unless_ignored() {
        let s = stage("scale", json!({"field": "raw", "multiply": 2}));
        assert_eq!(
            run(&s, json!({})),
            Err(StageError::MissingField("raw".to_owned()))
        );
        let s = stage(
            "scale",
            json!({"field": "raw", "multiply": 2, "ignore_missing": true}),
        );
        assert_eq!(run(&s, json!({})), Ok(json!({})));
    }

    #[test]
    fn bad_scale_options_are_config_errors() {
        let cases = [
            (
                json!({"field": "a"}),
                "scale: needs from_unit and to_unit, or multiply",
            ),
            (
                json!({"field": "a", "from_unit": "celsius"}),
                "to_unit: from_unit needs to_unit",
            ),
            (
                json!({"field": "a", "to_unit": "celsius"}),
                "from_unit: to_unit needs from_unit",
            ),
            (
                json!({"field": "a", "from_unit": "celsius", "to_unit": "volt"}),
                "to_unit: cannot convert celsius (temperature) to volt (voltage)",
            ),
            (
                json!({"field": "a", "from_unit": "rankine", "to_unit": "celsius"}),
                "unknown from_unit \"rankine\"; expected one of celsius",
            ),
            (
                json!({"field": "a", "from_unit": "celsius", "to_unit": "kelvin", "add": 1}),
                "not both",
            ),
            (
                json!({"field": "a", "multiply": 2, "decimals": 20}),
                "decimals: 20 is more than 15",
            ),
            (
                json!({"field": "a", "multiply": "2"}),
                "invalid type: string \"2\"",
            ),
        ];
        for (config, expected) in cases {
            let err = config_error("scale", config);
            assert!(err.contains(expected), "{err}");
        }
    }
}
