//! The monitor fed offline (`caliper monitor replay`): labels that arrived somewhere else (a
//! labelling tool, an audit) are joined on `prediction_id` with the payload log, and the joined
//! predictions go through the same [`ModelWindow`] and report code as the live monitor's labels.
//! With the same predictions and the same labels in the same order, the report is the one
//! `GET /v1/models/{model}/monitor` gave, bit for bit: the log keeps the confidences and (up to
//! `MAX_EMBEDDED_CLASSES` classes) the probabilities exactly as the prediction tokens carried
//! them.

use std::collections::{HashMap, HashSet};

use serde::Serialize;

use super::window::{LiveReport, ModelWindow};
use super::{FeedbackItem, FeedbackRecord, LabelRef};
use crate::serve::payload_log::LoggedPrediction;
use crate::trust::metrics::ConfidenceReference;

/// Why a replay could not run.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// A line of the labels file is not `prediction_id,label` or a JSON object with both.
    #[error("labels file line {line}: {reason}")]
    LabelsFile { line: usize, reason: String },
    /// The log holds several models and none was chosen.
    #[error("the payload log holds predictions of several models ({0}); choose one with --model")]
    WhichModel(String),
    /// Nothing of the chosen model is in the log.
    #[error("the payload log holds no prediction of model {0:?}")]
    NoPredictions(String),
}

/// How the labels fared in the join (every label is counted once, in one of these).
#[derive(Debug, Default, Clone, PartialEq, Serialize)]
pub struct JoinCounts {
    /// Labels in the file.
    pub labels: usize,
    /// Labels of a logged prediction of the model: the window's content (before it slides).
    pub joined: usize,
    /// Labels whose prediction is not in the log (sampled out, rotated away, another model).
    pub unmatched: usize,
    /// Second and later labels of one prediction (the live monitor counts the first, too).
    pub duplicates: usize,
    /// Labels that are not a class of the model.
    pub rejected: usize,
}

/// A replayed report.
#[derive(Debug, Clone)]
pub struct Replay {
    /// The model.
    pub model: String,
    /// Its version in the newest logged prediction.
    pub model_version: String,
    /// The figures, as the live monitor computes them.
    pub report: LiveReport,
    /// How the join went.
    pub counts: JoinCounts,
}

/// Reads a labels file: CSV lines `prediction_id,label` (an optional header line
/// `prediction_id,label`), or JSON lines `{"prediction_id": "...", "label": 3 or "cat"}`. A
/// label is a class index when it is a non-negative integer, else a class name.
pub fn parse_labels(text: &str) -> Result<Vec<FeedbackItem>, ReplayError> {
    let bad = |line: usize, reason: String| ReplayError::LabelsFile { line, reason };
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() {
            continue;
        }
        let (id, label) = if line.starts_with('{') {
            let v: serde_json::Value =
                serde_json::from_str(line).map_err(|e| bad(i + 1, e.to_string()))?;
            let id = v["prediction_id"]
                .as_str()
                .ok_or_else(|| bad(i + 1, "no string prediction_id".into()))?;
            let label = match &v["label"] {
                serde_json::Value::String(s) => LabelRef::Name(s.clone()),
                serde_json::Value::Number(n) if n.as_u64().is_some() => {
                    LabelRef::Index(n.as_u64().unwrap_or_default())
                }
                other => {
                    return Err(bad(
                        i + 1,
                        format!("label must be a class index or a class name, got {other}"),
                    ));
                }
            };
            (id.to_string(), label)
        } else {
            let (id, label) = line
                .split_once(',')
                .ok_or_else(|| bad(i + 1, "expected prediction_id,label".into()))?;
            let (id, label) = (unquote(id), unquote(label));
            if out.is_empty() && id == "prediction_id" && label == "label" {
                continue;
            }
            let label = match label.parse::<u64>() {
                Ok(n) => LabelRef::Index(n),
                Err(_) => LabelRef::Name(label.to_string()),
            };
            (id.to_string(), label)
        };
        out.push(FeedbackItem {
            prediction_id: id,
            label,
        });
    }
    Ok(out)
}

fn unquote(s: &str) -> &str {
    let s = s.trim();
    s.strip_prefix('"')
        .and_then(|s| s.strip_suffix('"'))
        .unwrap_or(s)
}

/// The model a replay is about: `chosen`, or the only model in the log.
pub fn pick_model(log: &[LoggedPrediction], chosen: Option<&str>) -> Result<String, ReplayError> {
    if let Some(m) = chosen {
        return Ok(m.to_string());
    }
    let mut models: Vec<&str> = log.iter().map(|p| p.model.as_str()).collect();
    models.sort_unstable();
    models.dedup();
    match models.as_slice() {
        [one] => Ok((*one).to_string()),
        [] => Err(ReplayError::NoPredictions(String::new())),
        many => Err(ReplayError::WhichModel(many.join(", "))),
    }
}

