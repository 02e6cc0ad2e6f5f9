//! Signed prediction tokens: the `prediction_id` of every response.
//!
//! A token carries everything the live monitor needs to score a label that arrives later (model,
//! model version, time, predicted class, calibrated confidence and, for models with few classes,
//! the calibrated probability vector), signed with HMAC-SHA256. Any replica that shares the
//! `--feedback-key` can therefore accept the label with no shared state (issue 5).
//!
//! Wire format (then base64url without padding):
//! `version u8 | nonce u64 | issued_at_s u64 | class u16 | confidence f64 | model_len u8 | model |
//!  version_len u8 | model_version | k u8 | k x f64 probabilities | set | mac (16 bytes)`,
//! little-endian. `set` (version 2, issue 22) is `flags u8` (bit 0: a conformal set was served,
//! bit 1: its level came from adaptive conformal inference, bit 2: stored as a bitmask) and, with
//! a set, `alpha f64` then either `n u16 | n x u16 class indices` or `K u16 | ceil(K/8) bytes`,
//! whichever is shorter: the monitor needs the set to tell, when the label arrives, whether it
//! was covered. Version 1 tokens (no `set`) still verify. Confidence and probabilities stay f64, bit for bit what the server computed, so
//! that live metrics equal `caliper eval` on the same predictions exactly (issue 5's test).

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use sha2::Sha256;

const VERSION: u8 = 2;
/// Tokens issued before the conformal set was carried; still accepted.
const VERSION_NO_SET: u8 = 1;
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
    /// The conformal prediction set served with it, when there was one.
    pub set: Option<ServedSet>,
}

/// The conformal set served with a prediction, as the token carries it.
#[derive(Debug, Clone, PartialEq)]
pub struct ServedSet {
    /// Class indices in the set, ascending.
    pub classes: Vec<u16>,
    /// The miscoverage level it was built at.
    pub alpha: f64,
    /// Whether that level came from adaptive conformal inference (then the label updates it).
    pub adaptive: bool,
    /// Classes of the model (for the bitmask form of large sets).
    pub num_classes: u16,
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
    /// HMAC-SHA256 with the key already absorbed: each token clones it rather than hashing the
    /// padded key twice again (two of a 10-class token's six SHA-256 blocks).
    keyed: Hmac<Sha256>,
}

/// What [`TokenSigner::sign`] encodes, borrowed: a token issued for a fresh prediction copies
/// nothing into a [`PredictionToken`] first.
struct Claims<'a> {
    nonce: u64,
    issued_at_s: u64,
    model: &'a str,
    model_version: &'a str,
    class_index: u16,
    confidence: f64,
    probabilities: Option<&'a [f64]>,
    set: Option<&'a ServedSet>,
}

impl std::fmt::Debug for TokenSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenSigner { key: <redacted> }")
    }
}

impl TokenSigner {
    /// A signer with the given secret key.
    pub fn new(key: &[u8]) -> Self {
        TokenSigner {
            keyed: Hmac::<Sha256>::new_from_slice(key).expect("HMAC accepts any key length"),
        }
    }

    /// A signer with a random key (tokens then only verify in this process).
    pub fn random() -> Self {
        let key: [u8; 32] = rand::random();
        TokenSigner::new(&key)
    }

    fn mac(&self, payload: &[u8]) -> [u8; MAC_LEN] {
        let mut mac = self.keyed.clone();
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
        set: Option<ServedSet>,
    ) -> String {
        let embed = probabilities.len() <= MAX_EMBEDDED_CLASSES;
        self.sign_claims(&Claims {
            nonce: rand::random(),
            issued_at_s: super::now_s(),
            model,
            model_version,
            class_index: class_index as u16,
            confidence,
            probabilities: embed.then_some(probabilities),
            set: set.as_ref(),
        })
    }

    /// Encodes and signs a token.
    pub fn sign(&self, t: &PredictionToken) -> String {
        self.sign_claims(&Claims {
            nonce: t.nonce,
            issued_at_s: t.issued_at_s,
            model: &t.model,
            model_version: &t.model_version,
            class_index: t.class_index,
            confidence: t.confidence,
            probabilities: t.probabilities.as_deref(),
            set: t.set.as_ref(),
        })
    }

