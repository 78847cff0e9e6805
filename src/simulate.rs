//! `mqtt2es simulate`: a fleet of virtual Raspberry Pi thermometers for demos and load.
//!
//! Each device behaves like devices/pi-thermometer on a real Pi: its own MQTT connection with
//! a last will (`{"state":"offline"}`, retained) on `sensors/<site>/<device>/status`,
//! `{"state":"online"}` retained after every connect, and random-walk readings on
//! `sensors/<site>/<device>/telemetry` in the JSON of the data contract.
//!
//! The decision a reader may question: one connection per device rather than many devices
//! multiplexed over a few connections. A will belongs to a connection, the broker's per-client
//! in-flight window and mqtt2es's per-connection acks shape throughput, and a real fleet is many
//! connections; a simulator that shared them would measure something else. A few thousand
//! connections cost a few thousand tokio tasks and sockets, which is fine.
//!
//! Each device runs two tasks: a producer on a timer that queues readings with the
//! non-blocking `try_publish` (a full queue drops the reading and counts it), and the rumqttc
//! event loop, which is never raced against the timer (its connect is not cancel-safe). Sessions
//! are persistent (clean_session=false, stable client ids), because rumqttc forgets unacknowledged
//! publishes when it reconnects to a broker that has no session for it.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rumqttc::{
    AsyncClient, ConnectionError, Event, EventLoop, LastWill, MqttOptions, Outgoing, Packet, QoS,
};
use serde_json::json;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::secret::Secret;

const ONLINE: &str = r#"{"state":"online"}"#;
const OFFLINE: &str = r#"{"state":"offline"}"#;
/// Readings a device keeps queued for its connection (while the broker is slow or away)
/// before new ones are dropped and counted.
const QUEUE_CAPACITY: usize = 1000;

