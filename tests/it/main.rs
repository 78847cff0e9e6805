//! The one integration-test binary (STYLE.md): every end-to-end test is a module of it, so they
//! build once and share one search node (`support::SearchNode::shared`).
//!
//! Run through `scripts/test`, which installs Mosquitto and the search engines first.

mod bridge_basics;
mod broker;
mod broker_auth;
mod broker_state;
mod cli;
mod clients;
mod cluster;
mod conformance;
mod dashboards;
mod dead_letters;
mod demo;
mod faults;
mod harness;
mod metrics;
mod packaging;
mod setup;
mod shared_group;
mod simulate;
mod spool;
mod stored_once;
mod support;
mod thermometer;
mod top;
mod upstream_options;
