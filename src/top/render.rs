//! A [`View`] as lines: the same rows, with their tone, for the live screen (ratatui, coloured)
//! and for `--once` (plain text), so the two never say different things.

use std::time::Duration;

use chrono::{DateTime, Utc};
use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Cell, Paragraph, Row as TableRow, Table};

use super::view::{Estimate, Percentiles, Rate, Row, View};

/// How a figure reads: the colour on screen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tone {
    Plain,
    Good,
    Warn,
    Bad,
}

/// One line of the summary: `label   text`.
#[derive(Debug, Clone, PartialEq)]
pub struct Figure {
    pub label: &'static str,
    pub text: String,
    pub tone: Tone,
}

/// Width of the label column, in both renderings.
const LABEL_WIDTH: usize = 16;

fn figure(label: &'static str, text: String, tone: Tone) -> Figure {
    Figure { label, text, tone }
}

/// The summary lines, top to bottom; lines for figures this mqtt2es does not export are left
/// out (the spool, offline queues), except those the issue promises, which say so.
pub fn summary(view: &View, now: DateTime<Utc>) -> Vec<Figure> {
    let mut lines = vec![elasticsearch(view, now)];
    let devices = if view.devices == 1.0 {
        "device"
    } else {
        "devices"
    };
    let mut connected = format!("{} {devices}", count(view.devices));
    if view.upstream_connections > 0.0 {
        connected += &format!(", {} upstream", count(view.upstream_connections));
    }
    lines.push(figure("Connected", connected, Tone::Plain));
    lines.push(figure("Readings in", rate(view.readings_in), Tone::Plain));
    lines.push(figure("Stored", rate(view.stored), Tone::Plain));
    let acks = match view.acks_pending {
        Some(acks) => format!(
            "{}   (not yet durable: {})",
            count(acks),
            count(view.queued)
        ),
        None => format!("not exported   (not yet durable: {})", count(view.queued)),
    };
    lines.push(figure("Acks pending", acks, Tone::Plain));
    if let Some(spool) = view.spool {
        let text = format!("{} records, {}", count(spool.records), bytes(spool.bytes));
        lines.push(figure("Spool", text, Tone::Plain));
    }
    if let Some(offline) = view.offline {
        let text = format!(
            "{} messages, {}, {} dropped",
            count(offline.messages),
            bytes(offline.bytes),
            count(offline.dropped)
        );
        let tone = if offline.dropped > 0.0 {
            Tone::Warn
        } else {
            Tone::Plain
        };
        lines.push(figure("Offline queue", text, tone));
    }
    lines.push(figure(
        "Bulk latency",
        percentiles(view.bulk_latency),
        Tone::Plain,
    ));
    lines.push(figure(
        "Publish→stored",
        percentiles(view.latency),
        Tone::Plain,
    ));
    lines.push(dead_letters(view));
    lines
}

fn elasticsearch(view: &View, now: DateTime<Utc>) -> Figure {
    let Some(es) = view.elasticsearch else {
        return figure("Elasticsearch", "not exported".to_owned(), Tone::Plain);
    };
    match (es.reachable_since, es.last_answer) {
        (Some(since), _) if es.reachable => figure(
            "Elasticsearch",
            format!("reachable since {}", when(since, now)),
            Tone::Good,
        ),
        (_, Some(last)) => figure(
            "Elasticsearch",
            format!("UNREACHABLE, last answer {}", when(last, now)),
            Tone::Bad,
        ),
        _ => figure(
            "Elasticsearch",
            "UNREACHABLE, never answered".to_owned(),
            Tone::Bad,
        ),
    }
}

fn dead_letters(view: &View) -> Figure {
    let total = view.dead_letters_total();
    let Some(recent) = view.dead_letters_recent() else {
        return figure(
            "Dead letters",
            format!("{} in total", count(total)),
            if total > 0.0 { Tone::Warn } else { Tone::Good },
        );
    };
    let tone = match (recent > 0.0, total > 0.0) {
        (true, _) => Tone::Bad,
        (false, true) => Tone::Warn,
        (false, false) => Tone::Good,
    };
    let text = format!(
        "{} in the {}, {} in total",
        count(recent),
        last(view.window),
        count(total)
    );
    figure("Dead letters", text, tone)
}

/// "last minute", or less while `top` has not watched that long.
fn last(window: Option<Duration>) -> String {
    match window {
        Some(w) if w.as_secs() >= 59 => "last minute".to_owned(),
        Some(w) => format!("last {}s", w.as_secs_f64().round()),
        None => "last -".to_owned(),
    }
}

/// The two tables: `(title, column heads, rows)`.
pub struct Tables {
    pub dead_letters: Vec<[String; 3]>,
    pub streams: Vec<[String; 3]>,
    pub dead_letter_heads: [String; 3],
    pub stream_heads: [String; 3],
}

