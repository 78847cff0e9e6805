//! A fault-injection stand-in for Elasticsearch, for tests only (the sink's and setup's); also the
//! stand-in for Kibana, which cannot run here (the tests of `elastic::kibana` say so). At the
//! crate's top because both `sink` and `elastic` use it and neither owns it.
//!
//! Used on purpose where a real node cannot produce the fault on cue: 429, 413, 503, a hung
//! request, a dropped connection, a refused credential, a version too old. It is a tokio `TcpListener` on
//! 127.0.0.1:0 speaking just enough HTTP/1.1 (content-length or chunked bodies, keep-alive),
//! answering each request with whatever the test's handler returns. Gzipped bodies are unpacked
//! before the handler sees them.

use std::sync::{Arc, Mutex};

use serde_json::Value;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    pub path: String,
    /// Header names lowercased, in the order sent.
    pub headers: Vec<(String, String)>,
    /// The body as the handler sees it: unpacked if it came gzipped.
    pub body: String,
    /// The body's size on the wire.
    pub wire_bytes: usize,
}

impl Request {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }

    /// A JSON body (`_mget`, `_search`).
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).expect("a JSON body")
    }

    /// The `(action, source)` pairs of a bulk body.
    pub fn ops(&self) -> Vec<(Value, Value)> {
        let lines: Vec<Value> = self
            .body
            .lines()
            .map(|l| serde_json::from_str(l).expect("a JSON line"))
            .collect();
        lines
            .chunks(2)
            .map(|pair| (pair[0].clone(), pair[1].clone()))
            .collect()
    }

    pub fn indices(&self) -> Vec<String> {
        self.ops()
            .iter()
            .map(|(action, _)| action["create"]["_index"].as_str().unwrap_or("").to_owned())
            .collect()
    }
}

pub enum Reply {
    Json(u16, String),
    /// Never answer: the client's request timeout must fire.
    Hang,
    /// Close the connection without a response.
    Drop,
    /// Answer with the inner reply once the gate is open (`Gate::open`): a request held in
    /// flight for as long as a test needs it.
    When(tokio::sync::watch::Receiver<bool>, Box<Reply>),
}

/// Holds `Reply::When` answers until opened.
pub struct Gate(tokio::sync::watch::Sender<bool>);

impl Gate {
    pub fn new() -> Self {
        Gate(tokio::sync::watch::channel(false).0)
    }

    /// `reply`, held until this gate opens.
    pub fn hold(&self, reply: Reply) -> Reply {
        Reply::When(self.0.subscribe(), Box::new(reply))
    }

    pub fn open(&self) {
        self.0.send_replace(true);
    }
}

type Handler = Box<dyn Fn(usize, &Request) -> Reply + Send + Sync>;

pub struct StandIn {
    pub url: String,
    requests: Arc<Mutex<Vec<Request>>>,
    /// How many requests have arrived, for tests that wait for one.
    arrived: tokio::sync::watch::Receiver<usize>,
}

impl StandIn {
    pub async fn start(handler: impl Fn(usize, &Request) -> Reply + Send + Sync + 'static) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("address"));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let handler: Arc<Handler> = Arc::new(Box::new(handler));
        let seen = Arc::clone(&requests);
        let (arrival, arrived) = tokio::sync::watch::channel(0);
        let arrival = Arc::new(arrival);
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let seen = Seen {
                    requests: Arc::clone(&seen),
                    arrival: Arc::clone(&arrival),
                };
                tokio::spawn(serve(stream, Arc::clone(&handler), seen));
            }
        });
        StandIn {
            url,
            requests,
            arrived,
        }
    }

    pub fn requests(&self) -> Vec<Request> {
        self.requests.lock().expect("lock").clone()
    }

    /// Returns once `n` requests have arrived.
    pub async fn arrived(&self, n: usize) {
        let mut arrived = self.arrived.clone();
        arrived
            .wait_for(|&seen| seen >= n)
            .await
            .expect("the stand-in runs as long as the test");
    }
}

