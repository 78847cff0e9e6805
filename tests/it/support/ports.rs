//! Free loopback ports for the programs the tests start.
//!
//! Ports come from below the kernel's ephemeral range: a port handed out here and bound later
//! (a node restarted on its old port, a broker restarted for its clients to reconnect to) must
//! not meanwhile become the source port of some outgoing connection, which a test opening a
//! thousand client connections makes likely inside that range. The port is released before the
//! program binds it, so another process could still take it in between; that window is short,
//! and this binary never hands out the same port twice.

use std::collections::BTreeSet;
use std::net::TcpListener;
use std::sync::Mutex;

/// Below this, ports are assigned only on request: the start of the ephemeral range.
fn ephemeral_start() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|text| text.split_whitespace().next()?.parse().ok())
        .unwrap_or(32768)
}

/// A port on 127.0.0.1 that was free a moment ago and that no earlier call returned.
pub fn free_port() -> u16 {
    static GIVEN: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());
    let high = ephemeral_start().max(12_000);
    let low = 10_000;
    loop {
        let port = rand::random_range(low..high);
        if TcpListener::bind(("127.0.0.1", port)).is_err() {
            continue;
        }
        if GIVEN.lock().unwrap_or_else(|e| e.into_inner()).insert(port) {
            return port;
        }
    }
}