/// The fleet to simulate, checked (see `Fleet::new`).
#[derive(Debug, Clone)]
pub struct Fleet {
    pub host: String,
    pub port: u16,
    pub username: Option<String>,
    pub password: Option<Secret>,
    pub site: String,
    /// Device names are this prefix and a number from 1: `pi-1`, `pi-2`, …
    pub device_prefix: String,
    pub devices: usize,
    /// Time between two readings of one device.
    pub period: Duration,
    pub qos: QoS,
    /// Readings per device, then stop; None: until the duration ends or a signal.
    pub count: Option<u64>,
    pub duration: Option<Duration>,
    /// How often progress is logged; None: never.
    pub progress: Option<Duration>,
    /// At the end, how long devices wait for the broker to acknowledge what they queued.
    pub drain: Duration,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum FleetError {
    #[error("--rate {0}: must be a positive number of readings per second per device")]
    Rate(f64),
    #[error("--devices 0: at least one device is needed")]
    NoDevices,
    #[error("--qos {0}: must be 0, 1 or 2")]
    Qos(u8),
    #[error("--{flag} {value:?}: must be one MQTT topic segment (no '/', '+', '#', not empty)")]
    Segment { flag: &'static str, value: String },
    #[error("--password-file {path:?}: {reason}")]
    PasswordFile { path: PathBuf, reason: String },
}

/// Unchecked fleet parameters: the command line of `mqtt2es simulate`.
#[derive(Debug, Clone, clap::Args)]
pub struct FleetArgs {
    /// The MQTT broker: mqtt2es's embedded broker or any other.
    #[arg(long, default_value = "localhost")]
    pub host: String,
    #[arg(long, default_value_t = 1883)]
    pub port: u16,
    #[arg(long)]
    pub username: Option<String>,
    #[arg(long, env = "MQTT2ES_SIMULATE_PASSWORD", hide_env_values = true)]
    pub password: Option<Secret>,
    /// Read the password from this file (trailing newline ignored), e.g. a mounted secret;
    /// docker-compose.yml's simulators use the device password its init service generated.
    #[arg(long, conflicts_with = "password")]
    pub password_file: Option<PathBuf>,
    /// The <site> topic segment; mqtt2es stores it in mqtt2es-telemetry-<site>.
    #[arg(long, default_value = "sim")]
    pub site: String,
    /// Devices are named <device-prefix>1 .. <device-prefix>N.
    #[arg(long, default_value = "pi-")]
    pub device_prefix: String,
    /// Number of devices, each with its own connection.
    #[arg(long, default_value_t = 5)]
    pub devices: usize,
    /// Readings per second per device (0.1 = one every 10 s).
    #[arg(long, default_value_t = 1.0)]
    pub rate: f64,
    /// QoS of the readings (status messages are always QoS 1).
    #[arg(long, default_value_t = 1)]
    pub qos: u8,
    /// Readings per device, then stop.
    #[arg(long)]
    pub count: Option<u64>,
    /// Stop after this many seconds.
    #[arg(long)]
    pub duration_s: Option<f64>,
    /// Seconds between progress lines in the log; 0: none.
    #[arg(long, default_value_t = 10.0)]
    pub progress_s: f64,
    /// At the end, seconds to wait for the broker to acknowledge what is queued.
    #[arg(long, default_value_t = 10.0)]
    pub drain_s: f64,
}

impl Fleet {
    pub fn new(args: FleetArgs) -> Result<Fleet, FleetError> {
        if !(args.rate.is_finite() && args.rate > 0.0) {
            return Err(FleetError::Rate(args.rate));
        }
        if args.devices == 0 {
            return Err(FleetError::NoDevices);
        }
        let qos = rumqttc::qos(args.qos).map_err(|_| FleetError::Qos(args.qos))?;
        for (flag, value) in [("site", &args.site), ("device-prefix", &args.device_prefix)] {
            let empty_ok = flag == "device-prefix";
            if (value.is_empty() && !empty_ok) || value.contains(['/', '+', '#']) {
                return Err(FleetError::Segment {
                    flag,
                    value: value.clone(),
                });
            }
        }
        let password = match &args.password_file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| FleetError::PasswordFile {
                    path: path.clone(),
                    reason: e.to_string(),
                })?;
                Some(Secret::new(text.trim_end_matches(['\r', '\n'])))
            }
            None => args.password,
        };
        let seconds = |s: f64| (s.is_finite() && s > 0.0).then(|| Duration::from_secs_f64(s));
        Ok(Fleet {
            host: args.host,
            port: args.port,
            username: args.username,
            password,
            site: args.site,
            device_prefix: args.device_prefix,
            devices: args.devices,
            period: Duration::from_secs_f64(1.0 / args.rate),
            qos,
            count: args.count,
            duration: args.duration_s.and_then(seconds),
            progress: seconds(args.progress_s),
            drain: seconds(args.drain_s).unwrap_or(Duration::ZERO),
        })
    }

    fn device(&self, n: usize) -> String {
        format!("{}{n}", self.device_prefix)
    }
}

/// What a run did, over all devices.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Summary {
    pub devices: usize,
    /// Readings taken and queued for sending.
    pub queued: u64,
    /// Readings written to a connection.
    pub sent: u64,
    /// Readings the broker acknowledged (QoS 1: PUBACK, QoS 2: PUBCOMP; QoS 0: same as sent).
    pub acked: u64,
    /// Readings not taken because the device's queue was full (broker slow or unreachable).
    pub dropped: u64,
    pub seconds: f64,
}

impl Summary {
    /// Readings queued but never acknowledged: still queued or in flight at exit, or lost
    /// with a session the broker no longer had.
    pub fn unacknowledged(&self) -> u64 {
        self.queued.saturating_sub(self.acked)
    }
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "devices={} queued={} sent={} acked={} dropped={} seconds={:.3}",
            self.devices, self.queued, self.sent, self.acked, self.dropped, self.seconds
        )
    }
}

