//! One virtual thermometer: its connection (with its will), the producer that queues its
//! readings, the event loop that sends them, and the counters all devices share (`Stats`).
//!
//! Each device runs two tasks: a producer on a timer that queues readings with the
//! non-blocking `try_publish` (a full queue drops the reading and counts it), and the rumqttc
//! event loop, which is never raced against the timer (its connect is not cancel-safe). Sessions
//! are persistent (clean_session=false, stable client ids), because rumqttc forgets unacknowledged
//! publishes when it reconnects to a broker that has no session for it.

use std::collections::{HashMap, VecDeque};
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
use tracing::{debug, warn};

use super::fleet::Fleet;
use crate::secret::Secret;

const ONLINE: &str = r#"{"state":"online"}"#;
const OFFLINE: &str = r#"{"state":"offline"}"#;
/// Readings a device keeps queued for its connection (while the broker is slow or away)
/// before new ones are dropped and counted.
const QUEUE_CAPACITY: usize = 1000;

/// Counters shared by every device task and the progress reporter.
#[derive(Default)]
pub(super) struct Stats {
    pub(super) queued: AtomicU64,
    pub(super) sent: AtomicU64,
    pub(super) acked: AtomicU64,
    pub(super) dropped: AtomicU64,
    pub(super) connected: AtomicU64,
    /// Devices that left without DISCONNECT because the broker had not acknowledged everything.
    pub(super) unclean: AtomicU64,
    pub(super) last_error: Mutex<Option<String>>,
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

pub(super) struct Device {
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
    pub(super) fn new(fleet: &Fleet, n: usize) -> Device {
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

    pub(super) async fn run(self, fleet: &Fleet, stats: &Stats, stop: CancellationToken) {
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
mod tests;
