#!/usr/bin/env python3
"""A Raspberry Pi thermometer that publishes its readings to mqtt2es (or any MQTT broker).

Reads a DS18B20 (1-wire) and a DHT22 (through the kernel's IIO driver) from sysfs, and publishes
one JSON reading per interval at QoS 1 to sensors/<site>/<device>/telemetry:

    {"temp_c": 21.44, "humidity": 48.2, "battery": 0.93, "ts": "2026-11-22T10:00:00.000Z"}

Device status goes, retained, to sensors/<site>/<device>/status: {"state":"online"} after each
connect, {"state":"offline"} as the MQTT last will (published by the broker when the Pi drops off
the network or this program dies) and on a clean exit.

The network can come and go: paho-mqtt reconnects on its own with a capped exponential backoff,
and readings taken while offline wait in memory (up to --max-queued) and are sent after the
reconnect, with the time they were taken. A sensor read that fails (a 1-wire CRC error, the
DS18B20's 85 degC power-on value, a DHT22 timeout that outlasts the retries) leaves that field out
of the reading; a reading with no valid field is not published at all.

Only dependency: paho-mqtt 2.x (pip install paho-mqtt).
"""

from __future__ import annotations

import argparse
import errno
import glob
import json
import logging
import math
import os
import random
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone

log = logging.getLogger("thermometer")

# The DS18B20 reports 85.000 degC from its power-on reset register when a conversion did not
# happen (brown-out, a read right after power-up). It is a real-looking temperature, so it is
# refused rather than published; a genuine 85 degC in a room is not a reading we need.
DS18B20_POWER_ON_MILLI = 85000
DS18B20_RANGE_C = (-55.0, 125.0)
DHT22_TEMP_RANGE_C = (-40.0, 80.0)
# Errors the dht11 IIO driver returns when the sensor's reply is missing or corrupt; the next
# read usually works.
TRANSIENT_ERRNOS = {errno.EIO, errno.ETIMEDOUT, errno.EAGAIN, errno.EBUSY}


ONLINE = '{"state":"online"}'
OFFLINE = '{"state":"offline"}'


class SensorError(Exception):
    """A read that produced no trustworthy value; the reading goes out without that field."""


# --- sensors ---------------------------------------------------------------------------------


def parse_w1_slave(text: str, name: str = "ds18b20") -> float:
    """Degrees Celsius from the two lines of a DS18B20's w1_slave file.

    Line 1 ends with the CRC verdict (YES/NO), line 2 with t=<millidegrees>:
        72 01 4b 46 7f ff 0e 10 57 : crc=57 YES
        72 01 4b 46 7f ff 0e 10 57 t=23125
    """
    lines = text.strip().splitlines()
    if len(lines) < 2:
        raise SensorError(f"{name}: incomplete w1_slave ({text.strip()!r})")
    if not lines[0].strip().endswith("YES"):
        raise SensorError(f"{name}: CRC check failed ({lines[0].strip()!r})")
    _, sep, value = lines[1].rpartition("t=")
    if not sep:
        raise SensorError(f"{name}: no t= in {lines[1].strip()!r}")
    try:
        milli = int(value.strip())
    except ValueError:
        raise SensorError(f"{name}: t={value.strip()!r} is not a number") from None
    if milli == DS18B20_POWER_ON_MILLI:
        raise SensorError(f"{name}: 85 degC power-on value, no conversion happened")
    celsius = milli / 1000.0
    if not DS18B20_RANGE_C[0] <= celsius <= DS18B20_RANGE_C[1]:
        raise SensorError(f"{name}: {celsius} degC is outside the sensor's range")
    return celsius


def find_ds18b20(sysfs_root: str, wanted: str | None = None) -> str | None:
    """Path of the w1_slave file of the DS18B20 `wanted` (e.g. 28-0316a2795bff), else the first."""
    pattern = os.path.join(sysfs_root, "bus", "w1", "devices", wanted or "28-*", "w1_slave")
    found = sorted(glob.glob(pattern))
    return found[0] if found else None


