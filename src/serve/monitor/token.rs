//! Signed prediction tokens: the `prediction_id` of every response.
//!
//! A token carries everything the live monitor needs to score a label that arrives later (model,
//! model version, time, predicted class, calibrated confidence and, for models with few classes,
//! the calibrated probability vector), signed with HMAC-SHA256. Any replica that shares the
//! `--feedback-key` can therefore accept the label with no shared state (issue 5).
//!
//! Wire format (then base64url without padding):
//! `version u8 | nonce u64 | issued_at_s u64 | class u16 | confidence f64 | model_len u8 | model |
//!  version_len u8 | model_version | k u8 | k x f64 probabilities | mac (16 bytes)`,
//! little-endian. Confidence and probabilities stay f64, bit for bit what the server computed, so
//! that live metrics equal `caliper eval` on the same predictions exactly (issue 5's test).

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use sha2::Sha256;

const VERSION: u8 = 1;
const MAC_LEN: usize = 16;
/// Probability vectors are embedded only up to this many classes, to keep tokens compact.
pub const MAX_EMBEDDED_CLASSES: usize = 16;

/// What a prediction token says about one prediction.
#[derive(Debug, Clone, PartialEq)]
pub struct PredictionToken {
    /// Random per prediction; identifies it for de-duplication.
    pub nonce: u64,
    /// Seconds since the Unix epoch when the prediction was made.
    pub issued_at_s: u64,
    /// Model name.
    pub model: String,
    /// Model version.
    pub model_version: String,
    /// Predicted class index.
    pub class_index: u16,
    /// Calibrated confidence of the predicted class.
    pub confidence: f64,
    /// Calibrated probabilities, when the model has at most [`MAX_EMBEDDED_CLASSES`] classes.
    pub probabilities: Option<Vec<f64>>,
}

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TokenError {
    /// Not base64, truncated, or an unknown format version.
    #[error("prediction_id is malformed")]
    Malformed,
    /// The signature does not match: tampered with, or issued by a server with another key.
    #[error(
        "prediction_id has an invalid signature (tampered, or issued with another feedback key)"
    )]
    BadSignature,
    /// Older than the accepted feedback age.
    #[error("prediction_id expired: issued {age_s} s ago, feedback is accepted for {max_age_s} s")]
    Expired { age_s: u64, max_age_s: u64 },
}

/// Signs and verifies tokens with one HMAC key.
#[derive(Clone)]
pub struct TokenSigner {
    key: Vec<u8>,
}

impl std::fmt::Debug for TokenSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenSigner { key: <redacted> }")
    }
}

impl TokenSigner {
    /// A signer with the given secret key.
    pub fn new(key: &[u8]) -> Self {
        TokenSigner { key: key.to_vec() }
    }

    /// A signer with a random key (tokens then only verify in this process).
    pub fn random() -> Self {
        let key: [u8; 32] = rand::random();
        TokenSigner::new(&key)
    }

    fn mac(&self, payload: &[u8]) -> [u8; MAC_LEN] {
        let mut mac =
            Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC accepts any key length");
        mac.update(payload);
        let full = mac.finalize().into_bytes();
        let mut out = [0u8; MAC_LEN];
        out.copy_from_slice(&full[..MAC_LEN]);
        out
    }

    /// The signed `prediction_id` of a prediction made now: a fresh nonce, the time, the model
    /// and the prediction (probabilities embedded up to [`MAX_EMBEDDED_CLASSES`] classes).
    pub fn issue(
        &self,
        model: &str,
        model_version: &str,
        class_index: usize,
        confidence: f64,
        probabilities: &[f64],
    ) -> String {
        let embed = probabilities.len() <= MAX_EMBEDDED_CLASSES;
        self.sign(&PredictionToken {
            nonce: rand::random(),
            issued_at_s: super::now_s(),
            model: model.to_string(),
            model_version: model_version.to_string(),
            class_index: class_index as u16,
            confidence,
            probabilities: embed.then(|| probabilities.to_vec()),
        })
    }

    /// Encodes and signs a token.
    pub fn sign(&self, t: &PredictionToken) -> String {
        let mut buf = Vec::with_capacity(64);
        buf.push(VERSION);
        buf.extend_from_slice(&t.nonce.to_le_bytes());
        buf.extend_from_slice(&t.issued_at_s.to_le_bytes());
        buf.extend_from_slice(&t.class_index.to_le_bytes());
        buf.extend_from_slice(&t.confidence.to_le_bytes());
        push_short_str(&mut buf, &t.model);
        push_short_str(&mut buf, &t.model_version);
        match &t.probabilities {
            Some(p) if p.len() <= MAX_EMBEDDED_CLASSES => {
                buf.push(p.len() as u8);
                p.iter()
                    .for_each(|v| buf.extend_from_slice(&v.to_le_bytes()));
            }
            _ => buf.push(0),
        }
        let mac = self.mac(&buf);
        buf.extend_from_slice(&mac);
        URL_SAFE_NO_PAD.encode(buf)
    }

