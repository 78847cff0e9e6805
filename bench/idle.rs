//! The idle-client generator of `bench/broker`: opens `--clients` MQTT 3.1.1 connections, each
//! sending CONNECT and waiting for a successful CONNACK, then holds them all open and silent until
//! it is stopped. Prints `connected=<n> seconds=<s>` once every connection is up, so the script
//! can read the broker's RSS while they idle.
//!
//! Why raw sockets and rumqttc's packet codec rather than its client: an `AsyncClient` per
//! connection brings an event loop, request channels and buffers, which for 10,000 clients would
//! cost the shared two-core machine more than the brokers being measured. The keep-alive is long
//! (600 s), so no PINGREQ is due while the script measures.
//!
//! Connections are spread over the source addresses 127.0.0.1 to 127.0.0.`--sources`: each
//! address has its own ephemeral port range, so several runs in a row cannot run short of ports
//! while earlier sockets sit in TIME_WAIT.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use anyhow::{Context, bail};
use bytes::BytesMut;
use clap::Parser;
use rumqttc::{ConnectReturnCode, Packet};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::task::JoinSet;
use tokio::time::Instant;

#[derive(Parser)]
struct Args {
    #[arg(long, default_value = "127.0.0.1")]
    host: Ipv4Addr,
    #[arg(long)]
    port: u16,
    #[arg(long, default_value_t = 10_000)]
    clients: usize,
    /// Connection attempts in flight at once.
    #[arg(long, default_value_t = 200)]
    parallel: usize,
    /// Source addresses 127.0.0.1 ..= 127.0.0.<sources>.
    #[arg(long, default_value_t = 4)]
    sources: u8,
    /// Client ids are `<prefix>-<i>`.
    #[arg(long, default_value = "idle")]
    prefix: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let server = SocketAddr::from((args.host, args.port));
    let started = Instant::now();
    let mut open = Vec::with_capacity(args.clients);
    let mut connecting = JoinSet::new();
    let mut next = 0;
    while open.len() < args.clients {
        while next < args.clients && connecting.len() < args.parallel.max(1) {
            let source = Ipv4Addr::new(
                127,
                0,
                0,
                1 + (next % usize::from(args.sources.max(1))) as u8,
            );
            let client_id = format!("{}-{next}", args.prefix);
            connecting.spawn(async move { connect(source, server, client_id).await });
            next += 1;
        }
        let joined = connecting
            .join_next()
            .await
            .context("no connection attempt left")?;
        open.push(joined.context("connection task")??);
    }
    println!(
        "connected={} seconds={:.3}",
        open.len(),
        started.elapsed().as_secs_f64()
    );
    // Hold every socket until the script stops us; a broker that closes one is an error worth
    // seeing in the log.
    let mut watch = JoinSet::new();
    for (i, mut stream) in open.into_iter().enumerate() {
        watch.spawn(async move {
            let mut byte = [0u8; 1];
            let read = stream.read(&mut byte).await;
            (i, read)
        });
    }
    if let Some(joined) = watch.join_next().await {
        let (i, read) = joined.context("watch task")?;
        bail!("connection {i} ended while idle: {read:?}");
    }
    Ok(())
}

async fn connect(
    source: Ipv4Addr,
    server: SocketAddr,
    client_id: String,
) -> anyhow::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket
        .bind(SocketAddr::from((source, 0)))
        .with_context(|| format!("binding {source}"))?;
    let mut stream = socket
        .connect(server)
        .await
        .with_context(|| format!("connecting from {source}"))?;
    let mut connect = rumqttc::Connect::new(client_id.as_str());
    connect.keep_alive = 600;
    connect.clean_session = true;
    let mut out = BytesMut::new();
    connect.write(&mut out)?;
    stream.write_all(&out).await?;
    let mut buf = BytesMut::with_capacity(16);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match Packet::read(&mut buf, 1024) {
            Ok(Packet::ConnAck(ack)) if ack.code == ConnectReturnCode::Success => {
                return Ok(stream);
            }
            Ok(other) => bail!("{client_id}: expected a successful CONNACK, got {other:?}"),
            Err(rumqttc::Error::InsufficientBytes(_)) => {}
            Err(error) => bail!("{client_id}: {error}"),
        }
        let read = tokio::time::timeout_at(deadline, stream.read_buf(&mut buf))
            .await
            .with_context(|| format!("{client_id}: no CONNACK within 30 s"))??;
        if read == 0 {
            bail!("{client_id}: closed before CONNACK");
        }
    }
}
