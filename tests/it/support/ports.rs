//! Free loopback ports for the programs the tests start.
//!
//! The port is released before the program binds it, so another process could take it in
//! between; that window is short, and this binary never hands out the same port twice.

use std::collections::BTreeSet;
use std::net::TcpListener;
use std::sync::Mutex;

/// A port on 127.0.0.1 that was free a moment ago and that no earlier call returned.
pub fn free_port() -> u16 {
    static GIVEN: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());
    loop {
        let listener = TcpListener::bind(("127.0.0.1", 0)).expect("bind 127.0.0.1:0");
        let port = listener.local_addr().expect("local address").port();
        drop(listener);
        if GIVEN.lock().unwrap_or_else(|e| e.into_inner()).insert(port) {
            return port;
        }
    }
}