pub fn tables(view: &View) -> Tables {
    let dead = |row: &Row| {
        [
            row.name.replace('\n', " "),
            row.recent.map_or("-".to_owned(), count),
            count(row.rate.total),
        ]
    };
    let stream = |row: &Row| {
        [
            row.name.clone(),
            per_second(row.rate.per_s),
            count(row.rate.total),
        ]
    };
    Tables {
        dead_letters: view.dead_letters.iter().map(dead).collect(),
        streams: view.streams.iter().map(stream).collect(),
        dead_letter_heads: [
            "dead letters by reason".to_owned(),
            last(view.window),
            "total".to_owned(),
        ],
        stream_heads: [
            "data stream".to_owned(),
            "docs/s".to_owned(),
            "total".to_owned(),
        ],
    }
}

/// `--once`: the summary and both tables as plain text, one figure a line.
pub fn plain(view: &View, url: &str, now: DateTime<Utc>) -> String {
    let mut out = format!(
        "mqtt2es top: {url} at {}\n",
        now.format("%Y-%m-%dT%H:%M:%SZ")
    );
    for line in summary(view, now) {
        out += &format!("{:LABEL_WIDTH$}{}\n", line.label, line.text);
    }
    let tables = tables(view);
    for (heads, rows) in [
        (&tables.dead_letter_heads, &tables.dead_letters),
        (&tables.stream_heads, &tables.streams),
    ] {
        if rows.is_empty() {
            continue;
        }
        for row in std::iter::once(heads).chain(rows) {
            out += &format!("  {:<40} {:>14} {:>12}\n", row[0], row[1], row[2]);
        }
    }
    out
}

/// What the screen says besides the figures.
pub struct Status<'a> {
    pub url: &'a str,
    pub interval: Duration,
    /// The last scrape's failure, if it failed.
    pub error: Option<&'a str>,
}

/// The live screen. Fits 80×24: the summary takes at most 11 lines, the two tables share the
/// rest, and a table too long for its share ends with "+N more".
pub fn draw(frame: &mut Frame, view: Option<&View>, status: &Status, now: DateTime<Utc>) {
    let lines = view.map(|v| summary(v, now)).unwrap_or_default();
    let [title, body, tables_area, foot] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Length(lines.len() as u16),
        Constraint::Fill(1),
        Constraint::Length(1),
    ])
    .areas(frame.area());
    let heading = format!(
        " mqtt2es top  {}  every {}s  q quits",
        status.url,
        status.interval.as_secs_f64()
    );
    frame.render_widget(
        Paragraph::new(heading).style(Style::new().add_modifier(Modifier::REVERSED)),
        title,
    );
    let summary: Vec<Line> = lines
        .into_iter()
        .map(|f| {
            Line::from(vec![
                Span::styled(
                    format!("{:LABEL_WIDTH$}", f.label),
                    Style::new().add_modifier(Modifier::BOLD),
                ),
                Span::styled(f.text, style(f.tone)),
            ])
        })
        .collect();
    frame.render_widget(Paragraph::new(summary), body);
    if let Some(view) = view {
        draw_tables(frame, &tables(view), view, tables_area);
    }
    let foot_line = match status.error {
        Some(error) => Line::styled(
            format!("{error} (retrying)"),
            style(Tone::Bad).add_modifier(Modifier::BOLD),
        ),
        None if view.is_none() => Line::raw("waiting for the first scrape…"),
        None => Line::styled(
            format!("updated {}", now.format("%H:%M:%SZ")),
            Style::new().add_modifier(Modifier::DIM),
        ),
    };
    frame.render_widget(Paragraph::new(foot_line), foot);
}

fn draw_tables(frame: &mut Frame, tables: &Tables, view: &View, area: Rect) {
    let dead_height = if tables.dead_letters.is_empty() {
        0
    } else {
        (tables.dead_letters.len() as u16 + 1).min(area.height / 2)
    };
    let [dead_area, stream_area] =
        Layout::vertical([Constraint::Length(dead_height), Constraint::Fill(1)]).areas(area);
    let dead_tone = |i: usize| match view.dead_letters.get(i) {
        Some(row) if row.recent.unwrap_or(0.0) > 0.0 => Tone::Bad,
        Some(_) => Tone::Warn,
        None => Tone::Plain,
    };
    table(
        frame,
        &tables.dead_letter_heads,
        &tables.dead_letters,
        dead_tone,
        dead_area,
    );
    table(
        frame,
        &tables.stream_heads,
        &tables.streams,
        |_| Tone::Plain,
        stream_area,
    );
}

