//! Where `caliper calibrate` and `caliper eval` get logits and labels: a model run over a
//! dataset split, or files: NumPy `.npy` (logits f32 or f64 `[N, K]`; labels of any integer
//! type `[N]` or `[N, 1]`) and plain CSV (one row of K numbers per line; one label per line,
//! an index or, when `--model` names a model, one of its class names; a first line that is
//! neither is a header).
//! Every failure names the file and what was wrong with it.

use std::path::{Path, PathBuf};

use anyhow::{Context, anyhow, bail};
use ndarray::{Array2, Ix2};
use ndarray_npy::ReadNpyExt;

use super::model_logits;
use crate::data::npz::{self, LabelError};

/// Where `calibrate` and `eval` get logits and labels: files, or a model run over a dataset.
#[derive(Debug, Clone, clap::Args)]
pub struct InputArgs {
    /// Logits `[N, K]`: `.npy` (float32 or float64) or `.csv`.
    #[arg(
        long,
        env = "CALIPER_LOGITS",
        requires = "labels",
        conflicts_with = "data"
    )]
    pub logits: Option<PathBuf>,
    /// Labels `[N]`: `.npy` of any integer type, or `.csv`/`.txt` with one label per line (an
    /// index, or a class name of --model).
    #[arg(long, env = "CALIPER_LABELS", requires = "logits")]
    pub labels: Option<PathBuf>,
    /// Model name (a folder of --models-dir). With --data, its logits are computed by running
    /// the model; with --logits, it names the model the calibrator belongs to.
    #[arg(long, env = "CALIPER_MODEL")]
    pub model: Option<String>,
    /// Dataset to run the model over, in the spec syntax of docs/DATA.md (e.g. `mnist:test`,
    /// `folder:DIR` with `DIR/<class>/<image>`, `manifest:FILE.csv`); image-file classes are
    /// matched to the model's labels by name.
    #[arg(long, env = "CALIPER_DATA", requires = "model")]
    pub data: Option<String>,
    /// Folder holding one folder per model (`<name>/model.onnx`, `<name>/model.toml`).
    #[arg(long, env = "CALIPER_MODELS_DIR", default_value = "models")]
    pub models_dir: PathBuf,
    /// Folder the dataset specs are resolved in.
    #[arg(long, env = "CALIPER_DATA_DIR", default_value = "data")]
    pub data_dir: PathBuf,
}

/// Logits, labels and a human-readable description of where they came from.
pub struct Loaded {
    pub logits: Array2<f64>,
    pub labels: Vec<usize>,
    pub source: String,
}

impl InputArgs {
    /// Reads the files, or runs the model over the dataset.
    pub fn load(&self) -> anyhow::Result<Loaded> {
        match (&self.logits, &self.labels, &self.data) {
            (Some(z), Some(y), None) => {
                let logits = read_logits(z)?;
                let classes = self.class_names()?;
                let labels = read_labels(y, classes.as_deref())?;
                if labels.len() != logits.nrows() {
                    bail!(
                        "{} has {} rows but {} has {} labels",
                        z.display(),
                        logits.nrows(),
                        y.display(),
                        labels.len()
                    );
                }
                if let Some((i, &l)) = labels
                    .iter()
                    .enumerate()
                    .find(|(_, l)| **l >= logits.ncols())
                {
                    bail!(
                        "{}: label {i} is {l}, but the logits have only {} classes",
                        y.display(),
                        logits.ncols()
                    );
                }
                Ok(Loaded {
                    logits,
                    labels,
                    source: format!("{} + {}", z.display(), y.display()),
                })
            }
            (None, None, Some(spec)) => {
                let model = self.model.as_deref().unwrap_or_default();
                let data =
                    model_logits::open_labelled(&self.models_dir, model, &self.data_dir, spec)?;
                let out = model_logits::run_on(&self.models_dir, model, &data.images, spec, false)?;
                Ok(Loaded {
                    logits: out.logits,
                    labels: data.labels,
                    source: format!("{model} on {spec}"),
                })
            }
            _ => bail!("give either --logits FILE --labels FILE, or --model NAME --data SPEC"),
        }
    }

    /// The class names of --model, when it names a model with a `model.toml`.
    fn class_names(&self) -> anyhow::Result<Option<Vec<String>>> {
        let Some(dir) = self.model_dir() else {
            return Ok(None);
        };
        let toml = dir.join("model.toml");
        if !toml.is_file() {
            return Ok(None);
        }
        Ok(Some(crate::repository::ModelMetadata::load(&toml)?.labels))
    }

    /// The model's directory when --model names one that exists.
    pub fn model_dir(&self) -> Option<PathBuf> {
        let dir = self.models_dir.join(self.model.as_deref()?);
        dir.is_dir().then_some(dir)
    }
}

