//! The feedback log under `--state-dir`: every acknowledged label, appended and fsynced before
//! the HTTP response, so that a crash (even `kill -9`) right after a 200 loses nothing.
//!
//! Format: one record per line, `CRC32(hex, 8 chars) SPACE JSON NEWLINE`. On open, lines whose
//! checksum or JSON does not verify are skipped and reported, never fatal; a torn last line (a
//! crash mid-append) is cut off so that later appends start on a clean line. The log is bounded by
//! compaction: the monitor rewrites it atomically with only the records it still needs.
//!
//! A failed append (a full disk: part of the batch written, then ENOSPC) truncates the file back
//! to its last good length before it reports the error, so a torn record is never followed by an
//! acknowledged one. If even the truncation fails, every later append retries it first and is
//! refused until it succeeds.

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
    /// The served conformal set's outcome, when the token carried a set (issue 22).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub set: Option<SetOutcome>,
}

/// What a label says about the conformal set served with its prediction.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SetOutcome {
    /// Whether the true label was in the set.
    pub covered: bool,
    /// Classes in the set.
    pub size: u16,
    /// The miscoverage level the set was built at.
    pub alpha: f64,
    /// Whether that level came from adaptive conformal inference.
    #[serde(default)]
    pub adaptive: bool,
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
    /// Length of the file up to its last acknowledged record.
    good_len: u64,
    /// A failed append could not be cut off: the file is longer than `good_len`.
    torn: bool,
}

/// What an append needs of the file; a trait so that tests can inject a full disk.
trait AppendFile {
    fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()>;
    fn sync_data(&mut self) -> std::io::Result<()>;
    fn set_len(&mut self, len: u64) -> std::io::Result<()>;
}

impl AppendFile for File {
    fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        Write::write_all(self, buf)
    }
    fn sync_data(&mut self) -> std::io::Result<()> {
        File::sync_data(self)
    }
    fn set_len(&mut self, len: u64) -> std::io::Result<()> {
        File::set_len(self, len)
    }
}