    fn sign_claims(&self, t: &Claims<'_>) -> String {
        // Sized for the whole token at once (it grew twice for a 10-class model): the fixed
        // fields, the two strings, the probabilities, the set as a list (a bitmask is only
        // chosen when shorter), the MAC.
        let strings = t.model.len().min(255) + t.model_version.len().min(255);
        let probabilities = 8 * t.probabilities.map_or(0, <[f64]>::len);
        let set = t.set.map_or(0, |s| 2 * s.classes.len());
        let mut buf = Vec::with_capacity(64 + strings + probabilities + set + MAC_LEN);
        buf.push(VERSION);
        buf.extend_from_slice(&t.nonce.to_le_bytes());
        buf.extend_from_slice(&t.issued_at_s.to_le_bytes());
        buf.extend_from_slice(&t.class_index.to_le_bytes());
        buf.extend_from_slice(&t.confidence.to_le_bytes());
        push_short_str(&mut buf, t.model);
        push_short_str(&mut buf, t.model_version);
        match t.probabilities {
            Some(p) if p.len() <= MAX_EMBEDDED_CLASSES => {
                buf.push(p.len() as u8);
                p.iter()
                    .for_each(|v| buf.extend_from_slice(&v.to_le_bytes()));
            }
            _ => buf.push(0),
        }
        push_set(&mut buf, t.set);
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
        let mut check = self.keyed.clone();
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
    // The version byte and the nonce are the first 9 bytes: the first 12 characters, decoded
    // on their own (no copy of the whole token).
    let head = token.trim().get(..12)?;
    let mut raw = [0u8; 9];
    let n = URL_SAFE_NO_PAD.decode_slice(head, &mut raw).ok()?;
    if n != 9 || raw[0] != VERSION {
        return None;
    }
    Some(u64::from_le_bytes(raw[1..].try_into().ok()?))
}

fn push_set(buf: &mut Vec<u8>, set: Option<&ServedSet>) {
    let Some(set) = set else {
        buf.push(0);
        return;
    };
    let mask_len = usize::from(set.num_classes).div_ceil(8);
    let bitmask = 2 + mask_len < 2 + 2 * set.classes.len()
        && set.classes.iter().all(|&c| c < set.num_classes);
    buf.push(1 | (u8::from(set.adaptive) << 1) | (u8::from(bitmask) << 2));
    buf.extend_from_slice(&set.alpha.to_le_bytes());
    if bitmask {
        buf.extend_from_slice(&set.num_classes.to_le_bytes());
        let mut mask = vec![0u8; mask_len];
        for &c in &set.classes {
            mask[usize::from(c) / 8] |= 1 << (c % 8);
        }
        buf.extend_from_slice(&mask);
    } else {
        let n = u16::try_from(set.classes.len()).unwrap_or(u16::MAX);
        buf.extend_from_slice(&n.to_le_bytes());
        for &c in set.classes.iter().take(usize::from(n)) {
            buf.extend_from_slice(&c.to_le_bytes());
        }
    }
}

fn read_set(r: &mut Reader<'_>, num_classes: u16) -> Option<Option<ServedSet>> {
    let flags = r.array::<1>()?[0];
    if flags & 1 == 0 {
        return Some(None);
    }
    let alpha = f64::from_le_bytes(r.array()?);
    let mut num_classes = num_classes;
    let classes = if flags & 4 != 0 {
        let k = u16::from_le_bytes(r.array()?);
        num_classes = k;
        let mask = r.take(usize::from(k).div_ceil(8))?;
        (0..k)
            .filter(|&c| mask[usize::from(c) / 8] & (1 << (c % 8)) != 0)
            .collect()
    } else {
        let n = u16::from_le_bytes(r.array()?);
        (0..n)
            .map(|_| r.array().map(u16::from_le_bytes))
            .collect::<Option<Vec<u16>>>()?
    };
    Some(Some(ServedSet {
        classes,
        alpha,
        adaptive: flags & 2 != 0,
        num_classes,
    }))
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
    let version = r.array::<1>()?[0];
    if version != VERSION && version != VERSION_NO_SET {
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
    let set = if version == VERSION {
        read_set(&mut r, k as u16)?
    } else {
        None
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
        set,
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
            set: None,
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
        assert_eq!(nonce_of("AgAA"), None);
        // `issue` encodes its borrowed fields as `sign` does an owned token.
        let set = ServedSet {
            classes: vec![1, 3],
            alpha: 0.1,
            adaptive: true,
            num_classes: 4,
        };
        let probs = [0.1, 0.2, 0.3, 0.4];
        let issued = s.issue("m\u{e9}", "7", 3, 0.4, &probs, Some(set.clone()));
        let back = s.verify(&issued, super::super::now_s(), 60).unwrap();
        assert_eq!(nonce_of(&issued), Some(back.nonce));
        let want = PredictionToken {
            nonce: back.nonce,
            issued_at_s: back.issued_at_s,
            model: "m\u{e9}".into(),
            model_version: "7".into(),
            class_index: 3,
            confidence: 0.4,
            probabilities: Some(probs.to_vec()),
            set: Some(set),
        };
        assert_eq!(back, want);
        assert_eq!(s.sign(&want), issued);
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
    fn served_sets_round_trip_as_lists_or_bitmasks_and_version_1_still_verifies() {
        let s = TokenSigner::new(b"k");
        let small = ServedSet {
            classes: vec![3, 7],
            alpha: 0.1,
            adaptive: true,
            num_classes: 10,
        };
        // 600 of 1,000 classes: the bitmask (127 bytes) is shorter than the list (1,202).
        let large = ServedSet {
            classes: (0..600).collect(),
            alpha: 0.0123,
            adaptive: false,
            num_classes: 1_000,
        };
        for set in [small, large] {
            let mut t = token(None);
            t.set = Some(set.clone());
            let back = s.verify(&s.sign(&t), 1_000, 60).unwrap().set.unwrap();
            assert_eq!(
                (back.classes, back.alpha, back.adaptive),
                (set.classes, set.alpha, set.adaptive)
            );
        }
        // A version-1 token (no set byte), signed as the previous build did.
        let mut buf = vec![VERSION_NO_SET];
        buf.extend_from_slice(&42u64.to_le_bytes());
        buf.extend_from_slice(&1_000u64.to_le_bytes());
        buf.extend_from_slice(&7u16.to_le_bytes());
        buf.extend_from_slice(&0.5f64.to_le_bytes());
        push_short_str(&mut buf, "mnist");
        push_short_str(&mut buf, "1");
        buf.push(0);
        let mac = s.mac(&buf);
        buf.extend_from_slice(&mac);
        let old = s.verify(&URL_SAFE_NO_PAD.encode(buf), 1_000, 60).unwrap();
        assert_eq!((old.class_index, old.set), (7, None));
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
