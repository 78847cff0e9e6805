//! The bulk protocol's tables, row by row: encoding and the classification of canned responses.

use chrono::{DateTime, Utc};
use serde_json::Value;

use super::classify::*;
use super::encode::*;
use super::item::*;
use super::*;
use crate::document::{Processed, Rejection};
use crate::sink::Routed;
use crate::{document::Document, record::Ack, sink::dead_letter::tests::message};
use serde_json::json;

fn routed(processed: Processed) -> Routed {
    Routed {
        message: message(b"{\"t\":21.5}"),
        processed,
        ack: Ack::none(),
    }
}

fn document(id: Option<&str>) -> Processed {
    let source = json!({"@timestamp": "2025-03-01T12:00:00Z", "t": 21.5});
    Processed::Document(Document {
        pipeline: "thermometers".into(),
        deferred: Default::default(),
        index: "mqtt2es-temp".to_owned(),
        id: id.map(str::to_owned),
        source: source.as_object().expect("an object").clone().into(),
    })
}

fn lines(bytes: &[u8]) -> Vec<Value> {
    std::str::from_utf8(bytes)
        .expect("utf-8")
        .lines()
        .map(|line| serde_json::from_str(line).expect("a JSON line"))
        .collect()
}

fn sent_at() -> DateTime<Utc> {
    "2025-03-01T12:00:01.250Z".parse().expect("a time")
}

fn document_with(index: &str, id: Option<&str>, source: Value) -> Processed {
    Processed::Document(Document {
        pipeline: "telemetry".into(),
        deferred: Default::default(),
        index: index.to_owned(),
        id: id.map(str::to_owned),
        source: source.as_object().expect("an object").clone().into(),
    })
}

fn sent(prepared: Prepared) -> Item {
    match prepared {
        Prepared::Send(item) => item,
        other => panic!("expected an item to send, got {other:?}"),
    }
}

// ---- encoding ----

#[test]
fn a_document_with_an_id_becomes_a_create_op_with_that_id() {
    let item = sent(prepare(routed(document(Some("abc"))), "dl", 1 << 20, &[]));
    assert_eq!(
        lines(&body(&[item], sent_at())),
        [
            json!({"create": {"_index": "mqtt2es-temp", "_id": "abc"}}),
            json!({
                "event": {"ingested": "2025-03-01T12:00:01.250Z"},
                "@timestamp": "2025-03-01T12:00:00Z",
                "t": 21.5,
            }),
        ]
    );
}

#[test]
fn each_request_stamps_its_own_send_time_into_event_ingested() {
    let item = sent(prepare(routed(document(Some("a"))), "dl", 1 << 20, &[]));
    let first = lines(&body(std::slice::from_ref(&item), sent_at()));
    let later = "2025-03-01T12:05:00Z".parse().expect("a time");
    let retry = lines(&body(&[item], later));
    assert_eq!(first[1]["event"]["ingested"], "2025-03-01T12:00:01.250Z");
    assert_eq!(retry[1]["event"]["ingested"], "2025-03-01T12:05:00.000Z");
}

#[test]
fn event_ingested_joins_an_event_object_of_the_document_and_never_replaces_one() {
    let own_event = json!({"@timestamp": "2025-03-01T12:00:00Z", "event": {"action": "open"}});
    let item = sent(prepare(
        routed(document_with("mqtt2es-messages", None, own_event)),
        "dl",
        1 << 20,
        &[],
    ));
    let source = &lines(&body(&[item], sent_at()))[1];
    assert_eq!(source["event.ingested"], "2025-03-01T12:00:01.250Z");
    assert_eq!(source["event"], json!({"action": "open"}));

    for kept in [
        json!({"event": {"ingested": "2025-01-01T00:00:00Z"}}),
        json!({"event": "door opened"}),
    ] {
        let item = sent(prepare(
            routed(document_with("mqtt2es-messages", None, kept.clone())),
            "dl",
            1 << 20,
            &[],
        ));
        assert_eq!(lines(&body(&[item], sent_at()))[1], kept);
    }
}

#[test]
fn an_empty_document_still_gets_event_ingested_as_valid_json() {
    let item = sent(prepare(
        routed(document_with("mqtt2es-messages", None, json!({}))),
        "dl",
        1 << 20,
        &[],
    ));
    assert_eq!(
        lines(&body(&[item], sent_at()))[1],
        json!({"event": {"ingested": "2025-03-01T12:00:01.250Z"}})
    );
}

