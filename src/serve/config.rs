//! `caliper serve` arguments (clap) and the validated [`Config`] the server runs with.
//! Arguments are checked once, before any port is bound; the rest of the code takes `&Config`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::runtime::Device;
use crate::serve::infer::{DeviceDefaults, ExplicitBatching};
use crate::serve::scheduling::CpuScheduling;

/// Invalid configuration values.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A numeric flag is out of its range.
    #[error("--{flag} must be {rule}, got {value}")]
    OutOfRange {
        flag: &'static str,
        rule: &'static str,
        value: u64,
    },
    /// A non-integer flag breaks its rule.
    #[error("--{flag} must be {rule}")]
    Invalid {
        flag: &'static str,
        rule: &'static str,
    },
    /// A secret flag was given but empty.
    #[error("--{0} must not be empty when given")]
    EmptySecret(&'static str),
    /// `--payload-log-sample` is not a fraction.
    #[error("--payload-log-sample must be in [0, 1], got {0}")]
    SampleRate(f64),
    /// A fractional flag is out of its range.
    #[error("--{flag} must be {rule}, got {value}")]
    OutOfRangeF64 {
        flag: &'static str,
        rule: &'static str,
        value: f64,
    },
    /// The OTLP endpoint is not a plain `http://` URL.
    #[error("{0}")]
    OtlpEndpoint(String),
}

/// Arguments of `caliper serve`. Every flag can also come from its `CALIPER_*` variable.
#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    /// Address to listen on (port 0 picks a free port; the chosen address is logged).
    #[arg(long, env = "CALIPER_ADDR", default_value = "127.0.0.1:8080")]
    pub addr: SocketAddr,
    /// Also serve the KServe V2 gRPC protocol (inference.GRPCInferenceService) and the gRPC
    /// health service on this address (port 0 picks a free port; logged). Off when not given.
    #[arg(long, env = "CALIPER_GRPC_ADDR")]
    pub grpc_addr: Option<SocketAddr>,
    /// Model repository: one folder per model holding model.onnx and model.toml.
    #[arg(long, env = "CALIPER_MODELS", default_value = "models")]
    pub models: PathBuf,
    /// Calibration files: calib/<model>.json.
    #[arg(long, env = "CALIPER_CALIB", default_value = "calib")]
    pub calib: PathBuf,
    /// Bearer token required on every endpoint except health and metrics.
    #[arg(long, env = "CALIPER_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Bearer token required by the repository (reload) endpoint; without it, the API key applies.
    #[arg(long, env = "CALIPER_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// Largest request body in bytes (413 above).
    #[arg(long, env = "CALIPER_MAX_BODY_BYTES", default_value_t = 16 * 1024 * 1024)]
    pub max_body_bytes: usize,
    /// Largest image in pixels (width x height), checked from the header before decoding.
    #[arg(long, env = "CALIPER_MAX_IMAGE_PIXELS", default_value_t = 4096 * 4096)]
    pub max_image_pixels: u64,
    /// Memory budget of image decodes and V2 tensor bodies in flight, in MiB (all requests
    /// together): each decode reserves its estimated peak from the image header first, waits up
    /// to 1 s for room (then 503 with Retry-After), and an image that alone needs more is 413.
    #[arg(long, env = "CALIPER_MAX_DECODE_MEMORY_MIB", default_value_t = 512)]
    pub max_decode_memory_mib: u64,
    /// Inference requests handled at once; more are refused with 429 and Retry-After.
    #[arg(long, env = "CALIPER_MAX_CONCURRENT_REQUESTS", default_value_t = 512)]
    pub max_concurrent_requests: usize,
    /// Where the models run: cpu, or cuda:N for ONNX Runtime's CUDA provider on GPU N (a
    /// binary built with `make build CUDA=1`). A GPU that cannot be used stops the server at
    /// start-up; it never falls back to the CPU. A model's `device` in model.toml overrides it.
    #[arg(long, env = "CALIPER_DEVICE", default_value = "cpu")]
    pub device: Device,
    /// Most images per ONNX Runtime run [default: 8 on cpu, 128 on cuda]. Without it, a CPU
    /// model's size is measured at load: the largest up to 8 that costs no more per image, or,
    /// where larger batches make each image dearer (a large model's activations outgrow the
    /// caches), the smallest that is about as cheap as the cheapest.
    #[arg(long, env = "CALIPER_MAX_BATCH_SIZE")]
    pub max_batch_size: Option<usize>,
    /// How long the oldest queued image may wait for a batch to fill, in microseconds. 0 batches
    /// greedily: whatever queued while the sessions were busy, never waiting for more
    /// [default: 0 on cpu, 100 on cuda].
    #[arg(long, env = "CALIPER_MAX_QUEUE_DELAY_US")]
    pub max_queue_delay_us: Option<u64>,
    /// ONNX Runtime sessions (each owned by one thread) per model [default: 2].
    #[arg(long, env = "CALIPER_SESSIONS_PER_MODEL")]
    pub sessions_per_model: Option<usize>,
    /// Intra-op threads of each session.
    #[arg(long, env = "CALIPER_INTRA_OP_THREADS", default_value_t = 1)]
    pub intra_op_threads: usize,
    /// CPU scheduling policy of the server's threads: `batch` (Linux SCHED_BATCH: a thread that
    /// wakes does not preempt a running inference) or `normal` (the policy it was started with).
    #[arg(long, env = "CALIPER_CPU_SCHEDULING", value_enum, default_value_t = CpuScheduling::Batch)]
    pub cpu_scheduling: CpuScheduling,
    /// Time budget of one inference request in milliseconds (504 after).
    #[arg(long, env = "CALIPER_REQUEST_TIMEOUT_MS", default_value_t = 30_000)]
    pub request_timeout_ms: u64,
    /// Serve a calibration file fitted on another model file (its sha256 differs) instead of
    /// refusing to load the model.
    #[arg(long, env = "CALIPER_ALLOW_STALE_CALIBRATION")]
    pub allow_stale_calibration: bool,
    /// On SIGTERM or Ctrl-C, how long in-flight requests may take to finish, in milliseconds.
    #[arg(long, env = "CALIPER_SHUTDOWN_TIMEOUT_MS", default_value_t = 10_000)]
    pub shutdown_timeout_ms: u64,
    /// Export request traces over OTLP/HTTP (protobuf) to this collector, e.g.
    /// http://localhost:4318 (`/v1/traces` is appended to a URL without a path). Off when
    /// absent, unless OTEL_EXPORTER_OTLP_TRACES_ENDPOINT or OTEL_EXPORTER_OTLP_ENDPOINT is set.
    #[arg(long, env = "CALIPER_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
    /// Connection and body limits against slow or idle clients.
    #[command(flatten)]
    pub connections: ConnectionArgs,
    /// Live calibration monitoring (label feedback).
    #[command(flatten)]
    pub monitor: MonitorArgs,
    /// Shadow calibrators refitted from feedback, and their promotion (issue 22).
    #[command(flatten)]
    pub recal: crate::serve::monitor::recal::RecalArgs,
    /// The payload log (one JSON line per prediction).
    #[command(flatten)]
    pub payload_log: PayloadLogArgs,
}