/// Counters shared by every device task and the progress reporter.
#[derive(Default)]
struct Stats {
    queued: AtomicU64,
    sent: AtomicU64,
    acked: AtomicU64,
    dropped: AtomicU64,
    connected: AtomicU64,
    /// Devices that left without DISCONNECT because the broker had not acknowledged everything.
    unclean: AtomicU64,
    last_error: Mutex<Option<String>>,
}

/// Runs the fleet until every device has sent `count` readings, the duration ends, or `stop`
/// is cancelled (Ctrl-C, SIGTERM); then each device delivers what it queued, publishes
/// `{"state":"offline"}` and disconnects.
pub async fn run(fleet: Fleet, stop: CancellationToken) -> Summary {
    let started = Instant::now();
    let stats = Arc::new(Stats::default());
    let fleet = Arc::new(fleet);
    if let Some(duration) = fleet.duration {
        let stop = stop.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = tokio::time::sleep(duration) => {
                    info!("duration over: delivering queued readings, then offline");
                    stop.cancel();
                }
                _ = stop.cancelled() => {}
            }
        });
    }
    let reporter = fleet.progress.map(|every| {
        let (stats, fleet) = (Arc::clone(&stats), Arc::clone(&fleet));
        tokio::spawn(async move { report(&stats, &fleet, every).await })
    });
    info!(
        devices = fleet.devices,
        site = %fleet.site,
        broker = %format!("{}:{}", fleet.host, fleet.port),
        per_device_per_s = 1.0 / fleet.period.as_secs_f64(),
        "simulating"
    );
    let devices: Vec<_> = (1..=fleet.devices)
        .map(|n| {
            let (fleet, stats, stop) = (Arc::clone(&fleet), Arc::clone(&stats), stop.clone());
            tokio::spawn(async move { Device::new(&fleet, n).run(&fleet, &stats, stop).await })
        })
        .collect();
    for device in devices {
        if let Err(error) = device.await {
            warn!(%error, "a simulated device task failed");
        }
    }
    if let Some(reporter) = reporter {
        reporter.abort();
    }
    let unclean = stats.unclean.load(Ordering::Relaxed);
    if unclean > 0 {
        warn!(
            devices = unclean,
            drain_s = fleet.drain.as_secs_f64(),
            "devices left without DISCONNECT: the broker had not acknowledged everything in time (it publishes the will, offline, of those it had connected)"
        );
    }
    Summary {
        devices: fleet.devices,
        queued: stats.queued.load(Ordering::Relaxed),
        sent: stats.sent.load(Ordering::Relaxed),
        acked: stats.acked.load(Ordering::Relaxed),
        dropped: stats.dropped.load(Ordering::Relaxed),
        seconds: started.elapsed().as_secs_f64(),
    }
}

async fn report(stats: &Stats, fleet: &Fleet, every: Duration) {
    let mut ticker = tokio::time::interval(every);
    ticker.tick().await;
    let mut last = (Instant::now(), 0);
    loop {
        ticker.tick().await;
        let acked = stats.acked.load(Ordering::Relaxed);
        let per_s = (acked - last.1) as f64 / last.0.elapsed().as_secs_f64();
        last = (Instant::now(), acked);
        let connected = stats.connected.load(Ordering::Relaxed);
        info!(
            connected,
            devices = fleet.devices,
            sent = stats.sent.load(Ordering::Relaxed),
            acked,
            acked_per_s = format!("{per_s:.1}"),
            dropped = stats.dropped.load(Ordering::Relaxed),
            "progress"
        );
        if connected < fleet.devices as u64 {
            let error = stats.last_error.lock().map(|e| e.clone()).ok().flatten();
            warn!(
                disconnected = fleet.devices as u64 - connected,
                last_error = error.as_deref().unwrap_or("(connecting)"),
                "devices not connected"
            );
        }
    }
}

/// What a queued publish was, so acknowledgements of status messages are not counted as
/// readings.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Reading,
    Status,
}

