//! The serving integration tests, one binary: the router in process (`router`, `trust`,
//! `conformal_methods`, `mahalanobis`, `large_labels`, `monitor_feedback`,
//! `monitor_matches_eval`, `device`) and real `caliper serve` processes on a socket: `socket`,
//! `folder_datasets` (your own images: calibrate, eval, train and serve from image folders),
//! `monitor_crash`, `monitor_restart_gauges`,
//! `prometheus_fleet`, `hostile` (limits, timeouts and faults), `own_model` (a third-party
//! ImageNet model imported and served, against an independent Python pipeline) and
//! `shipped_models` (every bundled model's figures and its OOD threshold through the server).

#[path = "../common/mod.rs"]
mod common;

mod conformal_methods;
mod device;
mod folder_datasets;
mod hostile;
mod large_labels;
mod mahalanobis;
mod monitor_crash;
mod monitor_feedback;
mod monitor_matches_eval;
mod monitor_restart_gauges;
mod own_model;
mod prometheus_fleet;
mod router;
mod shipped_models;
mod socket;
mod trust;
