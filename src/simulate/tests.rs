//! `mqtt2es simulate`'s arguments checked into a `Fleet`: refused rates, QoS, counts and sites,
//! the password file, progress.

use std::time::Duration;

use super::*;
use crate::secret::Secret;

fn args() -> FleetArgs {
    FleetArgs {
        host: "localhost".into(),
        port: 1883,
        username: None,
        password: None,
        password_file: None,
        site: "lab".into(),
        device_prefix: "pi-".into(),
        devices: 3,
        rate: 2.0,
        qos: 1,
        count: None,
        duration_s: None,
        progress_s: 10.0,
        drain_s: 10.0,
    }
}

#[test]
fn a_rate_becomes_the_period_between_readings() {
    let fleet = Fleet::new(args()).expect("valid");
    assert_eq!(fleet.period, Duration::from_millis(500));
    assert_eq!(fleet.device(2), "pi-2");
    assert_eq!(fleet.progress, Some(Duration::from_secs(10)));
}

#[test]
fn a_zero_negative_or_infinite_rate_is_refused() {
    for rate in [0.0, -1.0, f64::INFINITY, f64::NAN] {
        let error = Fleet::new(FleetArgs { rate, ..args() }).expect_err("invalid rate");
        assert!(error.to_string().starts_with("--rate"), "{error}");
    }
}

#[test]
fn qos_3_and_zero_devices_are_refused() {
    assert_eq!(
        Fleet::new(FleetArgs { qos: 3, ..args() }).expect_err("qos 3"),
        FleetError::Qos(3)
    );
    assert_eq!(
        Fleet::new(FleetArgs {
            devices: 0,
            ..args()
        })
        .expect_err("no devices"),
        FleetError::NoDevices
    );
}

#[test]
fn a_site_that_is_not_one_topic_segment_is_refused() {
    for site in ["", "a/b", "+", "x#"] {
        let error = Fleet::new(FleetArgs {
            site: site.into(),
            ..args()
        })
        .expect_err("bad site");
        assert!(error.to_string().contains(&format!("{site:?}")), "{error}");
    }
}

#[test]
fn a_password_file_gives_the_password_without_its_newline_and_a_missing_one_is_named() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("device-password");
    std::fs::write(&path, "s3cret\n").expect("write");
    let fleet = Fleet::new(FleetArgs {
        username: Some("device".into()),
        password_file: Some(path.clone()),
        ..args()
    })
    .expect("valid");
    assert_eq!(fleet.password.as_ref().map(Secret::expose), Some("s3cret"));
    let missing = dir.path().join("missing");
    let error = Fleet::new(FleetArgs {
        password_file: Some(missing.clone()),
        ..args()
    })
    .expect_err("no such file");
    assert!(
        error.to_string().contains(&format!("{missing:?}")),
        "{error}"
    );
}

#[test]
fn progress_0_turns_progress_off() {
    let fleet = Fleet::new(FleetArgs {
        progress_s: 0.0,
        ..args()
    })
    .expect("valid");
    assert_eq!(fleet.progress, None);
}