/// Flags of the payload log (issue 21): off unless `--payload-log` names a directory.
#[derive(Debug, Clone, clap::Args)]
pub struct PayloadLogArgs {
    /// Directory of the payload log: one JSON line per prediction (id, model, time, calibrated
    /// probabilities or top-k, OOD verdict, request id), written off the request path. Off
    /// when absent. `caliper monitor replay` joins it with labels.
    #[arg(long, env = "CALIPER_PAYLOAD_LOG")]
    pub payload_log: Option<PathBuf>,
    /// Fraction of predictions logged, in [0, 1].
    #[arg(long, env = "CALIPER_PAYLOAD_LOG_SAMPLE", default_value_t = 1.0)]
    pub payload_log_sample: f64,
    /// Size of one payload log file in bytes before the next one starts.
    #[arg(long, env = "CALIPER_PAYLOAD_LOG_MAX_BYTES", default_value_t = 64 * 1024 * 1024)]
    pub payload_log_max_bytes: u64,
    /// Payload log files kept; the oldest are deleted (the log holds about
    /// max-files x max-bytes).
    #[arg(long, env = "CALIPER_PAYLOAD_LOG_MAX_FILES", default_value_t = 16)]
    pub payload_log_max_files: usize,
    /// Also log each request's encoded image (base64). Off by default: images are personal
    /// data more often than predictions are.
    #[arg(long, env = "CALIPER_PAYLOAD_LOG_IMAGES")]
    pub payload_log_images: bool,
}