    /// Checks the signature and the age, then decodes. `now_s` is the current Unix time.
    pub fn verify(
        &self,
        token: &str,
        now_s: u64,
        max_age_s: u64,
    ) -> Result<PredictionToken, TokenError> {
        let raw = URL_SAFE_NO_PAD
            .decode(token.trim())
            .map_err(|_| TokenError::Malformed)?;
        if raw.len() < 1 + MAC_LEN {
            return Err(TokenError::Malformed);
        }
        let (payload, mac) = raw.split_at(raw.len() - MAC_LEN);
        // Constant-time comparison through the hmac crate.
        let mut check =
            Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC accepts any key length");
        check.update(payload);
        check
            .verify_truncated_left(mac)
            .map_err(|_| TokenError::BadSignature)?;
        let t = decode_payload(payload).ok_or(TokenError::Malformed)?;
        let age_s = now_s.saturating_sub(t.issued_at_s);
        if age_s > max_age_s {
            return Err(TokenError::Expired { age_s, max_age_s });
        }
        Ok(t)
    }
}

/// The nonce of a token this server just issued, read without checking the signature: it keys
/// the prediction's logits in the recalibration store (`monitor::logits`). A label still has to
/// pass [`TokenSigner::verify`] before the nonce is looked up.
pub fn nonce_of(token: &str) -> Option<u64> {
    let raw = URL_SAFE_NO_PAD.decode(token.trim()).ok()?;
    if raw.first() != Some(&VERSION) {
        return None;
    }
    Some(u64::from_le_bytes(raw.get(1..9)?.try_into().ok()?))
}

fn push_short_str(buf: &mut Vec<u8>, s: &str) {
    // Model names and versions are short; longer ones are cut at a char boundary below 256 bytes.
    let mut end = s.len().min(255);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    buf.push(end as u8);
    buf.extend_from_slice(&s.as_bytes()[..end]);
}

/// A cursor over the payload; every read returns None past the end.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Some(head)
    }
    fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        self.take(N)?.try_into().ok()
    }
    fn short_str(&mut self) -> Option<String> {
        let n = self.array::<1>()?[0] as usize;
        String::from_utf8(self.take(n)?.to_vec()).ok()
    }
}

fn decode_payload(payload: &[u8]) -> Option<PredictionToken> {
    let mut r = Reader(payload);
    if r.array::<1>()?[0] != VERSION {
        return None;
    }
    let nonce = u64::from_le_bytes(r.array()?);
    let issued_at_s = u64::from_le_bytes(r.array()?);
    let class_index = u16::from_le_bytes(r.array()?);
    let confidence = f64::from_le_bytes(r.array()?);
    let model = r.short_str()?;
    let model_version = r.short_str()?;
    let k = r.array::<1>()?[0] as usize;
    let probabilities = if k == 0 {
        None
    } else {
        Some(
            (0..k)
                .map(|_| r.array().map(f64::from_le_bytes))
                .collect::<Option<Vec<f64>>>()?,
        )
    };
    if !r.0.is_empty() || !(0.0..=1.0).contains(&confidence) {
        return None;
    }
    Some(PredictionToken {
        nonce,
        issued_at_s,
        model,
        model_version,
        class_index,
        confidence,
        probabilities,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(probs: Option<Vec<f64>>) -> PredictionToken {
        PredictionToken {
            nonce: 42,
            issued_at_s: 1_000,
            model: "mnist".into(),
            model_version: "1".into(),
            class_index: 7,
            confidence: 0.912345678901234,
            probabilities: probs,
        }
    }

    #[test]
    fn round_trips_exactly() {
        let s = TokenSigner::new(b"k");
        for probs in [None, Some(vec![0.1, 0.9])] {
            let t = token(probs);
            let back = s.verify(&s.sign(&t), 1_010, 60).unwrap();
            assert_eq!(back, t);
            assert_eq!(nonce_of(&s.sign(&t)), Some(t.nonce));
        }
        assert_eq!(nonce_of("not a token"), None);
    }

    #[test]
    fn refuses_tampering_foreign_keys_expiry_and_garbage() {
        let s = TokenSigner::new(b"k");
        let good = s.sign(&token(None));
        // Flip one payload byte (decode, change, re-encode keeps the old MAC).
        let mut raw = URL_SAFE_NO_PAD.decode(&good).unwrap();
        raw[20] ^= 1;
        assert_eq!(
            s.verify(&URL_SAFE_NO_PAD.encode(&raw), 1_000, 60),
            Err(TokenError::BadSignature)
        );
        assert_eq!(
            TokenSigner::new(b"other").verify(&good, 1_000, 60),
            Err(TokenError::BadSignature)
        );
        assert_eq!(
            s.verify(&good, 1_061, 60),
            Err(TokenError::Expired {
                age_s: 61,
                max_age_s: 60
            })
        );
        assert_eq!(
            s.verify("not base64 !", 1_000, 60),
            Err(TokenError::Malformed)
        );
        assert_eq!(s.verify("", 1_000, 60), Err(TokenError::Malformed));
    }

    #[test]
    fn large_class_counts_omit_probabilities() {
        let s = TokenSigner::new(b"k");
        let t = token(Some(vec![0.01; 100]));
        assert_eq!(
            s.verify(&s.sign(&t), 1_000, 60).unwrap().probabilities,
            None
        );
    }

    #[test]
    fn debug_output_hides_the_key() {
        assert!(!format!("{:?}", TokenSigner::new(b"secret")).contains("secret"));
    }
}
