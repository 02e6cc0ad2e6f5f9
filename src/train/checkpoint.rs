//! Checkpoints: every state tensor (parameters, optimizer state, buffers) plus the loop's
//! position, in one file written by atomic rename. Layout: 8-byte little-endian header length,
//! a JSON header (loop position, tensor names, shapes, offsets), then the raw little-endian f32
//! data. Floats are stored bit for bit, so `--resume` continues exactly.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

/// Errors reading or writing a checkpoint.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// The file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not a checkpoint of this format.
    #[error("{path}: not a valid checkpoint: {reason}")]
    Invalid {
        /// The file.
        path: String,
        /// What is wrong.
        reason: String,
    },
}

/// Where the loop stood when the checkpoint was written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Position {
    /// Epochs completed.
    pub epoch: usize,
    /// Optimizer updates done.
    pub updates: u64,
    /// Best validation accuracy so far and its epoch (1-based), for best-checkpoint tracking.
    pub best_val_acc: f64,
    /// Epoch of the best validation accuracy.
    pub best_epoch: usize,
    /// A fingerprint of the configuration, so that a resume with other settings is refused.
    pub config: String,
}

#[derive(Debug, Serialize, Deserialize)]
struct Header {
    position: Position,
    tensors: Vec<(String, usize)>,
}

/// A loaded checkpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct Checkpoint {
    /// Loop position.
    pub position: Position,
    /// Every tensor by name.
    pub values: BTreeMap<String, Vec<f32>>,
}

impl Checkpoint {
    /// Writes the checkpoint atomically.
    pub fn save(&self, path: &Path) -> Result<(), CheckpointError> {
        let header = Header {
            position: self.position.clone(),
            tensors: self
                .values
                .iter()
                .map(|(k, v)| (k.clone(), v.len()))
                .collect(),
        };
        let h = serde_json::to_vec(&header).map_err(|e| CheckpointError::Invalid {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        let total: usize = self.values.values().map(Vec::len).sum();
        let mut bytes = Vec::with_capacity(8 + h.len() + 4 * total);
        bytes.extend_from_slice(&(h.len() as u64).to_le_bytes());
        bytes.extend_from_slice(&h);
        for v in self.values.values() {
            bytes.extend(v.iter().flat_map(|f| f.to_le_bytes()));
        }
        crate::fsutil::write_atomic(path, &bytes).map_err(|source| CheckpointError::Io {
            path: path.display().to_string(),
            source,
        })
    }

    /// Reads a checkpoint.
    pub fn load(path: &Path) -> Result<Checkpoint, CheckpointError> {
        let shown = path.display().to_string();
        let bytes = std::fs::read(path).map_err(|source| CheckpointError::Io {
            path: shown.clone(),
            source,
        })?;
        let bad = |reason: &str| CheckpointError::Invalid {
            path: shown.clone(),
            reason: reason.into(),
        };
        let hl = bytes
            .get(..8)
            .map(|b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8])) as usize)
            .ok_or_else(|| bad("shorter than its header length"))?;
        let hb = bytes
            .get(8..8usize.saturating_add(hl))
            .ok_or_else(|| bad("truncated header"))?;
        let header: Header = serde_json::from_slice(hb).map_err(|e| bad(&e.to_string()))?;
        let mut off = 8 + hl;
        let mut values = BTreeMap::new();
        for (name, n) in header.tensors {
            let raw = bytes
                .get(off..off + 4 * n)
                .ok_or_else(|| bad("truncated data"))?;
            values.insert(
                name,
                raw.chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect(),
            );
            off += 4 * n;
        }
        if off != bytes.len() {
            return Err(bad("trailing bytes"));
        }
        Ok(Checkpoint {
            position: header.position,
            values,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_bit_for_bit_and_rejects_truncation() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.bin");
        let ck = Checkpoint {
            position: Position {
                epoch: 3,
                updates: 1234,
                best_val_acc: 0.5,
                best_epoch: 2,
                config: "x".into(),
            },
            values: [
                ("a".to_string(), vec![1.0f32, -0.0, f32::MIN_POSITIVE, 0.1]),
                ("b".to_string(), vec![]),
            ]
            .into(),
        };
        ck.save(&p).unwrap();
        let back = Checkpoint::load(&p).unwrap();
        assert_eq!(back, ck);
        assert!(back.values["a"][1].is_sign_negative());
        let bytes = std::fs::read(&p).unwrap();
        std::fs::write(&p, &bytes[..bytes.len() - 2]).unwrap();
        assert!(matches!(
            Checkpoint::load(&p),
            Err(CheckpointError::Invalid { .. })
        ));
        std::fs::write(&p, b"abc").unwrap();
        assert!(Checkpoint::load(&p).is_err());
    }
}
