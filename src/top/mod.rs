//! `mqtt2es top`: a live terminal view of a running mqtt2es, read from its `/metrics`.
//!
//! - `exposition` — the metrics text read back into samples; pure.
//! - `scrape`     — one GET of `/metrics` and the figures in it, typed.
//! - `view`       — rates, last-minute counts and percentiles from the scrapes kept; pure.
//! - `render`     — a view as coloured lines on screen (ratatui) or as plain text (`--once`).
//!
//! The decision a reader might question: everything comes from `/metrics`, nothing from
//! Elasticsearch or the broker. That is what an operator on the gateway can reach, what
//! Prometheus sees (so `top` and the dashboards agree), and it works against an instance
//! elsewhere (`--url`). Scrapes run on a thread of their own, so an endpoint that hangs delays
//! the figures, never `q`.

mod exposition;
mod render;
mod scrape;
mod view;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::mpsc;
use std::time::Duration;

use chrono::Utc;
use ratatui::DefaultTerminal;
use ratatui::crossterm::event::{self, Event, KeyCode, KeyEvent, KeyEventKind, KeyModifiers};

use scrape::Scrape;
pub use scrape::ScrapeError;
use view::History;

/// The command line of `mqtt2es top`.
#[derive(Debug, Clone, clap::Args)]
pub struct TopArgs {
    /// The metrics endpoint of the running mqtt2es, such as http://gateway:9464/metrics (a
    /// bare host:port works). Default: `metrics.bind` from the configuration file, on
    /// 127.0.0.1 when it binds every address; without a file, http://127.0.0.1:9464/metrics.
    #[arg(long)]
    pub url: Option<String>,
    /// Print one plain-text snapshot and exit (two scrapes one interval apart, so that rates
    /// are known). Exit status 1 when the endpoint cannot be read.
    #[arg(long)]
    pub once: bool,
    /// Seconds between two scrapes (0.1 to 3600).
    #[arg(long, default_value_t = 1.0)]
    pub interval_s: f64,
}

