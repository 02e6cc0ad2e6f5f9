//! The serving integration tests, one binary: the router in process (`router`, `v2_binary`, `trust`,
//! `conformal_methods`, `mahalanobis`, `large_labels`, `monitor_feedback`,
//! `monitor_matches_eval`, `device`) and real `caliper serve` processes on a socket: `socket`,
//! `folder_datasets` (your own images: calibrate, eval, train and serve from image folders),
//! `monitor_crash`, `monitor_restart_gauges`, `grpc` (the KServe V2 gRPC service through
//! tritonclient[grpc] and the standard gRPC health check), `dashboard` (the `/ui` page in a headless Chromium),
//! `prometheus_fleet`, `otlp_tracing` (request spans exported to an OTLP receiver),
//! `recalibrate` (a bad calibrator refitted from feedback and swapped in),
//! `hostile` and `hostile_memory` (limits, timeouts, faults, memory bounds), `own_model` (a third-party
//! ImageNet model imported and served, against an independent Python pipeline) and
//! `shipped_models` (every bundled model's figures and its OOD threshold through the server),
//! `golden_responses` (answers to a fixed set of requests, bit for bit as an older build gave them),
//! `tritonclient_http` (Triton's Python client with its defaults: the binary tensor extension),
//! `payload_replay` (the payload log joined with labels by `caliper monitor replay`) and
//! `label_shift` (issue 22, real server: label-shift estimates and correction, conformal coverage,
//! the adaptive level and the alarm gauges).

#[path = "../common/mod.rs"]
mod common;

mod conformal_methods;
mod dashboard;
mod device;
mod folder_datasets;
mod golden_responses;
mod grpc;
mod hostile;
mod hostile_memory;
mod label_shift;
mod large_labels;
mod mahalanobis;
mod monitor_crash;
mod monitor_feedback;
mod monitor_matches_eval;
mod monitor_restart_gauges;
mod otlp_tracing;
mod own_model;
mod payload_replay;
mod prometheus_fleet;
mod recalibrate;
mod router;
mod shipped_models;
mod socket;
mod tritonclient_http;
mod trust;
mod v2_binary;