def find_dht22(sysfs_root: str) -> str | None:
    """The IIO device directory of a DHT11/DHT22 (the dht11 driver handles both)."""
    for device in sorted(glob.glob(os.path.join(sysfs_root, "bus", "iio", "devices", "iio:device*"))):
        if os.path.exists(os.path.join(device, "in_humidityrelative_input")):
            return device
    return None


def read_milli(path: str, retries: int, retry_delay_s: float, sleep=time.sleep) -> float:
    """A sysfs milli-unit value; transient driver errors are retried `retries` times."""
    attempt = 0
    while True:
        try:
            with open(path, encoding="ascii") as file:
                text = file.read().strip()
            try:
                return int(text) / 1000.0
            except ValueError:
                raise SensorError(f"{path}: {text!r} is not a number") from None
        except OSError as error:
            if error.errno not in TRANSIENT_ERRNOS or attempt >= retries:
                raise SensorError(f"{path}: {os.strerror(error.errno or 0)} after {attempt + 1} attempt(s)") from None
            attempt += 1
            sleep(retry_delay_s)


def read_dht22(device_dir: str, retries: int, retry_delay_s: float, sleep=time.sleep) -> tuple[float, float]:
    """(temperature degC, relative humidity %) from the dht11 IIO driver's sysfs files."""
    temp = read_milli(os.path.join(device_dir, "in_temp_input"), retries, retry_delay_s, sleep)
    humidity = read_milli(os.path.join(device_dir, "in_humidityrelative_input"), retries, retry_delay_s, sleep)
    if not DHT22_TEMP_RANGE_C[0] <= temp <= DHT22_TEMP_RANGE_C[1]:
        raise SensorError(f"dht22: {temp} degC is outside the sensor's range")
    if not 0.0 <= humidity <= 100.0:
        raise SensorError(f"dht22: {humidity} % humidity is outside 0..100")
    return temp, humidity


def read_battery(path: str) -> float:
    """Battery charge as a fraction 0..1; the file holds a fraction or a percentage (as
    /sys/class/power_supply/*/capacity does)."""
    try:
        with open(path, encoding="ascii") as file:
            text = file.read().strip()
    except OSError as error:
        raise SensorError(f"battery: {path}: {error.strerror}") from None
    try:
        value = float(text)
    except ValueError:
        raise SensorError(f"battery: {text!r} in {path} is not a number") from None
    if value > 1.0:
        value /= 100.0
    if not 0.0 <= value <= 1.0 or math.isnan(value):
        raise SensorError(f"battery: {text!r} in {path} is not a fraction or a percentage")
    return value


@dataclass
class Hardware:
    """The real sensors, found under a sysfs root (/sys, or a fake tree in tests)."""

    sysfs_root: str
    ds18b20: str | None
    dht_retries: int
    dht_retry_delay_s: float
    battery_file: str | None

    def read(self) -> dict:
        reading: dict = {}
        # The DS18B20 is the better thermometer; when one is fitted, a failed read leaves
        # temp_c out rather than mixing in the DHT22's (typically warmer) figure.
        w1_slave = find_ds18b20(self.sysfs_root, self.ds18b20)
        if w1_slave:
            name = os.path.basename(os.path.dirname(w1_slave))
            try:
                with open(w1_slave, encoding="ascii") as file:
                    reading["temp_c"] = round(parse_w1_slave(file.read(), name), 3)
            except SensorError as error:
                log.warning("skipped reading: %s", error)
            except OSError as error:
                log.warning("skipped reading: %s: %s", name, error.strerror)
        dht = find_dht22(self.sysfs_root)
        if dht:
            try:
                temp, humidity = read_dht22(dht, self.dht_retries, self.dht_retry_delay_s)
                reading["humidity"] = round(humidity, 1)
                if not w1_slave:
                    reading["temp_c"] = round(temp, 2)
            except SensorError as error:
                log.warning("skipped reading: %s", error)
        if not w1_slave and not dht:
            log.warning("skipped reading: no DS18B20 under %s/bus/w1 and no DHT22 under %s/bus/iio",
                        self.sysfs_root, self.sysfs_root)
        if self.battery_file:
            try:
                reading["battery"] = round(read_battery(self.battery_file), 3)
            except SensorError as error:
                log.warning("skipped reading: %s", error)
        return reading


