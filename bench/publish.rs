//! The load generator of `bench/run`: `--publishers` MQTT connections, each publishing its share
//! of `--messages` ~200-byte sensor readings to `sensors/<site>/pub<i>/telemetry`, as fast as the
//! broker takes them or at a fixed total `--rate`.
//!
//! Why not `mosquitto_pub -l`: Debian's 2.0.11 exits at end of input before its QoS 1 queue has
//! drained (a third of 100,000 lines arrived in a trial), and one process per connection would
//! cost more CPU than the broker on a two-core machine. This one counts PUBACKs, so at QoS 1
//! "published" means "the broker has it".
//!
//! Every reading carries `ts` = a base an hour ago + its sequence number in milliseconds, a
//! plausible device time. (Each reading is a document of its own whatever it carries: mqtt2es
//! gives every message its own reading id and time; the times only make the data look real.)
//!
//! `--fence` (QoS 0 only) sends each connection's last reading at QoS 1 and waits for its PUBACK:
//! a broker reads a connection's packets in order, so the fence's PUBACK says the broker has taken
//! in everything before it. That times a broker's intake where nothing can be counted downstream
//! (`bench/broker`'s drop pipeline).
//!
//! `--latency` (QoS 1) keeps one reading in flight per connection: publish, wait for its PUBACK,
//! publish the next. The time from handing a reading to the client to its PUBACK is what a device
//! waits before it may forget the reading (`bench/fast`'s latency rows); `--max-s` ends such a run
//! early with what it has, for settings where every PUBACK waits for a batch timer.
//!
//! Prints one line: `published=<n> seconds=<s>`; with `--latency` a second one,
//! `latency_ms n=<n> p50=<ms> p99=<ms> max=<ms>` (nearest-rank percentiles over every reading).
//! Stopped by SIGTERM, it prints the first line with what it had published by then, so a script
//! that stops a run at its time cap can still count what was lost.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use clap::Parser;
use rumqttc::{AsyncClient, Event, MqttOptions, Outgoing, Packet, QoS};
use tokio::signal::unix::{SignalKind, signal};
use tokio::time::Instant;

/// Readings published so far, over every connection: sent at QoS 0, acknowledged at QoS 1.
static PUBLISHED: AtomicU64 = AtomicU64::new(0);

