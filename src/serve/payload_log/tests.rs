use std::sync::Arc;

use super::*;
use crate::serve::infer::TopK;

fn prediction(id: &str, probabilities: Vec<f64>) -> Prediction {
    let class_index = crate::numeric::argmax(&probabilities);
    Prediction {
        model: "m".into(),
        model_version: "3".into(),
        prediction_id: id.into(),
        label: format!("c{class_index}"),
        class_index,
        confidence: probabilities[class_index],
        top_k: vec![TopK {
            label: format!("c{class_index}"),
            index: class_index,
            probability: probabilities[class_index],
        }],
        probabilities,
        calibrated: true,
        calibration_method: "ts",
        ood: OodVerdict {
            method: "msp".into(),
            score: 0.25,
            threshold: Some(0.5),
            is_ood: false,
            scores: Default::default(),
        },
        abstained: false,
        abstain_reason: None,
        prediction_set: None,
        conformal: None,
        adaptation: None,
        served_set: None,
    }
}

fn config(dir: &Path) -> PayloadLogConfig {
    PayloadLogConfig {
        dir: dir.to_path_buf(),
        sample: 1.0,
        max_bytes: 1 << 20,
        max_files: 4,
        images: true,
    }
}

fn labels(k: usize) -> Vec<String> {
    (0..k).map(|i| format!("c{i}")).collect()
}

#[test]
fn lines_carry_what_replay_needs_bit_for_bit() {
    let dir = tempfile::tempdir().unwrap();
    let metrics = Arc::new(ServerMetrics::new().unwrap());
    let log = PayloadLog::start(&config(dir.path()), Arc::clone(&metrics)).unwrap();
    // Probabilities whose shortest decimal forms are long: they must read back to the same bits.
    let small = prediction("id-1", vec![0.1 + 0.2, 1.0 - (0.1 + 0.2)]);
    let mut big_p: Vec<f64> = vec![1e-3; 20];
    big_p[7] = 1.0 - 19e-3;
    big_p[3] = 2e-3;
    let big = prediction("id-2", big_p);
    let image = Bytes::from_static(b"\x89PNG fake");
    log.offer(
        [&small],
        &labels(2),
        Some("req-a"),
        Some(std::slice::from_ref(&image)),
    );
    log.offer([&big], &labels(20), None, None);
    assert!(log.flush(Duration::from_secs(10)));

    let (read_back, report) = read(dir.path()).unwrap();
    assert_eq!(
        report,
        ReadReport {
            files: 1,
            skipped_lines: 0
        }
    );
    assert_eq!(read_back.len(), 2);
    let (a, b) = (&read_back[0], &read_back[1]);
    assert_eq!(a.prediction_id, "id-1");
    assert_eq!(a.request_id.as_deref(), Some("req-a"));
    assert_eq!((a.model.as_str(), a.model_version.as_str()), ("m", "3"));
    assert_eq!(a.confidence.to_bits(), small.confidence.to_bits());
    assert_eq!(a.probabilities.as_deref(), Some(&small.probabilities[..]));
    assert!(a.top_k.is_none());
    assert!(a.time.ends_with('Z') && a.time.len() == 27, "{}", a.time);
    // More classes than a token embeds: the top 5, not every probability.
    assert!(b.probabilities.is_none());
    let top: Vec<(usize, &str)> = b
        .top_k
        .as_ref()
        .unwrap()
        .iter()
        .map(|c| (c.index, c.label.as_str()))
        .collect();
    assert_eq!(top, [(7, "c7"), (3, "c3"), (0, "c0"), (1, "c1"), (2, "c2")]);
    assert_eq!(b.request_id, None);

    // The raw lines: the image only where it was given, base64; the OOD verdict.
    let text = std::fs::read_to_string(&log_files(dir.path()).unwrap()[0].1).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines[0]["image"], "iVBORyBmYWtl");
    assert!(lines[1].get("image").is_none());
    assert_eq!(lines[0]["ood"]["is_ood"], false);
    assert_eq!(lines[0]["label"], "c1");
    assert_eq!(metrics.payload_log_written.get(), 2);
}

#[test]
fn a_full_queue_drops_and_counts_instead_of_blocking() {
    let dir = tempfile::tempdir().unwrap();
    let metrics = Arc::new(ServerMetrics::new().unwrap());
    // A queue of one that nobody drains yet.
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    let log = PayloadLog::handle(&config(dir.path()), Arc::clone(&metrics), tx);
    let p = prediction("x", vec![0.5, 0.5]);
    log.offer([&p, &p, &p], &labels(2), None, None);
    let dropped = metrics
        .payload_log_dropped
        .with_label_values(&["queue_full"])
        .get();
    assert_eq!(dropped, 2);
    assert!(matches!(rx.try_recv(), Ok(Message::Record(_))));
    assert!(rx.try_recv().is_err());
    assert!(
        metrics
            .render()
            .contains("caliper_payload_log_dropped_total{reason=\"queue_full\"} 2")
    );
}

#[test]
fn sampling_keeps_about_the_rate() {
    let dir = tempfile::tempdir().unwrap();
    let metrics = Arc::new(ServerMetrics::new().unwrap());
    let (tx, rx) = std::sync::mpsc::sync_channel(10_000);
    let mut c = config(dir.path());
    c.sample = 0.25;
    let log = PayloadLog::handle(&c, Arc::clone(&metrics), tx);
    let p = prediction("x", vec![0.5, 0.5]);
    log.offer(std::iter::repeat_n(&p, 4000), &labels(2), None, None);
    let kept = rx.try_iter().count();
    // Binomial(4000, 0.25): mean 1000, sd 27; 6 sd either side.
    assert!((840..=1160).contains(&kept), "{kept}");
    c.sample = 0.0;
    let (tx, rx) = std::sync::mpsc::sync_channel(10);
    PayloadLog::handle(&c, metrics, tx).offer([&p], &labels(2), None, None);
    assert_eq!(rx.try_iter().count(), 0);
}

#[test]
fn a_torn_last_line_is_skipped_on_read() {
    let dir = tempfile::tempdir().unwrap();
    let metrics = Arc::new(ServerMetrics::new().unwrap());
    let log = PayloadLog::start(&config(dir.path()), metrics).unwrap();
    log.offer([&prediction("ok", vec![1.0])], &labels(1), None, None);
    drop(log);
    let path = log_files(dir.path()).unwrap()[0].1.clone();
    let mut text = std::fs::read(&path).unwrap();
    text.extend_from_slice(b"{\"prediction_id\": \"torn");
    std::fs::write(&path, text).unwrap();
    let (got, report) = read(dir.path()).unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(report.skipped_lines, 1);
}