#[test]
fn a_document_for_a_time_series_stream_goes_without_id_and_a_409_there_is_checked() {
    let prefixes = ["mqtt2es-telemetry-".to_owned()];
    let reading = json!({"@timestamp": "2025-03-01T12:00:00Z", "site": "lab"});
    let item = sent(prepare(
        routed(document_with(
            "mqtt2es-telemetry-lab",
            Some("abc"),
            reading.clone(),
        )),
        "dl",
        1 << 20,
        &prefixes,
    ));
    assert_eq!(item.conflict(), Conflict::Check { time_series: true });
    assert_eq!(
        lines(&body(&[item], sent_at()))[0],
        json!({"create": {"_index": "mqtt2es-telemetry-lab"}})
    );
    // Other streams keep the pipeline's id.
    let item = sent(prepare(
        routed(document_with("mqtt2es-status-lab", Some("abc"), reading)),
        "dl",
        1 << 20,
        &prefixes,
    ));
    assert_eq!(
        lines(&body(&[item], sent_at()))[0]["create"]["_id"],
        json!("abc")
    );
}

#[test]
fn a_dead_letter_gets_no_event_ingested() {
    let rejection = Rejection {
        pipeline: None,
        stage: Some("decode".to_owned()),
        reason: "invalid_json".to_owned(),
        detail: "bad".to_owned(),
    };
    let item = sent(prepare(
        routed(Processed::Rejected(rejection)),
        "dl",
        1 << 20,
        &[],
    ));
    assert!(lines(&body(&[item], sent_at()))[1].get("event").is_none());
}

#[test]
fn a_document_without_a_pipeline_id_goes_under_its_reading_id_and_a_409_means_stored() {
    let item = sent(prepare(routed(document(None)), "dl", 1 << 20, &[]));
    assert_eq!(item.conflict(), Conflict::Ours);
    let reading = item.message.reading.to_string();
    assert_eq!(
        lines(&body(&[item], sent_at()))[0],
        json!({"create": {"_index": "mqtt2es-temp", "_id": reading}})
    );
}

#[test]
fn a_pipeline_id_from_fields_is_sent_but_a_409_on_it_is_checked() {
    let item = sent(prepare(routed(document(Some("abc"))), "dl", 1 << 20, &[]));
    assert_eq!(item.conflict(), Conflict::Check { time_series: false });
    assert_eq!(
        lines(&body(&[item], sent_at()))[0]["create"]["_id"],
        json!("abc")
    );
}

#[test]
fn a_time_series_document_starts_with_its_time_and_moves_to_later_times_the_same_way_each_time() {
    let prefixes = ["mqtt2es-telemetry-".to_owned()];
    let reading = json!({"site": "lab", "@timestamp": "2025-03-01T12:00:00.000000500Z", "t": 1});
    let mut item = sent(prepare(
        routed(document_with(
            "mqtt2es-telemetry-lab",
            None,
            reading.clone(),
        )),
        "dl",
        1 << 20,
        &prefixes,
    ));
    let text = String::from_utf8(body(std::slice::from_ref(&item), sent_at())).expect("utf8");
    assert!(
        text.contains("{\"event\":{\"ingested\":\"2025-03-01T12:00:01.250Z\"},\"@timestamp\":\"2025-03-01T12:00:00.000000500Z\","),
        "{text}"
    );
    assert!(item.probe_later_time());
    assert!(item.probe_later_time());
    assert_eq!(item.probes, 2);
    let moved = &lines(&body(&[item], sent_at()))[1];
    assert_eq!(moved["@timestamp"], "2025-03-01T12:00:00.002000502Z");
    assert_eq!(moved["t"], 1);
    assert_eq!(moved["event"]["ingested"], "2025-03-01T12:00:01.250Z");
}

#[test]
fn an_items_data_stream_is_read_back_from_its_action_line_for_documents_and_dead_letters() {
    let document = sent(prepare(
        routed(document_with(
            "mqtt2es-telemetry-lab",
            None,
            json!({"t": 1}),
        )),
        "dl",
        1 << 20,
        &[],
    ));
    assert_eq!(document.index(), "mqtt2es-telemetry-lab");
    let rejection = Rejection {
        pipeline: None,
        stage: None,
        reason: "invalid_json".to_owned(),
        detail: String::new(),
    };
    let letter = dead_letter_item(document.message, Ack::none(), &rejection, "mqtt2es-dl");
    assert_eq!(letter.index(), "mqtt2es-dl");
}

