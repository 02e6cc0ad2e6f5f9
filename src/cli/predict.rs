//! `caliper predict --model NAME IMAGE...`: the serving pipeline offline (same repository
//! checks, preprocessing, sessions, calibration), printing the same JSON as the server: one
//! prediction object for one image, `{"predictions": [...]}` for several.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;

use crate::repository::load_model_files;
use crate::serve::config::Config;
use crate::serve::infer::{
    DEFAULT_TOP_K, ImageLimits, ImageWork, LoadedModel, PredictionList, RequestOptions,
    predict_images,
};
use crate::serve::monitor::TokenSigner;
use crate::serve::prometheus::ServerMetrics;

/// Arguments of `caliper predict`.
#[derive(Debug, clap::Args)]
pub struct PredictArgs {
    /// Model name (folder under --models).
    #[arg(long, env = "CALIPER_MODEL")]
    pub model: String,
    /// Model repository.
    #[arg(long, env = "CALIPER_MODELS", default_value = "models")]
    pub models: PathBuf,
    /// Calibration files.
    #[arg(long, env = "CALIPER_CALIB", default_value = "calib")]
    pub calib: PathBuf,
    /// Use a calibration file fitted on another model file.
    #[arg(long, env = "CALIPER_ALLOW_STALE_CALIBRATION")]
    pub allow_stale_calibration: bool,
    /// HMAC key of the printed `prediction_id`s: give the serving replicas' `--feedback-key` and
    /// labels for these predictions can be posted to them. Default: a random key (the ids then
    /// verify nowhere, but every output has the server's shape).
    #[arg(long, env = "CALIPER_FEEDBACK_KEY", hide_env_values = true)]
    pub feedback_key: Option<String>,
    /// Number of classes listed in top_k.
    #[arg(long, default_value_t = DEFAULT_TOP_K)]
    pub top_k: usize,
    /// Image files (PNG, JPEG, BMP, WebP, GIF).
    #[arg(required = true)]
    pub images: Vec<PathBuf>,
}

/// Runs `caliper predict`.
pub fn run(args: PredictArgs) -> anyhow::Result<()> {
    let mut config = Config::with_repository(args.models.clone(), args.calib.clone());
    config.allow_stale_calibration = args.allow_stale_calibration;
    config.sessions_per_model = 1;
    crate::runtime::init_onnxruntime()?;
    let files = load_model_files(
        &config.models_dir,
        &config.calib_dir,
        &args.model,
        config.allow_stale_calibration,
    )?;
    let metrics = Arc::new(ServerMetrics::new()?);
    let model = LoadedModel::start(files, &config.model_options(), metrics)?;
    let images = args
        .images
        .iter()
        .map(|p| {
            std::fs::read(p)
                .map(bytes::Bytes::from)
                .with_context(|| format!("cannot read {}", p.display()))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let work = ImageWork::standalone(
        ImageLimits {
            max_pixels: config.max_image_pixels,
        },
        config.max_decode_memory_bytes,
    );
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let scored = runtime
        .block_on(predict_images(
            &model,
            images,
            &work,
            &RequestOptions {
                top_k: args.top_k,
                ..RequestOptions::default()
            },
        ))
        .map_err(|e| match e {
            crate::serve::infer::InferError::Image { index, source } => {
                anyhow::anyhow!("{}: {source}", args.images[index].display())
            }
            other => other.into(),
        })?;
    let signer = match &args.feedback_key {
        Some(key) => TokenSigner::new(key.as_bytes()),
        None => TokenSigner::random(),
    };
    let mut predictions: Vec<_> = scored.into_iter().map(|s| s.prediction).collect();
    for p in &mut predictions {
        p.prediction_id = signer.issue(
            &p.model,
            &p.model_version,
            p.class_index,
            p.confidence,
            &p.probabilities,
            None,
        );
    }
    let json = if predictions.len() == 1 {
        serde_json::to_string_pretty(&predictions.remove(0))?
    } else {
        serde_json::to_string_pretty(&PredictionList { predictions })?
    };
    println!("{json}");
    Ok(())
}
