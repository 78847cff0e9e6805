//! The cluster's nodes as mqtt2es sees them, and which one the next request goes to.
//!
//! Requests go round-robin over the nodes that are alive. A node that gives no answer (refused,
//! reset, timed out) is marked dead and skipped for a backoff (1 s, doubling to 30 s); when it
//! is due, the next request tries it again, and an answer brings it back. When every node is
//! dead the one due first is tried, so an outage of the whole cluster ends for us when it ends.
//! Any HTTP answer counts as alive: a node that says 503 is there, and what the status means is
//! the sink's business (per item, with its own retries).
//!
//! The elasticsearch client's own multi-node pool cannot do this (it has no way to hear that a
//! request failed), and its node discovery panics on the first error; this pool plugs into the
//! client as a `ConnectionPool`, and whoever sends a request reports how it went (`report`).
//! Discovery (`sniff`) is ours too: `GET _nodes/http` now and then, off by default.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use elasticsearch::http::Url;
use elasticsearch::http::transport::{Connection, ConnectionPool};
use tracing::{info, warn};

/// How long a node that gave no answer is skipped the first time.
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
/// The longest a dead node is skipped before it is tried again.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// The pool; clones share it.
#[derive(Debug, Clone)]
pub struct Nodes {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    nodes: Mutex<Vec<Node>>,
    next: AtomicUsize,
}

#[derive(Debug, Clone)]
struct Node {
    connection: Connection,
    /// `None` while alive.
    dead_until: Option<Instant>,
    /// Failures in a row, for the backoff.
    failures: u32,
    /// Dead because the prober found nothing listening: the prober may bring it back. (A node
    /// dead because a request got no answer in time may still accept connections.)
    refused: bool,
}

impl Node {
    fn new(url: Url) -> Node {
        Node {
            connection: Connection::new(url),
            dead_until: None,
            failures: 0,
            refused: false,
        }
    }

    fn url(&self) -> Arc<Url> {
        self.connection.url()
    }
}

impl Nodes {
    /// A pool of `urls`, all presumed alive. There is at least one (the settings see to it).
    pub fn new(urls: Vec<Url>) -> Nodes {
        Nodes {
            inner: Arc::new(Inner {
                nodes: Mutex::new(urls.into_iter().map(Node::new).collect()),
                next: AtomicUsize::new(0),
            }),
        }
    }

    fn nodes(&self) -> MutexGuard<'_, Vec<Node>> {
        self.inner
            .nodes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Nodes alive now, and in all.
    #[cfg(test)]
    fn alive(&self) -> (usize, usize) {
        let now = Instant::now();
        let nodes = self.nodes();
        let alive = nodes
            .iter()
            .filter(|n| n.dead_until.is_none_or(|t| t <= now))
            .count();
        (alive, nodes.len())
    }

    /// How a request to `url` went: an HTTP answer of any status (`true`) or none.
    pub fn report(&self, url: &Url, answered: bool, why: impl FnOnce() -> String) {
        let mut nodes = self.nodes();
        let total = nodes.len();
        let Some(node) = nodes.iter_mut().find(|n| same_node(&n.url(), url)) else {
            return; // Not one of ours (replaced by discovery meanwhile).
        };
        if answered {
            if node.failures > 0 {
                info!(node = %node.url(), "elasticsearch node answers again; sending to it");
            }
            node.failures = 0;
            node.dead_until = None;
            node.refused = false;
            return;
        }
        node.refused = false;
        let backoff = FIRST_BACKOFF
            .saturating_mul(1 << node.failures.min(8))
            .min(MAX_BACKOFF);
        node.failures += 1;
        node.dead_until = Some(Instant::now() + backoff);
        if node.failures == 1 {
            let url = node.url();
            let alive = nodes.iter().filter(|n| n.failures == 0).count();
            warn!(
                node = %url,
                error = %why(),
                alive,
                of = total,
                retry_in_ms = backoff.as_millis() as u64,
                "elasticsearch node gave no answer: requests go to the other nodes until it does"
            );
        }
    }

    /// What the prober found: something listens at `url` (`true`) or nothing does.
    fn probed(&self, url: &Url, listening: bool, why: impl FnOnce() -> String) {
        if !listening {
            self.report(url, false, why);
            if let Some(node) = self.nodes().iter_mut().find(|n| same_node(&n.url(), url)) {
                node.refused = true;
            }
            return;
        }
        let refused = self
            .nodes()
            .iter()
            .any(|n| same_node(&n.url(), url) && n.refused);
        if refused {
            self.report(url, true, String::new);
        }
    }

