"""Unit tests of the sensor parsing in thermometer.py (no broker, no hardware: a fake sysfs tree).

Run: python -m pytest devices/pi-thermometer   (the Rust integration tests in tests/it/thermometer.rs
run these too, and drive the whole program against a real Mosquitto).
"""

import errno
import os

import pytest

import thermometer
from thermometer import Hardware, SensorError, Simulated, parse_w1_slave, read_battery, read_milli

GOOD = "72 01 4b 46 7f ff 0e 10 57 : crc=57 YES\n72 01 4b 46 7f ff 0e 10 57 t=23125\n"
BAD_CRC = "72 01 4b 46 7f ff 0e 10 57 : crc=00 NO\n72 01 4b 46 7f ff 0e 10 57 t=23125\n"
POWER_ON = "50 05 4b 46 7f ff 0c 10 1c : crc=1c YES\n50 05 4b 46 7f ff 0c 10 1c t=85000\n"


def fake_tree(root, w1_slave=None, dht=None, name="28-0316a2795bff"):
    if w1_slave is not None:
        device = root / "bus" / "w1" / "devices" / name
        device.mkdir(parents=True)
        (device / "w1_slave").write_text(w1_slave)
    if dht is not None:
        device = root / "bus" / "iio" / "devices" / "iio:device0"
        device.mkdir(parents=True)
        (device / "name").write_text("dht11\n")
        (device / "in_temp_input").write_text(f"{dht[0]}\n")
        (device / "in_humidityrelative_input").write_text(f"{dht[1]}\n")
    return Hardware(str(root), None, dht_retries=2, dht_retry_delay_s=0.0, battery_file=None)


def test_a_good_w1_slave_gives_degrees_celsius():
    assert parse_w1_slave(GOOD) == 23.125


def test_a_negative_temperature_is_read():
    assert parse_w1_slave(GOOD.replace("t=23125", "t=-10062")) == -10.062


def test_a_crc_failure_is_refused():
    with pytest.raises(SensorError, match="CRC check failed"):
        parse_w1_slave(BAD_CRC)


def test_the_85_degree_power_on_value_is_refused():
    with pytest.raises(SensorError, match="power-on"):
        parse_w1_slave(POWER_ON)


@pytest.mark.parametrize("text", ["", "00 : crc=00 YES\n", GOOD.replace("t=23125", "t=abc"), GOOD.replace("t=", "x=")])
def test_a_truncated_or_garbled_w1_slave_is_refused(text):
    with pytest.raises(SensorError):
        parse_w1_slave(text)


def test_a_value_outside_the_ds18b20_range_is_refused():
    with pytest.raises(SensorError, match="outside"):
        parse_w1_slave(GOOD.replace("t=23125", "t=130000"))


def test_transient_dht_errors_are_retried_until_a_read_works(tmp_path, monkeypatch):
    path = tmp_path / "in_temp_input"
    path.write_text("21300\n")
    failures = [errno.EIO, errno.ETIMEDOUT]
    real_open = open

    def flaky_open(file, *args, **kwargs):
        if failures:
            raise OSError(failures.pop(0), os.strerror(errno.EIO))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(thermometer, "open", flaky_open, raising=False)
    sleeps = []
    assert read_milli(str(path), retries=2, retry_delay_s=1.5, sleep=sleeps.append) == 21.3
    assert sleeps == [1.5, 1.5]


def test_a_dht_read_that_keeps_failing_gives_up_after_the_retries(tmp_path, monkeypatch):
    def always_eio(file, *args, **kwargs):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(thermometer, "open", always_eio, raising=False)
    sleeps = []
    with pytest.raises(SensorError, match="3 attempt"):
        read_milli(str(tmp_path / "x"), retries=2, retry_delay_s=0.1, sleep=sleeps.append)
    assert len(sleeps) == 2


def test_a_missing_file_is_not_retried(tmp_path):
    sleeps = []
    with pytest.raises(SensorError):
        read_milli(str(tmp_path / "missing"), retries=5, retry_delay_s=1, sleep=sleeps.append)
    assert sleeps == []


@pytest.mark.parametrize("text,expected", [("0.93", 0.93), ("87", 0.87), ("100\n", 1.0), ("1", 1.0)])
def test_battery_is_a_fraction_or_a_percentage(tmp_path, text, expected):
    path = tmp_path / "capacity"
    path.write_text(text)
    assert read_battery(str(path)) == pytest.approx(expected)


@pytest.mark.parametrize("text", ["", "full", "-3", "250"])
def test_a_battery_file_without_a_charge_is_refused(tmp_path, text):
    path = tmp_path / "capacity"
    path.write_text(text)
    with pytest.raises(SensorError):
        read_battery(str(path))


def test_both_sensors_give_temperature_from_the_ds18b20_and_humidity_from_the_dht22(tmp_path):
    hardware = fake_tree(tmp_path, w1_slave=GOOD, dht=(24500, 48200))
    assert hardware.read() == {"temp_c": 23.125, "humidity": 48.2}


def test_a_ds18b20_crc_failure_leaves_temperature_out_instead_of_using_the_dht22(tmp_path):
    hardware = fake_tree(tmp_path, w1_slave=BAD_CRC, dht=(24500, 48200))
    assert hardware.read() == {"humidity": 48.2}


def test_without_a_ds18b20_the_dht22_gives_the_temperature(tmp_path):
    hardware = fake_tree(tmp_path, dht=(24500, 48200))
    assert hardware.read() == {"temp_c": 24.5, "humidity": 48.2}


def test_implausible_dht22_humidity_is_refused(tmp_path):
    hardware = fake_tree(tmp_path, w1_slave=GOOD, dht=(24500, 148200))
    assert hardware.read() == {"temp_c": 23.125}


def test_no_sensors_give_an_empty_reading(tmp_path):
    assert fake_tree(tmp_path).read() == {}


def test_simulated_readings_stay_plausible():
    sim = Simulated(seed=7)
    for _ in range(5000):
        reading = sim.read()
        assert 5.0 <= reading["temp_c"] <= 35.0
        assert 10.0 <= reading["humidity"] <= 95.0
        assert 0.0 <= reading["battery"] <= 1.0


@pytest.mark.parametrize("site", ["a/b", "+", "#", ""])
def test_a_site_that_is_not_one_topic_segment_is_a_usage_error(site):
    with pytest.raises(SystemExit) as exit:
        thermometer.parse_args(["--site", site])
    assert exit.value.code == 2


def test_a_password_file_gives_the_password_without_its_newline(tmp_path, monkeypatch):
    monkeypatch.delenv("MQTT_PASSWORD", raising=False)
    path = tmp_path / "device-password"
    path.write_text("s3cret\n")
    args = thermometer.parse_args(["--username", "device", "--password-file", str(path)])
    assert args.password == "s3cret"


def test_a_missing_password_file_or_a_second_password_is_a_usage_error(tmp_path, monkeypatch):
    monkeypatch.delenv("MQTT_PASSWORD", raising=False)
    for argv in (
        ["--password-file", str(tmp_path / "missing")],
        ["--password", "x", "--password-file", str(tmp_path / "missing")],
    ):
        with pytest.raises(SystemExit) as exit:
            thermometer.parse_args(argv)
        assert exit.value.code == 2


def test_timestamps_are_rfc3339_utc_with_milliseconds():
    from datetime import datetime, timezone

    assert thermometer.timestamp(datetime(2026, 11, 22, 10, 0, 0, 123456, tzinfo=timezone.utc)) == "2026-11-22T10:00:00.123Z"