/// Flags that bound what a client can hold without doing work (issue 23).
#[derive(Debug, Clone, clap::Args)]
pub struct ConnectionArgs {
    /// Open connections at most. At the cap a new connection closes the oldest idle one; when
    /// every connection has a request in progress the newcomer gets 503 and is closed.
    #[arg(long, env = "CALIPER_MAX_CONNECTIONS", default_value_t = 1024)]
    pub max_connections: usize,
    /// How long a new connection may take to send its first complete request head, in ms.
    #[arg(long, env = "CALIPER_HEADER_READ_TIMEOUT_MS", default_value_t = 10_000)]
    pub header_read_timeout_ms: u64,
    /// How long a connection may stay idle between requests (keep-alive), in ms.
    #[arg(long, env = "CALIPER_KEEP_ALIVE_TIMEOUT_MS", default_value_t = 75_000)]
    pub keep_alive_timeout_ms: u64,
    /// Time a request body may take before the minimum rate applies, in ms: a body must have
    /// arrived within grace + bytes / --body-min-bytes-per-s (408 after).
    #[arg(long, env = "CALIPER_BODY_READ_GRACE_MS", default_value_t = 10_000)]
    pub body_read_grace_ms: u64,
    /// Minimum average transfer rate of a request body after the grace period, bytes/s.
    #[arg(long, env = "CALIPER_BODY_MIN_BYTES_PER_S", default_value_t = 1024)]
    pub body_min_bytes_per_s: u64,
    /// Heavy monitor reports (with bootstrap intervals) computed at once; more get 429.
    #[arg(long, env = "CALIPER_MAX_CONCURRENT_REPORTS", default_value_t = 2)]
    pub max_concurrent_reports: usize,
}

/// Flags of the live calibration monitor (issue 5).
#[derive(Debug, Clone, clap::Args)]
pub struct MonitorArgs {
    /// HMAC key that signs prediction ids. Give every replica the same key so that any of them
    /// accepts any label; without it each process draws a random key (and warns).
    #[arg(long, env = "CALIPER_FEEDBACK_KEY", hide_env_values = true)]
    pub feedback_key: Option<String>,
    /// How long after a prediction its label is accepted, in seconds.
    #[arg(long, alias = "feedback-max-age", env = "CALIPER_FEEDBACK_MAX_AGE_S", default_value_t = 7 * 24 * 3600)]
    pub feedback_max_age_s: u64,
    /// Labelled predictions per model in the live calibration window.
    #[arg(long, env = "CALIPER_MONITOR_WINDOW", default_value_t = 10_000)]
    pub monitor_window: usize,
    /// Directory of the durable feedback log.
    #[arg(long, env = "CALIPER_STATE_DIR", default_value = "state")]
    pub state_dir: PathBuf,
    /// Label-shift estimates, the calibration alarm, adaptive conformal inference (issue 22).
    #[command(flatten)]
    pub trust: TrustArgs,
}

/// Flags of the live trust statistics (docs/MONITORING.md, "Label shift", "Alarm", "Coverage").
#[derive(Debug, Clone, clap::Args)]
pub struct TrustArgs {
    /// Served probability vectors kept per model for the label-shift estimates (also capped at
    /// 16 MiB per model).
    #[arg(long, env = "CALIPER_SHIFT_WINDOW", default_value_t = 5_000)]
    pub shift_window: usize,
    /// Models whose predictions are corrected for the estimated label shift by default
    /// (comma-separated, `*` for all; a request's `?adapt=none` opts out).
    #[arg(long, env = "CALIPER_ADAPT_LABEL_SHIFT", value_delimiter = ',')]
    pub adapt_label_shift: Vec<String>,
    /// Level of the calibration alarm: under no drift it ever fires with probability at most
    /// this.
    #[arg(long, env = "CALIPER_ALARM_ALPHA", default_value_t = 0.01)]
    pub alarm_alpha: f64,
    /// Calibration error in the large, |E[correct - confidence]|, that the alarm's calibration
    /// e-process tolerates; default: derived per model from its calibration file's validation
    /// reliability bins, |b| + sqrt(2 V ln(12/alpha) / M) + 14 ln(12/alpha) / (3 (M - 1)) (the
    /// validation bias and its sampling error; docs/MONITORING.md), 0 for a file without them.
    #[arg(long, env = "CALIPER_ALARM_TOLERANCE")]
    pub alarm_tolerance: Option<f64>,
    /// Total variation between served and validation predicted-class distributions that the
    /// alarm's label-shift e-process tolerates; default: derived per model from its validation
    /// size, 1/2 sqrt((K-1)/M) + sqrt(ln(3/alpha)/(2M)) (docs/MONITORING.md).
    #[arg(long, env = "CALIPER_ALARM_SHIFT_TOLERANCE")]
    pub alarm_shift_tolerance: Option<f64>,
    /// Models whose conformal sets use adaptive conformal inference when a request names no
    /// alpha (comma-separated, `*` for all).
    #[arg(long, env = "CALIPER_ADAPTIVE_CONFORMAL", value_delimiter = ',')]
    pub adaptive_conformal: Vec<String>,
    /// Step size gamma of adaptive conformal inference.
    #[arg(long, env = "CALIPER_ACI_GAMMA", default_value_t = 0.005)]
    pub aci_gamma: f64,
}