/// Appends `bytes` at `*good_len` all or nothing: on any failure the file is cut back to
/// `*good_len` (and `*torn` records whether that too failed).
fn append_all_or_nothing(
    file: &mut impl AppendFile,
    good_len: &mut u64,
    torn: &mut bool,
    bytes: &[u8],
) -> std::io::Result<()> {
    if *torn {
        file.set_len(*good_len)?;
        file.sync_data()?;
        *torn = false;
    }
    match file.write_all(bytes).and_then(|()| file.sync_data()) {
        Ok(()) => {
            *good_len += bytes.len() as u64;
            Ok(())
        }
        Err(e) => {
            // Shrinking needs no free space, so this normally succeeds even on a full disk.
            *torn = file
                .set_len(*good_len)
                .and_then(|()| file.sync_data())
                .is_err();
            Err(e)
        }
    }
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
        let log = FeedbackLog {
            path,
            file,
            lines,
            good_len,
            torn: false,
        };
        Ok((log, records, report))
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
        append_all_or_nothing(
            &mut self.file,
            &mut self.good_len,
            &mut self.torn,
            text.as_bytes(),
        )
        .map_err(err)?;
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
        self.good_len = text.len() as u64;
        self.torn = false;
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
            set: nonce.is_multiple_of(2).then_some(SetOutcome {
                covered: true,
                size: 2,
                alpha: 0.1,
                adaptive: false,
            }),
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

    /// A file on a disk with `room` bytes left; `set_len` can be made to fail too.
    struct FullDisk {
        data: Vec<u8>,
        room: usize,
        truncate_fails: bool,
    }

    impl AppendFile for FullDisk {
        fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
            let n = buf.len().min(self.room);
            self.data.extend_from_slice(&buf[..n]);
            self.room -= n;
            if n < buf.len() {
                return Err(std::io::Error::from(std::io::ErrorKind::StorageFull));
            }
            Ok(())
        }
        fn sync_data(&mut self) -> std::io::Result<()> {
            Ok(())
        }
        fn set_len(&mut self, len: u64) -> std::io::Result<()> {
            if self.truncate_fails {
                return Err(std::io::Error::other("injected"));
            }
            let len = len as usize;
            self.room += self.data.len().saturating_sub(len);
            self.data.truncate(len);
            Ok(())
        }
    }

    fn lines(recs: &[FeedbackRecord]) -> Vec<u8> {
        recs.iter()
            .map(encode_line)
            .collect::<String>()
            .into_bytes()
    }

    #[test]
    fn a_failed_append_on_a_full_disk_leaves_the_log_as_it_was() {
        let first = lines(&[rec(1)]);
        let mut disk = FullDisk {
            data: Vec::new(),
            room: first.len() + 10,
            truncate_fails: false,
        };
        let (mut good, mut torn) = (0u64, false);
        append_all_or_nothing(&mut disk, &mut good, &mut torn, &first).unwrap();
        // Ten bytes of the next batch fit: the error comes after a partial write.
        let err = append_all_or_nothing(&mut disk, &mut good, &mut torn, &lines(&[rec(2), rec(3)]))
            .unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::StorageFull);
        assert_eq!(disk.data, first, "the torn tail was cut off");
        assert!(!torn);
        // Space freed: the next acknowledged label starts on a clean line and reads back.
        disk.room = 1 << 20;
        append_all_or_nothing(&mut disk, &mut good, &mut torn, &lines(&[rec(4)])).unwrap();
        let (recs, report, _) = parse(&disk.data);
        assert_eq!(recs, vec![rec(1), rec(4)]);
        assert_eq!((report.corrupt_lines, report.truncated_tail_bytes), (0, 0));
    }

    #[test]
    fn a_tail_that_cannot_be_cut_blocks_appends_until_it_can() {
        let first = lines(&[rec(1)]);
        let mut disk = FullDisk {
            data: Vec::new(),
            room: first.len() + 5,
            truncate_fails: true,
        };
        let (mut good, mut torn) = (0u64, false);
        append_all_or_nothing(&mut disk, &mut good, &mut torn, &first).unwrap();
        assert!(append_all_or_nothing(&mut disk, &mut good, &mut torn, &lines(&[rec(2)])).is_err());
        assert!(torn);
        disk.room = 1 << 20;
        // Still cannot cut: refused, nothing appended after the torn bytes.
        let before = disk.data.clone();
        assert!(append_all_or_nothing(&mut disk, &mut good, &mut torn, &lines(&[rec(3)])).is_err());
        assert_eq!(disk.data, before);
        disk.truncate_fails = false;
        append_all_or_nothing(&mut disk, &mut good, &mut torn, &lines(&[rec(3)])).unwrap();
        assert_eq!(parse(&disk.data).0, vec![rec(1), rec(3)]);
    }

    /// The same on a real 64 KiB tmpfs, when this process may mount one (root, or a user
    /// namespace); skipped with a message otherwise.
    #[test]
    fn a_full_tmpfs_loses_no_acknowledged_record() {
        let dir = tempfile::tempdir().unwrap();
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=64k", "tmpfs"])
            .arg(dir.path())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !mounted {
            eprintln!(
                "skipped: cannot mount a tmpfs here (needs root); the FullDisk tests cover it"
            );
            return;
        }
        let result = std::panic::catch_unwind(|| {
            let filler = dir.path().join("filler");
            std::fs::write(&filler, vec![0u8; 40 * 1024]).unwrap();
            let (mut log, _, _) = FeedbackLog::open(dir.path()).unwrap();
            let mut acked = Vec::new();
            let mut failures = 0;
            for n in 0..2000 {
                match log.append(&[rec(n), rec(n + 100_000)]) {
                    Ok(()) => acked.extend([rec(n), rec(n + 100_000)]),
                    Err(_) => failures += 1,
                }
                if failures == 3 {
                    break;
                }
            }
            assert!(failures > 0 && !acked.is_empty(), "the tmpfs never filled");
            // Space freed: the next label is appended on a clean line.
            std::fs::remove_file(&filler).unwrap();
            log.append(&[rec(9999)]).unwrap();
            acked.push(rec(9999));
            drop(log);
            let (_, recs, report) = FeedbackLog::open(dir.path()).unwrap();
            assert_eq!((report.corrupt_lines, report.truncated_tail_bytes), (0, 0));
            assert_eq!(recs, acked, "every acknowledged record, nothing else");
        });
        let _ = std::process::Command::new("umount")
            .arg(dir.path())
            .status();
        if let Err(p) = result {
            std::panic::resume_unwind(p);
        }
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