/// Logits `[N, K]` from a `.npy` or `.csv` file, converted to f64.
pub fn read_logits(path: &Path) -> anyhow::Result<Array2<f64>> {
    let shown = path.display();
    let z = if is_csv(path) {
        let rows = read_csv_rows(path)?;
        let k = rows.first().map_or(0, Vec::len);
        if let Some((i, r)) = rows.iter().enumerate().find(|(_, r)| r.len() != k) {
            bail!(
                "{shown}: row {} has {} values, the first row has {k}",
                i + 1,
                r.len()
            );
        }
        let n = rows.len();
        Array2::from_shape_vec((n, k), rows.into_iter().flatten().collect())
            .with_context(|| format!("{shown}: cannot form a [{n}, {k}] array"))?
    } else {
        let bytes = read(path)?;
        if let Ok(a) = Array2::<f64>::read_npy(&bytes[..]) {
            a
        } else if let Ok(a) = Array2::<f32>::read_npy(&bytes[..]) {
            a.mapv(f64::from)
        } else {
            bail!(
                "{shown}: expected a 2-D float32 or float64 .npy array of logits [N, K] ({})",
                npy_error::<f64, Ix2>(&bytes)
            );
        }
    };
    if z.nrows() == 0 || z.ncols() == 0 {
        bail!("{shown}: no logits (shape {:?})", z.dim());
    }
    if let Some(((r, c), v)) = z.indexed_iter().find(|(_, v)| !v.is_finite()) {
        bail!("{shown}: logit at row {r}, column {c} is {v}; logits must be finite");
    }
    Ok(z)
}

/// Class labels `[N]` from a `.npy` (any integer type, or floats holding integers) or a `.csv`
/// or `.txt` file with one label per line: an index, or one of `classes` by name (the whole
/// line, so names with commas need no quoting; surrounding double quotes are dropped). A first
/// line that is neither is a header.
pub fn read_labels(path: &Path, classes: Option<&[String]>) -> anyhow::Result<Vec<usize>> {
    let shown = path.display();
    let labels = if is_csv(path) {
        let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {shown}"))?;
        return label_lines(&text, classes).map_err(|e| anyhow!("{shown}: {e}"));
    } else {
        npz::read_npy_labels(&read(path)?)
    };
    labels.map_err(|e| match e {
        LabelError::NotAClass { .. } => anyhow!("{shown}: {e}"),
        _ => anyhow!("{shown}: expected a 1-D integer .npy array of labels [N] ({e})"),
    })
}

/// The labels of a one-label-per-line text; see [`read_labels`].
fn label_lines(text: &str, classes: Option<&[String]>) -> Result<Vec<usize>, String> {
    let position = |name: &str| classes.and_then(|c| c.iter().position(|n| n == name));
    // A line is an index (f64, checked by `class_labels`) or a name (matched below).
    let mut lines: Vec<Result<f64, &str>> = Vec::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let name = line
            .strip_prefix('"')
            .and_then(|l| l.strip_suffix('"'))
            .unwrap_or(line);
        match (position(name), line.parse::<f64>()) {
            (Some(k), _) => lines.push(Ok(k as f64)),
            (None, Ok(v)) => lines.push(Ok(v)),
            (None, Err(_)) if lines.is_empty() => {} // a header line
            (None, Err(_)) => lines.push(Err(name)),
        }
    }
    let mut unknown: Vec<&str> = lines.iter().filter_map(|l| l.err()).collect();
    if let Some(first) = unknown.first() {
        let Some(classes) = classes else {
            return Err(format!(
                "label {first:?} is not a class index; pass --model so that names can be \
                 matched to its labels"
            ));
        };
        unknown.sort_unstable();
        unknown.dedup();
        return Err(format!(
            "{} unknown class name{} {}; the model's labels are {}",
            unknown.len(),
            if unknown.len() == 1 { "" } else { "s" },
            crate::data::files::few(&unknown),
            crate::data::files::few(&classes.iter().map(String::as_str).collect::<Vec<_>>()),
        ));
    }
    if lines.is_empty() {
        return Err("no labels".into());
    }
    let values: Vec<f64> = lines.into_iter().flatten().collect();
    npz::class_labels(&values).map_err(|e| e.to_string())
}

fn is_csv(path: &Path) -> bool {
    path.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("csv") || e.eq_ignore_ascii_case("txt"))
}

fn read(path: &Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))
}

/// The reader's own message for why `bytes` is not an array of `T` with dimension `D`.
fn npy_error<T: ndarray_npy::ReadableElement, D: ndarray::Dimension>(bytes: &[u8]) -> String {
    match ndarray::Array::<T, D>::read_npy(bytes) {
        Ok(_) => "unsupported element type".into(),
        Err(e) => e.to_string(),
    }
}

