//! `models/<name>/model.toml`: what a client and the preprocessing need to know about a model
//! (labels, input layout, normalisation) and where it came from (provenance, sha256).
//! Written by `caliper-train`, read by the server; schema versioned like calibration files.

use std::path::Path;

use serde::{Deserialize, Serialize};

/// The schema version this build reads and writes.
pub const METADATA_SCHEMA_VERSION: u32 = 1;

/// Errors reading or validating `model.toml`.
#[derive(Debug, thiserror::Error)]
pub enum MetadataError {
    /// The file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    /// Not valid TOML of the documented schema, or inconsistent values.
    #[error("{path}: invalid model metadata: {reason}")]
    Invalid { path: String, reason: String },
}

/// How an image of another size is brought to the model's input size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum ResizePolicy {
    /// Resize to exactly height x width, ignoring the aspect ratio (what MNIST-style models expect).
    #[default]
    Stretch,
    /// Resize the shorter side (to `resize_shorter`, else to just cover the target), keeping the
    /// aspect ratio, then crop the centre.
    CenterCrop,
}

/// The model's single image input. Pixels are scaled to [0, 1] (divided by the type's maximum,
/// 255 or 65535), then normalised per channel: `(x - mean[c]) / std[c]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InputSpec {
    /// Name of the ONNX input tensor.
    pub name: String,
    /// "NCHW" (channels first: PyTorch, and what the trainer exports) or "NHWC" (channels last:
    /// Keras and TensorFlow). Preprocessing is the same; only the tensor fed to the graph differs.
    pub layout: String,
    /// 1 (grayscale) or 3 (RGB).
    pub channels: usize,
    /// Input height in pixels.
    pub height: usize,
    /// Input width in pixels.
    pub width: usize,
    /// Per-channel mean, applied after scaling to [0, 1].
    pub mean: Vec<f32>,
    /// Per-channel standard deviation, applied after scaling to [0, 1].
    pub std: Vec<f32>,
    /// How other image sizes are resized.
    #[serde(default)]
    pub resize: ResizePolicy,
    /// With `resize = "center-crop"`: the length the shorter side is resized to before the crop
    /// (ImageNet's usual 256 for a 224 crop). Absent: just enough to cover the input size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resize_shorter: Option<u32>,
}

impl InputSpec {
    /// Whether the graph takes `[N, H, W, C]`.
    pub fn channels_last(&self) -> bool {
        self.layout == "NHWC"
    }

    /// The `[C, H, W]` of one preprocessed image.
    pub fn image_shape(&self) -> [usize; 3] {
        [self.channels, self.height, self.width]
    }

    /// One image's dimensions as the graph takes them (and V2 clients send them): `[C, H, W]`,
    /// or `[H, W, C]` for NHWC.
    pub fn tensor_dims(&self) -> [usize; 3] {
        if self.channels_last() {
            [self.height, self.width, self.channels]
        } else {
            self.image_shape()
        }
    }
}

/// Names of the ONNX outputs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutputSpec {
    /// The `[N, K]` logits output.
    pub logits: String,
    /// The penultimate activations `[N, D]`, when the model exports them (used by Mahalanobis OOD).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub features: Option<String>,
}

/// Where the model came from. Everything except `sha256` is informational.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Provenance {
    /// sha256 (hex) of `model.onnx`; checked against the file and the calibration file.
    pub sha256: String,
    /// Training dataset spec, e.g. "mnist".
    #[serde(default)]
    pub dataset: String,
    /// Architecture, e.g. "lenet".
    #[serde(default)]
    pub arch: String,
    /// Training loss, e.g. "gce".
    #[serde(default)]
    pub loss: String,
    /// Random seed of the training run.
    #[serde(default)]
    pub seed: u64,
    /// The command that produced the model.
    #[serde(default)]
    pub command: String,
    /// The file the model was imported from (`caliper import`); empty for trained models.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub source: String,
    /// sha256 (hex) of that file as it was imported (before any added output).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub source_sha256: String,
    /// Any further hyperparameters, free-form.
    #[serde(default)]
    pub hyperparameters: toml::Table,
}

/// Contents of `model.toml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelMetadata {
    /// Always [`METADATA_SCHEMA_VERSION`] for files this build writes.
    pub schema_version: u32,
    /// Model version reported in responses (e.g. "1" or a date).
    pub version: String,
    /// Class labels in output order.
    pub labels: Vec<String>,
    /// Where `caliper serve` runs this model (`"cpu"` or `"cuda:N"`), overriding `--device`.
    /// Absent: the server's device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<crate::runtime::Device>,
    /// The image input.
    pub input: InputSpec,
    /// The outputs.
    pub output: OutputSpec,
    /// Where the model came from.
    pub provenance: Provenance,
}