/// Joins `labels` (in file order, the order the live monitor would have received them) with
/// the `log` predictions of `model` and computes the monitor's report over a window of
/// `window` labelled predictions in `bins` bins. `classes` (the model's labels) resolves class
/// names; without it only indices are accepted. Every logged prediction also feeds the
/// label-free window (served confidences, drift against `reference`), as serving it did.
pub fn replay(
    log: &[LoggedPrediction],
    labels: &[FeedbackItem],
    model: &str,
    classes: Option<&[String]>,
    window: usize,
    bins: usize,
    reference: Option<&ConfidenceReference>,
) -> Result<Replay, ReplayError> {
    let mut w = ModelWindow::new(window);
    let mut by_id: HashMap<&str, &LoggedPrediction> = HashMap::new();
    let mut version = None;
    for p in log.iter().filter(|p| p.model == model) {
        w.observe_confidence(p.confidence);
        by_id.insert(p.prediction_id.as_str(), p);
        version = Some(p.model_version.clone());
    }
    let model_version = version.ok_or_else(|| ReplayError::NoPredictions(model.to_string()))?;
    let mut counts = JoinCounts {
        labels: labels.len(),
        ..JoinCounts::default()
    };
    let mut seen: HashSet<&str> = HashSet::new();
    for (n, item) in labels.iter().enumerate() {
        let Some(p) = by_id.get(item.prediction_id.as_str()) else {
            counts.unmatched += 1;
            continue;
        };
        let k = p
            .probabilities
            .as_ref()
            .map(Vec::len)
            .or(classes.map(<[String]>::len));
        let label = match &item.label {
            LabelRef::Index(i) => usize::try_from(*i)
                .ok()
                .filter(|&i| k.is_none_or(|k| i < k)),
            LabelRef::Name(name) => classes.and_then(|c| c.iter().position(|x| x == name)),
        };
        let (Some(label), Ok(predicted)) = (
            label.and_then(|l| u16::try_from(l).ok()),
            u16::try_from(p.class_index),
        ) else {
            counts.rejected += 1;
            continue;
        };
        if !seen.insert(item.prediction_id.as_str()) {
            counts.duplicates += 1;
            continue;
        }
        counts.joined += 1;
        w.push(FeedbackRecord {
            model: model.to_string(),
            model_version: p.model_version.clone(),
            // The nonce only de-duplicates in the live monitor; here the join did that.
            nonce: n as u64,
            issued_at_s: 0,
            received_at_s: 0,
            predicted,
            label,
            confidence: p.confidence,
            probabilities: p.probabilities.clone(),
            // The payload log does not record the served set: replay measures calibration.
            set: None,
        });
    }
    Ok(Replay {
        model: model.to_string(),
        model_version,
        report: w.report(bins, reference, None),
        counts,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn logged(id: &str, model: &str, probabilities: &[f64]) -> LoggedPrediction {
        let class_index = crate::numeric::argmax(probabilities);
        LoggedPrediction {
            prediction_id: id.into(),
            time: "2026-12-02T00:00:00.000000Z".into(),
            request_id: None,
            model: model.into(),
            model_version: "1".into(),
            class_index,
            confidence: probabilities[class_index],
            probabilities: Some(probabilities.to_vec()),
            top_k: None,
        }
    }

    #[test]
    fn labels_files_in_csv_and_jsonl() {
        let csv = "prediction_id,label\na,3\n\"b\",cat\n\n";
        let items = parse_labels(csv).unwrap();
        assert_eq!(items.len(), 2);
        assert_eq!(items[0].label, LabelRef::Index(3));
        assert_eq!(
            (items[1].prediction_id.as_str(), &items[1].label),
            ("b", &LabelRef::Name("cat".into()))
        );
        let jsonl = "{\"prediction_id\": \"a\", \"label\": 2}\n{\"prediction_id\": \"b\", \"label\": \"7\"}\n";
        let items = parse_labels(jsonl).unwrap();
        assert_eq!(items[0].label, LabelRef::Index(2));
        assert_eq!(items[1].label, LabelRef::Name("7".into()));
        let e = parse_labels("a,1\nno comma here").unwrap_err();
        assert!(e.to_string().contains("line 2"), "{e}");
        let e = parse_labels("{\"prediction_id\": \"a\", \"label\": -1}").unwrap_err();
        assert!(e.to_string().contains("class index or a class name"), "{e}");
    }

    #[test]
    fn joins_on_prediction_id_and_counts_what_did_not_join() {
        let log = vec![
            logged("a", "m", &[0.9, 0.1]),
            logged("b", "m", &[0.3, 0.7]),
            logged("c", "other", &[0.5, 0.5]),
        ];
        let classes = vec!["cat".to_string(), "dog".to_string()];
        let items = parse_labels("a,cat\nb,0\na,dog\nzz,1\nb,5\nc,0\n").unwrap();
        let r = replay(&log, &items, "m", Some(&classes), 100, 15, None).unwrap();
        assert_eq!(
            r.counts,
            JoinCounts {
                labels: 6,
                joined: 2,
                unmatched: 2,
                duplicates: 1,
                rejected: 1,
            }
        );
        // a right at 0.9, b wrong at 0.7: ECE = (|1 - 0.9| + |0 - 0.7|) / 2 by hand.
        assert_eq!(r.report.labelled, 2);
        assert_eq!(r.report.accuracy, Some(0.5));
        assert!((r.report.ece.unwrap() - 0.4).abs() < 1e-12);
        // Both logged predictions of the model are the served window.
        assert_eq!(r.report.served, 2);
        assert_eq!(r.model_version, "1");
        assert!(r.report.full.is_some());

        assert!(matches!(
            pick_model(&log, None),
            Err(ReplayError::WhichModel(_))
        ));
        assert_eq!(pick_model(&log[..2], None).unwrap(), "m");
        assert!(matches!(
            replay(&log, &items, "nope", None, 10, 15, None),
            Err(ReplayError::NoPredictions(_))
        ));
    }
}
