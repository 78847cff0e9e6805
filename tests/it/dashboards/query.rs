//! A Lens layer as the Elasticsearch search Kibana would send for it, generated from the panel's
//! columns (never written per panel), and the check that its answer has something to draw.
//!
//! The translation follows Lens's own (`toEsAggsFn` of each operation): bucket columns nest in
//! `columnOrder`, metrics sit in the innermost bucket, `last_value` is the newest document by
//! its `sortField` inside its "has a value" filter, a terms column ordered by a metric carries
//! that metric as its order agg. Three liberties, none of which changes what is asked of the
//! fields: `interval: auto` becomes a fixed one minute (Kibana derives it from the time range
//! and its bar target); `timeScale` (per-second/minute normalisation) is arithmetic Kibana does
//! on the answer, so it is not in the query; and `last_value` is asked with `top_hits` (size 1,
//! same sort), which Lens sends when `showArrayValues` is on, instead of the `top_metrics` it
//! sends otherwise: `top_metrics` lives in Elasticsearch's x-pack analytics module, which the
//! integ-test distribution here lacks, and OpenSearch has no such aggregation at all.
//!
//! Every field-based metric also gets a `value_count` beside it: `sum` of a field no document
//! has is 0, not null, and would otherwise pass.

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};

use super::saved_objects::Layer;

/// A search for one panel layer, and what its answer must hold.
pub struct LayerQuery {
    pub index: String,
    pub body: Value,
    buckets: Vec<String>,
    bucket_fields: Vec<String>,
    metrics: Vec<Metric>,
}

struct Metric {
    column: String,
    field: String,
    describe: String,
    kind: MetricKind,
}

#[derive(Clone, Copy)]
enum MetricKind {
    /// `doc_count` of the innermost bucket.
    Count,
    /// `.value` of the agg, plus the `value_count` beside it.
    Value,
    /// `top_hits` inside the exists filter.
    Last,
}

/// The search for `layer` over `index` in `[from, to]` (Elasticsearch date math).
pub fn translate(
    layer: &Layer,
    index: &str,
    time_field: &str,
    from: &str,
    to: &str,
) -> Result<LayerQuery, String> {
    let mut buckets = Vec::new();
    let mut metrics = Vec::new();
    let mut leaf = Map::new();
    for (id, column) in &layer.columns {
        if column["isBucketed"].as_bool() == Some(true) {
            buckets.push(id.clone());
            continue;
        }
        let op = column["operationType"].as_str().unwrap_or_default();
        let field = column["sourceField"].as_str().unwrap_or_default();
        let describe = format!("{op} of {field}");
        let kind = match op {
            "count" if field == "___records___" => MetricKind::Count,
            "last_value" => {
                let sort = column["params"]["sortField"]
                    .as_str()
                    .ok_or_else(|| format!("column {id:?}: last_value without sortField"))?;
                let last = json!({"top_hits": {
                    "size": 1,
                    "sort": [{sort: {"order": "desc"}}],
                    "_source": false,
                    "docvalue_fields": [field]
                }});
                leaf.insert(
                    id.clone(),
                    json!({"filter": {"exists": {"field": field}}, "aggs": {"last": last}}),
                );
                MetricKind::Last
            }
            _ => {
                let agg = match op {
                    "average" => "avg",
                    "sum" => "sum",
                    "min" => "min",
                    "max" => "max",
                    "unique_count" => "cardinality",
                    "count" => "value_count",
                    other => return Err(format!("column {id:?}: no translation for {other:?}")),
                };
                if column.get("filter").is_some() {
                    return Err(format!("column {id:?}: a filter on {op} is not translated"));
                }
                leaf.insert(id.clone(), json!({agg: {"field": field}}));
                leaf.insert(
                    format!("{id}__values"),
                    json!({"value_count": {"field": field}}),
                );
                MetricKind::Value
            }
        };
        metrics.push(Metric {
            column: id.clone(),
            field: field.to_owned(),
            describe,
            kind,
        });
    }

    // Wrap from the innermost bucket outwards.
    let mut aggs = leaf;
    for id in buckets.iter().rev() {
        let column = layer.column(id).expect("a bucket column of this layer");
        let field = column["sourceField"].as_str().unwrap_or_default();
        let params = &column["params"];
        let bucket = match column["operationType"].as_str() {
            Some("date_histogram") => {
                let interval = match params["interval"].as_str() {
                    None | Some("auto") => "1m",
                    Some(fixed) => fixed,
                };
                json!({"date_histogram": {"field": field, "fixed_interval": interval, "min_doc_count": 1}})
            }
            Some("terms") => {
                let direction = params["orderDirection"].as_str().unwrap_or("desc");
                let mut terms = json!({"field": field, "size": params["size"]});
                let mut order_agg = None;
                terms["order"] = match params["orderBy"]["type"].as_str() {
                    Some("alphabetical") => json!({"_key": direction}),
                    Some("column") => {
                        let by = params["orderBy"]["columnId"].as_str().unwrap_or_default();
                        let target = layer
                            .column(by)
                            .ok_or_else(|| format!("column {id:?}: orders by missing {by:?}"))?;
                        let op = target["operationType"].as_str().unwrap_or_default();
                        let target_field = target["sourceField"].as_str().unwrap_or_default();
                        if op == "count" && target_field == "___records___" {
                            json!({"_count": direction})
                        } else {
                            let agg = match op {
                                "average" => "avg",
                                "sum" | "min" | "max" => op,
                                "unique_count" => "cardinality",
                                other => {
                                    return Err(format!(
                                        "column {id:?}: cannot order by {other:?}"
                                    ));
                                }
                            };
                            order_agg = Some(json!({agg: {"field": target_field}}));
                            json!({"_order": direction})
                        }
                    }
                    other => return Err(format!("column {id:?}: orderBy {other:?}")),
                };
                if params["missingBucket"].as_bool() == Some(true) {
                    terms["missing"] = json!("__missing__");
                }
                if let Some(order) = order_agg {
                    aggs.insert("_order".to_owned(), order);
                }
                json!({"terms": terms})
            }
            other => {
                return Err(format!(
                    "column {id:?}: no bucket translation for {other:?}"
                ));
            }
        };
        let mut wrapped = bucket;
        if !aggs.is_empty() {
            wrapped["aggs"] = Value::Object(aggs);
        }
        let mut outer = Map::new();
        outer.insert(id.clone(), wrapped);
        aggs = outer;
    }

    let body = json!({
        "size": 0,
        "track_total_hits": true,
        "query": {"bool": {"filter": [
            {"range": {time_field: {"gte": from, "lte": to}}}
        ]}},
        "aggs": aggs,
    });
    // The time field is read by the range filter even when no column names it.
    let bucket_fields = std::iter::once(time_field.to_owned())
        .chain(
            buckets
                .iter()
                .filter_map(|id| layer.column(id))
                .filter_map(|c| c["sourceField"].as_str().map(str::to_owned)),
        )
        .collect();
    Ok(LayerQuery {
        index: index.to_owned(),
        body,
        buckets,
        bucket_fields,
        metrics,
    })
}