#[derive(Parser)]
struct Args {
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    #[arg(long)]
    port: u16,
    #[arg(long, default_value_t = 1)]
    qos: u8,
    /// Connections, one device topic each.
    #[arg(long, default_value_t = 4)]
    publishers: usize,
    /// Readings in total, split evenly over the publishers.
    #[arg(long)]
    messages: u64,
    /// Readings per second in total; 0 publishes as fast as the broker accepts.
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// Unacknowledged QoS 1 publishes per connection (rumqttc's default is 100).
    #[arg(long, default_value_t = 100)]
    inflight: u16,
    /// At QoS 0, end each connection with one QoS 1 reading and wait for its PUBACK.
    #[arg(long)]
    fence: bool,
    /// At QoS 1, one reading in flight per connection; print the PUBACK latency.
    #[arg(long)]
    latency: bool,
    /// With --latency, stop publishing after this many seconds (0: no limit).
    #[arg(long, default_value_t = 0.0, requires = "latency")]
    max_s: f64,
    /// The `<site>` topic segment; the telemetry pipeline stores into `mqtt2es-telemetry-<site>`.
    #[arg(long)]
    site: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let qos = match args.qos {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        other => bail!("--qos {other}: 0 or 1"),
    };
    if args.latency && qos != QoS::AtLeastOnce {
        bail!("--latency needs --qos 1: only a PUBACK ends a reading's wait");
    }
    let publishers = args.publishers.max(1);
    // An hour ago: inside the pipeline's plausibility window for as long as a run can last.
    let base_ms = SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis() as u64 - 3_600_000;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..publishers {
        let share = args.messages / publishers as u64
            + u64::from((i as u64) < args.messages % publishers as u64);
        let rate = args.rate as f64 / publishers as f64;
        let (host, port, site) = (args.host.clone(), args.port, args.site.clone());
        let shape = Shape {
            qos,
            inflight: args.inflight,
            fence: args.fence && qos == QoS::AtMostOnce,
        };
        let deadline = (args.max_s > 0.0).then(|| started + Duration::from_secs_f64(args.max_s));
        let latency = args.latency;
        tasks.push(tokio::spawn(async move {
            if latency {
                one_by_one(&host, port, &site, i, share, base_ms, deadline).await
            } else {
                publish(&host, port, &site, i, shape, share, rate, base_ms).await?;
                Ok(Vec::new())
            }
        }));
    }
    let mut terminate = signal(SignalKind::terminate()).context("listening for SIGTERM")?;
    let mut waits = Vec::new();
    let finished = async {
        for task in tasks {
            waits.extend(task.await.context("publisher task")??);
        }
        anyhow::Ok(())
    };
    let stopped = tokio::select! {
        finished = finished => {
            finished?;
            false
        }
        _ = terminate.recv() => true,
    };
    println!(
        "published={} seconds={:.3}",
        PUBLISHED.load(Ordering::Relaxed),
        started.elapsed().as_secs_f64()
    );
    if stopped {
        eprintln!("stopped by SIGTERM before every reading was published");
        return Ok(());
    }
    if args.latency {
        waits.sort_unstable();
        let ms = |p: f64| percentile(&waits, p).as_secs_f64() * 1000.0;
        println!(
            "latency_ms n={} p50={:.3} p99={:.3} max={:.3}",
            waits.len(),
            ms(50.0),
            ms(99.0),
            ms(100.0)
        );
    }
    Ok(())
}

/// Nearest rank of `p` percent in `sorted`; zero when it is empty.
fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted
        .get(rank.clamp(1, sorted.len().max(1)) - 1)
        .copied()
        .unwrap_or_default()
}

/// How one connection publishes.
#[derive(Clone, Copy)]
struct Shape {
    qos: QoS,
    inflight: u16,
    fence: bool,
}

#[allow(clippy::too_many_arguments)]
async fn publish(
    host: &str,
    port: u16,
    site: &str,
    index: usize,
    shape: Shape,
    count: u64,
    rate: f64,
    base_ms: u64,
) -> anyhow::Result<()> {
    let (device, topic, mut options) = device(host, port, site, index);
    options.set_inflight(shape.inflight);
    let (client, mut eventloop) = AsyncClient::new(options, 1024);
    // rumqttc gives up on a write that has not flushed within this (default 5 s). mqtt2es stops
    // reading a connection while its pipeline is full, so with Elasticsearch slower than the
    // publisher a QoS 0 write can wait that long: a stall to measure, not a failure.
    eventloop.network_options.set_connection_timeout(120);
    let qos = shape.qos;
    // PUBACKs that end this connection: every reading at QoS 1, the fence only at QoS 0.
    let expected_acks = match (qos, shape.fence && count > 0) {
        (QoS::AtMostOnce, true) => 1,
        (QoS::AtMostOnce, false) => 0,
        _ => count,
    };
    let producer = {
        let client = client.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            for seq in 0..count {
                if rate > 0.0 && seq % 16 == 0 {
                    let due = started + Duration::from_secs_f64(seq as f64 / rate);
                    tokio::time::sleep_until(due).await;
                }
                let fence = expected_acks == 1 && qos == QoS::AtMostOnce && seq + 1 == count;
                let qos = if fence { QoS::AtLeastOnce } else { qos };
                client
                    .publish(topic.as_str(), qos, false, reading(base_ms + seq, seq))
                    .await?;
            }
            if expected_acks == 0 {
                // Queued behind the last publish, so the broker has them all when it arrives.
                client.disconnect().await?;
            }
            Ok::<_, rumqttc::ClientError>(())
        })
    };
    let mut acked = 0;
    let mut sent = 0;
    loop {
        match eventloop.poll().await {
            Ok(Event::Incoming(Packet::PubAck(_))) => {
                acked += 1;
                if qos == QoS::AtLeastOnce {
                    PUBLISHED.fetch_add(1, Ordering::Relaxed);
                }
                if acked == expected_acks {
                    client.try_disconnect()?;
                }
            }
            Ok(Event::Outgoing(Outgoing::Publish(_))) => {
                sent += 1;
                if qos == QoS::AtMostOnce {
                    PUBLISHED.fetch_add(1, Ordering::Relaxed);
                }
            }
            Ok(Event::Outgoing(Outgoing::Disconnect)) => break,
            Ok(_) => {}
            Err(error) => bail!("{device}: connection failed after {sent} publishes: {error}"),
        }
        if count == 0 {
            break;
        }
    }
    producer.await.context("producer task")??;
    Ok(())
}

