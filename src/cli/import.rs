//! `caliper import MODEL.onnx --name NAME --labels FILE`: a third-party ONNX classifier into the
//! model repository with a complete `model.toml` (`repository::import` does the work; see
//! docs/IMPORT.md).

use std::path::PathBuf;

use anyhow::{Context, bail};

use crate::repository::ResizePolicy;
use crate::repository::import::{FeatureChoice, ImportOptions, Preprocessing, import, read_labels};

/// Arguments of `caliper import`.
#[derive(Debug, clap::Args)]
pub struct ImportArgs {
    /// The ONNX model file.
    pub model: PathBuf,
    /// Model name: the folder created under --models-dir.
    #[arg(long)]
    pub name: String,
    /// Class labels in output order: one per line, or a JSON array of strings.
    #[arg(long)]
    pub labels: PathBuf,
    /// Model repository.
    #[arg(long, env = "CALIPER_MODELS", default_value = "models")]
    pub models_dir: PathBuf,
    /// Named preprocessing: imagenet (shorter side to 256, centre crop, ImageNet mean/std),
    /// inception (pixels to [-1, 1], stretched), raw255 (0..255 pixels, stretched).
    /// The flags below override its values.
    #[arg(long)]
    pub preset: Option<String>,
    /// Per-channel mean after scaling pixels to [0, 1], comma-separated.
    #[arg(long, value_delimiter = ',', allow_hyphen_values = true)]
    pub mean: Option<Vec<f32>>,
    /// Per-channel standard deviation after scaling pixels to [0, 1], comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub std: Option<Vec<f32>>,
    /// How other image sizes are resized: stretch or center-crop.
    #[arg(long, value_parser = parse_resize)]
    pub resize: Option<ResizePolicy>,
    /// With center-crop: resize the shorter side to this length before cropping.
    #[arg(long)]
    pub resize_shorter: Option<u32>,
    /// H,W of the input, when the graph leaves them dynamic.
    #[arg(long, value_delimiter = ',', num_args = 1)]
    pub input_size: Option<Vec<usize>>,
    /// The logits tensor (default: the graph's only output).
    #[arg(long)]
    pub logits: Option<String>,
    /// Penultimate features output: "auto" (the input of the final Gemm/MatMul) or a tensor name.
    #[arg(long)]
    pub features: Option<String>,
    /// `version` written to model.toml.
    #[arg(long, default_value = "1")]
    pub version: String,
}

fn parse_resize(s: &str) -> Result<ResizePolicy, String> {
    match s {
        "stretch" => Ok(ResizePolicy::Stretch),
        "center-crop" => Ok(ResizePolicy::CenterCrop),
        other => Err(format!("{other:?}: expected stretch or center-crop")),
    }
}

fn preprocessing(args: &ImportArgs) -> anyhow::Result<Preprocessing> {
    let mut p = match &args.preset {
        Some(name) => Preprocessing::preset(name)?,
        None => {
            if args.mean.is_none() || args.std.is_none() {
                bail!(
                    "say how the model expects its pixels: --preset {}, or --mean and --std \
                     (see docs/IMPORT.md)",
                    crate::repository::import::PRESETS.join("|")
                );
            }
            Preprocessing {
                mean: Vec::new(),
                std: Vec::new(),
                resize: ResizePolicy::Stretch,
                resize_shorter: None,
            }
        }
    };
    if let Some(m) = &args.mean {
        p.mean.clone_from(m);
    }
    if let Some(s) = &args.std {
        p.std.clone_from(s);
    }
    if let Some(r) = args.resize {
        p.resize = r;
    }
    if args.resize_shorter.is_some() {
        p.resize_shorter = args.resize_shorter;
    }
    Ok(p)
}

/// Runs `caliper import`.
pub fn run(args: ImportArgs) -> anyhow::Result<()> {
    let preprocessing = preprocessing(&args)?;
    let input_size = match args.input_size.as_deref() {
        None => None,
        Some(&[h, w]) if h > 0 && w > 0 => Some((h, w)),
        Some(other) => bail!("--input-size takes H,W (two positive numbers), got {other:?}"),
    };
    let features = match args.features.as_deref() {
        None => FeatureChoice::None,
        Some("auto") => FeatureChoice::Auto,
        Some(name) => FeatureChoice::Tensor(name.to_string()),
    };
    let labels = read_labels(&args.labels)?;
    crate::runtime::init_onnxruntime()?;
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    let done = import(&ImportOptions {
        source: args.model.clone(),
        name: args.name.clone(),
        labels,
        models_dir: args.models_dir.clone(),
        preprocessing,
        input_size,
        logits: args.logits.clone(),
        features,
        version: args.version.clone(),
        command,
    })
    .with_context(|| format!("importing {}", args.model.display()))?;
    for note in &done.notes {
        eprintln!("note: {note}");
    }
    let m = &done.metadata;
    println!(
        "imported {} as {}: input {:?} {}, {} classes, logits {:?}{}{}",
        args.model.display(),
        done.dir.display(),
        m.input.name,
        match m.input.image_shape() {
            [c, h, w] if m.input.channels_last() => format!("[N, {h}, {w}, {c}] (NHWC)"),
            [c, h, w] => format!("[N, {c}, {h}, {w}]"),
        },
        m.labels.len(),
        m.output.logits,
        match (&m.output.features, done.features_dim) {
            (Some(f), Some(d)) => format!(", features {f:?} ({d} values)"),
            _ => String::new(),
        },
        if done.added_outputs.is_empty() {
            String::new()
        } else {
            format!("; added graph outputs {:?}", done.added_outputs)
        },
    );
    Ok(())
}
