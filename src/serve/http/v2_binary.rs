//! The KServe V2 / Triton *binary tensor data extension* over HTTP: tensors travel as raw bytes
//! after the JSON header of the body, whose length the `Inference-Header-Content-Length` header
//! gives. Inputs say `parameters.binary_data_size`; outputs are returned so when the request
//! output says `parameters.binary_data: true` or the request says
//! `parameters.binary_data_output: true` (what `tritonclient.http` sends by default).
//!
//! Layout (Triton's `docs/protocol/extension_binary_data.md`): little-endian, row-major, no
//! padding; BOOL one byte; BYTES each element as a 4-byte little-endian length and its bytes;
//! tensors in the order the JSON lists them. Everything here is checked arithmetic on sizes a
//! client chose: a wrong size is a 400 that says which size and what was expected.

use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;

use super::ApiError;

/// The header that gives the length of the JSON part of a body with binary tensors.
pub const HEADER_LENGTH: &str = "inference-header-content-length";

/// Splits a request body into its JSON header and its binary section, given the request's
/// `Inference-Header-Content-Length` (without one the whole body is JSON).
pub fn split_body(
    header_len: Option<&HeaderValue>,
    body: Bytes,
) -> Result<(Bytes, Bytes), ApiError> {
    let Some(v) = header_len else {
        return Ok((body, Bytes::new()));
    };
    let n: usize = v
        .to_str()
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .ok_or_else(|| {
            ApiError::BadRequest(format!(
                "Inference-Header-Content-Length {v:?} is not a byte count"
            ))
        })?;
    if n > body.len() {
        return Err(ApiError::BadRequest(format!(
            "Inference-Header-Content-Length is {n} but the body holds only {} bytes",
            body.len()
        )));
    }
    let binary = body.slice(n..);
    Ok((body.slice(..n), binary))
}

/// Hands out the binary section tensor by tensor, in request order.
pub struct BinarySection {
    rest: Bytes,
    consumed: usize,
}

impl BinarySection {
    /// The bytes after the JSON header.
    pub fn new(rest: Bytes) -> Self {
        Self { rest, consumed: 0 }
    }

    /// The next `size` bytes, for input `name`.
    pub fn take(&mut self, name: &str, size: u64) -> Result<Bytes, String> {
        let have = self.rest.len();
        match usize::try_from(size) {
            Ok(n) if n <= have => {
                self.consumed += n;
                Ok(self.rest.split_to(n))
            }
            _ => Err(format!(
                "binary_data_size of input {name:?} is {size} bytes but the binary section has \
                 only {have} bytes left after byte {} (truncated body, or a wrong \
                 Inference-Header-Content-Length)",
                self.consumed
            )),
        }
    }

    /// Fails when bytes are left over once every input took its share.
    pub fn finish(self) -> Result<(), String> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "{} bytes follow the binary tensor data that no input's binary_data_size \
                 accounts for",
                self.rest.len()
            ))
        }
    }
}

// The element layouts are the ones gRPC's raw contents use: one implementation, in `kserve`.
pub use crate::serve::kserve::raw::{decode_bytes, decode_fp32, encode_bytes};

/// A 200 response of a JSON header followed by binary tensor data, with the
/// `Inference-Header-Content-Length` a client needs to split it.
pub fn response(mut json: Vec<u8>, binary: &[Vec<u8>]) -> Response {
    let header_len = json.len();
    json.reserve_exact(binary.iter().map(Vec::len).sum());
    for b in binary {
        json.extend_from_slice(b);
    }
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            ),
            (
                header::HeaderName::from_static(HEADER_LENGTH),
                HeaderValue::from(header_len),
            ),
        ],
        json,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn length(len: &str) -> Option<HeaderValue> {
        Some(len.parse().unwrap())
    }

    #[test]
    fn splits_at_the_header_length_and_refuses_a_short_body() {
        let body = Bytes::from_static(b"{\"a\":1}\x01\x02");
        let (json, bin) = split_body(length("7").as_ref(), body.clone()).unwrap();
        assert_eq!((&json[..], &bin[..]), (&b"{\"a\":1}"[..], &[1u8, 2][..]));
        // No header: all JSON.
        let (json, bin) = split_body(None, body.clone()).unwrap();
        assert_eq!((json.len(), bin.len()), (9, 0));
        let e = split_body(length("10").as_ref(), body.clone()).unwrap_err();
        assert!(e.to_string().contains("holds only 9 bytes"), "{e}");
        let e = split_body(length("-1").as_ref(), body).unwrap_err();
        assert!(e.to_string().contains("not a byte count"), "{e}");
    }

    #[test]
    fn the_binary_section_is_taken_exactly() {
        let mut s = BinarySection::new(Bytes::from_static(&[1, 2, 3, 4, 5]));
        assert_eq!(&s.take("a", 2).unwrap()[..], &[1, 2]);
        let e = s.take("b", 4).unwrap_err();
        assert!(
            e.contains("\"b\" is 4 bytes") && e.contains("only 3 bytes left after byte 2"),
            "{e}"
        );
        assert_eq!(&s.take("b", 1).unwrap()[..], &[3]);
        let e = s.finish().unwrap_err();
        assert!(e.starts_with("2 bytes follow"), "{e}");
        assert!(
            BinarySection::new(Bytes::new())
                .take("x", u64::MAX)
                .is_err()
        );
        assert!(BinarySection::new(Bytes::new()).finish().is_ok());
    }
    // The element layouts (decode_fp32, decode_bytes, encode_bytes) are tested in kserve::raw.
}
