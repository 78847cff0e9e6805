//! What `top` shows, computed from the scrapes it kept: rates from the last two, "last minute"
//! figures and latency percentiles from the oldest scrape of the last minute to the newest.
//!
//! Counters are cumulative, so everything here is a difference, as Prometheus's `rate()` and
//! `histogram_quantile()` would compute it. A counter that went down means mqtt2es restarted;
//! its new value is then the increase. Pure: the time of each scrape is in the scrape.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use super::scrape::{Buckets, Elasticsearch, Offline, Scrape, Spool};

/// How far back "last minute" figures and percentiles look.
pub const WINDOW: Duration = Duration::from_secs(60);

/// The scrapes of the last [`WINDOW`], plus the newest one older than that as the baseline.
#[derive(Debug, Default)]
pub struct History {
    scrapes: VecDeque<Scrape>,
}

impl History {
    pub fn push(&mut self, scrape: Scrape) {
        let newest = scrape.at;
        self.scrapes.push_back(scrape);
        while self
            .scrapes
            .get(1)
            .is_some_and(|next| newest.duration_since(next.at) >= WINDOW)
        {
            self.scrapes.pop_front();
        }
    }

    /// The view of what was scraped; `None` before the first scrape.
    pub fn view(&self) -> Option<View> {
        let latest = self.scrapes.back()?;
        let previous = self.scrapes.len().checked_sub(2).map(|i| &self.scrapes[i]);
        let baseline = self.scrapes.front().filter(|_| previous.is_some());
        Some(View::new(latest, previous, baseline))
    }
}

/// A counter's rate over the last scrape interval and its total.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    /// `None` until there are two scrapes.
    pub per_s: Option<f64>,
    pub total: f64,
}

/// A counter by label: its total, and its increase over the window.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub name: String,
    pub rate: Rate,
    /// `None` until there are two scrapes.
    pub recent: Option<f64>,
}

/// A latency percentile from histogram buckets.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Estimate {
    pub seconds: f64,
    /// The rank fell in the `+Inf` bucket: the value is "more than `seconds`".
    pub above: bool,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Percentiles {
    pub p50: Estimate,
    pub p99: Estimate,
    /// Nothing was observed in the window, so these cover everything since mqtt2es started.
    pub since_start: bool,
}

/// Everything on the screen, figures only (no layout, no colour).
#[derive(Debug, Clone, PartialEq)]
pub struct View {
    pub elasticsearch: Option<Elasticsearch>,
    pub devices: f64,
    pub upstream_connections: f64,
    pub readings_in: Rate,
    pub stored: Rate,
    pub acks_pending: Option<f64>,
    /// Records not yet durable, in mqtt2es's own channels and batches.
    pub queued: f64,
    pub offline: Option<Offline>,
    pub spool: Option<Spool>,
    pub bulk_latency: Option<Percentiles>,
    pub latency: Option<Percentiles>,
    /// What "recent" covers in [`Row::recent`]: about [`WINDOW`], less while `top` is younger;
    /// `None` until there are two scrapes.
    pub window: Option<Duration>,
    /// By reason: the most recent first, then the most in total.
    pub dead_letters: Vec<Row>,
    /// By data stream: the busiest first, then the most in total.
    pub streams: Vec<Row>,
}

impl View {
    fn new(latest: &Scrape, previous: Option<&Scrape>, baseline: Option<&Scrape>) -> View {
        let seconds = |from: &Scrape| latest.at.duration_since(from.at).as_secs_f64();
        let rate = |figure: fn(&Scrape) -> f64| Rate {
            per_s: previous.and_then(|p| per_second(figure(p), figure(latest), seconds(p))),
            total: figure(latest),
        };
        let mut dead_letters = rows(
            &latest.dead_letters,
            previous.map(|p| (&p.dead_letters, seconds(p))),
            baseline.map(|b| &b.dead_letters),
        );
        dead_letters.sort_by(|a, b| {
            b.recent
                .unwrap_or(0.0)
                .total_cmp(&a.recent.unwrap_or(0.0))
                .then(b.rate.total.total_cmp(&a.rate.total))
                .then_with(|| a.name.cmp(&b.name))
        });
        let mut streams = rows(
            &latest.streams,
            previous.map(|p| (&p.streams, seconds(p))),
            baseline.map(|b| &b.streams),
        );
        streams.sort_by(|a, b| {
            b.rate
                .per_s
                .unwrap_or(0.0)
                .total_cmp(&a.rate.per_s.unwrap_or(0.0))
                .then(b.rate.total.total_cmp(&a.rate.total))
                .then_with(|| a.name.cmp(&b.name))
        });
        let percentiles = |buckets: fn(&Scrape) -> &Option<Buckets>| {
            percentiles(
                buckets(latest).as_deref()?,
                baseline.and_then(|b| buckets(b).as_deref()),
            )
        };
        View {
            elasticsearch: latest.elasticsearch,
            devices: latest.connected.get("broker").copied().unwrap_or(0.0),
            upstream_connections: latest.connected.get("upstream").copied().unwrap_or(0.0),
            readings_in: rate(|s| s.messages_in),
            stored: rate(|s| s.stored),
            acks_pending: latest.acks_pending,
            queued: latest.queues.values().sum(),
            offline: latest.offline,
            spool: latest.spool,
            bulk_latency: percentiles(|s| &s.bulk_latency),
            latency: percentiles(|s| &s.latency),
            window: baseline.map(|b| latest.at.duration_since(b.at)),
            dead_letters,
            streams,
        }
    }