/// A table of `rows` under `heads`, cut to `area` with a last row saying how many were left out.
fn table(
    frame: &mut Frame,
    heads: &[String; 3],
    rows: &[[String; 3]],
    tone: impl Fn(usize) -> Tone,
    area: Rect,
) {
    if area.height == 0 {
        return;
    }
    let room = usize::from(area.height - 1);
    let shown = if rows.len() > room {
        room.saturating_sub(1)
    } else {
        rows.len()
    };
    let mut body: Vec<TableRow> = rows[..shown]
        .iter()
        .enumerate()
        .map(|(i, row)| cells(row).style(style(tone(i))))
        .collect();
    if shown < rows.len() {
        body.push(TableRow::new([format!("+{} more", rows.len() - shown)]));
    }
    let widths = [
        Constraint::Fill(1),
        Constraint::Length(14),
        Constraint::Length(12),
    ];
    let head = cells(heads).style(Style::new().add_modifier(Modifier::UNDERLINED));
    frame.render_widget(Table::new(body, widths).header(head), area);
}

/// A name and two figures, the figures right-aligned so that digits line up.
fn cells(row: &[String; 3]) -> TableRow<'static> {
    TableRow::new([
        Cell::from(row[0].clone()),
        Cell::from(Line::from(row[1].clone()).right_aligned()),
        Cell::from(Line::from(row[2].clone()).right_aligned()),
    ])
}

fn style(tone: Tone) -> Style {
    match tone {
        Tone::Plain => Style::new(),
        Tone::Good => Style::new().fg(Color::Green),
        Tone::Warn => Style::new().fg(Color::Yellow),
        Tone::Bad => Style::new().fg(Color::Red).add_modifier(Modifier::BOLD),
    }
}

fn count(value: f64) -> String {
    format!("{}", value.round() as i64)
}

fn per_second(per_s: Option<f64>) -> String {
    match per_s {
        Some(value) if value >= 100.0 => format!("{value:.0}"),
        Some(value) => format!("{value:.1}"),
        None => "-".to_owned(),
    }
}

fn rate(rate: Rate) -> String {
    format!(
        "{:>8}/s   total {}",
        per_second(rate.per_s),
        count(rate.total)
    )
}

fn percentiles(percentiles: Option<Percentiles>) -> String {
    let Some(p) = percentiles else {
        return "- (nothing measured yet)".to_owned();
    };
    let estimate = |e: Estimate| {
        let text = duration(Duration::from_secs_f64(e.seconds.max(0.0)));
        if e.above { format!(">{text}") } else { text }
    };
    let scope = if p.since_start {
        "since start"
    } else {
        "last minute"
    };
    format!(
        "p50 {:>7}   p99 {:>7}   ({scope})",
        estimate(p.p50),
        estimate(p.p99)
    )
}

fn bytes(value: f64) -> String {
    match value {
        v if v >= 1024.0 * 1024.0 * 1024.0 => format!("{:.1} GiB", v / 1024f64.powi(3)),
        v if v >= 1024.0 * 1024.0 => format!("{:.1} MiB", v / 1024f64.powi(2)),
        v if v >= 1024.0 => format!("{:.1} KiB", v / 1024.0),
        v => format!("{v:.0} B"),
    }
}

/// Latencies and ages, to two significant figures or so: `850 ms`, `1.2 s`, `3m 05s`, `2h 10m`.
fn duration(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0 => format!("{} ms", d.as_millis()),
        1..=9 => format!("{:.1} s", d.as_secs_f64()),
        10..=59 => format!("{s} s"),
        60..=3599 => format!("{}m {:02}s", s / 60, s % 60),
        3600..=86_399 => format!("{}h {:02}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d {:02}h", s / 86_400, s % 86_400 / 3600),
    }
}

