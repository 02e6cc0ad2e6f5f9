//! The payload log's files: `payload-NNNNNNNNNN.jsonl` in one directory, numbered in the order
//! they were written. A process starts a new file (it never appends after what may be a torn
//! line of a crashed predecessor), moves to the next one when a line would take the current one
//! past `max_bytes`, and deletes the oldest beyond `max_files`: the log holds at most about
//! `max_files x max_bytes` bytes.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

const PREFIX: &str = "payload-";
const SUFFIX: &str = ".jsonl";

/// The log's files in `dir`, oldest first, with their sequence numbers.
pub fn list(dir: &Path) -> std::io::Result<Vec<(u64, PathBuf)>> {
    let mut out: Vec<(u64, PathBuf)> = std::fs::read_dir(dir)?
        .filter_map(Result::ok)
        .filter_map(|e| {
            let name = e.file_name();
            let seq = name
                .to_str()?
                .strip_prefix(PREFIX)?
                .strip_suffix(SUFFIX)?
                .parse()
                .ok()?;
            Some((seq, e.path()))
        })
        .collect();
    out.sort_unstable();
    Ok(out)
}

fn name(seq: u64) -> String {
    format!("{PREFIX}{seq:010}{SUFFIX}")
}

/// The file being written and the rules for the next.
pub struct RotatingFile {
    dir: PathBuf,
    max_bytes: u64,
    max_files: usize,
    seq: u64,
    file: BufWriter<File>,
    written: u64,
}

impl RotatingFile {
    /// Starts a new file after the newest one in `dir` (created if missing).
    pub fn open(dir: &Path, max_bytes: u64, max_files: usize) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let seq = list(dir)?.last().map_or(1, |(s, _)| s + 1);
        let f = Self {
            dir: dir.to_path_buf(),
            max_bytes,
            max_files: max_files.max(1),
            seq,
            file: BufWriter::new(create(dir, seq)?),
            written: 0,
        };
        f.prune()?;
        Ok(f)
    }

    /// Appends one line (which ends in a newline), first moving to a new file when the line
    /// would take this one past `max_bytes`. A file holds at least one line, however long.
    pub fn write_line(&mut self, line: &[u8]) -> std::io::Result<()> {
        if self.written > 0 && self.written + line.len() as u64 > self.max_bytes {
            self.rotate()?;
        }
        self.file.write_all(line)?;
        self.written += line.len() as u64;
        Ok(())
    }

    /// Moves to a new file (also after a failed write, so that a torn line ends its file).
    pub fn rotate(&mut self) -> std::io::Result<()> {
        // The old file's buffered tail may fail to flush (a full disk): the new file starts
        // clean regardless.
        let _ = self.file.flush();
        self.seq += 1;
        self.file = BufWriter::new(create(&self.dir, self.seq)?);
        self.written = 0;
        self.prune()
    }

    /// Hands buffered lines to the operating system.
    pub fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }

    /// Deletes the oldest files beyond `max_files`.
    fn prune(&self) -> std::io::Result<()> {
        let files = list(&self.dir)?;
        let excess = files.len().saturating_sub(self.max_files);
        for (_, path) in &files[..excess] {
            std::fs::remove_file(path)?;
        }
        Ok(())
    }
}

fn create(dir: &Path, seq: u64) -> std::io::Result<File> {
    OpenOptions::new()
        .create_new(true)
        .append(true)
        .open(dir.join(name(seq)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotates_at_the_size_cap_and_keeps_the_newest_files() {
        let dir = tempfile::tempdir().unwrap();
        let mut f = RotatingFile::open(dir.path(), 20, 3).unwrap();
        for i in 0..10 {
            f.write_line(format!("line {i:03} ....\n").as_bytes())
                .unwrap();
        }
        f.flush().unwrap();
        // 15-byte lines, one per 20-byte file: ten files written, the newest three kept.
        let files = list(dir.path()).unwrap();
        assert_eq!(
            files.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
            [8, 9, 10]
        );
        let last = std::fs::read_to_string(&files[2].1).unwrap();
        assert_eq!(last, "line 009 ....\n");
        drop(f);
        // A new process starts after the newest file and never appends to it.
        let mut g = RotatingFile::open(dir.path(), 1000, 3).unwrap();
        g.write_line(b"a\n").unwrap();
        g.write_line(b"b\n").unwrap();
        g.flush().unwrap();
        let files = list(dir.path()).unwrap();
        assert_eq!(
            files.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
            [9, 10, 11]
        );
        assert_eq!(std::fs::read_to_string(&files[2].1).unwrap(), "a\nb\n");
        assert!(files[2].1.ends_with("payload-0000000011.jsonl"));
    }
}