/// The publishes of one connection between `try_publish` and their acknowledgement.
///
/// rumqttc assigns packet ids in its event loop, in the order requests were queued, and reports
/// each as `Outgoing::Publish(pkid)`; a publish re-sent after a reconnect is reported again
/// with its old id. So a FIFO of kinds (pushed when queued) is matched to ids as they go out.
#[derive(Default)]
struct Outstanding {
    queued: VecDeque<Kind>,
    in_flight: HashMap<u16, Kind>,
}

impl Outstanding {
    fn queue(&mut self, kind: Kind) {
        self.queued.push_back(kind);
    }

    /// A publish went out; returns its kind if it is new and the send completes it (QoS 0).
    fn sent(&mut self, pkid: u16) -> Sent {
        if pkid != 0 && self.in_flight.contains_key(&pkid) {
            return Sent::Resent;
        }
        let kind = self.queued.pop_front().unwrap_or(Kind::Reading);
        if pkid == 0 {
            Sent::Completed(kind)
        } else {
            self.in_flight.insert(pkid, kind);
            Sent::InFlight(kind)
        }
    }

    /// The broker acknowledged `pkid` (PUBACK, or PUBCOMP at QoS 2).
    fn acked(&mut self, pkid: u16) -> Option<Kind> {
        self.in_flight.remove(&pkid)
    }

    fn is_empty(&self) -> bool {
        self.queued.is_empty() && self.in_flight.is_empty()
    }

    /// The broker had no session for us: rumqttc dropped what was in flight.
    fn forget_in_flight(&mut self) -> usize {
        let lost = self
            .in_flight
            .values()
            .filter(|k| **k == Kind::Reading)
            .count();
        self.in_flight.clear();
        lost
    }
}

#[derive(Debug, PartialEq)]
enum Sent {
    Resent,
    InFlight(Kind),
    Completed(Kind),
}

/// A random walk around room conditions and a slowly draining battery.
#[derive(Debug, Clone)]
pub struct Walk {
    temp_c: f64,
    humidity: f64,
    battery: f64,
}

impl Walk {
    pub fn start(rng: &mut impl Rng) -> Walk {
        Walk {
            temp_c: rng.random_range(18.0..24.0),
            humidity: rng.random_range(35.0..60.0),
            battery: rng.random_range(0.6..1.0),
        }
    }

    /// The next reading, as the JSON payload devices publish (`ts` is the given time).
    pub fn step(&mut self, rng: &mut impl Rng, now: chrono::DateTime<chrono::Utc>) -> String {
        self.temp_c = (self.temp_c + rng.random_range(-0.2..0.2)).clamp(5.0, 35.0);
        self.humidity = (self.humidity + rng.random_range(-0.6..0.6)).clamp(10.0, 95.0);
        self.battery = (self.battery - rng.random_range(0.0..0.0005)).max(0.0);
        json!({
            "temp_c": round(self.temp_c, 100.0),
            "humidity": round(self.humidity, 10.0),
            "battery": round(self.battery, 1000.0),
            "ts": now.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        })
        .to_string()
    }
}

fn round(value: f64, scale: f64) -> f64 {
    (value * scale).round() / scale
}

/// Queues publishes on one device's connection and remembers what each was.
#[derive(Clone)]
struct Publisher {
    client: AsyncClient,
    telemetry: String,
    status: String,
    outstanding: Arc<Mutex<Outstanding>>,
}

impl Publisher {
    /// Queues a publish without waiting (never blocks the event loop on itself); false when the
    /// queue is full.
    fn queue(&self, kind: Kind, qos: QoS, payload: &str) -> bool {
        let topic = match kind {
            Kind::Reading => &self.telemetry,
            Kind::Status => &self.status,
        };
        let mut outstanding = self.outstanding();
        // Under the lock, so the FIFO's order is the request queue's order.
        let queued = self
            .client
            .try_publish(topic, qos, kind == Kind::Status, payload)
            .is_ok();
        if queued {
            outstanding.queue(kind);
        }
        queued
    }