    /// Dead letters over the window, all reasons; `None` until there are two scrapes.
    pub fn dead_letters_recent(&self) -> Option<f64> {
        self.window?;
        Some(self.dead_letters.iter().filter_map(|row| row.recent).sum())
    }

    pub fn dead_letters_total(&self) -> f64 {
        self.dead_letters.iter().map(|row| row.rate.total).sum()
    }
}

/// What a counter gained from `before` to `after`; a counter that went down restarted at 0.
fn increase(before: f64, after: f64) -> f64 {
    if after >= before {
        after - before
    } else {
        after
    }
}

fn per_second(before: f64, after: f64, seconds: f64) -> Option<f64> {
    (seconds > 0.0).then(|| increase(before, after) / seconds)
}

/// One row per label of `latest`, with its rate since `previous` and its increase since
/// `baseline`. A label absent from an earlier scrape counted from 0.
fn rows(
    latest: &BTreeMap<String, f64>,
    previous: Option<(&BTreeMap<String, f64>, f64)>,
    baseline: Option<&BTreeMap<String, f64>>,
) -> Vec<Row> {
    let earlier = |map: &BTreeMap<String, f64>, name: &str| map.get(name).copied().unwrap_or(0.0);
    latest
        .iter()
        .map(|(name, &total)| Row {
            name: name.clone(),
            rate: Rate {
                per_s: previous
                    .and_then(|(map, seconds)| per_second(earlier(map, name), total, seconds)),
                total,
            },
            recent: baseline.map(|map| increase(earlier(map, name), total)),
        })
        .collect()
}

/// p50 and p99 of what the histogram gained since `baseline`; of everything when it gained
/// nothing (an idle bridge still shows how it did); `None` when it never observed anything.
fn percentiles(latest: &[(f64, f64)], baseline: Option<&[(f64, f64)]>) -> Option<Percentiles> {
    let window: Option<Buckets> = baseline.filter(|b| b.len() == latest.len()).map(|b| {
        latest
            .iter()
            .zip(b)
            .map(|(&(bound, after), &(_, before))| (bound, increase(before, after)))
            .collect()
    });
    let (buckets, since_start) = match window {
        Some(window) if window.last().is_some_and(|&(_, count)| count > 0.0) => (window, false),
        _ => (latest.to_vec(), true),
    };
    Some(Percentiles {
        p50: quantile(0.5, &buckets)?,
        p99: quantile(0.99, &buckets)?,
        since_start,
    })
}