#[test]
fn a_documents_timestamp_is_found_where_it_was_encoded_and_follows_a_move() {
    let prefixes = ["mqtt2es-telemetry-".to_owned()];
    let encoded = |index: &str, source: Value| {
        sent(prepare(
            routed(document_with(index, None, source)),
            "dl",
            1 << 20,
            &prefixes,
        ))
    };
    let plain = encoded(
        "mqtt2es-messages",
        json!({"a": {"@timestamp": "nested"}, "@timestamp": "2025-03-01T12:00:00.123Z", "z": 1}),
    );
    assert_eq!(plain.timestamp(), Some("2025-03-01T12:00:00.123Z"));
    let mut series = encoded(
        "mqtt2es-telemetry-lab",
        json!({"@timestamp": "2025-03-01T12:00:00Z", "t": 1}),
    );
    assert_eq!(series.timestamp(), Some("2025-03-01T12:00:00Z"));
    assert!(series.probe_later_time());
    assert_eq!(series.timestamp(), Some("2025-03-01T12:00:00.001000001Z"));
    let number = encoded(
        "mqtt2es-messages",
        json!({"@timestamp": 1_740_830_400_000_u64}),
    );
    assert_eq!(number.timestamp(), None);
}

#[test]
fn a_time_series_document_holding_only_its_time_is_valid_json() {
    let prefixes = ["mqtt2es-telemetry-".to_owned()];
    let only_time = json!({"event": {"ingested": "x"}, "@timestamp": "2025-03-01T12:00:00Z"});
    let item = sent(prepare(
        routed(document_with("mqtt2es-telemetry-lab", None, only_time)),
        "dl",
        1 << 20,
        &prefixes,
    ));
    let line = &lines(&body(&[item], sent_at()))[1];
    assert_eq!(line["@timestamp"], "2025-03-01T12:00:00Z");
}

#[test]
fn a_document_that_is_not_time_series_has_no_time_to_move() {
    let mut item = sent(prepare(routed(document(None)), "dl", 1 << 20, &[]));
    assert!(!item.probe_later_time());
}

#[test]
fn the_body_is_the_items_in_order_each_line_newline_terminated() {
    let a = sent(prepare(routed(document(Some("a"))), "dl", 1 << 20, &[]));
    let b = sent(prepare(routed(document(Some("b"))), "dl", 1 << 20, &[]));
    let total = a.bytes() + b.bytes();
    let body = body(&[a, b], sent_at());
    assert_eq!(body.len(), total);
    assert!(body.ends_with(b"\n"));
    let ids: Vec<_> = lines(&body)
        .iter()
        .step_by(2)
        .map(|op| op["create"]["_id"].clone())
        .collect();
    assert_eq!(ids, [json!("a"), json!("b")]);
}

#[test]
fn the_source_of_an_item_is_its_json_line_without_newline() {
    let item = sent(prepare(routed(document(None)), "dl", 1 << 20, &[]));
    let source: Value = serde_json::from_slice(item.source()).expect("json");
    assert_eq!(source["t"], json!(21.5));
    assert!(!item.source().ends_with(b"\n"));
}

#[test]
fn a_rejection_becomes_a_dead_letter_op_into_the_dead_letter_stream() {
    let rejection = Rejection {
        pipeline: Some("thermometers".to_owned()),
        stage: Some("decode".to_owned()),
        reason: "invalid_json".to_owned(),
        detail: "bad".to_owned(),
    };
    let item = sent(prepare(
        routed(Processed::Rejected(rejection)),
        "mqtt2es-deadletter",
        1 << 20,
        &[],
    ));
    assert_eq!(
        item.kind,
        Kind::DeadLetter {
            reason: "invalid_json".to_owned()
        }
    );
    let lines = lines(&body(&[item], sent_at()));
    assert_eq!(lines[0]["create"]["_index"], "mqtt2es-deadletter");
    let id = lines[0]["create"]["_id"]
        .as_str()
        .expect("a dead letter has an id");
    assert_eq!(id, "AAAAAAAAAAAAAAAAAAAABw", "the reading's own id");
    assert_eq!(lines[1]["payload"], "{\"t\":21.5}");
}