    /// Replaces the nodes with `urls` (discovery), keeping what is known about those that stay.
    pub fn replace(&self, urls: Vec<Url>) {
        if urls.is_empty() {
            return;
        }
        let mut nodes = self.nodes();
        let fresh: Vec<Node> = urls
            .into_iter()
            .map(|url| {
                nodes
                    .iter()
                    .find(|n| same_node(&n.url(), &url))
                    .cloned()
                    .unwrap_or_else(|| Node::new(url))
            })
            .collect();
        let before: Vec<String> = nodes.iter().map(|n| n.url().to_string()).collect();
        let after: Vec<String> = fresh.iter().map(|n| n.url().to_string()).collect();
        if before != after {
            info!(?before, ?after, "elasticsearch nodes discovered");
        }
        *nodes = fresh;
    }

    /// The URLs of the nodes now.
    pub fn urls(&self) -> Vec<Url> {
        self.nodes().iter().map(|n| (*n.url()).clone()).collect()
    }
}

impl ConnectionPool for Nodes {
    fn next(&self) -> Connection {
        let now = Instant::now();
        let nodes = self.nodes();
        let start = self.inner.next.fetch_add(1, Ordering::Relaxed);
        let count = nodes.len();
        (0..count)
            .map(|i| &nodes[(start + i) % count])
            .find(|n| n.dead_until.is_none_or(|t| t <= now))
            // All dead: the one due first.
            .or_else(|| nodes.iter().min_by_key(|n| n.dead_until))
            .map(|n| n.connection.clone())
            .expect("a pool has a node at least")
    }
}

/// How often the prober looks at every node.
const PROBE_EVERY: Duration = Duration::from_secs(1);

/// Looks every second whether something listens on each node's port, so that every request
/// (setup, metrics, bulk) avoids a node that is not running; requests that get no answer
/// report the rest (a node that listens but does not answer). Only for more than one node:
/// with one there is nowhere else to send.
pub async fn probe(nodes: Nodes) {
    if nodes.urls().len() < 2 {
        return;
    }
    loop {
        for url in nodes.urls() {
            let (Some(host), Some(port)) = (url.host_str(), url.port_or_known_default()) else {
                continue;
            };
            let connect = tokio::net::TcpStream::connect((host, port));
            match tokio::time::timeout(PROBE_EVERY, connect).await {
                Ok(Ok(_)) => nodes.probed(&url, true, String::new),
                Ok(Err(error)) => nodes.probed(&url, false, || error.to_string()),
                Err(_) => nodes.probed(&url, false, || "no connection within 1 s".to_owned()),
            }
        }
        tokio::time::sleep(PROBE_EVERY).await;
    }
}

/// Whether a request URL went to the node at `base` (same scheme, host and port).
fn same_node(base: &Url, url: &Url) -> bool {
    base.scheme() == url.scheme()
        && base.host_str() == url.host_str()
        && base.port_or_known_default() == url.port_or_known_default()
}

/// The node a failed request went to, if the error says (the HTTP client's error carries it).
pub fn failed_url(error: &elasticsearch::Error) -> Option<Url> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(error);
    while let Some(error) = source {
        if let Some(http) = error.downcast_ref::<reqwest::Error>() {
            return http.url().cloned();
        }
        source = error.source();
    }
    None
}

/// The HTTP addresses in a `GET _nodes/http` answer, as URLs with `scheme`. A publish address
/// is `host:port` or `name/ip:port`; the IP is what can be reached.
pub fn discovered(answer: &serde_json::Value, scheme: &str) -> Vec<Url> {
    let Some(nodes) = answer["nodes"].as_object() else {
        return Vec::new();
    };
    let mut urls: Vec<Url> = nodes
        .values()
        .filter_map(|node| node["http"]["publish_address"].as_str())
        .filter_map(|address| {
            let address = address.rsplit('/').next().unwrap_or(address);
            Url::parse(&format!("{scheme}://{address}")).ok()
        })
        .collect();
    urls.sort_by_key(|u| u.to_string());
    urls.dedup();
    urls
}

