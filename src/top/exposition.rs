//! The text of `/metrics` read back into samples.
//!
//! A parser of our own, and a small one: it reads sample lines (`name{label="value",..} value`)
//! and skips the `#` lines (HELP, TYPE, UNIT, EOF). prometheus-client, which writes our
//! endpoint, has no parser; the one parsing crate, prometheus-parse, reads the older 0.0.4
//! format and brings a regex engine for what is a few dozen lines here. It reads what any
//! Prometheus exporter writes, not only ours, but `top` only ever reads ours.

use std::collections::BTreeMap;

/// One sample line.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

impl Sample {
    fn label(&self, name: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }
}

/// Every sample of one scrape, in the order they came.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Samples(Vec<Sample>);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line} of the metrics is not a sample: {text:?}")]
pub struct ParseError {
    pub line: usize,
    pub text: String,
}

/// Reads the exposition text; any line that is neither a comment, blank nor a sample is an
/// error, so a wrong `--url` (an HTML page, another service) is said as such.
pub fn parse(text: &str) -> Result<Samples, ParseError> {
    let mut samples = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let sample = sample(line).ok_or_else(|| ParseError {
            line: index + 1,
            text: line.chars().take(80).collect(),
        })?;
        samples.push(sample);
    }
    Ok(Samples(samples))
}

/// `name`, optional `{labels}`, the value, and an optional timestamp that is ignored.
fn sample(line: &str) -> Option<Sample> {
    let name_end = line
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .unwrap_or(line.len());
    let name = &line[..name_end];
    if name.is_empty() || name.starts_with(|c: char| c.is_ascii_digit()) {
        return None;
    }
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(inner) = rest.strip_prefix('{') {
        let (parsed, after) = label_set(inner)?;
        labels = parsed;
        rest = after;
    }
    let value = rest.split_whitespace().next()?.parse::<f64>().ok()?;
    Some(Sample {
        name: name.to_owned(),
        labels,
        value,
    })
}

/// `key="value",...}` and what follows the closing brace. Values may escape `\`, `"` and a
/// newline (`\n`): our dead-letter reasons are free text.
fn label_set(mut text: &str) -> Option<(Vec<(String, String)>, &str)> {
    let mut labels = Vec::new();
    loop {
        text = text.trim_start();
        if let Some(after) = text.strip_prefix('}') {
            return Some((labels, after));
        }
        let (key, after) = text.split_once('=')?;
        let mut chars = after.strip_prefix('"')?.char_indices();
        let mut value = String::new();
        let end = loop {
            match chars.next()? {
                (i, '"') => break i,
                (_, '\\') => value.push(match chars.next()?.1 {
                    'n' => '\n',
                    other => other,
                }),
                (_, c) => value.push(c),
            }
        };
        labels.push((key.trim().to_owned(), value));
        text = &after[end + 2..];
        text = text.trim_start().strip_prefix(',').unwrap_or(text);
    }
}

impl Samples {
    /// The sum of every sample named `name` (over all its label sets); `None` if there is none.
    pub fn sum(&self, name: &str) -> Option<f64> {
        let mut found = self.named(name).peekable();
        found.peek()?;
        Some(found.map(|s| s.value).sum())
    }

    /// Samples named `name`, keyed by their label `label` (summed over any other labels).
    pub fn by_label(&self, name: &str, label: &str) -> BTreeMap<String, f64> {
        let mut out = BTreeMap::new();
        for sample in self.named(name) {
            if let Some(key) = sample.label(label) {
                *out.entry(key.to_owned()).or_default() += sample.value;
            }
        }
        out
    }

    /// A histogram's cumulative buckets `(upper bound, count)`, ascending, `+Inf` last; `None`
    /// if the histogram is not there.
    pub fn buckets(&self, histogram: &str) -> Option<Vec<(f64, f64)>> {
        let mut buckets: Vec<(f64, f64)> = self
            .named(&format!("{histogram}_bucket"))
            .filter_map(|s| Some((s.label("le")?.parse::<f64>().ok()?, s.value)))
            .collect();
        if buckets.is_empty() {
            return None;
        }
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        Some(buckets)
    }

    fn named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Sample> + 'a {
        self.0.iter().filter(move |s| s.name == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"# HELP mqtt2es_messages_in MQTT messages received, by source.
# TYPE mqtt2es_messages_in counter
mqtt2es_messages_in_total{source="broker"} 25
mqtt2es_messages_in_total{source="upstream"} 5
# TYPE mqtt2es_dead_letters counter
mqtt2es_dead_letters_total{reason="odd\"reason\nnext"} 1
mqtt2es_dead_letters_total{reason="invalid_json"} 2
# TYPE mqtt2es_bulk_request_duration_seconds histogram
# UNIT mqtt2es_bulk_request_duration_seconds seconds
mqtt2es_bulk_request_duration_seconds_sum 0.5
mqtt2es_bulk_request_duration_seconds_count 4
mqtt2es_bulk_request_duration_seconds_bucket{le="0.01"} 1
mqtt2es_bulk_request_duration_seconds_bucket{le="0.1"} 3
mqtt2es_bulk_request_duration_seconds_bucket{le="+Inf"} 4
mqtt2es_acks_pending 3 1700000000000
mqtt2es_elasticsearch_last_answer_timestamp_seconds 1796212801.5
# EOF
"#;

    #[test]
    fn counters_with_labels_are_read_summed_and_keyed_by_label() {
        let samples = parse(TEXT).expect("parses");
        assert_eq!(samples.sum("mqtt2es_messages_in_total"), Some(30.0));
        assert_eq!(
            samples.by_label("mqtt2es_messages_in_total", "source")["upstream"],
            5.0
        );
        assert_eq!(samples.sum("mqtt2es_acks_pending"), Some(3.0));
        assert_eq!(
            samples.sum("mqtt2es_elasticsearch_last_answer_timestamp_seconds"),
            Some(1_796_212_801.5)
        );
        assert_eq!(samples.sum("mqtt2es_spool_bytes"), None);
    }

    #[test]
    fn escaped_label_values_are_read_back_as_written() {
        let samples = parse(TEXT).expect("parses");
        let reasons = samples.by_label("mqtt2es_dead_letters_total", "reason");
        assert_eq!(reasons["odd\"reason\nnext"], 1.0);
        assert_eq!(reasons["invalid_json"], 2.0);
    }

    #[test]
    fn histogram_buckets_come_ascending_with_inf_last() {
        let samples = parse(TEXT).expect("parses");
        let buckets = samples
            .buckets("mqtt2es_bulk_request_duration_seconds")
            .expect("buckets");
        assert_eq!(buckets, vec![(0.01, 1.0), (0.1, 3.0), (f64::INFINITY, 4.0)]);
        assert_eq!(samples.buckets("mqtt2es_nothing_seconds"), None);
    }

    #[test]
    fn a_page_that_is_not_metrics_is_refused_naming_its_line() {
        let error = parse("# a comment\n<html><body>login</body></html>\n").expect_err("html");
        assert_eq!(error.line, 2);
        assert!(error.to_string().contains("<html>"), "{error}");
        assert!(parse("mqtt2es_x{reason=\"unterminated} 1\n").is_err());
        assert!(parse("mqtt2es_x not-a-number\n").is_err());
    }
}