    fn outstanding(&self) -> std::sync::MutexGuard<'_, Outstanding> {
        self.outstanding.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The timer half of a device: takes a reading every period and queues it.
    async fn produce(&self, fleet: &Fleet, stats: &Stats, stop: &CancellationToken) {
        let mut rng = StdRng::from_os_rng();
        let mut walk = Walk::start(&mut rng);
        // Devices start spread over one period rather than all at once.
        let first = Instant::now() + fleet.period.mul_f64(rng.random_range(0.0..1.0));
        let mut ticker = tokio::time::interval_at(first, fleet.period);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut taken = 0;
        while fleet.count.is_none_or(|count| taken < count) {
            tokio::select! {
                biased;
                _ = stop.cancelled() => break,
                _ = ticker.tick() => {}
            }
            let payload = walk.step(&mut rng, chrono::Utc::now());
            if self.queue(Kind::Reading, fleet.qos, &payload) {
                stats.queued.fetch_add(1, Ordering::Relaxed);
                taken += 1;
            } else {
                // With --count, the next tick takes another reading in its place.
                stats.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

struct Device {
    name: String,
    publisher: Publisher,
    eventloop: EventLoop,
}

/// One device's view of its connection, for the connected gauge and the backoff.
#[derive(Default)]
struct Connection {
    up: bool,
    ever_up: bool,
    backoff: Duration,
    /// After a failure: when to poll (and so reconnect) again.
    retry_at: Option<Instant>,
}

impl Device {
    fn new(fleet: &Fleet, n: usize) -> Device {
        let name = fleet.device(n);
        let status = format!("sensors/{}/{name}/status", fleet.site);
        let mut options = MqttOptions::new(
            format!("mqtt2es-sim-{}-{name}", fleet.site),
            &fleet.host,
            fleet.port,
        );
        options
            .set_keep_alive(Duration::from_secs(30))
            .set_clean_session(false)
            .set_inflight(100)
            .set_last_will(LastWill::new(&status, OFFLINE, QoS::AtLeastOnce, true));
        if let Some(user) = &fleet.username {
            options.set_credentials(
                user,
                fleet.password.as_ref().map(Secret::expose).unwrap_or(""),
            );
        }
        let (client, eventloop) = AsyncClient::new(options, QUEUE_CAPACITY);
        Device {
            publisher: Publisher {
                client,
                telemetry: format!("sensors/{}/{name}/telemetry", fleet.site),
                status,
                outstanding: Arc::default(),
            },
            name,
            eventloop,
        }
    }

    async fn run(self, fleet: &Fleet, stats: &Stats, stop: CancellationToken) {
        let Device {
            name,
            publisher,
            mut eventloop,
        } = self;
        let produced = CancellationToken::new();
        let producer = async {
            publisher.produce(fleet, stats, &stop).await;
            produced.cancel();
        };
        let events = async {
            let mut connection = Connection::default();
            let on = Handler {
                name: &name,
                publisher: &publisher,
                fleet,
                stats,
            };
            // Until the producer is done (count reached, duration over, or a signal).
            loop {
                if let Some(at) = connection.retry_at.take() {
                    tokio::select! {
                        _ = tokio::time::sleep_until(at) => {}
                        _ = produced.cancelled() => break,
                    }
                }
                tokio::select! {
                    event = eventloop.poll() => on.event(event, &mut connection),
                    _ = produced.cancelled() => break,
                }
            }
            // Then: offline (behind every queued reading), deliver, disconnect.
            let deadline = Instant::now() + fleet.drain;
            let offline_queued = publisher.queue(Kind::Status, QoS::AtLeastOnce, OFFLINE);
            while !publisher.outstanding().is_empty() && Instant::now() < deadline {
                if let Some(at) = connection.retry_at.take() {
                    tokio::time::sleep_until(at.min(deadline)).await;
                }
                match tokio::time::timeout_at(deadline, eventloop.poll()).await {
                    Ok(event) => on.event(event, &mut connection),
                    Err(_) => break,
                }
            }
            if !offline_queued || !publisher.outstanding().is_empty() {
                // Leaving without DISCONNECT makes the broker publish the will: still offline.
                debug!(device = %name, "not everything was acknowledged in time; leaving without DISCONNECT");
                stats.unclean.fetch_add(1, Ordering::Relaxed);
            } else if publisher.client.try_disconnect().is_ok() {
                loop {
                    match tokio::time::timeout_at(deadline, eventloop.poll()).await {
                        Ok(Ok(Event::Outgoing(Outgoing::Disconnect))) | Ok(Err(_)) | Err(_) => {
                            break;
                        }
                        Ok(Ok(_)) => {}
                    }
                }
            }
            if connection.up {
                stats.connected.fetch_sub(1, Ordering::Relaxed);
            }
        };
        tokio::join!(producer, events);
    }
}

/// What a device's event loop does with each event.
struct Handler<'a> {
    name: &'a str,
    publisher: &'a Publisher,
    fleet: &'a Fleet,
    stats: &'a Stats,
}

impl Handler<'_> {
    /// Handles one event; after a connection error, sets when to try again.
    fn event(&self, event: Result<Event, ConnectionError>, connection: &mut Connection) {
        let stats = self.stats;
        match event {
            Ok(Event::Incoming(Packet::ConnAck(connack))) => {
                if !connack.session_present && connection.ever_up {
                    let lost = self.publisher.outstanding().forget_in_flight();
                    if lost > 0 {
                        warn!(device = %self.name, lost, "the broker had no session for the device; its in-flight readings are lost");
                    }
                }
                connection.up = true;
                connection.ever_up = true;
                connection.backoff = Duration::ZERO;
                stats.connected.fetch_add(1, Ordering::Relaxed);
                debug!(device = %self.name, "connected");
                if !self.publisher.queue(Kind::Status, QoS::AtLeastOnce, ONLINE) {
                    warn!(device = %self.name, "queue full: could not publish the online status");
                }
            }
            Ok(Event::Outgoing(Outgoing::Publish(pkid))) => {
                match self.publisher.outstanding().sent(pkid) {
                    Sent::Completed(Kind::Reading) => {
                        stats.sent.fetch_add(1, Ordering::Relaxed);
                        stats.acked.fetch_add(1, Ordering::Relaxed);
                    }
                    Sent::InFlight(Kind::Reading) => {
                        stats.sent.fetch_add(1, Ordering::Relaxed);
                    }
                    Sent::Completed(Kind::Status) | Sent::InFlight(Kind::Status) | Sent::Resent => {
                    }
                }
            }
            Ok(Event::Incoming(Packet::PubAck(ack))) => self.complete(ack.pkid),
            Ok(Event::Incoming(Packet::PubComp(comp))) => self.complete(comp.pkid),
            Ok(_) => {}
            Err(error) => {
                if connection.up {
                    connection.up = false;
                    stats.connected.fetch_sub(1, Ordering::Relaxed);
                }
                debug!(device = %self.name, %error, "connection failed; retrying");
                if let Ok(mut last) = stats.last_error.lock() {
                    *last = Some(error.to_string());
                }
                // Capped exponential backoff with jitter, so a fleet does not reconnect in step.
                connection.backoff = (connection.backoff * 2)
                    .clamp(Duration::from_millis(100), Duration::from_secs(5));
                let jitter = rand::rng().random_range(0.5..1.0);
                connection.retry_at = Some(Instant::now() + connection.backoff.mul_f64(jitter));
            }
        }
    }

    fn complete(&self, pkid: u16) {
        let kind = self.publisher.outstanding().acked(pkid);
        if kind == Some(Kind::Reading) && self.fleet.qos != QoS::AtMostOnce {
            self.stats.acked.fetch_add(1, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