/// The `q` quantile of cumulative `buckets`, interpolated linearly inside the bucket where the
/// rank falls, as Prometheus's `histogram_quantile` does. `None` without observations.
pub fn quantile(q: f64, buckets: &[(f64, f64)]) -> Option<Estimate> {
    let total = buckets.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let (mut lower, mut below) = (0.0, 0.0);
    for &(bound, count) in buckets {
        if count >= rank {
            if bound.is_infinite() {
                return Some(Estimate {
                    seconds: lower,
                    above: true,
                });
            }
            let inside = count - below;
            let seconds = if inside > 0.0 {
                lower + (bound - lower) * (rank - below) / inside
            } else {
                bound
            };
            return Some(Estimate {
                seconds,
                above: false,
            });
        }
        (lower, below) = (bound, count);
    }
    None
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;

    fn scrape(at: Instant, messages_in: f64, dead: &[(&str, f64)]) -> Scrape {
        Scrape {
            at,
            connected: BTreeMap::from([("broker".to_owned(), 2.0)]),
            messages_in,
            stored: messages_in,
            acks_pending: Some(0.0),
            queues: BTreeMap::new(),
            offline: None,
            spool: None,
            bulk_latency: None,
            latency: None,
            dead_letters: dead.iter().map(|&(r, n)| (r.to_owned(), n)).collect(),
            streams: BTreeMap::from([
                ("quiet".to_owned(), 500.0),
                ("busy".to_owned(), messages_in / 10.0),
            ]),
            elasticsearch: None,
        }
    }

    fn seconds(start: Instant, s: u64) -> Instant {
        start + Duration::from_secs(s)
    }

    #[test]
    fn rates_come_from_the_last_two_scrapes_and_need_two() {
        let start = Instant::now();
        let mut history = History::default();
        history.push(scrape(start, 100.0, &[]));
        let first = history.view().expect("a view");
        assert_eq!(first.readings_in.per_s, None);
        assert_eq!(first.readings_in.total, 100.0);
        history.push(scrape(seconds(start, 2), 300.0, &[]));
        let view = history.view().expect("a view");
        assert_eq!(view.readings_in.per_s, Some(100.0));
        assert_eq!(view.stored.total, 300.0);
        assert_eq!(view.devices, 2.0);
    }

    #[test]
    fn a_counter_that_went_down_means_a_restart_and_counts_from_zero() {
        assert_eq!(increase(500.0, 20.0), 20.0);
        assert_eq!(per_second(500.0, 20.0, 2.0), Some(10.0));
    }

    #[test]
    fn dead_letters_of_the_last_minute_are_counted_from_the_scrape_a_minute_old() {
        let start = Instant::now();
        let mut history = History::default();
        history.push(scrape(start, 0.0, &[("invalid_json", 5.0)]));
        history.push(scrape(seconds(start, 2), 0.0, &[("invalid_json", 6.0)]));
        history.push(scrape(seconds(start, 61), 0.0, &[("invalid_json", 9.0)]));
        history.push(scrape(
            seconds(start, 62),
            0.0,
            &[("invalid_json", 9.0), ("mapping_conflict", 1.0)],
        ));
        let view = history.view().expect("a view");
        // The baseline is the newest scrape at least a minute old: the one at 2 s.
        assert_eq!(view.window, Some(WINDOW));
        assert_eq!(view.dead_letters[0].name, "invalid_json");
        assert_eq!(view.dead_letters[0].recent, Some(3.0));
        assert_eq!(view.dead_letters[1].name, "mapping_conflict");
        assert_eq!(view.dead_letters[1].recent, Some(1.0));
        assert_eq!(view.dead_letters_recent(), Some(4.0));
        assert_eq!(view.dead_letters_total(), 10.0);
    }

    #[test]
    fn data_streams_are_sorted_busiest_first_then_by_total() {
        let start = Instant::now();
        let mut history = History::default();
        history.push(scrape(start, 0.0, &[]));
        let idle = history.view().expect("a view");
        assert_eq!(idle.streams[0].name, "quiet");
        history.push(scrape(seconds(start, 1), 100.0, &[]));
        let view = history.view().expect("a view");
        assert_eq!(view.streams[0].name, "busy");
        assert_eq!(view.streams[0].rate.per_s, Some(10.0));
        assert_eq!(view.streams[1].rate.per_s, Some(0.0));
    }

    #[test]
    fn a_quantile_interpolates_inside_its_bucket_like_histogram_quantile() {
        let buckets = [
            (0.1, 50.0),
            (0.2, 90.0),
            (1.0, 100.0),
            (f64::INFINITY, 100.0),
        ];
        let p50 = quantile(0.5, &buckets).expect("p50");
        assert!((p50.seconds - 0.1).abs() < 1e-9, "{p50:?}");
        let p75 = quantile(0.75, &buckets).expect("p75");
        assert!((p75.seconds - 0.1625).abs() < 1e-9, "{p75:?}");
        let p99 = quantile(0.99, &buckets).expect("p99");
        assert!((p99.seconds - 0.92).abs() < 1e-9, "{p99:?}");
        assert!(!p99.above);
        assert_eq!(quantile(0.5, &[(0.1, 0.0), (f64::INFINITY, 0.0)]), None);
    }

    #[test]
    fn a_quantile_in_the_inf_bucket_is_more_than_the_last_bound() {
        let buckets = [(0.1, 1.0), (30.0, 1.0), (f64::INFINITY, 2.0)];
        let p99 = quantile(0.99, &buckets).expect("p99");
        assert_eq!(
            p99,
            Estimate {
                seconds: 30.0,
                above: true
            }
        );
    }

    #[test]
    fn percentiles_cover_the_window_or_everything_when_the_window_saw_nothing() {
        let old = vec![(0.1, 10.0), (1.0, 10.0), (f64::INFINITY, 10.0)];
        let new = vec![(0.1, 10.0), (1.0, 20.0), (f64::INFINITY, 20.0)];
        let windowed = percentiles(&new, Some(&old)).expect("percentiles");
        assert!(!windowed.since_start);
        assert!(windowed.p50.seconds > 0.1, "{windowed:?}");
        let idle = percentiles(&new, Some(&new)).expect("percentiles");
        assert!(idle.since_start);
        assert!((idle.p50.seconds - 0.1).abs() < 1e-9, "{idle:?}");
        let empty = vec![(0.1, 0.0), (f64::INFINITY, 0.0)];
        assert_eq!(percentiles(&empty, None), None);
    }
}