#[test]
fn a_dropped_record_is_settled_without_encoding() {
    let prepared = prepare(
        routed(Processed::Dropped {
            pipeline: "p".into(),
            stage: "drop".to_owned(),
        }),
        "dl",
        1 << 20,
        &[],
    );
    assert!(matches!(prepared, Prepared::Drop(_)));
}

#[test]
fn a_document_larger_than_max_bytes_becomes_a_document_too_large_dead_letter() {
    let Processed::Document(mut doc) = document(Some("a")) else {
        unreachable!("document() makes a document")
    };
    doc.source
        .insert("blob".to_owned(), json!("x".repeat(1000)));
    let item = sent(prepare(routed(Processed::Document(doc)), "dl", 900, &[]));
    assert_eq!(
        item.kind,
        Kind::DeadLetter {
            reason: DOCUMENT_TOO_LARGE.to_owned()
        }
    );
    let letter: Value = serde_json::from_slice(item.source()).expect("json");
    assert_eq!(letter["pipeline"], "thermometers");
    assert_eq!(letter["stage"], "bulk");
    assert!(
        letter["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("more than max_bytes 900")),
        "{letter}"
    );
}

#[test]
fn a_dead_letter_too_large_for_any_request_goes_straight_to_the_file() {
    let prepared = prepare(routed(document(Some("a"))), "dl", 50, &[]);
    match prepared {
        Prepared::ToFile(item) => assert_eq!(
            item.kind,
            Kind::DeadLetter {
                reason: DOCUMENT_TOO_LARGE.to_owned()
            }
        ),
        other => panic!("expected the file, got {other:?}"),
    }
}

// ---- classification: canned responses in the shapes Elasticsearch sends with
// filter_path=errors,items.*.status,items.*.error ----

const ALL_CREATED: &str =
    r#"{"errors":false,"items":[{"create":{"status":201}},{"create":{"status":201}}]}"#;

const MIXED: &str = r#"{"errors":true,"items":[
    {"create":{"status":201}},
    {"create":{"status":409,"error":{"type":"version_conflict_engine_exception","reason":"[abc]: version conflict, document already exists (current version [1])","index_uuid":"x","shard":"0","index":".ds-mqtt2es-temp-2025.03.01-000001"}}},
    {"create":{"status":400,"error":{"type":"document_parsing_exception","reason":"[1:43] failed to parse field [t] of type [float] in document with id 'def'. Preview of field's value: 'hot'","caused_by":{"type":"number_format_exception","reason":"For input string: \"hot\""}}}},
    {"create":{"status":429,"error":{"type":"es_rejected_execution_exception","reason":"rejected execution of coordinating operation [coordinating_and_primary_bytes=0, replica_bytes=0, all_bytes=0, coordinating_operation_bytes=110, max_coordinating_and_primary_bytes=0]"}}},
    {"create":{"status":503,"error":{"type":"unavailable_shards_exception","reason":"[.ds-mqtt2es-temp-2025.03.01-000001][0] primary shard is not active Timeout: [1m]"}}},
    {"create":{"status":403,"error":{"type":"cluster_block_exception","reason":"index [.ds-mqtt2es-temp-2025.03.01-000001] blocked by: [TOO_MANY_REQUESTS/12/disk usage exceeded flood-stage watermark, index has read-only-allow-delete block];"}}},
    {"create":{"status":404,"error":{"type":"index_not_found_exception","reason":"no such index [mqtt2es-temp] and [require_data_stream] request flag is [true] and [mqtt2es-temp] is not a data stream","index":"mqtt2es-temp"}}},
    {"create":{"status":400,"error":{"type":"illegal_argument_exception","reason":"only write ops with an op_type of create are allowed in data streams"}}},
    {"create":{"status":403,"error":{"type":"security_exception","reason":"action [indices:data/write/bulk[s]] is unauthorized for user [writer] with effective roles [reader] on indices [mqtt2es-temp]"}}},
    {"create":{"_id":"I-zFEez8QMrPdogiGO1YCxu1cxU","status":409,"error":{"type":"version_conflict_engine_exception","reason":"[I-zFEez8QMrPdogiGO1YCxu1cxU][KMJX1Oyk9RdDWqdiHvC3nSe6bz4kEY0DS8_UYdJWuQI8JsTi5FJ-p7U@2025-03-01T12:00:00.123456789Z]: version conflict, document already exists (current version [1])","index_uuid":"9RRM1hZ9RXCuPrF8mGD2Bg","shard":"0","index":".ds-mqtt2es-telemetry-lab-2025.03.01-000001"}}}
]}"#;