impl TryFrom<TrustArgs> for crate::serve::monitor::TrustConfig {
    type Error = ConfigError;

    fn try_from(a: TrustArgs) -> Result<Self, ConfigError> {
        range(
            "shift-window",
            a.shift_window as u64,
            1,
            10_000_000,
            "in 1..=10000000",
        )?;
        let open01 = |flag, v: f64, rule| {
            if v > 0.0 && v < 1.0 {
                Ok(())
            } else {
                Err(ConfigError::OutOfRangeF64 {
                    flag,
                    rule,
                    value: v,
                })
            }
        };
        open01("alarm-alpha", a.alarm_alpha, "in (0, 1)")?;
        open01("aci-gamma", a.aci_gamma, "in (0, 1)")?;
        if let Some(t) = a.alarm_tolerance
            && !(0.0..=0.5).contains(&t)
        {
            return Err(ConfigError::OutOfRangeF64 {
                flag: "alarm-tolerance",
                rule: "in [0, 0.5]",
                value: t,
            });
        }
        if let Some(t) = a.alarm_shift_tolerance
            && !(0.0..=1.0).contains(&t)
        {
            return Err(ConfigError::OutOfRangeF64 {
                flag: "alarm-shift-tolerance",
                rule: "in [0, 1]",
                value: t,
            });
        }
        let names = |v: Vec<String>| {
            crate::serve::monitor::live::ModelSelection(
                v.into_iter()
                    .map(|m| m.trim().to_string())
                    .filter(|m| !m.is_empty())
                    .collect(),
            )
        };
        Ok(Self {
            shift_window: a.shift_window,
            alarm_alpha: a.alarm_alpha,
            alarm_tolerance: a.alarm_tolerance,
            alarm_shift_tolerance: a.alarm_shift_tolerance,
            aci_gamma: a.aci_gamma,
            adapt_label_shift: names(a.adapt_label_shift),
            adaptive_conformal: names(a.adaptive_conformal),
        })
    }
}

/// Validated server configuration.
#[derive(Clone)]
pub struct Config {
    /// Listen address.
    pub addr: SocketAddr,
    /// gRPC listen address, if gRPC is on.
    pub grpc_addr: Option<SocketAddr>,
    /// `models/` folder.
    pub models_dir: PathBuf,
    /// `calib/` folder.
    pub calib_dir: PathBuf,
    /// API key (bearer), if any.
    pub api_key: Option<String>,
    /// Admin token (bearer) for reloads, if any.
    pub admin_token: Option<String>,
    /// Body limit in bytes.
    pub max_body_bytes: usize,
    /// Pixel limit per image.
    pub max_image_pixels: u64,
    /// Memory budget of decodes and tensor bodies in flight, bytes.
    pub max_decode_memory_bytes: u64,
    /// Admission limit.
    pub max_concurrent_requests: usize,
    /// Where models run unless their model.toml says otherwise.
    pub device: Device,
    /// The batching flags that were given (the others follow each model's device).
    pub explicit_batching: ExplicitBatching,
    /// Batch size limit (on `device`).
    pub max_batch_size: usize,
    /// Longest wait for a batch to fill.
    pub max_queue_delay: Duration,
    /// Sessions per model.
    pub sessions_per_model: usize,
    /// Intra-op threads per session.
    pub intra_op_threads: usize,
    /// Scheduling policy of the server's threads.
    pub cpu_scheduling: CpuScheduling,
    /// Per-request time budget.
    pub request_timeout: Duration,
    /// Load stale calibrations instead of refusing the model.
    pub allow_stale_calibration: bool,
    /// Drain bound at shutdown.
    pub shutdown_timeout: Duration,
    /// Open connections at most.
    pub max_connections: usize,
    /// Deadline of a new connection's first request head.
    pub header_read_timeout: Duration,
    /// Idle time allowed between requests on one connection.
    pub keep_alive_timeout: Duration,
    /// Body read time before the minimum rate applies.
    pub body_read_grace: Duration,
    /// Minimum body transfer rate after the grace period, bytes/s.
    pub body_min_bytes_per_s: u64,
    /// Heavy monitor reports at once.
    pub max_concurrent_reports: usize,
    /// Live monitor settings.
    pub monitor: crate::serve::monitor::MonitorConfig,
    /// HMAC key of prediction ids; None draws a random key per process.
    pub feedback_key: Option<String>,
    /// Shadow recalibration settings.
    pub recal: crate::serve::monitor::recal::RecalConfig,
    /// The payload log, when enabled.
    pub payload_log: Option<crate::serve::payload_log::PayloadLogConfig>,
    /// Where traces are posted (OTLP/HTTP); None: no export.
    pub otlp_endpoint: Option<String>,
}

