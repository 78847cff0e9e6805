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
//! The files: `fleet` (the checked arguments), `device` (one thermometer and the counters every
//! device shares); this one runs them and reports.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

pub use device::Walk;
use device::{Device, Stats};
pub use fleet::{Fleet, FleetArgs, FleetError};

mod device;
mod fleet;

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

#[cfg(test)]
mod tests;