const OURS: Conflict = Conflict::Ours;

#[test]
fn every_item_created_is_stored() {
    assert_eq!(
        classify(200, ALL_CREATED.as_bytes(), &[OURS, OURS]),
        Plan::Items(vec![Outcome::Stored, Outcome::Stored])
    );
}

#[test]
fn a_response_without_errors_and_without_items_stores_everything() {
    assert_eq!(
        classify(200, br#"{"errors":false}"#, &[OURS; 3]),
        Plan::Items(vec![Outcome::Stored; 3])
    );
}

#[test]
fn each_item_status_maps_to_its_row_of_the_table() {
    let mut conflicts = [OURS; 10];
    conflicts[9] = Conflict::Check { time_series: true };
    let Plan::Items(outcomes) = classify(200, MIXED.as_bytes(), &conflicts) else {
        panic!("expected per-item outcomes");
    };
    let short: Vec<String> = outcomes
        .iter()
        .map(|o| match o {
            Outcome::Stored => "stored".to_owned(),
            Outcome::AlreadyStored => "already_stored".to_owned(),
            Outcome::Check { index, id } => format!("check {index} {id}"),
            Outcome::Retry { blocked: true, .. } => "retry_blocked".to_owned(),
            Outcome::Retry { loud: false, .. } => "retry".to_owned(),
            Outcome::Retry { loud: true, .. } => "retry_loudly".to_owned(),
            Outcome::Reject { reason, .. } => format!("reject {reason}"),
        })
        .collect();
    assert_eq!(
        short,
        [
            "stored",
            "already_stored",
            "reject mapping_conflict",
            "retry",
            "retry",
            "retry_blocked",
            "reject rejected_by_elasticsearch",
            "reject rejected_by_elasticsearch",
            "retry_loudly",
            // 409 on an id another reading may share: look at the stored document first.
            "check .ds-mqtt2es-telemetry-lab-2025.03.01-000001 I-zFEez8QMrPdogiGO1YCxu1cxU",
        ]
    );
}

#[test]
fn a_mapping_conflict_detail_quotes_the_error_type_reason_and_cause() {
    let Plan::Items(outcomes) = classify(200, MIXED.as_bytes(), &[OURS; 10]) else {
        panic!("expected per-item outcomes");
    };
    let Outcome::Reject { detail, .. } = &outcomes[2] else {
        panic!("expected a rejection, got {:?}", outcomes[2]);
    };
    assert_eq!(
        detail,
        "http 400 document_parsing_exception: \"[1:43] failed to parse field [t] of type \
         [float] in document with id 'def'. Preview of field's value: 'hot'\" \
         (caused by number_format_exception: \"For input string: \\\"hot\\\"\")"
    );
}

#[test]
fn a_reading_outside_the_time_series_window_is_dead_lettered_as_timestamp_out_of_range() {
    // Elasticsearch 9.2's answer (seen on the real node), then 8.x's for the same case.
    let body = r#"{"errors":true,"items":[
        {"create":{"status":400,"error":{"type":"timestamp_error","reason":"the document timestamp [2026-11-02T06:20:29.000Z] is outside of ranges of currently writable indices [[2026-11-21T06:20:29Z,2026-11-23T06:20:29Z]]"}}},
        {"create":{"status":400,"error":{"type":"illegal_argument_exception","reason":"the document timestamp [2023-01-01T00:00:00.000Z] is outside of ranges of currently writable indices [[2024-01-01T00:00:00.000Z,2024-01-02T00:00:00.000Z]]"}}}
    ]}"#;
    let Plan::Items(outcomes) = classify(200, body.as_bytes(), &[OURS, OURS]) else {
        panic!("expected per-item outcomes");
    };
    for outcome in outcomes {
        match outcome {
            Outcome::Reject { reason, detail } => {
                assert_eq!(reason, TIMESTAMP_OUT_OF_RANGE);
                assert!(detail.contains("outside of ranges"), "{detail}");
            }
            other => panic!("expected a rejection, got {other:?}"),
        }
    }
}

#[test]
fn a_mapper_parsing_exception_is_a_mapping_conflict_too() {
    let body = r#"{"errors":true,"items":[{"create":{"status":400,"error":{"type":"mapper_parsing_exception","reason":"failed to parse field [t]"}}}]}"#;
    assert!(matches!(
        classify(200, body.as_bytes(), &[OURS]),
        Plan::Items(o) if matches!(o[0], Outcome::Reject { reason: MAPPING_CONFLICT, .. })
    ));
}

