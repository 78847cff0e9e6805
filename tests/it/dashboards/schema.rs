//! Which fields each data view has, and of which type: read from index templates, the way
//! Elasticsearch itself would pick the template for a new data stream (highest priority among
//! those whose patterns match), so the checks follow whatever the templates say.
//!
//! The templates are the ones `mqtt2es setup` installs (`mqtt2es::elastic::templates::plan`),
//! with each index template's component templates merged as Elasticsearch composes them.

use std::collections::BTreeMap;

use serde_json::Value;

/// The prefix the shipped dashboards' data views assume (`index.prefix`'s default).
pub const PREFIX: &str = "mqtt2es-";
const DEAD_LETTER_INDEX: &str = "mqtt2es-deadletter";

/// One composable index template, reduced to what decides field types.
#[derive(Debug, Clone)]
pub struct Template {
    pub name: String,
    pub patterns: Vec<String>,
    pub priority: u64,
    pub mappings: Value,
}

impl Template {
    fn from_body(name: &str, body: &Value) -> Template {
        Template {
            name: name.to_owned(),
            patterns: body["index_patterns"]
                .as_array()
                .map(|p| {
                    p.iter()
                        .filter_map(Value::as_str)
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default(),
            priority: body["priority"].as_u64().unwrap_or(0),
            mappings: body["template"]["mappings"].clone(),
        }
    }
}

/// `mqtt2es-telemetry-*` → `<prefix>telemetry-*`.
pub fn rewrite_prefix(name: &str, prefix: &str) -> String {
    match name.strip_prefix(PREFIX) {
        Some(rest) => format!("{prefix}{rest}"),
        None => name.to_owned(),
    }
}

/// A field as Kibana sees it: its type family and whether it can be aggregated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    /// The Elasticsearch mapping type (`keyword`, `float`, `date`, ...).
    pub es_type: String,
    /// Kibana's type family: `string`, `number`, `date`, `boolean`, `ip`, or the ES type.
    pub kibana_type: &'static str,
    pub aggregatable: bool,
    /// `time_series_metric` of a time-series data stream: Lens refuses sum, average, min, max
    /// and median on a `counter`.
    pub time_series_metric: Option<String>,
}

impl Field {
    fn new(es_type: &str, mapping: &Value) -> Field {
        let kibana_type = match es_type {
            "keyword" | "constant_keyword" | "wildcard" | "text" | "match_only_text" => "string",
            "long" | "integer" | "short" | "byte" | "double" | "float" | "half_float"
            | "scaled_float" | "unsigned_long" => "number",
            "date" | "date_nanos" => "date",
            "boolean" => "boolean",
            "ip" => "ip",
            _ => "other",
        };
        let text = matches!(es_type, "text" | "match_only_text");
        // Aggregations read doc values; text fields have none (and no fielddata here).
        let doc_values = mapping["doc_values"].as_bool().unwrap_or(true);
        Field {
            es_type: es_type.to_owned(),
            kibana_type,
            aggregatable: !text && doc_values,
            time_series_metric: mapping["time_series_metric"].as_str().map(str::to_owned),
        }
    }
}

pub struct Schema {
    templates: Vec<Template>,
}

impl Schema {
    /// The index templates mqtt2es installs with the default prefix on Elasticsearch.
    pub fn current() -> Schema {
        use mqtt2es::elastic::templates::{Layout, RetentionDays, plan};
        let retention = RetentionDays::default();
        let layout = Layout {
            prefix: PREFIX,
            dead_letter_index: DEAD_LETTER_INDEX,
            retention: &retention,
        };
        let plan = plan(&layout, &mqtt2es::elastic::engine::Features::ELASTICSEARCH);
        let templates = plan
            .index_templates
            .iter()
            .map(|t| {
                let mut template = Template::from_body(&t.name, &t.body);
                template.mappings = plan
                    .composed_mappings(&t.name)
                    .expect("every index template is composed of known components");
                template
            })
            .collect();
        Schema { templates }
    }

    pub fn into_templates(self) -> Vec<Template> {
        self.templates
    }

    pub fn from_templates(templates: Vec<Template>) -> Schema {
        Schema { templates }
    }

    /// The template Elasticsearch would apply to a data stream matched by `pattern` (a data
    /// view title such as `mqtt2es-telemetry-*`): each `*` stands for some name part.
    pub fn template_for(&self, pattern: &str) -> Option<&Template> {
        let example = pattern.replace('*', "x");
        self.templates
            .iter()
            .filter(|t| t.patterns.iter().any(|p| glob(p, &example)))
            .max_by_key(|t| t.priority)
    }

    /// Every mapped field of the data streams `pattern` covers, by dotted path.
    pub fn fields(&self, pattern: &str) -> BTreeMap<String, Field> {
        let mut fields = BTreeMap::new();
        if let Some(template) = self.template_for(pattern) {
            flatten("", &template.mappings["properties"], &mut fields);
        }
        fields
    }
}

fn flatten(path: &str, properties: &Value, out: &mut BTreeMap<String, Field>) {
    let Some(properties) = properties.as_object() else {
        return;
    };
    for (name, mapping) in properties {
        let full = if path.is_empty() {
            name.clone()
        } else {
            format!("{path}.{name}")
        };
        match mapping["type"].as_str() {
            Some("object") | None => flatten(&full, &mapping["properties"], out),
            Some(es_type) => {
                out.insert(full.clone(), Field::new(es_type, mapping));
                // Multi-fields (`"fields": {"keyword": {...}}`) are fields of their own.
                if let Some(subs) = mapping["fields"].as_object() {
                    for (sub, sub_mapping) in subs {
                        if let Some(sub_type) = sub_mapping["type"].as_str() {
                            out.insert(format!("{full}.{sub}"), Field::new(sub_type, sub_mapping));
                        }
                    }
                }
            }
        }
    }
}

/// Elasticsearch's simple wildcard match (`*` only), as index patterns use it.
pub fn glob(pattern: &str, name: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == name,
        Some((head, tail)) => {
            let Some(rest) = name.strip_prefix(head) else {
                return false;
            };
            (0..=rest.len())
                .filter(|&i| rest.is_char_boundary(i))
                .any(|i| glob(tail, &rest[i..]))
        }
    }
}
