//! The rules of `/readyz`, as a pure function of what the process knows about itself.
//!
//! Ready means "this instance can take readings and make them durable now": setup finished,
//! the source is up (connected to the upstream broker, or the embedded broker listening), and
//! Elasticsearch answered recently. Any HTTP answer but 401 and 5xx counts, from a bulk
//! request, a shipped metrics document or the `_cluster/health` probe that runs when nothing
//! else has talked to it: the question is whether it is there, not whether every document fits.

use std::time::Duration;

/// How the process is fed; decides what "the source is up" means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Broker,
    Upstream,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Broker => "broker",
            Mode::Upstream => "upstream",
        }
    }
}

/// What readiness is decided from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Facts {
    pub mode: Mode,
    pub stopping: bool,
    pub setup_done: bool,
    /// Open connections to the upstream broker.
    pub upstream_connections: u64,
    /// The embedded broker's listeners are bound.
    pub listening: bool,
    /// Since Elasticsearch last answered; `None` if it never did.
    pub answer_age: Option<Duration>,
    pub max_answer_age: Duration,
    /// `delivery: spool`: why the spool takes no records now, if it does not.
    pub spool: Option<Option<String>>,
    /// Elasticsearch refuses writes with this cluster block.
    pub write_block: Option<String>,
}

/// `Ok` when ready; otherwise the short reason `/readyz` answers with.
pub fn check(facts: &Facts) -> Result<(), String> {
    if facts.stopping {
        return Err("shutting down".to_owned());
    }
    match facts.mode {
        Mode::Upstream if facts.upstream_connections == 0 => {
            return Err("not connected to the upstream broker".to_owned());
        }
        Mode::Broker if !facts.listening => {
            return Err("the embedded broker is not listening yet".to_owned());
        }
        _ => {}
    }
    if let Some(spool) = &facts.spool {
        // Readings are durable once spooled, Elasticsearch (and its setup) or not.
        return match spool {
            Some(problem) => Err(problem.clone()),
            None => Ok(()),
        };
    }
    if !facts.setup_done {
        return Err("setup has not finished (is elasticsearch reachable?)".to_owned());
    }
    if let Some(block) = &facts.write_block {
        return Err(format!("elasticsearch refuses writes: {block}"));
    }
    match facts.answer_age {
        None => Err("elasticsearch has not answered yet".to_owned()),
        Some(age) if age > facts.max_answer_age => Err(format!(
            "elasticsearch has not answered for {}s",
            age.as_secs()
        )),
        Some(_) => Ok(()),
    }
}

/// Whether an HTTP status from Elasticsearch counts as "it answered".
pub fn is_answer(status: u16) -> bool {
    status != 401 && status < 500
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ready() -> Facts {
        Facts {
            mode: Mode::Upstream,
            stopping: false,
            setup_done: true,
            upstream_connections: 1,
            listening: false,
            answer_age: Some(Duration::from_secs(1)),
            max_answer_age: Duration::from_secs(30),
            spool: None,
            write_block: None,
        }
    }

    #[test]
    fn an_upstream_instance_connected_with_a_recent_answer_is_ready() {
        assert_eq!(check(&ready()), Ok(()));
    }

    #[test]
    fn unfinished_setup_is_not_ready_whatever_else_holds() {
        let facts = Facts {
            setup_done: false,
            ..ready()
        };
        assert!(check(&facts).expect_err("not ready").contains("setup"));
    }

    #[test]
    fn a_spooling_instance_is_ready_without_elasticsearch_until_its_spool_takes_nothing() {
        let spooling = Facts {
            setup_done: false,
            answer_age: None,
            spool: Some(None),
            ..ready()
        };
        assert_eq!(check(&spooling), Ok(()));
        let full = Facts {
            spool: Some(Some("spool full".to_owned())),
            ..spooling
        };
        assert_eq!(check(&full), Err("spool full".to_owned()));
    }

    #[test]
    fn a_cluster_block_on_writes_is_not_ready_and_says_what_blocks() {
        let facts = Facts {
            write_block: Some("http 403 cluster_block_exception: flood stage".to_owned()),
            ..ready()
        };
        let reason = check(&facts).expect_err("not ready");
        assert!(
            reason.contains("refuses writes") && reason.contains("flood stage"),
            "{reason}"
        );
    }

    #[test]
    fn an_upstream_instance_without_a_connection_is_not_ready() {
        let facts = Facts {
            upstream_connections: 0,
            ..ready()
        };
        assert_eq!(
            check(&facts),
            Err("not connected to the upstream broker".to_owned())
        );
    }

    #[test]
    fn a_broker_instance_is_ready_once_listening_without_any_client() {
        let facts = Facts {
            mode: Mode::Broker,
            upstream_connections: 0,
            listening: true,
            ..ready()
        };
        assert_eq!(check(&facts), Ok(()));
        let facts = Facts {
            listening: false,
            ..facts
        };
        assert!(
            check(&facts)
                .expect_err("not listening")
                .contains("listening")
        );
    }

    #[test]
    fn elasticsearch_must_have_answered_and_recently() {
        let never = Facts {
            answer_age: None,
            ..ready()
        };
        assert_eq!(
            check(&never),
            Err("elasticsearch has not answered yet".to_owned())
        );
        let stale = Facts {
            answer_age: Some(Duration::from_secs(31)),
            ..ready()
        };
        assert_eq!(
            check(&stale),
            Err("elasticsearch has not answered for 31s".to_owned())
        );
    }

    #[test]
    fn shutting_down_is_never_ready() {
        let facts = Facts {
            stopping: true,
            ..ready()
        };
        assert_eq!(check(&facts), Err("shutting down".to_owned()));
    }

    #[test]
    fn refused_credentials_and_server_errors_are_not_answers() {
        assert!(is_answer(200));
        assert!(is_answer(403));
        assert!(is_answer(404));
        assert!(is_answer(429));
        assert!(!is_answer(401));
        assert!(!is_answer(503));
    }
}