#[test]
fn a_field_mapped_otherwise_by_a_concurrent_request_is_a_mapping_conflict() {
    let body = r#"{"errors":true,"items":[{"create":{"status":400,"error":{"type":"illegal_argument_exception","reason":"mapper [temperature_c] cannot be changed from type [text] to [float]"}}}]}"#;
    assert!(matches!(
        classify(200, body.as_bytes(), &[OURS]),
        Plan::Items(o) if matches!(o[0], Outcome::Reject { reason: MAPPING_CONFLICT, .. })
    ));
    let other = r#"{"errors":true,"items":[{"create":{"status":400,"error":{"type":"illegal_argument_exception","reason":"something else"}}}]}"#;
    assert!(matches!(
        classify(200, other.as_bytes(), &[OURS]),
        Plan::Items(o) if matches!(o[0], Outcome::Reject { reason: REJECTED_BY_ELASTICSEARCH, .. })
    ));
}

#[test]
fn items_missing_from_the_response_are_retried_loudly_not_assumed_stored() {
    let body = r#"{"errors":true,"items":[{"create":{"status":201}}]}"#;
    let Plan::Items(outcomes) = classify(200, body.as_bytes(), &[OURS, OURS]) else {
        panic!("expected per-item outcomes");
    };
    assert_eq!(outcomes[0], Outcome::Stored);
    assert!(matches!(outcomes[1], Outcome::Retry { loud: true, .. }));
}

#[test]
fn a_response_without_errors_but_with_too_few_items_is_read_item_by_item() {
    // "errors": false settles a request at once only when it answers every item.
    let body = r#"{"errors":false,"items":[{"create":{"status":201}}]}"#;
    let Plan::Items(outcomes) = classify(200, body.as_bytes(), &[OURS, OURS]) else {
        panic!("expected per-item outcomes");
    };
    assert_eq!(outcomes[0], Outcome::Stored);
    assert!(matches!(outcomes[1], Outcome::Retry { loud: true, .. }));
}

#[test]
fn an_unreadable_success_body_retries_the_whole_request_loudly() {
    assert!(matches!(
        classify(200, b"<html>proxy</html>", &[OURS]),
        Plan::RetryAll { loud: true, .. }
    ));
}

#[test]
fn a_413_for_several_items_splits_the_batch() {
    assert_eq!(classify(413, b"", &[OURS; 3]), Plan::Split);
}

#[test]
fn a_413_for_a_single_item_means_it_is_too_large() {
    assert_eq!(classify(413, b"", &[OURS]), Plan::TooLarge);
}

#[test]
fn a_whole_request_429_or_5xx_retries_everything_quietly() {
    let body = r#"{"error":{"root_cause":[],"type":"es_rejected_execution_exception","reason":"rejected execution"},"status":429}"#;
    assert_eq!(
        classify(429, body.as_bytes(), &[OURS]),
        Plan::RetryAll {
            reason: "http 429 es_rejected_execution_exception: \"rejected execution\"".to_owned(),
            loud: false,
            blocked: false,
        }
    );
    for status in [500, 502, 503, 504] {
        assert!(matches!(
            classify(status, b"Bad Gateway", &[OURS]),
            Plan::RetryAll { loud: false, .. }
        ));
    }
}

#[test]
fn a_whole_request_security_failure_retries_everything_loudly() {
    let body = r#"{"error":{"root_cause":[{"type":"security_exception","reason":"unable to authenticate user [elastic] for REST request [/_bulk]"}],"type":"security_exception","reason":"unable to authenticate user [elastic] for REST request [/_bulk]","header":{"WWW-Authenticate":"Basic realm=\"security\", charset=\"UTF-8\""}},"status":401}"#;
    assert!(matches!(
        classify(401, body.as_bytes(), &[OURS]),
        Plan::RetryAll { loud: true, blocked: false, reason } if reason.contains("unable to authenticate")
    ));
    assert!(matches!(
        classify(403, b"", &[OURS]),
        Plan::RetryAll { loud: true, .. }
    ));
}

#[test]
fn a_whole_request_cluster_block_is_retried_as_a_block_not_as_an_unknown_failure() {
    let body = r#"{"error":{"root_cause":[],"type":"cluster_block_exception","reason":"blocked by: [SERVICE_UNAVAILABLE/2/no master];"},"status":403}"#;
    assert!(matches!(
        classify(403, body.as_bytes(), &[OURS]),
        Plan::RetryAll {
            loud: false,
            blocked: true,
            ..
        }
    ));
}