/// What every connection records of the requests it serves.
struct Seen {
    requests: Arc<Mutex<Vec<Request>>>,
    arrival: Arc<tokio::sync::watch::Sender<usize>>,
}

async fn serve(mut stream: TcpStream, handler: Arc<Handler>, seen: Seen) {
    let mut buffer = Vec::new();
    loop {
        let Some(request) = read_request(&mut stream, &mut buffer).await else {
            return;
        };
        seen.requests.lock().expect("lock").push(request.clone());
        let mut n = 0;
        seen.arrival.send_modify(|arrived| {
            n = *arrived;
            *arrived += 1;
        });
        let mut reply = handler(n, &request);
        while let Reply::When(mut gate, inner) = reply {
            let _ = gate.wait_for(|&open| open).await;
            reply = *inner;
        }
        match reply {
            Reply::Json(status, body) => {
                let head = format!(
                    "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\n\
                     content-length: {}\r\n\r\n",
                    body.len()
                );
                let sent = async {
                    stream.write_all(head.as_bytes()).await?;
                    stream.write_all(body.as_bytes()).await
                };
                if sent.await.is_err() {
                    return;
                }
            }
            Reply::Hang => std::future::pending::<()>().await,
            Reply::Drop => return,
            Reply::When(..) => unreachable!("waited for above"),
        }
    }
}

/// Reads one request (headers and a content-length or chunked body); None at end of stream.
async fn read_request(stream: &mut TcpStream, buffer: &mut Vec<u8>) -> Option<Request> {
    let head_end = loop {
        if let Some(at) = find(buffer, b"\r\n\r\n") {
            break at;
        }
        fill(stream, buffer).await?;
    };
    let head = String::from_utf8_lossy(&buffer[..head_end]).to_string();
    buffer.drain(..head_end + 4);
    let mut words = head.split_whitespace();
    let method = words.next()?.to_owned();
    let path = words.next()?.to_owned();
    let header = |name: &str| {
        head.lines().find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.eq_ignore_ascii_case(name)
                .then(|| value.trim().to_owned())
        })
    };
    let mut body = Vec::new();
    if let Some(length) = header("content-length") {
        let length: usize = length.parse().ok()?;
        while buffer.len() < length {
            fill(stream, buffer).await?;
        }
        body.extend(buffer.drain(..length));
    } else if header("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
        loop {
            let line_end = loop {
                if let Some(at) = find(buffer, b"\r\n") {
                    break at;
                }
                fill(stream, buffer).await?;
            };
            let size =
                usize::from_str_radix(String::from_utf8_lossy(&buffer[..line_end]).trim(), 16)
                    .ok()?;
            buffer.drain(..line_end + 2);
            while buffer.len() < size + 2 {
                fill(stream, buffer).await?;
            }
            body.extend(buffer.drain(..size));
            buffer.drain(..2);
            if size == 0 {
                break;
            }
        }
    }
    let headers = head
        .lines()
        .skip(1)
        .filter_map(|line| {
            let (key, value) = line.split_once(':')?;
            Some((key.trim().to_ascii_lowercase(), value.trim().to_owned()))
        })
        .collect();
    let wire_bytes = body.len();
    if header("content-encoding").is_some_and(|v| v == "gzip") {
        use std::io::Read;
        let mut plain = Vec::new();
        flate2::read::GzDecoder::new(body.as_slice())
            .read_to_end(&mut plain)
            .expect("a gzip body that unpacks");
        body = plain;
    }
    Some(Request {
        method,
        path,
        headers,
        body: String::from_utf8(body).expect("a utf-8 body"),
        wire_bytes,
    })
}

async fn fill(stream: &mut TcpStream, buffer: &mut Vec<u8>) -> Option<()> {
    let mut chunk = [0u8; 8192];
    match stream.read(&mut chunk).await {
        Ok(0) | Err(_) => None,
        Ok(n) => {
            buffer.extend_from_slice(&chunk[..n]);
            Some(())
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}
