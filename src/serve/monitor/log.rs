//! The feedback log under `--state-dir`: every acknowledged label, appended and fsynced before
//! the HTTP response, so that a crash (even `kill -9`) right after a 200 loses nothing.
//!
//! Format: one record per line, `CRC32(hex, 8 chars) SPACE JSON NEWLINE`. On open, lines whose
//! checksum or JSON does not verify are skipped and reported, never fatal; a torn last line (a
//! crash mid-append) is cut off so that later appends start on a clean line. The log is bounded by
//! compaction: the monitor rewrites it atomically with only the records it still needs.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// File name of the log inside the state directory.
pub const LOG_FILE: &str = "feedback.log";

/// One labelled prediction, as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeedbackRecord {
    /// Model name (from the token).
    pub model: String,
    /// Model version (from the token).
    pub model_version: String,
    /// The token's nonce: identifies the prediction for de-duplication.
    pub nonce: u64,
    /// When the prediction was made (Unix seconds).
    pub issued_at_s: u64,
    /// When the label arrived (Unix seconds).
    pub received_at_s: u64,
    /// Predicted class.
    pub predicted: u16,
    /// The true label's class index.
    pub label: u16,
    /// Calibrated confidence of the predicted class.
    pub confidence: f64,
    /// Calibrated probabilities, when the token carried them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probabilities: Option<Vec<f64>>,
}

/// What opening the log found.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct RecoveryReport {
    /// Records read back.
    pub records: usize,
    /// Lines that failed their checksum or did not parse, skipped.
    pub corrupt_lines: usize,
    /// Bytes of a torn last line that were cut off.
    pub truncated_tail_bytes: u64,
}

/// Errors of the log. Only I/O can fail: corruption is reported, not raised.
#[derive(Debug, thiserror::Error)]
#[error("feedback log {path}: {source}")]
pub struct LogError {
    path: String,
    source: std::io::Error,
}

/// An open, append-only feedback log.
#[derive(Debug)]
pub struct FeedbackLog {
    path: PathBuf,
    file: File,
    lines: usize,
}

fn encode_line(r: &FeedbackRecord) -> String {
    let json = serde_json::to_string(r).expect("a record always serialises");
    format!("{:08x} {json}\n", crc32fast::hash(json.as_bytes()))
}

fn decode_line(line: &str) -> Option<FeedbackRecord> {
    let (crc, json) = line.split_once(' ')?;
    let crc = u32::from_str_radix(crc, 16).ok()?;
    if crc != crc32fast::hash(json.as_bytes()) {
        return None;
    }
    serde_json::from_str(json).ok()
}

