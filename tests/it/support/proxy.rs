//! A TCP proxy in front of the real search node that can swallow its answers: requests reach
//! the node and are carried out, but mqtt2es never hears back. That is the one fault a real
//! node cannot be made to produce on cue (a response lost after the documents were stored),
//! and the one where a resend must find what it was assigned to be stored once.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub struct Proxy {
    pub url: String,
    swallow: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// Listens on a free loopback port and forwards to `target` (`host:port`).
    pub async fn start(target: String) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the proxy");
        let url = format!("http://{}", listener.local_addr().expect("address"));
        let swallow = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&swallow);
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(&target).await else {
                    continue;
                };
                tokio::spawn(pipe(client, server, Arc::clone(&flag)));
            }
        });
        Proxy { url, swallow, task }
    }

    /// From now on the node's answers are dropped (true) or passed on (false).
    pub fn swallow_answers(&self, swallow: bool) {
        self.swallow.store(swallow, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn pipe(client: TcpStream, server: TcpStream, swallow: Arc<AtomicBool>) {
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let up = tokio::spawn(async move {
        let _ = tokio::io::copy(&mut client_read, &mut server_write).await;
    });
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match server_read.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if !swallow.load(Ordering::SeqCst)
                    && client_write.write_all(&buf[..n]).await.is_err()
                {
                    break;
                }
            }
        }
    }
    up.abort();
}