impl std::fmt::Debug for Config {
    /// Secrets are redacted so that the configuration can be logged at start.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let redact = |s: &Option<String>| s.as_ref().map(|_| "<redacted>");
        f.debug_struct("Config")
            .field("addr", &self.addr)
            .field("grpc_addr", &self.grpc_addr)
            .field("models_dir", &self.models_dir)
            .field("calib_dir", &self.calib_dir)
            .field("api_key", &redact(&self.api_key))
            .field("admin_token", &redact(&self.admin_token))
            .field("max_body_bytes", &self.max_body_bytes)
            .field("max_image_pixels", &self.max_image_pixels)
            .field("max_decode_memory_bytes", &self.max_decode_memory_bytes)
            .field("max_concurrent_requests", &self.max_concurrent_requests)
            .field("device", &self.device)
            .field("max_batch_size", &self.max_batch_size)
            .field("max_queue_delay", &self.max_queue_delay)
            .field("sessions_per_model", &self.sessions_per_model)
            .field("intra_op_threads", &self.intra_op_threads)
            .field("cpu_scheduling", &self.cpu_scheduling)
            .field("request_timeout", &self.request_timeout)
            .field("allow_stale_calibration", &self.allow_stale_calibration)
            .field("shutdown_timeout", &self.shutdown_timeout)
            .field("max_connections", &self.max_connections)
            .field("header_read_timeout", &self.header_read_timeout)
            .field("keep_alive_timeout", &self.keep_alive_timeout)
            .field("body_read_grace", &self.body_read_grace)
            .field("body_min_bytes_per_s", &self.body_min_bytes_per_s)
            .field("max_concurrent_reports", &self.max_concurrent_reports)
            .field("otlp_endpoint", &self.otlp_endpoint)
            .field("monitor", &self.monitor)
            .field("feedback_key", &redact(&self.feedback_key))
            .field("recal", &self.recal)
            .field("payload_log", &self.payload_log)
            .finish()
    }
}

fn range(
    flag: &'static str,
    value: u64,
    lo: u64,
    hi: u64,
    rule: &'static str,
) -> Result<(), ConfigError> {
    if (lo..=hi).contains(&value) {
        Ok(())
    } else {
        Err(ConfigError::OutOfRange { flag, rule, value })
    }
}

impl TryFrom<ServeArgs> for Config {
    type Error = ConfigError;