class Simulated:
    """Plausible readings without hardware: a random walk around room conditions, a battery
    that slowly drains."""

    def __init__(self, seed: int | None = None):
        self.random = random.Random(seed)
        self.temp = self.random.uniform(18.0, 24.0)
        self.humidity = self.random.uniform(35.0, 60.0)
        self.battery = self.random.uniform(0.6, 1.0)

    def read(self) -> dict:
        self.temp = min(35.0, max(5.0, self.temp + self.random.gauss(0.0, 0.1)))
        self.humidity = min(95.0, max(10.0, self.humidity + self.random.gauss(0.0, 0.4)))
        self.battery = max(0.0, self.battery - self.random.uniform(0.0, 0.0005))
        return {
            "temp_c": round(self.temp, 2),
            "humidity": round(self.humidity, 1),
            "battery": round(self.battery, 3),
        }


def timestamp(now: datetime | None = None) -> str:
    """RFC 3339 UTC with milliseconds: mqtt2es keeps it as @timestamp when plausible."""
    now = now or datetime.now(timezone.utc)
    return now.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


# --- MQTT ------------------------------------------------------------------------------------


class Publisher:
    """One paho-mqtt client: last will, online status on every connect, reconnects with
    backoff in paho's network thread, and a count of readings the broker has not acknowledged."""

    def __init__(self, args: argparse.Namespace):
        import paho.mqtt.client as mqtt  # imported here so --help works without paho installed

        self.mqtt = mqtt
        self.telemetry_topic = f"sensors/{args.site}/{args.device}/telemetry"
        self.status_topic = f"sensors/{args.site}/{args.device}/status"
        self.host, self.port = args.host, args.port
        client_id = args.client_id or f"thermometer-{args.site}-{args.device}"
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=mqtt.MQTTv311,
        )
        if args.username:
            self.client.username_pw_set(args.username, args.password)
        if args.tls or args.ca_file:
            self.client.tls_set(ca_certs=args.ca_file)
        self.client.will_set(self.status_topic, OFFLINE, qos=1, retain=True)
        self.client.reconnect_delay_set(min_delay=1, max_delay=max(1, args.reconnect_max_s))
        # Readings wait here while the broker is unreachable; past this many the newest are
        # dropped (and logged) rather than letting memory grow without bound on a Pi.
        self.client.max_queued_messages_set(args.max_queued)
        if args.verbose:
            self.client.enable_logger(log)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_publish = self._on_publish
        # Acknowledgements arrive on paho's thread. This lock is never held while calling into
        # paho, so it cannot deadlock against paho's own locks (on_publish runs under them).
        self.lock = threading.Condition()
        self.sent: set[int] = set()
        self.acked: set[int] = set()
        self.status_mids: set[int] = set()
        self.connected = threading.Event()

    def start(self) -> None:
        self.client.connect_async(self.host, self.port, keepalive=30)
        self.client.loop_start()

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            log.error("broker %s:%s refused the connection: %s", self.host, self.port, reason_code)
            return
        log.info("connected to %s:%s; publishing to %s", self.host, self.port, self.telemetry_topic)
        info = client.publish(self.status_topic, ONLINE, qos=1, retain=True)
        with self.lock:
            self.status_mids.add(info.mid)
        self.connected.set()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        self.connected.clear()
        if reason_code != 0:
            log.warning("connection to %s:%s lost (%s); reconnecting", self.host, self.port, reason_code)

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        with self.lock:
            self.acked.add(mid)
            self.lock.notify_all()

    def publish(self, reading: dict) -> bool:
        payload = json.dumps(reading, separators=(",", ":"))
        info = self.client.publish(self.telemetry_topic, payload, qos=1)
        if info.rc == self.mqtt.MQTT_ERR_QUEUE_SIZE:
            log.error("dropped a reading: %d readings already wait for the broker", len(self.sent))
            return False
        with self.lock:
            self.sent.add(info.mid)
            self._forget_acknowledged()
            waiting = len(self.sent)
        if info.rc == self.mqtt.MQTT_ERR_NO_CONN:
            log.info("queued reading while disconnected (%d waiting): %s", waiting, payload)
        else:
            log.info("published %s", payload)
        return True

    def _forget_acknowledged(self) -> None:
        done = self.sent & self.acked
        self.sent -= done
        self.acked -= done
        stale = self.acked & self.status_mids
        self.acked -= stale
        self.status_mids -= stale

    def drain(self, timeout_s: float) -> int:
        """Waits until the broker acknowledged every reading; returns how many it did not."""
        deadline = time.monotonic() + timeout_s
        with self.lock:
            while True:
                self._forget_acknowledged()
                left = deadline - time.monotonic()
                if not self.sent or left <= 0:
                    return len(self.sent)
                self.lock.wait(min(left, 0.5))

    def stop(self, timeout_s: float) -> int:
        """Clean shutdown: deliver what waits, say offline (retained), disconnect. Returns the
        number of readings the broker never acknowledged."""
        undelivered = self.drain(timeout_s)
        if self.connected.is_set():
            info = self.client.publish(self.status_topic, OFFLINE, qos=1, retain=True)
            try:
                info.wait_for_publish(timeout=5)
            except (RuntimeError, ValueError) as error:
                log.warning("could not publish the offline status: %s", error)
        self.client.disconnect()
        self.client.loop_stop()
        return undelivered