#[derive(Debug, thiserror::Error)]
pub enum TopError {
    #[error(transparent)]
    Scrape(#[from] ScrapeError),
    #[error("--url {url:?} is not a URL: {reason}")]
    Url { url: String, reason: String },
    #[error("{0}")]
    NoEndpoint(&'static str),
    #[error("--interval-s {0} is out of range: give 0.1 to 3600 seconds")]
    Interval(f64),
    #[error("cannot drive the terminal: {0}")]
    Terminal(#[from] std::io::Error),
}

impl TopError {
    /// Whether the command line (or the configuration) is at fault rather than the endpoint.
    pub fn is_usage(&self) -> bool {
        matches!(
            self,
            TopError::Url { .. } | TopError::NoEndpoint(_) | TopError::Interval(_)
        )
    }
}

/// The URL to scrape when none is given: the configured `metrics.bind`, reached on loopback
/// when it binds every address.
pub fn url_of_bind(bind: Option<SocketAddr>) -> Result<String, TopError> {
    let Some(mut address) = bind else {
        return Err(TopError::NoEndpoint(
            "metrics.bind is null, so mqtt2es serves no /metrics: set it, or give --url",
        ));
    };
    if address.port() == 0 {
        return Err(TopError::NoEndpoint(
            "metrics.bind has port 0 (any free port): give --url with the address of the \
             `metrics listening address=...` log line",
        ));
    }
    if address.ip().is_unspecified() {
        address.set_ip(match address.ip() {
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
        });
    }
    Ok(format!("http://{address}/metrics"))
}

/// `--url` as given, completed: `http://` when no scheme, `/metrics` when no path.
pub fn endpoint(url: &str) -> Result<String, TopError> {
    let full = if url.contains("://") {
        url.to_owned()
    } else {
        format!("http://{url}")
    };
    let mut parsed = reqwest::Url::parse(&full).map_err(|e| TopError::Url {
        url: url.to_owned(),
        reason: e.to_string(),
    })?;
    if parsed.path() == "/" {
        parsed.set_path("/metrics");
    }
    Ok(parsed.to_string())
}

fn interval(args: &TopArgs) -> Result<Duration, TopError> {
    if !(0.1..=3600.0).contains(&args.interval_s) {
        return Err(TopError::Interval(args.interval_s));
    }
    Ok(Duration::from_secs_f64(args.interval_s))
}

/// How long one scrape may take: the interval, within bounds that keep a quick interval from
/// failing a slow gateway and a long one from hiding a hung endpoint.
fn scrape_timeout(interval: Duration) -> Duration {
    interval.clamp(Duration::from_secs(2), Duration::from_secs(10))
}

fn client() -> reqwest::Client {
    // No proxy from the environment: the endpoint is on the gateway or the LAN, and an
    // HTTP_PROXY meant for the internet would turn a local scrape into a confusing failure.
    reqwest::Client::builder()
        .no_proxy()
        .build()
        .unwrap_or_default()
}

fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
}

/// `--once`: the plain-text snapshot.
pub fn once(args: &TopArgs, url: &str) -> Result<String, TopError> {
    let interval = interval(args)?;
    runtime()?.block_on(async {
        let client = client();
        let timeout = scrape_timeout(interval);
        let mut history = History::default();
        history.push(scrape::scrape(&client, url, timeout).await?);
        tokio::time::sleep(interval).await;
        history.push(scrape::scrape(&client, url, timeout).await?);
        let view = history.view().expect("two scrapes were pushed");
        Ok(render::plain(&view, url, Utc::now()))
    })
}

/// The live screen, until `q`, Esc or Ctrl-C. The terminal is restored however this ends:
/// here on return, and by ratatui's panic hook on a panic.
pub fn watch(args: &TopArgs, url: &str) -> Result<(), TopError> {
    let interval = interval(args)?;
    let scraper = Scraper::start(url.to_owned(), interval)?;
    let mut terminal = ratatui::try_init()?;
    let result = screen(&mut terminal, &scraper.scrapes, url, interval);
    ratatui::restore();
    // Stopped and joined before the process exits: a thread still allocating while the
    // allocator tears itself down at exit can crash the process on its way out.
    scraper.stop();
    result
}

/// Scrapes a URL every interval on a thread of its own, until stopped.
struct Scraper {
    scrapes: mpsc::Receiver<Result<Scrape, String>>,
    stop: tokio::sync::oneshot::Sender<()>,
    thread: std::thread::JoinHandle<()>,
}

impl Scraper {
    fn start(url: String, interval: Duration) -> std::io::Result<Scraper> {
        let runtime = runtime()?;
        let (tx, scrapes) = mpsc::channel();
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("top-scrape".to_owned())
            .spawn(move || {
                runtime.block_on(async {
                    let client = client();
                    let mut tick = tokio::time::interval(interval);
                    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    loop {
                        let scraped = async {
                            tick.tick().await;
                            scrape::scrape(&client, &url, scrape_timeout(interval))
                                .await
                                .map_err(|e| e.to_string())
                        };
                        let outcome = tokio::select! {
                            _ = &mut stopped => break,
                            outcome = scraped => outcome,
                        };
                        if tx.send(outcome).is_err() {
                            break;
                        }
                    }
                });
            })?;
        Ok(Scraper {
            scrapes,
            stop,
            thread,
        })
    }

    /// Ends the scrapes (one in progress is abandoned) and waits for the thread.
    fn stop(self) {
        let _ = self.stop.send(());
        drop(self.scrapes);
        let _ = self.thread.join();
    }
}

fn screen(
    terminal: &mut DefaultTerminal,
    scrapes: &mpsc::Receiver<Result<Scrape, String>>,
    url: &str,
    interval: Duration,
) -> Result<(), TopError> {
    let mut history = History::default();
    let mut error = None;
    let mut redraw = true;
    loop {
        for outcome in scrapes.try_iter() {
            match outcome {
                Ok(scrape) => {
                    history.push(scrape);
                    error = None;
                }
                Err(reason) => error = Some(reason),
            }
            redraw = true;
        }
        if redraw {
            let view = history.view();
            let status = render::Status {
                url,
                interval,
                error: error.as_deref(),
            };
            terminal.draw(|frame| render::draw(frame, view.as_ref(), &status, Utc::now()))?;
            redraw = false;
        }
        // Short enough that a new scrape shows without a visible lag.
        if event::poll(Duration::from_millis(100))? {
            match event::read()? {
                Event::Key(key) if key.kind == KeyEventKind::Press && quits(&key) => {
                    return Ok(());
                }
                Event::Resize(..) => redraw = true,
                _ => {}
            }
        }
    }
}

/// `q`, Esc, and Ctrl-C (which arrives as a key in raw mode, not as SIGINT).
fn quits(key: &KeyEvent) -> bool {
    match key.code {
        KeyCode::Char('q') | KeyCode::Char('Q') | KeyCode::Esc => true,
        KeyCode::Char('c') => key.modifiers.contains(KeyModifiers::CONTROL),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_url_reaches_a_wildcard_bind_on_loopback() {
        let url = url_of_bind(Some("0.0.0.0:9464".parse().expect("address"))).expect("a url");
        assert_eq!(url, "http://127.0.0.1:9464/metrics");
        let url = url_of_bind(Some("[::]:9000".parse().expect("address"))).expect("a url");
        assert_eq!(url, "http://[::1]:9000/metrics");
        let url = url_of_bind(Some("10.0.0.5:9464".parse().expect("address"))).expect("a url");
        assert_eq!(url, "http://10.0.0.5:9464/metrics");
    }

    #[test]
    fn a_bind_that_cannot_be_reached_asks_for_url() {
        for bind in [None, Some("127.0.0.1:0".parse().expect("address"))] {
            let error = url_of_bind(bind).expect_err("no url");
            assert!(error.to_string().contains("--url"), "{error}");
            assert!(error.is_usage());
        }
    }

    #[test]
    fn a_url_gets_a_scheme_and_the_metrics_path_when_left_out() {
        assert_eq!(endpoint("gw:9464").expect("url"), "http://gw:9464/metrics");
        assert_eq!(
            endpoint("https://gw/custom").expect("url"),
            "https://gw/custom"
        );
        assert!(endpoint("http://").is_err());
    }

    #[test]
    fn q_esc_and_ctrl_c_quit_and_a_plain_c_does_not() {
        let key = |code, modifiers| KeyEvent::new(code, modifiers);
        assert!(quits(&key(KeyCode::Char('q'), KeyModifiers::NONE)));
        assert!(quits(&key(KeyCode::Esc, KeyModifiers::NONE)));
        assert!(quits(&key(KeyCode::Char('c'), KeyModifiers::CONTROL)));
        assert!(!quits(&key(KeyCode::Char('c'), KeyModifiers::NONE)));
    }

    #[test]
    fn an_unreachable_endpoint_fails_once_with_its_url_and_the_cause() {
        // A port nobody listens on: bound, then closed.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let url = format!("http://127.0.0.1:{port}/metrics");
        let args = TopArgs {
            url: None,
            once: true,
            interval_s: 0.1,
        };
        let error = once(&args, &url).expect_err("nothing listens");
        let message = error.to_string();
        assert!(message.contains(&url), "{message}");
        assert!(message.to_lowercase().contains("refused"), "{message}");
        assert!(!error.is_usage());
    }
}