    fn try_from(a: ServeArgs) -> Result<Self, ConfigError> {
        let defaults = DeviceDefaults::for_device(a.device);
        let explicit = ExplicitBatching {
            max_batch_size: a.max_batch_size,
            max_queue_delay: a.max_queue_delay_us.map(Duration::from_micros),
            sessions_per_model: a.sessions_per_model,
        };
        let max_batch_size = a.max_batch_size.unwrap_or(defaults.max_batch_size);
        let max_queue_delay_us = a
            .max_queue_delay_us
            .unwrap_or(defaults.max_queue_delay.as_micros() as u64);
        let sessions_per_model = a.sessions_per_model.unwrap_or(defaults.sessions_per_model);
        range(
            "max-body-bytes",
            a.max_body_bytes as u64,
            1,
            1 << 32,
            "in 1..=4 GiB",
        )?;
        range(
            "max-image-pixels",
            a.max_image_pixels,
            1,
            1 << 32,
            "in 1..=2^32",
        )?;
        range(
            "max-decode-memory-mib",
            a.max_decode_memory_mib,
            1,
            1 << 22,
            "in 1..=4194304",
        )?;
        range(
            "max-concurrent-requests",
            a.max_concurrent_requests as u64,
            1,
            1 << 20,
            "in 1..=1048576",
        )?;
        range(
            "max-batch-size",
            max_batch_size as u64,
            1,
            4096,
            "in 1..=4096",
        )?;
        range(
            "max-queue-delay-us",
            max_queue_delay_us,
            0,
            10_000_000,
            "at most 10 s",
        )?;
        range(
            "sessions-per-model",
            sessions_per_model as u64,
            1,
            256,
            "in 1..=256",
        )?;
        range(
            "intra-op-threads",
            a.intra_op_threads as u64,
            1,
            1024,
            "in 1..=1024",
        )?;
        range(
            "request-timeout-ms",
            a.request_timeout_ms,
            1,
            3_600_000,
            "in 1..=3600000",
        )?;
        range(
            "shutdown-timeout-ms",
            a.shutdown_timeout_ms,
            0,
            3_600_000,
            "at most 3600000",
        )?;
        range(
            "monitor-window",
            a.monitor.monitor_window as u64,
            1,
            10_000_000,
            "in 1..=10000000",
        )?;
        let c = &a.connections;
        range(
            "max-connections",
            c.max_connections as u64,
            1,
            1 << 20,
            "in 1..=1048576",
        )?;
        for (flag, v) in [
            ("header-read-timeout-ms", c.header_read_timeout_ms),
            ("keep-alive-timeout-ms", c.keep_alive_timeout_ms),
            ("body-read-grace-ms", c.body_read_grace_ms),
        ] {
            range(flag, v, 1, 3_600_000, "in 1..=3600000")?;
        }
        range(
            "body-min-bytes-per-s",
            c.body_min_bytes_per_s,
            1,
            1 << 40,
            "in 1..=2^40",
        )?;
        range(
            "max-concurrent-reports",
            c.max_concurrent_reports as u64,
            1,
            1024,
            "in 1..=1024",
        )?;
        let p = &a.payload_log;
        if !(0.0..=1.0).contains(&p.payload_log_sample) {
            return Err(ConfigError::SampleRate(p.payload_log_sample));
        }
        range(
            "payload-log-max-bytes",
            p.payload_log_max_bytes,
            1,
            1 << 40,
            "in 1..=2^40",
        )?;
        range(
            "payload-log-max-files",
            p.payload_log_max_files as u64,
            1,
            1_000_000,
            "in 1..=1000000",
        )?;
        for (flag, v) in [
            ("api-key", &a.api_key),
            ("admin-token", &a.admin_token),
            ("feedback-key", &a.monitor.feedback_key),
        ] {
            if v.as_deref().is_some_and(|s| s.trim().is_empty()) {
                return Err(ConfigError::EmptySecret(flag));
            }
        }
        let bins = crate::trust::metrics::DEFAULT_BINS;
        let recal = a
            .recal
            .validate(bins)
            .map_err(|(flag, rule)| ConfigError::Invalid { flag, rule })?;
        // The OTEL_* variables are read by `caliper serve` only (serve::telemetry).
        let otlp_endpoint =
            crate::serve::telemetry::traces_endpoint(a.otlp_endpoint.as_deref(), |_| None)
                .map_err(ConfigError::OtlpEndpoint)?;
        Ok(Config {
            addr: a.addr,
            grpc_addr: a.grpc_addr,
            models_dir: a.models,
            calib_dir: a.calib,
            api_key: a.api_key,
            admin_token: a.admin_token,
            max_body_bytes: a.max_body_bytes,
            max_image_pixels: a.max_image_pixels,
            max_decode_memory_bytes: a.max_decode_memory_mib << 20,
            max_concurrent_requests: a.max_concurrent_requests,
            device: a.device,
            explicit_batching: explicit,
            max_batch_size,
            max_queue_delay: Duration::from_micros(max_queue_delay_us),
            sessions_per_model,
            intra_op_threads: a.intra_op_threads,
            cpu_scheduling: a.cpu_scheduling,
            request_timeout: Duration::from_millis(a.request_timeout_ms),
            allow_stale_calibration: a.allow_stale_calibration,
            shutdown_timeout: Duration::from_millis(a.shutdown_timeout_ms),
            max_connections: a.connections.max_connections,
            header_read_timeout: Duration::from_millis(a.connections.header_read_timeout_ms),
            keep_alive_timeout: Duration::from_millis(a.connections.keep_alive_timeout_ms),
            body_read_grace: Duration::from_millis(a.connections.body_read_grace_ms),
            body_min_bytes_per_s: a.connections.body_min_bytes_per_s,
            max_concurrent_reports: a.connections.max_concurrent_reports,
            monitor: crate::serve::monitor::MonitorConfig {
                window: a.monitor.monitor_window,
                max_age_s: a.monitor.feedback_max_age_s,
                state_dir: Some(a.monitor.state_dir),
                bins,
                trust: a.monitor.trust.try_into()?,
            },
            feedback_key: a.monitor.feedback_key,
            recal,
            payload_log: a.payload_log.payload_log.map(|dir| {
                crate::serve::payload_log::PayloadLogConfig {
                    dir,
                    sample: a.payload_log.payload_log_sample,
                    max_bytes: a.payload_log.payload_log_max_bytes,
                    max_files: a.payload_log.payload_log_max_files,
                    images: a.payload_log.payload_log_images,
                }
            }),
            otlp_endpoint,
        })
    }
}

impl Config {
    /// What the model registry needs: where the models are and how to run them.
    pub fn registry_options(&self) -> crate::serve::infer::RegistryOptions {
        crate::serve::infer::RegistryOptions {
            models_dir: self.models_dir.clone(),
            calib_dir: self.calib_dir.clone(),
            allow_stale_calibration: self.allow_stale_calibration,
            model: self.model_options(),
        }
    }