# --- command line ----------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="thermometer.py",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=__doc__.split("\n\n")[0],
        epilog="""\
hardware (Raspberry Pi OS, /boot/firmware/config.txt):
  dtoverlay=w1-gpio,gpiopin=4        DS18B20 data on GPIO 4 (4.7k pull-up to 3.3V)
  dtoverlay=dht11,gpiopin=17         DHT22 data on GPIO 17 (the dht11 driver reads DHT22s too)
then reboot; the sensors appear as /sys/bus/w1/devices/28-*/w1_slave and
/sys/bus/iio/devices/iio:device0/in_{temp,humidityrelative}_input.

examples:
  thermometer.py --host mqtt2es.lan --site home --device livingroom
  thermometer.py --simulate --interval 2 --count 5      five fake readings, then exit
environment: MQTT_HOST, MQTT_PORT, MQTT_USERNAME, MQTT_PASSWORD, MQTT_PASSWORD_FILE, THERMO_SITE,
THERMO_DEVICE give defaults (the password is better there than on a command line, where ps shows it).
exit status: 0 clean exit (SIGTERM/Ctrl-C or --count reached, every reading delivered),
1 readings left undelivered at exit, 2 usage error.""",
    )
    env = os.environ.get
    mqtt = parser.add_argument_group("broker")
    mqtt.add_argument("--host", default=env("MQTT_HOST", "localhost"), help="MQTT broker host (default: %(default)s)")
    mqtt.add_argument("--port", type=int, default=int(env("MQTT_PORT", "1883")), help="(default: %(default)s)")
    mqtt.add_argument("--username", default=env("MQTT_USERNAME"), help="MQTT user name")
    mqtt.add_argument("--password", default=env("MQTT_PASSWORD"), help="MQTT password (prefer MQTT_PASSWORD)")
    mqtt.add_argument("--password-file", default=env("MQTT_PASSWORD_FILE"),
                      help="read the MQTT password from this file, trailing newline ignored (a mounted secret, "
                           "systemd's LoadCredential=; docker-compose.yml's device password)")
    mqtt.add_argument("--tls", action="store_true", help="connect with TLS, trusting the system's CAs")
    mqtt.add_argument("--ca-file", help="connect with TLS, trusting this CA certificate (PEM)")
    mqtt.add_argument("--client-id", help="MQTT client id (default: thermometer-<site>-<device>)")
    mqtt.add_argument("--reconnect-max-s", type=int, default=60,
                      help="longest wait between reconnect attempts; the first is 1 s (default: %(default)s)")
    mqtt.add_argument("--max-queued", type=int, default=10000,
                      help="readings kept while offline; newer ones are dropped past this (default: %(default)s)")
    what = parser.add_argument_group("readings")
    what.add_argument("--site", default=env("THERMO_SITE", "home"),
                      help="topic segment: sensors/<site>/<device>/... (default: %(default)s)")
    what.add_argument("--device", default=env("THERMO_DEVICE", socket.gethostname().split(".")[0].lower()),
                      help="topic segment (default: this host's name, %(default)s)")
    what.add_argument("--interval", type=float, default=10.0, help="seconds between readings (default: %(default)s)")
    what.add_argument("--count", type=int, default=0,
                      help="publish this many readings, deliver them, then exit (default: run until stopped)")
    what.add_argument("--drain-timeout", type=float, default=30.0,
                      help="at exit, seconds to wait for the broker to acknowledge queued readings (default: %(default)s)")
    hw = parser.add_argument_group("sensors")
    hw.add_argument("--simulate", action="store_true", help="no hardware: random-walk readings")
    hw.add_argument("--seed", type=int, help="random seed for --simulate")
    hw.add_argument("--sysfs-root", default="/sys", help="where sysfs is; tests point this at a fake tree (default: %(default)s)")
    hw.add_argument("--ds18b20", help="1-wire id of the DS18B20 to read, e.g. 28-0316a2795bff (default: the first)")
    hw.add_argument("--battery-file",
                    help="file holding the battery charge as a fraction or percentage, e.g. "
                         "/sys/class/power_supply/battery/capacity (default: no battery field)")
    hw.add_argument("--dht-retries", type=int, default=4, help="retries of a failed DHT22 read (default: %(default)s)")
    hw.add_argument("--dht-retry-delay", type=float, default=2.0,
                    help="seconds between DHT22 retries; the sensor needs 2 s between reads (default: %(default)s)")
    parser.add_argument("--verbose", "-v", action="store_true", help="log every MQTT packet")
    args = parser.parse_args(argv)
    for name in ("site", "device"):
        value = getattr(args, name)
        if not value or any(c in value for c in "/+#") or value != value.strip():
            parser.error(f"--{name} {value!r} cannot be an MQTT topic segment")
    if args.interval <= 0:
        parser.error(f"--interval {args.interval} must be positive")
    if args.password_file:
        if args.password:
            parser.error("--password-file and --password (or MQTT_PASSWORD) are both given; choose one")
        try:
            with open(args.password_file, encoding="utf-8") as file:
                args.password = file.read().rstrip("\r\n")
        except OSError as e:
            parser.error(f"--password-file {args.password_file}: {e.strerror}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    sensors = Simulated(args.seed) if args.simulate else Hardware(
        sysfs_root=args.sysfs_root,
        ds18b20=args.ds18b20,
        dht_retries=args.dht_retries,
        dht_retry_delay_s=args.dht_retry_delay,
        battery_file=args.battery_file,
    )
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())

    publisher = Publisher(args)
    publisher.start()
    # Give the first connection a moment, so a normal start does not begin with a queued
    # reading; an unreachable broker only delays the first reading by this much.
    publisher.connected.wait(min(args.interval, 5.0))
    published = 0
    next_at = time.monotonic()
    while not stop.is_set():
        reading = sensors.read()
        if reading:
            reading["ts"] = timestamp()
            if publisher.publish(reading):
                published += 1
        if args.count and published >= args.count:
            break
        # After a stall (a suspended Pi, a slow sensor) take the next reading on time instead of
        # catching up with a burst.
        next_at = max(next_at + args.interval, time.monotonic())
        stop.wait(max(0.0, next_at - time.monotonic()))

    undelivered = publisher.stop(args.drain_timeout)
    if undelivered:
        log.error("exiting with %d reading(s) the broker never acknowledged", undelivered)
        return 1
    log.info("stopped after %d reading(s), all delivered", published)
    return 0


if __name__ == "__main__":
    sys.exit(main())
