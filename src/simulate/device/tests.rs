//! One virtual device without a broker: its readings against the data contract, what counts as
//! an acknowledged reading, and what a lost session forgets.

use super::*;

#[test]
fn readings_follow_the_data_contract_and_stay_plausible() {
    let mut rng = StdRng::seed_from_u64(7);
    let mut walk = Walk::start(&mut rng);
    let now = chrono::DateTime::parse_from_rfc3339("2026-11-22T10:00:00.123Z")
        .expect("time")
        .to_utc();
    for _ in 0..10_000 {
        let reading: serde_json::Value =
            serde_json::from_str(&walk.step(&mut rng, now)).expect("JSON");
        let object = reading.as_object().expect("an object");
        let mut keys: Vec<&str> = object.keys().map(String::as_str).collect();
        keys.sort();
        assert_eq!(keys, ["battery", "humidity", "temp_c", "ts"]);
        assert_eq!(reading["ts"], "2026-11-22T10:00:00.123Z");
        let temp = reading["temp_c"].as_f64().expect("number");
        let humidity = reading["humidity"].as_f64().expect("number");
        let battery = reading["battery"].as_f64().expect("number");
        assert!((5.0..=35.0).contains(&temp), "{reading}");
        assert!((10.0..=95.0).contains(&humidity), "{reading}");
        assert!((0.0..=1.0).contains(&battery), "{reading}");
    }
}

#[test]
fn acknowledgements_of_status_messages_are_not_counted_as_readings() {
    let mut outstanding = Outstanding::default();
    outstanding.queue(Kind::Status);
    outstanding.queue(Kind::Reading);
    outstanding.queue(Kind::Reading);
    assert_eq!(outstanding.sent(1), Sent::InFlight(Kind::Status));
    assert_eq!(outstanding.sent(2), Sent::InFlight(Kind::Reading));
    // A reconnect re-sends 2 with its old id; it is not the third publish.
    assert_eq!(outstanding.sent(2), Sent::Resent);
    assert_eq!(outstanding.sent(3), Sent::InFlight(Kind::Reading));
    assert_eq!(outstanding.acked(1), Some(Kind::Status));
    assert_eq!(outstanding.acked(2), Some(Kind::Reading));
    assert!(!outstanding.is_empty());
    assert_eq!(outstanding.acked(3), Some(Kind::Reading));
    assert!(outstanding.is_empty());
}

#[test]
fn qos_0_publishes_complete_when_sent_and_a_lost_session_forgets_in_flight_readings() {
    let mut outstanding = Outstanding::default();
    outstanding.queue(Kind::Reading);
    assert_eq!(outstanding.sent(0), Sent::Completed(Kind::Reading));
    outstanding.queue(Kind::Reading);
    outstanding.queue(Kind::Status);
    outstanding.sent(5);
    outstanding.sent(6);
    assert_eq!(outstanding.forget_in_flight(), 1);
    assert!(outstanding.is_empty());
}