    /// How each model runs.
    pub fn model_options(&self) -> crate::serve::infer::ModelOptions {
        crate::serve::infer::ModelOptions {
            sessions_per_model: self.sessions_per_model,
            intra_op_threads: self.intra_op_threads,
            max_batch_size: self.max_batch_size,
            max_queue_delay: self.max_queue_delay,
            max_concurrent_requests: self.max_concurrent_requests,
            device: self.device,
            explicit: self.explicit_batching,
        }
    }

    /// The configuration `caliper serve` would use with only these folders given (every other
    /// flag at its default). Used by `caliper predict` and by tests.
    pub fn with_repository(models_dir: PathBuf, calib_dir: PathBuf) -> Self {
        use clap::{Args, FromArgMatches};
        let cmd = ServeArgs::augment_args(clap::Command::new("serve"));
        // Parsing an empty argument list only applies defaults; it cannot fail.
        let matches = cmd
            .no_binary_name(true)
            .get_matches_from(Vec::<String>::new());
        let mut args = ServeArgs::from_arg_matches(&matches).expect("defaults parse");
        args.models = models_dir;
        args.calib = calib_dir;
        let mut config = Config::try_from(args).expect("defaults are valid");
        // No feedback log unless a caller asks for one: tests and `caliper predict` must not
        // create a state/ folder wherever they run.
        config.monitor.state_dir = None;
        config
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_secrets_are_redacted() {
        let mut c = Config::with_repository("m".into(), "c".into());
        assert_eq!(c.max_batch_size, 8);
        c.api_key = Some("hunter2".into());
        let shown = format!("{c:?}");
        assert!(!shown.contains("hunter2") && shown.contains("<redacted>"));
    }

    impl Config {
        fn recal_args(&self) -> crate::serve::monitor::recal::RecalArgs {
            crate::serve::monitor::recal::RecalArgs {
                logit_store: self.recal.logit_store,
                recalibration_window: self.recal.window,
                shadow_refit_every: self.recal.refit_every,
                auto_recalibrate: false,
                auto_recalibrate_min_labels: self.recal.rule.min_labels,
                auto_recalibrate_alpha: self.recal.rule.alpha,
                auto_recalibrate_margin: self.recal.rule.margin,
            }
        }
    }

    #[test]
    fn the_device_sets_the_batching_defaults_flags_win() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            serve: ServeArgs,
        }
        let parse = |args: &[&str]| {
            let argv = std::iter::once("serve").chain(args.iter().copied());
            Config::try_from(Cli::try_parse_from(argv).unwrap().serve).unwrap()
        };
        let cpu = parse(&[]);
        assert_eq!(cpu.device, Device::Cpu);
        assert_eq!(
            (cpu.max_batch_size, cpu.max_queue_delay),
            (8, Duration::ZERO)
        );
        let gpu = parse(&["--device", "cuda:1"]);
        assert_eq!(gpu.device, Device::Cuda(1));
        assert_eq!(gpu.max_batch_size, 128);
        assert_eq!(gpu.max_queue_delay, Duration::from_micros(100));
        assert_eq!(gpu.explicit_batching, ExplicitBatching::default());
        let set = parse(&[
            "--device",
            "cuda:0",
            "--max-batch-size",
            "8",
            "--max-queue-delay-us",
            "0",
        ]);
        assert_eq!(
            (set.max_batch_size, set.max_queue_delay),
            (8, Duration::ZERO)
        );
        // A model.toml `device` on another device keeps the flags given, takes that device's
        // defaults for the rest.
        let cpu_model = set.model_options().on(Device::Cpu);
        assert_eq!(cpu_model.device, Device::Cpu);
        assert_eq!(
            (cpu_model.max_batch_size, cpu_model.max_queue_delay),
            (8, Duration::ZERO)
        );
        let gpu_model = cpu.model_options().on(Device::Cuda(0));
        assert_eq!(gpu_model.max_batch_size, 128);
        assert_eq!(cpu.model_options().on(Device::Cpu), cpu.model_options());
        assert_eq!(cpu.cpu_scheduling, CpuScheduling::Batch);
        let normal = parse(&["--cpu-scheduling", "normal"]);
        assert_eq!(normal.cpu_scheduling, CpuScheduling::Normal);
        let e = Cli::try_parse_from(["serve", "--cpu-scheduling", "fifo"])
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("batch") && e.contains("normal"), "{e}");
        for bad in [
            &["--device", "gpu"][..],
            &["--device", "cuda:"],
            &["--device", "cuda:-1"],
        ] {
            let argv = std::iter::once("serve").chain(bad.iter().copied());
            let e = Cli::try_parse_from(argv).err().unwrap().to_string();
            assert!(e.contains("expected cpu or cuda:N"), "{e}");
        }
        let argv = ["serve", "--device", "cuda:0", "--max-batch-size", "0"];
        let e = Config::try_from(Cli::try_parse_from(argv).unwrap().serve)
            .err()
            .unwrap();
        assert!(e.to_string().contains("--max-batch-size"), "{e}");
    }

    #[test]
    fn rejects_out_of_range_values() {
        let c = Config::with_repository("m".into(), "c".into());
        assert_eq!(
            c.recal,
            crate::serve::monitor::recal::RecalConfig::default(),
            "the flags' defaults are RecalConfig::default()"
        );
        let mut a = ServeArgs {
            addr: c.addr,
            grpc_addr: None,
            models: "m".into(),
            calib: "c".into(),
            api_key: None,
            admin_token: None,
            max_body_bytes: 10,
            max_image_pixels: 10,
            max_decode_memory_mib: 1,
            max_concurrent_requests: 1,
            device: Device::Cpu,
            max_batch_size: Some(0),
            max_queue_delay_us: None,
            sessions_per_model: Some(1),
            intra_op_threads: 1,
            cpu_scheduling: CpuScheduling::Normal,
            request_timeout_ms: 1,
            allow_stale_calibration: false,
            shutdown_timeout_ms: 0,
            otlp_endpoint: None,
            connections: ConnectionArgs {
                max_connections: 1,
                header_read_timeout_ms: 1,
                keep_alive_timeout_ms: 1,
                body_read_grace_ms: 1,
                body_min_bytes_per_s: 1,
                max_concurrent_reports: 1,
            },
            monitor: MonitorArgs {
                feedback_key: None,
                feedback_max_age_s: 60,
                monitor_window: 10,
                state_dir: "state".into(),
                trust: TrustArgs {
                    shift_window: 10,
                    adapt_label_shift: vec![],
                    alarm_alpha: 0.01,
                    alarm_tolerance: None,
                    alarm_shift_tolerance: None,
                    adaptive_conformal: vec![],
                    aci_gamma: 0.005,
                },
            },
            recal: c.recal_args(),
            payload_log: PayloadLogArgs {
                payload_log: Some("log".into()),
                payload_log_sample: 1.5,
                payload_log_max_bytes: 1,
                payload_log_max_files: 1,
                payload_log_images: false,
            },
        };
        let e = Config::try_from(a.clone()).unwrap_err();
        assert!(e.to_string().contains("--max-batch-size"), "{e}");
        a.max_batch_size = Some(1);
        let e = Config::try_from(a.clone()).unwrap_err();
        assert!(e.to_string().contains("--payload-log-sample"), "{e}");
        a.payload_log.payload_log_sample = 0.5;
        a.api_key = Some(" ".into());
        assert!(matches!(
            Config::try_from(a.clone()),
            Err(ConfigError::EmptySecret("api-key"))
        ));
        a.api_key = None;
        assert!(Config::try_from(a.clone()).is_ok());
        a.recal.auto_recalibrate_alpha = 1.5;
        let e = Config::try_from(a.clone()).unwrap_err();
        assert!(e.to_string().contains("--auto-recalibrate-alpha"), "{e}");
        a.recal.auto_recalibrate_alpha = 0.01;
        a.monitor.trust.alarm_alpha = 1.0;
        let e = Config::try_from(a.clone()).unwrap_err();
        assert!(e.to_string().contains("--alarm-alpha"), "{e}");
        a.monitor.trust.alarm_alpha = 0.01;
        // --alarm-tolerance: absent means derived per model; given, it must be in [0, 0.5].
        a.monitor.trust.alarm_tolerance = Some(0.6);
        let e = Config::try_from(a.clone()).unwrap_err();
        assert!(e.to_string().contains("--alarm-tolerance"), "{e}");
        a.monitor.trust.alarm_tolerance = Some(0.02);
        let c = Config::try_from(a.clone()).unwrap();
        assert_eq!(c.monitor.trust.alarm_tolerance, Some(0.02));
        a.monitor.trust.alarm_tolerance = None;
        a.otlp_endpoint = Some("https://collector:4318".into());
        let e = Config::try_from(a.clone()).unwrap_err();
        assert!(e.to_string().contains("--otlp-endpoint"), "{e}");
        a.otlp_endpoint = Some("http://collector:4318".into());
        let c = Config::try_from(a.clone()).unwrap();
        assert_eq!(
            c.otlp_endpoint.as_deref(),
            Some("http://collector:4318/v1/traces")
        );
        a.connections.max_connections = 0;
        let e = Config::try_from(a).unwrap_err();
        assert!(e.to_string().contains("--max-connections"), "{e}");
    }
}