#[test]
fn a_flood_stage_block_answered_with_429_is_a_block_too() {
    let body = r#"{"errors":true,"items":[{"create":{"status":429,"error":{"type":"cluster_block_exception","reason":"index [.ds-x-000001] blocked by: [TOO_MANY_REQUESTS/12/disk usage exceeded flood-stage watermark, index has read-only-allow-delete block];"}}}]}"#;
    assert!(matches!(
        classify(200, body.as_bytes(), &[OURS]).clone(),
        Plan::Items(outcomes) if matches!(outcomes[0], Outcome::Retry { blocked: true, loud: false, .. })
    ));
}

#[test]
fn an_unknown_whole_request_status_retries_loudly_rather_than_dropping() {
    for status in [400, 404, 418] {
        assert!(matches!(
            classify(status, b"", &[OURS]),
            Plan::RetryAll { loud: true, .. }
        ));
    }
}

#[test]
fn very_long_reasons_are_truncated() {
    let long = "x".repeat(5000);
    let error = json!({"type": "t", "reason": long});
    assert!(describe(500, Some(&error)).len() < MAX_REASON_CHARS + 50);
}

/// What a gzip reader (flate2's, as the search node's would) makes of `gzipped`.
fn gunzip(gzipped: &[u8]) -> Vec<u8> {
    use std::io::Read;
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(gzipped)
        .read_to_end(&mut out)
        .expect("a valid gzip stream");
    out
}

#[test]
fn gzip_bodies_one_after_another_each_decompress_to_themselves() {
    // Pseudo-random bytes do not compress: the output outgrows its first allocation.
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    let noise: Vec<u8> = (0..3 << 20)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect();
    let ndjson = b"{\"create\":{\"_index\":\"t\"}}\n{\"temperature_c\":21.5}\n".repeat(5000);
    // The same thread's deflate state serves each in turn, reset in between.
    for body in [&ndjson[..], &[][..], &noise[..], b"{}\n", &ndjson[..]] {
        let gzipped = gzip(body);
        assert_eq!(gunzip(&gzipped), body, "a body of {} bytes", body.len());
    }
    assert!(gzip(&ndjson).len() < ndjson.len() / 5, "NDJSON compresses");
}

/// Runs `payload` on `topic` through the pipeline in `yaml` and encodes the document: what the
/// pipeline deferred and its source as stored, and the encoded source (without the
/// `event.ingested` each attempt stamps).
fn stored_both_ways(
    yaml: &str,
    topic: &str,
    payload: &str,
    user_properties: &[(&str, &str)],
) -> (crate::document::Deferred, Value, Value) {
    use crate::pipeline::{DecodeLimits, IndexPolicy, Pipelines};
    let pipeline = Pipelines::from_yaml(
        "t.yaml",
        yaml,
        &IndexPolicy::default(),
        &DecodeLimits::default(),
    )
    .expect("a valid pipeline");
    let mut message = message(payload.as_bytes());
    message.topic = topic.to_owned();
    message.user_properties = user_properties
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    let doc = match pipeline.process(&message) {
        Processed::Document(doc) => doc,
        other => panic!("expected a document, got {other:?}"),
    };
    let (deferred, shown) = (doc.deferred, Value::from(doc.as_stored(&message)));
    let routed = Routed {
        message,
        processed: Processed::Document(doc),
        ack: Ack::none(),
    };
    let item = sent(prepare(routed, "mqtt2es-dead-letter", 1 << 20, &[]));
    let mut encoded: Value = serde_json::from_slice(item.source()).expect("a JSON source");
    let event = encoded.as_object_mut().expect("an object").remove("event");
    assert!(event.is_some_and(|e| e["ingested"].is_string()));
    (deferred, shown, encoded)
}