impl FeedbackLog {
    /// Opens (or creates) the log in `dir`, returning it with the records it holds and a report of
    /// anything that had to be skipped.
    pub fn open(dir: &Path) -> Result<(Self, Vec<FeedbackRecord>, RecoveryReport), LogError> {
        let path = dir.join(LOG_FILE);
        let err = |source| LogError {
            path: path.display().to_string(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(err)?;
        let mut bytes = Vec::new();
        match File::open(&path) {
            Ok(mut f) => {
                f.read_to_end(&mut bytes).map_err(err)?;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(err(e)),
        }
        let (records, report, good_len) = parse(&bytes);
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(err)?;
        if report.truncated_tail_bytes > 0 {
            file.set_len(good_len).map_err(err)?;
            file.sync_all().map_err(err)?;
        }
        // Make the file's creation durable too.
        File::open(dir).and_then(|d| d.sync_all()).map_err(err)?;
        let lines = records.len() + report.corrupt_lines;
        Ok((FeedbackLog { path, file, lines }, records, report))
    }

    /// Appends records and fsyncs before returning: once this returns Ok they survive a crash.
    pub fn append(&mut self, records: &[FeedbackRecord]) -> Result<(), LogError> {
        if records.is_empty() {
            return Ok(());
        }
        let text: String = records.iter().map(encode_line).collect();
        let err = |source| LogError {
            path: self.path.display().to_string(),
            source,
        };
        self.file.write_all(text.as_bytes()).map_err(err)?;
        self.file.sync_data().map_err(err)?;
        self.lines += records.len();
        Ok(())
    }

    /// Number of lines in the file (records plus skipped corrupt lines).
    pub fn lines(&self) -> usize {
        self.lines
    }

    /// Replaces the whole log by `keep`, atomically (temp file, fsync, rename).
    pub fn compact(&mut self, keep: &[FeedbackRecord]) -> Result<(), LogError> {
        let text: String = keep.iter().map(encode_line).collect();
        let err = |source| LogError {
            path: self.path.display().to_string(),
            source,
        };
        crate::fsutil::write_atomic(&self.path, text.as_bytes()).map_err(err)?;
        self.file = OpenOptions::new()
            .append(true)
            .open(&self.path)
            .map_err(err)?;
        self.lines = keep.len();
        Ok(())
    }
}

/// Parses the log's bytes: (records, report, length of the prefix that ends in a complete line).
fn parse(bytes: &[u8]) -> (Vec<FeedbackRecord>, RecoveryReport, u64) {
    let mut report = RecoveryReport::default();
    let mut records = Vec::new();
    let complete = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    for line in bytes[..complete]
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
    {
        match std::str::from_utf8(line).ok().and_then(decode_line) {
            Some(r) => records.push(r),
            None => report.corrupt_lines += 1,
        }
    }
    // A last line without its newline is a torn append: its record was never acknowledged.
    report.truncated_tail_bytes = (bytes.len() - complete) as u64;
    report.records = records.len();
    (records, report, complete as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(nonce: u64) -> FeedbackRecord {
        FeedbackRecord {
            model: "m".into(),
            model_version: "1".into(),
            nonce,
            issued_at_s: 10,
            received_at_s: 11,
            predicted: 1,
            label: 2,
            confidence: 0.1 + 0.2, // not exactly representable: checks exact round trip
            probabilities: Some(vec![0.25, 0.75]),
        }
    }

    #[test]
    fn appended_records_come_back_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, recs, rep) = FeedbackLog::open(dir.path()).unwrap();
        assert!(recs.is_empty() && rep == RecoveryReport::default());
        log.append(&[rec(1), rec(2)]).unwrap();
        drop(log);
        let (_, recs, rep) = FeedbackLog::open(dir.path()).unwrap();
        assert_eq!(recs, vec![rec(1), rec(2)]);
        assert_eq!(rep.records, 2);
        assert_eq!(recs[0].confidence.to_bits(), (0.1f64 + 0.2).to_bits());
    }

    #[test]
    fn corrupt_lines_and_torn_tails_are_skipped_not_fatal() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _, _) = FeedbackLog::open(dir.path()).unwrap();
        log.append(&[rec(1), rec(2), rec(3)]).unwrap();
        drop(log);
        let path = dir.path().join(LOG_FILE);
        let mut text = std::fs::read_to_string(&path).unwrap();
        // Flip a character inside the second record's JSON, then add a torn half line.
        let second = text.match_indices('\n').next().unwrap().0 + 15;
        text.replace_range(second..second + 1, "X");
        text.push_str("0badc0de {\"model\":");
        std::fs::write(&path, &text).unwrap();

        let (mut log, recs, rep) = FeedbackLog::open(dir.path()).unwrap();
        assert_eq!(recs, vec![rec(1), rec(3)]);
        assert_eq!(rep.corrupt_lines, 1);
        assert_eq!(
            rep.truncated_tail_bytes,
            "0badc0de {\"model\":".len() as u64
        );
        // Appending after recovery starts on a clean line.
        log.append(&[rec(4)]).unwrap();
        let (_, recs, rep) = FeedbackLog::open(dir.path()).unwrap();
        assert_eq!(recs.last(), Some(&rec(4)));
        assert_eq!(rep.truncated_tail_bytes, 0);
    }

    #[test]
    fn compaction_keeps_only_what_it_is_given() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _, _) = FeedbackLog::open(dir.path()).unwrap();
        log.append(&(0..10).map(rec).collect::<Vec<_>>()).unwrap();
        log.compact(&[rec(8), rec(9)]).unwrap();
        assert_eq!(log.lines(), 2);
        log.append(&[rec(10)]).unwrap();
        let (_, recs, _) = FeedbackLog::open(dir.path()).unwrap();
        assert_eq!(recs, vec![rec(8), rec(9), rec(10)]);
    }
}