/// `--latency`: one QoS 1 reading at a time; returns each one's wait for its PUBACK.
async fn one_by_one(
    host: &str,
    port: u16,
    site: &str,
    index: usize,
    count: u64,
    base_ms: u64,
    deadline: Option<Instant>,
) -> anyhow::Result<Vec<Duration>> {
    let (device, topic, options) = device(host, port, site, index);
    let (client, mut eventloop) = AsyncClient::new(options, 16);
    let fail = |sent: usize, error| {
        anyhow::anyhow!("{device}: connection failed after {sent} publishes: {error}")
    };
    loop {
        match eventloop.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(_))) => break,
            Ok(_) => {}
            Err(error) => return Err(fail(0, error)),
        }
    }
    let mut waits = Vec::with_capacity(count as usize);
    for seq in 0..count {
        if deadline.is_some_and(|d| Instant::now() >= d) {
            break;
        }
        let asked = Instant::now();
        // Never blocks: the request queue is empty, its one reading went out last round.
        client.try_publish(
            topic.as_str(),
            QoS::AtLeastOnce,
            false,
            reading(base_ms + seq, seq),
        )?;
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::PubAck(_))) => break,
                Ok(_) => {}
                Err(error) => return Err(fail(waits.len(), error)),
            }
        }
        waits.push(asked.elapsed());
        PUBLISHED.fetch_add(1, Ordering::Relaxed);
    }
    client.try_disconnect()?;
    loop {
        match eventloop.poll().await {
            Ok(Event::Outgoing(Outgoing::Disconnect)) => break,
            Ok(_) => {}
            Err(error) => return Err(fail(waits.len(), error)),
        }
    }
    Ok(waits)
}

/// Connection `index`: its device name, its topic and its client options.
fn device(host: &str, port: u16, site: &str, index: usize) -> (String, String, MqttOptions) {
    let device = format!("pub{index}");
    let topic = format!("sensors/{site}/{device}/telemetry");
    let mut options = MqttOptions::new(format!("bench-{site}-{device}"), host, port);
    options
        .set_keep_alive(Duration::from_secs(30))
        .set_clean_session(true);
    (device, topic, options)
}

/// One reading, 190-200 bytes.
fn reading(ts_ms: u64, seq: u64) -> String {
    format!(
        concat!(
            r#"{{"ts":{},"temp_c":{:.1},"humidity":{:.1},"pressure_hpa":{:.1},"battery":0.93,"#,
            r#""rssi_dbm":-{},"seq":{},"status":"ok","firmware":"pi-therm 2.4.1","#,
            r#""location":{{"room":"lab","floor":2}}}}"#
        ),
        ts_ms,
        15.0 + (seq % 100) as f64 / 10.0,
        40.0 + (seq % 50) as f64 / 5.0,
        1000.0 + (seq % 300) as f64 / 10.0,
        50 + seq % 40,
        seq,
    )
}