/// Numeric rows of a CSV file (commas and/or whitespace separate values).
fn read_csv_rows(path: &Path) -> anyhow::Result<Vec<Vec<f64>>> {
    let shown = path.display();
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {shown}"))?;
    let mut rows = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let parsed: Result<Vec<f64>, _> = line
            .split(|c: char| c == ',' || c.is_whitespace())
            .filter(|s| !s.is_empty())
            .map(str::parse::<f64>)
            .collect();
        match parsed {
            Ok(r) => rows.push(r),
            Err(_) if rows.is_empty() && i == 0 => {} // a header line
            Err(e) => bail!("{shown}: line {}: {e}", i + 1),
        }
    }
    if rows.is_empty() {
        bail!("{shown}: no data rows");
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;
    use ndarray_npy::WriteNpyExt;

    fn write_npy<T: WriteNpyExt>(dir: &Path, name: &str, a: &T) -> std::path::PathBuf {
        let p = dir.join(name);
        a.write_npy(std::fs::File::create(&p).unwrap()).unwrap();
        p
    }

    #[test]
    fn reads_f32_f64_logits_and_any_integer_labels() {
        let d = tempfile::tempdir().unwrap();
        let z32 = write_npy(d.path(), "a.npy", &array![[1.0f32, 2.0], [3.0, 4.5]]);
        assert_eq!(read_logits(&z32).unwrap(), array![[1.0, 2.0], [3.0, 4.5]]);
        let z64 = write_npy(d.path(), "b.npy", &array![[1.0f64, -2.0]]);
        assert_eq!(read_logits(&z64).unwrap()[[0, 1]], -2.0);
        let y8 = write_npy(d.path(), "y8.npy", &array![1u8, 0, 2]);
        assert_eq!(read_labels(&y8, None).unwrap(), vec![1, 0, 2]);
        let y64 = write_npy(d.path(), "y64.npy", &array![[4i64], [5]]);
        assert_eq!(read_labels(&y64, None).unwrap(), vec![4, 5]);
    }

    #[test]
    fn reads_csv_with_a_header() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("z.csv");
        std::fs::write(&p, "a,b,c\n1,2,3\n4, 5, 6\n\n").unwrap();
        assert_eq!(read_logits(&p).unwrap().dim(), (2, 3));
        let y = d.path().join("y.csv");
        std::fs::write(&y, "2\n0\n").unwrap();
        assert_eq!(read_labels(&y, None).unwrap(), vec![2, 0]);
    }

    #[test]
    fn explains_bad_files() {
        let d = tempfile::tempdir().unwrap();
        let msg = |r: anyhow::Result<_>| format!("{:#}", r.err().unwrap());
        assert!(msg(read_logits(&d.path().join("none.npy")).map(|_| ())).contains("cannot read"));
        let y = write_npy(d.path(), "y.npy", &array![1i32, -1]);
        assert!(msg(read_labels(&y, None).map(|_| ())).contains("non-negative"));
        let z1 = write_npy(d.path(), "z1.npy", &array![1.0f64, 2.0]);
        assert!(msg(read_logits(&z1).map(|_| ())).contains("2-D"));
        let ragged = d.path().join("r.csv");
        std::fs::write(&ragged, "1,2\n3\n").unwrap();
        assert!(msg(read_logits(&ragged).map(|_| ())).contains("row 2"));
        let nan = d.path().join("n.csv");
        std::fs::write(&nan, "1,NaN\n").unwrap();
        assert!(msg(read_logits(&nan).map(|_| ())).contains("finite"));
    }

    #[test]
    fn reads_label_names_against_the_model_classes() {
        let classes: Vec<String> = ["tabby, tabby cat", "espresso", "7"]
            .map(String::from)
            .to_vec();
        let got = label_lines(
            "label\nespresso\n\"tabby, tabby cat\"\n1\n7\n",
            Some(&classes),
        );
        // "7" is a class name here, so it names class 2 rather than index 7.
        assert_eq!(got.unwrap(), vec![1, 0, 1, 2]);
        let e = label_lines("espresso\nmocha\nlatte\nmocha\n", Some(&classes)).unwrap_err();
        assert!(
            e.contains("2 unknown class names \"latte\", \"mocha\""),
            "{e}"
        );
        let e = label_lines("0\nespresso\n", None).unwrap_err();
        assert!(
            e.contains("\"espresso\" is not a class index") && e.contains("--model"),
            "{e}"
        );
        assert_eq!(label_lines("y\n3\n1\n", None).unwrap(), vec![3, 1]);
    }
}
