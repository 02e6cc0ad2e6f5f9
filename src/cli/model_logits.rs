//! `--model NAME --data SPEC`: logits of a served model over a dataset split. Needs the
//! dataset loader and the ONNX runtime session of the other layers.

use std::path::Path;

use super::npy::Loaded;

/// Runs the model over the dataset split and returns its logits and the split's labels.
pub fn run(
    _models_dir: &Path,
    model: &str,
    _data_dir: &Path,
    spec: &str,
) -> anyhow::Result<Loaded> {
    anyhow::bail!(
        "--model {model} --data {spec}: running a model over a dataset is not available in \
         this build yet; export logits and use --logits/--labels"
    )
}