#[test]
fn a_document_whose_metadata_the_encoder_writes_is_stored_as_the_pipeline_shows_it() {
    let route = "topics: ['#']\nstages:\n  - route: {index: mqtt2es-messages}";
    type Properties<'a> = &'a [(&'a str, &'a str)];
    let cases: [(&str, &str, Properties); 4] = [
        (r#"{"t": 21.5}"#, "home/\"quoted\"/t", &[]),
        // The payload's own `mqtt` is replaced, as the metadata always replaced it.
        (
            r#"{"mqtt": "spoofed", "t": 1}"#,
            "home/t",
            &[("unit", "°C"), ("unit", "K")],
        ),
        (r#"{"nested": {"mqtt": 1}}"#, "a/b", &[("", "")]),
        ("{}", "x", &[]),
    ];
    for (payload, topic, properties) in cases {
        let (deferred, shown, encoded) = stored_both_ways(route, topic, payload, properties);
        assert!(deferred.mqtt && deferred.reading_id, "{payload}");
        assert_eq!(encoded, shown, "{payload}");
        assert_eq!(encoded["mqtt"]["topic"], json!(topic));
        assert_eq!(
            encoded["mqtt2es"]["reading_id"].as_str().map(str::len),
            Some(22)
        );
    }
    let (_, shown, _) = stored_both_ways(route, "home/t", "{}", &[("unit", "°C"), ("unit", "K")]);
    assert_eq!(
        shown["mqtt"],
        json!({"topic": "home/t", "qos": 1, "retain": false, "user_properties": [
            {"key": "unit", "value": "°C"}, {"key": "unit", "value": "K"}]})
    );
}

#[test]
fn a_document_whose_stages_see_the_metadata_is_stored_as_the_pipeline_shows_it() {
    let cases = [
        // A stage that reads `mqtt`: it is in the document before the stages.
        "topics: ['#']\nstages:\n  - set: {field: origin, value: '{{mqtt.topic}}'}",
        "topics: ['#']\nstages:\n  - remove: {fields: [mqtt.retain]}",
        // A stage that writes under `mqtt2es`: the reading id joins it.
        "topics: ['#']\nstages:\n  - timestamp: {field: ts, on_skew: receive_time, max_future_s: 1}",
        // Fields make the `_id`: the payload digest goes with the reading id.
        "topics: ['#']\nstages:\n  - id: {fields: [n]}",
    ];
    // The timestamp stage refuses to write under a device's own non-object `mqtt2es`.
    let payload = r#"{"n": 7, "ts": "2999-01-01T00:00:00Z", "mqtt2es": {"firmware": 2}}"#;
    for yaml in cases {
        let (deferred, shown, encoded) = stored_both_ways(yaml, "home/t", payload, &[]);
        assert_eq!(encoded, shown, "{yaml}");
        assert!(encoded["mqtt2es"]["reading_id"].is_string(), "{yaml}");
        assert!(
            encoded["mqtt"]["qos"].is_number() || !deferred.mqtt,
            "{yaml}"
        );
    }
    let (deferred, shown, _) = stored_both_ways(cases[0], "home/t", "{}", &[]);
    assert!(!deferred.mqtt);
    assert_eq!(shown["origin"], json!("home/t"));
    let (deferred, shown, _) = stored_both_ways(cases[1], "home/t", "{}", &[]);
    assert!(!deferred.mqtt);
    assert_eq!(shown["mqtt"], json!({"topic": "home/t", "qos": 1}));
    let (deferred, shown, _) = stored_both_ways(cases[2], "home/t", payload, &[]);
    assert!(!deferred.reading_id);
    assert!(shown["mqtt2es"]["timestamp_fallback"].is_string());
}

#[test]
fn the_shipped_pipelines_leave_the_metadata_to_the_encoder() {
    use crate::pipeline::{DecodeLimits, IndexPolicy, Pipelines};
    let pipelines = Pipelines::load_dir(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("pipelines")
            .as_path(),
        &IndexPolicy::default(),
        &DecodeLimits::default(),
    )
    .expect("the shipped pipelines load");
    let received = crate::reading::rfc3339(message(b"").received_at);
    let telemetry = format!(r#"{{"temp_c": 21.5, "ts": "{received}"}}"#);
    for (topic, payload) in [
        ("sensors/home/pi1/telemetry", telemetry.as_str()),
        ("sensors/home/pi1/status", r#"{"state": "online"}"#),
        ("anything/else", "hello"),
    ] {
        let mut message = message(payload.as_bytes());
        message.topic = topic.to_owned();
        match pipelines.process(&message) {
            Processed::Document(doc) => assert_eq!(
                doc.deferred,
                crate::document::Deferred {
                    mqtt: true,
                    reading_id: true
                },
                "{topic}"
            ),
            other => panic!("{topic}: expected a document, got {other:?}"),
        }
    }
}
