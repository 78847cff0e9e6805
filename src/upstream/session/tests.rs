//! How a connection's end is judged: the reconnect backoff (growing, or starting over after a
//! stable connection) and refused, unreachable or lost.

use super::*;

fn settings_with_backoff(initial_ms: u64, max_ms: u64) -> UpstreamSettings {
    UpstreamSettings {
        reconnect_initial_ms: initial_ms,
        reconnect_max_ms: max_ms,
        ..UpstreamSettings::default()
    }
}

#[test]
fn a_connection_that_dies_at_once_keeps_the_backoff_growing() {
    let settings = settings_with_backoff(100, 60_000);
    let mut delays = backoff(&settings);
    for _ in 0..8 {
        delays.next();
    }
    let just_now = Some(Instant::now());
    after_disconnect(&mut delays, just_now, &settings);
    let continued = delays;
    // After eight failures the raw delay is far above the first one; a reset would start
    // again at about 100 ms. Jitter draws from [0, delay), so compare against a fresh start's
    // ceiling many times to make a false pass vanishingly unlikely.
    let draws: Vec<Duration> = continued.take(20).collect();
    assert!(
        draws.iter().any(|d| *d > Duration::from_millis(2_000)),
        "{draws:?}"
    );
}

#[test]
fn a_connection_that_was_stable_starts_the_backoff_over() {
    let settings = settings_with_backoff(100, 60_000);
    let mut delays = backoff(&settings);
    for _ in 0..8 {
        delays.next();
    }
    let long_ago = Instant::now().checked_sub(STABLE_CONNECTION + Duration::from_secs(1));
    after_disconnect(&mut delays, long_ago, &settings);
    let mut fresh = delays;
    let first = fresh.next().unwrap_or_default();
    assert!(first <= Duration::from_millis(200), "{first:?}");
}

#[test]
fn a_refusal_is_reported_as_such_whether_or_not_a_session_came_about_before() {
    assert_eq!(Failure::classify(true, false), Failure::Refused);
    assert_eq!(Failure::classify(true, true), Failure::Refused);
}

#[test]
fn a_failure_before_connack_is_unreachable_and_after_it_lost() {
    assert_eq!(Failure::classify(false, false), Failure::Unreachable);
    assert_eq!(Failure::classify(false, true), Failure::Lost);
}
