//! The retry delays of one delivery: capped and jittered (`retry` settings), counted for the
//! log, and started again once a round goes through without retries.

use std::time::Duration;

use crate::sink::settings::RetrySettings;

/// The capped, jittered delays of one delivery; restarts after a round without retries.
pub(super) struct Backoff<'a> {
    settings: &'a RetrySettings,
    delays: Box<dyn Iterator<Item = Duration> + Send + 'a>,
    attempt: u32,
}

impl<'a> Backoff<'a> {
    pub(super) fn new(settings: &'a RetrySettings) -> Self {
        Backoff {
            settings,
            delays: Box::new(settings.backoff()),
            attempt: 0,
        }
    }

    pub(super) fn next(&mut self) -> (u32, Duration) {
        self.attempt += 1;
        let max = Duration::from_millis(self.settings.max_backoff_ms);
        (self.attempt, self.delays.next().unwrap_or(max))
    }

    pub(super) fn reset(&mut self) {
        *self = Backoff::new(self.settings);
    }
}
