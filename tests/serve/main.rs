//! The serving integration tests, one binary: the router in process (`router`, `trust`,
//! `mahalanobis`, `monitor_feedback`, `monitor_matches_eval`) and real `caliper serve` processes
//! on a socket (`socket`, `monitor_crash`, `prometheus_fleet`), all over the fixture repository
//! in tests/data and the bundled models.

#[path = "../common/mod.rs"]
mod common;

mod mahalanobis;
mod monitor_crash;
mod monitor_feedback;
mod monitor_matches_eval;
mod prometheus_fleet;
mod router;
mod socket;
mod trust;