impl ModelMetadata {
    /// Reads and validates `model.toml`.
    pub fn load(path: &Path) -> Result<Self, MetadataError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| MetadataError::Io {
            path: shown.clone(),
            source,
        })?;
        let meta: ModelMetadata = toml::from_str(&text).map_err(|e| MetadataError::Invalid {
            path: shown.clone(),
            reason: e.to_string(),
        })?;
        meta.validate().map_err(|reason| MetadataError::Invalid {
            path: shown,
            reason,
        })?;
        Ok(meta)
    }

    /// Writes `model.toml` atomically.
    pub fn save(&self, path: &Path) -> Result<(), MetadataError> {
        let shown = path.display().to_string();
        let text = toml::to_string_pretty(self).map_err(|e| MetadataError::Invalid {
            path: shown.clone(),
            reason: e.to_string(),
        })?;
        crate::fsutil::write_atomic(path, text.as_bytes()).map_err(|source| MetadataError::Io {
            path: shown,
            source,
        })
    }

    /// Consistency checks that would otherwise surface as confusing errors at request time.
    pub fn validate(&self) -> Result<(), String> {
        let i = &self.input;
        if self.schema_version != METADATA_SCHEMA_VERSION {
            return Err(format!(
                "schema_version {} is not supported (this build reads {METADATA_SCHEMA_VERSION})",
                self.schema_version
            ));
        }
        if self.labels.len() < 2 {
            return Err("a classifier needs at least 2 labels".into());
        }
        if i.layout != "NCHW" && i.layout != "NHWC" {
            return Err(format!(
                "input.layout {:?} is not supported (NCHW or NHWC)",
                i.layout
            ));
        }
        if i.channels != 1 && i.channels != 3 {
            return Err(format!("input.channels must be 1 or 3, got {}", i.channels));
        }
        if i.height == 0 || i.width == 0 {
            return Err("input.height and input.width must be > 0".into());
        }
        if let Some(s) = i.resize_shorter {
            if i.resize != ResizePolicy::CenterCrop {
                return Err("input.resize_shorter needs resize = \"center-crop\"".into());
            }
            if (s as usize) < i.height.min(i.width) {
                return Err(format!(
                    "input.resize_shorter {s} is smaller than the input ({}x{})",
                    i.height, i.width
                ));
            }
        }
        if i.mean.len() != i.channels || i.std.len() != i.channels {
            return Err("input.mean and input.std need one value per channel".into());
        }
        if i.std.iter().any(|s| !(s.is_finite() && *s > 0.0))
            || i.mean.iter().any(|m| !m.is_finite())
        {
            return Err("input.std must be finite and > 0, input.mean finite".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn sample() -> ModelMetadata {
        ModelMetadata {
            schema_version: METADATA_SCHEMA_VERSION,
            version: "1".into(),
            labels: (0..10).map(|d| d.to_string()).collect(),
            device: None,
            input: InputSpec {
                name: "input".into(),
                layout: "NCHW".into(),
                channels: 1,
                height: 28,
                width: 28,
                mean: vec![0.1307],
                std: vec![0.3081],
                resize: ResizePolicy::Stretch,
                resize_shorter: None,
            },
            output: OutputSpec {
                logits: "logits".into(),
                features: Some("features".into()),
            },
            provenance: Provenance {
                sha256: "00".repeat(32),
                ..Default::default()
            },
        }
    }

    #[test]
    fn round_trips_and_validates() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("model.toml");
        sample().save(&p).unwrap();
        assert_eq!(ModelMetadata::load(&p).unwrap(), sample());

        let mut bad = sample();
        bad.input.std = vec![0.0];
        bad.save(&p).unwrap();
        assert!(
            ModelMetadata::load(&p)
                .unwrap_err()
                .to_string()
                .contains("std")
        );
        let mut bad = sample();
        bad.input.resize_shorter = Some(32);
        bad.save(&p).unwrap();
        let e = ModelMetadata::load(&p).unwrap_err().to_string();
        assert!(e.contains("center-crop"), "{e}");
        bad.input.resize = ResizePolicy::CenterCrop;
        bad.input.resize_shorter = Some(20);
        bad.save(&p).unwrap();
        let e = ModelMetadata::load(&p).unwrap_err().to_string();
        assert!(e.contains("smaller than the input"), "{e}");
        bad.input.resize_shorter = Some(32);
        bad.provenance.source = "m.onnx".into();
        bad.save(&p).unwrap();
        assert_eq!(ModelMetadata::load(&p).unwrap(), bad);
        // The per-model device round-trips; a bad one names what is accepted.
        bad.device = Some(crate::runtime::Device::Cuda(0));
        bad.save(&p).unwrap();
        assert!(
            std::fs::read_to_string(&p)
                .unwrap()
                .contains("device = \"cuda:0\"")
        );
        assert_eq!(ModelMetadata::load(&p).unwrap(), bad);
        let text = std::fs::read_to_string(&p).unwrap();
        std::fs::write(&p, text.replace("cuda:0", "gpu0")).unwrap();
        let e = ModelMetadata::load(&p).unwrap_err().to_string();
        assert!(e.contains("expected cpu or cuda:N"), "{e}");
        std::fs::write(&p, "labels = 3").unwrap();
        assert!(matches!(
            ModelMetadata::load(&p),
            Err(MetadataError::Invalid { .. })
        ));
    }
}