impl LayerQuery {
    /// The answer as the table Lens would draw: one row per innermost bucket, column id →
    /// bucket key or metric value.
    pub fn rows(&self, response: &Value) -> Vec<BTreeMap<String, Value>> {
        let mut rows = Vec::new();
        self.collect(&response["aggregations"], 0, BTreeMap::new(), &mut rows);
        rows
    }

    fn collect(
        &self,
        level: &Value,
        depth: usize,
        row: BTreeMap<String, Value>,
        rows: &mut Vec<BTreeMap<String, Value>>,
    ) {
        if let Some(id) = self.buckets.get(depth) {
            for bucket in level[id]["buckets"].as_array().into_iter().flatten() {
                let mut row = row.clone();
                let key = match &bucket["key_as_string"] {
                    Value::Null => bucket["key"].clone(),
                    text => text.clone(),
                };
                row.insert(id.clone(), key);
                self.collect(bucket, depth + 1, row, rows);
            }
            return;
        }
        let mut row = row;
        for metric in &self.metrics {
            let value = match metric.kind {
                MetricKind::Count => level["doc_count"].clone(),
                MetricKind::Value => level[&metric.column]["value"].clone(),
                MetricKind::Last => level[&metric.column]["last"]["hits"]["hits"][0]["fields"]
                    [&metric.field][0]
                    .clone(),
            };
            row.insert(metric.column.clone(), value);
        }
        rows.push(row);
    }

    /// Every field the search reads, for a field-capabilities check.
    pub fn fields(&self) -> Vec<String> {
        let mut fields: Vec<String> = self
            .metrics
            .iter()
            .filter(|m| !matches!(m.kind, MetricKind::Count))
            .map(|m| m.field.clone())
            .chain(self.bucket_fields.iter().cloned())
            .collect();
        fields.sort();
        fields.dedup();
        fields
    }

    /// Ok when every bucket level has a bucket and every metric has a value in at least one
    /// innermost bucket; otherwise what is empty.
    pub fn check(&self, response: &Value) -> Result<(), String> {
        let total = response["hits"]["total"]["value"]
            .as_u64()
            .or_else(|| response["hits"]["total"].as_u64())
            .unwrap_or(0);
        if total == 0 {
            return Err(format!("no documents in {} in the time range", self.index));
        }
        let mut leaves: Vec<&Value> = vec![&response["aggregations"]];
        for id in &self.buckets {
            let next: Vec<&Value> = leaves
                .iter()
                .flat_map(|level| level[id]["buckets"].as_array().into_iter().flatten())
                .collect();
            if next.is_empty() {
                return Err(format!("bucket column {id:?} has no buckets"));
            }
            leaves = next;
        }
        let mut empty = Vec::new();
        for metric in &self.metrics {
            let has_value = leaves.iter().any(|leaf| match metric.kind {
                MetricKind::Count => {
                    // Without buckets the "leaf" is the aggregations root: use the hit count.
                    self.buckets.is_empty() || leaf["doc_count"].as_u64().unwrap_or(0) > 0
                }
                MetricKind::Value => {
                    !leaf[&metric.column]["value"].is_null()
                        && leaf[&format!("{}__values", metric.column)]["value"]
                            .as_u64()
                            .unwrap_or(0)
                            > 0
                }
                MetricKind::Last => {
                    let fields = &leaf[&metric.column]["last"]["hits"]["hits"][0]["fields"];
                    fields.as_object().is_some_and(|m| !m.is_empty())
                }
            });
            if !has_value {
                empty.push(format!("{} ({})", metric.column, metric.describe));
            }
        }
        if empty.is_empty() {
            Ok(())
        } else {
            Err(format!("no value for {}", empty.join(", ")))
        }
    }
}