/// A wall-clock time and how long ago it was: `11:00:00Z (1h 00m ago)`; the date too when it
/// is not today.
fn when(at: DateTime<Utc>, now: DateTime<Utc>) -> String {
    let clock = if at.date_naive() == now.date_naive() {
        at.format("%H:%M:%SZ").to_string()
    } else {
        at.format("%Y-%m-%d %H:%MZ").to_string()
    };
    let ago = (now - at).to_std().unwrap_or(Duration::ZERO);
    format!("{clock} ({} ago)", duration(ago))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::time::Instant;

    use ratatui::Terminal;
    use ratatui::backend::TestBackend;

    use super::*;
    use crate::top::scrape::{Elasticsearch, Offline, Scrape};
    use crate::top::view::History;

    fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text).expect("a time").into()
    }

    fn scrape(at_s: u64, stored: f64, reachable: bool, streams: usize) -> Scrape {
        let start = *START.get_or_init(Instant::now);
        Scrape {
            at: start + Duration::from_secs(at_s),
            connected: BTreeMap::from([("broker".to_owned(), 3.0)]),
            messages_in: stored + 2.0,
            stored,
            acks_pending: Some(1.0),
            queues: BTreeMap::from([("sink".to_owned(), 1.0)]),
            offline: Some(Offline {
                messages: 4.0,
                bytes: 2048.0,
                dropped: 0.0,
            }),
            spool: None,
            bulk_latency: Some(vec![(0.01, 5.0), (0.1, 10.0), (f64::INFINITY, 10.0)]),
            latency: None,
            dead_letters: BTreeMap::from([("invalid_json".to_owned(), 2.0)]),
            streams: (0..streams)
                .map(|i| (format!("mqtt2es-telemetry-site-{i:02}"), stored))
                .collect(),
            elasticsearch: Some(Elasticsearch {
                reachable,
                reachable_since: reachable.then(|| at("2026-12-02T11:00:00Z")),
                last_answer: Some(at("2026-12-02T11:59:29Z")),
            }),
        }
    }

    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();

    fn view(reachable: bool, streams: usize) -> View {
        let mut history = History::default();
        history.push(scrape(0, 100.0, reachable, streams));
        history.push(scrape(2, 120.0, reachable, streams));
        history.view().expect("a view")
    }

    const NOW: &str = "2026-12-02T12:00:00Z";

    #[test]
    fn the_plain_snapshot_has_one_figure_a_line_with_rates_and_totals() {
        let text = plain(&view(true, 1), "http://gw:9464/metrics", at(NOW));
        let line = |label: &str| {
            text.lines()
                .find(|l| l.starts_with(label))
                .unwrap_or_else(|| panic!("no {label:?} in:\n{text}"))
                .to_owned()
        };
        assert!(text.starts_with("mqtt2es top: http://gw:9464/metrics at 2026-12-02T12:00:00Z\n"));
        assert_eq!(
            line("Elasticsearch"),
            "Elasticsearch   reachable since 11:00:00Z (1h 00m ago)"
        );
        assert_eq!(line("Connected"), "Connected       3 devices");
        assert_eq!(line("Stored"), "Stored              10.0/s   total 120");
        assert_eq!(
            line("Acks pending"),
            "Acks pending    1   (not yet durable: 1)"
        );
        assert_eq!(
            line("Offline queue"),
            "Offline queue   4 messages, 2.0 KiB, 0 dropped"
        );
        assert_eq!(
            line("Bulk latency"),
            "Bulk latency    p50   10 ms   p99   98 ms   (since start)"
        );
        assert_eq!(
            line("Dead letters"),
            "Dead letters    0 in the last 2s, 2 in total"
        );
        assert!(line("  invalid_json").ends_with("0            2"), "{text}");
        assert!(
            line("  mqtt2es-telemetry-site-00").ends_with("10.0          120"),
            "{text}"
        );
        assert!(!text.contains("Spool"), "{text}");
    }

    #[test]
    fn an_unreachable_elasticsearch_says_since_its_last_answer_in_red() {
        let lines = summary(&view(false, 1), at(NOW));
        assert_eq!(
            lines[0],
            figure(
                "Elasticsearch",
                "UNREACHABLE, last answer 11:59:29Z (31 s ago)".to_owned(),
                Tone::Bad
            )
        );
        assert_eq!(lines.last().expect("dead letters").tone, Tone::Warn);
    }

    #[test]
    fn the_screen_fits_80_by_24_with_a_long_stream_list_cut_short() {
        let mut terminal = Terminal::new(TestBackend::new(80, 24)).expect("a terminal");
        let status = Status {
            url: "http://127.0.0.1:9464/metrics",
            interval: Duration::from_secs(1),
            error: None,
        };
        terminal
            .draw(|frame| draw(frame, Some(&view(true, 40)), &status, at(NOW)))
            .expect("drawn");
        let screen: Vec<String> = terminal
            .backend()
            .buffer()
            .content()
            .chunks(80)
            .map(|row| row.iter().map(|cell| cell.symbol()).collect())
            .collect();
        let text = screen.join("\n");
        assert!(screen[0].contains("mqtt2es top"), "{text}");
        assert!(screen[1].starts_with("Elasticsearch   reachable"), "{text}");
        assert!(text.contains("invalid_json"), "{text}");
        assert!(text.contains("mqtt2es-telemetry-site-00"), "{text}");
        assert!(
            screen[22].trim_start().starts_with("+") && screen[22].contains("more"),
            "{text}"
        );
        assert!(screen[23].starts_with("updated 12:00:00Z"), "{text}");
    }

    #[test]
    fn durations_read_at_a_glance_from_milliseconds_to_days() {
        assert_eq!(duration(Duration::from_millis(850)), "850 ms");
        assert_eq!(duration(Duration::from_millis(1250)), "1.2 s");
        assert_eq!(duration(Duration::from_secs(31)), "31 s");
        assert_eq!(duration(Duration::from_secs(185)), "3m 05s");
        assert_eq!(duration(Duration::from_secs(7800)), "2h 10m");
        assert_eq!(duration(Duration::from_secs(90_000)), "1d 01h");
    }
}