/// Discovery: asks the cluster for its nodes now and every `every`, and sends to those. A
/// failed or empty answer keeps the nodes as they are (logged once until it works again) and
/// is asked again within 5 s.
pub async fn sniff(client: elasticsearch::Elasticsearch, nodes: Nodes, every: Duration) {
    let scheme = nodes
        .urls()
        .first()
        .map_or_else(|| "http".to_owned(), |u| u.scheme().to_owned());
    let mut failing = false;
    loop {
        let answer = client
            .nodes()
            .info(elasticsearch::nodes::NodesInfoParts::Metric(&["http"]))
            .filter_path(&["nodes.*.http.publish_address"])
            .send()
            .await;
        let found = match answer {
            Ok(response) if response.status_code().is_success() => response
                .json::<serde_json::Value>()
                .await
                .map(|body| discovered(&body, &scheme))
                .unwrap_or_default(),
            _ => Vec::new(),
        };
        if found.is_empty() {
            if !failing {
                warn!("elasticsearch node discovery found no node; keeping the configured ones");
            }
            failing = true;
        } else {
            failing = false;
            nodes.replace(found);
        }
        // A failed attempt (the request may have gone to a node that is down) is repeated soon.
        let wait = if failing {
            every.min(Duration::from_secs(5))
        } else {
            every
        };
        tokio::time::sleep(wait).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(text: &str) -> Url {
        Url::parse(text).expect("a url")
    }

    fn pool() -> Nodes {
        Nodes::new(vec![
            url("http://127.0.0.1:9201"),
            url("http://127.0.0.1:9202"),
            url("http://127.0.0.1:9203"),
        ])
    }

    fn ports(nodes: &Nodes, requests: usize) -> Vec<u16> {
        (0..requests)
            .map(|_| nodes.next().url().port().expect("a port"))
            .collect()
    }

    #[test]
    fn requests_go_round_robin_over_the_nodes() {
        let mut seen = ports(&pool(), 6);
        seen.sort_unstable();
        assert_eq!(seen, [9201, 9201, 9202, 9202, 9203, 9203]);
    }

    #[test]
    fn a_node_that_gave_no_answer_is_skipped_and_one_that_answers_is_back() {
        let nodes = pool();
        let dead = url("http://127.0.0.1:9202/_bulk?filter_path=items");
        nodes.report(&dead, false, || "connection refused".into());
        assert_eq!(nodes.alive(), (2, 3));
        assert!(!ports(&nodes, 10).contains(&9202));
        nodes.report(&dead, true, String::new);
        assert_eq!(nodes.alive(), (3, 3));
        assert!(ports(&nodes, 10).contains(&9202));
    }

    #[test]
    fn with_every_node_dead_the_one_due_first_is_tried() {
        let nodes = pool();
        for port in [9203, 9201, 9202] {
            let node = url(&format!("http://127.0.0.1:{port}/"));
            nodes.report(&node, false, || "refused".into());
        }
        assert_eq!(nodes.alive(), (0, 3));
        assert_eq!(ports(&nodes, 1), [9203]);
    }

    #[test]
    fn a_dead_node_is_skipped_longer_each_time_up_to_a_bound() {
        let nodes = Nodes::new(vec![url("http://127.0.0.1:9201")]);
        let node = url("http://127.0.0.1:9201/");
        let mut last = Duration::ZERO;
        for _ in 0..12 {
            nodes.report(&node, false, || "refused".into());
            let until = nodes.nodes()[0].dead_until.expect("dead");
            let backoff = until - Instant::now();
            assert!(backoff + Duration::from_millis(50) >= last);
            assert!(backoff <= MAX_BACKOFF);
            last = backoff;
        }
        assert!(last > MAX_BACKOFF / 2);
    }

    #[test]
    fn the_prober_brings_back_only_a_node_it_found_not_listening() {
        let nodes = pool();
        let refused = url("http://127.0.0.1:9201/");
        let hung = url("http://127.0.0.1:9202/");
        nodes.probed(&refused, false, || "connection refused".into());
        nodes.report(&hung, false, || "timed out".into());
        assert_eq!(nodes.alive(), (1, 3));
        // Both listen now; the hung one still has to answer a request to be back.
        nodes.probed(&refused, true, String::new);
        nodes.probed(&hung, true, String::new);
        assert_eq!(nodes.alive(), (2, 3));
    }

    #[tokio::test]
    async fn the_prober_finds_a_port_nobody_listens_on() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let open = url(&format!(
            "http://{}",
            listener.local_addr().expect("address")
        ));
        let closed = {
            let gone = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            url(&format!("http://{}", gone.local_addr().expect("address")))
        };
        let nodes = Nodes::new(vec![open, closed]);
        let prober = tokio::spawn(probe(nodes.clone()));
        let deadline = Instant::now() + Duration::from_secs(10);
        while nodes.alive() != (1, 2) {
            assert!(Instant::now() < deadline, "the closed port was never found");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        prober.abort();
    }

    #[test]
    fn discovery_reads_the_publish_addresses_and_keeps_what_is_known() {
        let answer = serde_json::json!({"nodes": {
            "a": {"http": {"publish_address": "127.0.0.1:9201"}},
            "b": {"http": {"publish_address": "es-2.local/10.0.0.2:9200"}},
            "c": {"http": {}},
        }});
        let found = discovered(&answer, "https");
        assert_eq!(
            found.iter().map(Url::as_str).collect::<Vec<_>>(),
            ["https://10.0.0.2:9200/", "https://127.0.0.1:9201/"]
        );
        let nodes = Nodes::new(vec![url("https://127.0.0.1:9201")]);
        nodes.report(&url("https://127.0.0.1:9201/"), false, || "refused".into());
        nodes.replace(found);
        assert_eq!(nodes.alive(), (1, 2), "the dead node stays dead");
    }
}
