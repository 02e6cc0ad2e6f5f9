//! The binary layout of KServe V2 / Triton tensors, shared by gRPC's `raw_input_contents` /
//! `raw_output_contents` and HTTP's binary tensor data extension: little-endian, row-major, no
//! padding; BOOL one byte per element; BYTES each element as a 4-byte little-endian length
//! followed by its bytes. Sizes come from clients, so all arithmetic on them is checked.

use bytes::Bytes;

/// FP32 elements from their binary form, refusing a size that does not match `count` elements
/// and values that are not finite (they would reach the model as NaN or infinity).
pub fn decode_fp32(raw: &[u8], count: usize) -> Result<Vec<f32>, String> {
    let want = count
        .checked_mul(4)
        .ok_or("the tensor holds too many elements")?;
    if raw.len() != want {
        return Err(format!(
            "the data is {} bytes but {count} FP32 elements take {want}",
            raw.len()
        ));
    }
    raw.chunks_exact(4)
        .enumerate()
        .map(|(i, b)| {
            let x = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            if x.is_finite() {
                Ok(x)
            } else {
                Err(format!("element {i} is {x}, not a finite number"))
            }
        })
        .collect()
}

/// The elements of a BYTES tensor in the binary form, as slices of `raw` (no copy).
pub fn decode_bytes(raw: &Bytes) -> Result<Vec<Bytes>, String> {
    let mut out = Vec::new();
    let mut at = 0usize;
    while at < raw.len() {
        let i = out.len();
        let Some(prefix) = raw.get(at..at + 4) else {
            return Err(format!(
                "BYTES element {i} at byte {at}: {} bytes left, a 4-byte length prefix needed",
                raw.len() - at
            ));
        };
        let len = u32::from_le_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]) as usize;
        let start = at + 4;
        let left = raw.len() - start;
        if len > left {
            return Err(format!(
                "BYTES element {i} at byte {at} declares {len} bytes but only {left} follow"
            ));
        }
        out.push(raw.slice(start..start + len));
        at = start + len;
    }
    Ok(out)
}

/// FP32 elements in the binary form.
pub fn encode_fp32(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// BOOL elements in the binary form (one byte each, 0 or 1).
pub fn encode_bool(values: &[bool]) -> Vec<u8> {
    values.iter().map(|&b| u8::from(b)).collect()
}

/// BYTES elements in the binary form.
pub fn encode_bytes<'a>(items: impl IntoIterator<Item = &'a [u8]>) -> Vec<u8> {
    let mut out = Vec::new();
    for b in items {
        // Labels and prediction ids are far below 4 GiB; saturate rather than wrap regardless.
        let len = u32::try_from(b.len()).unwrap_or(u32::MAX);
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&b[..len as usize]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fp32_is_little_endian_sized_and_finite() {
        // 1.5 = 0x3FC00000 and -2.0 = 0xC0000000, least significant byte first.
        let raw = [0x00, 0x00, 0xC0, 0x3F, 0x00, 0x00, 0x00, 0xC0];
        assert_eq!(decode_fp32(&raw, 2).unwrap(), [1.5, -2.0]);
        assert_eq!(encode_fp32(&[1.5, -2.0]), raw);
        let e = decode_fp32(&raw, 3).unwrap_err();
        assert!(e.contains("8 bytes but 3 FP32 elements take 12"), "{e}");
        assert!(decode_fp32(&raw[..7], 2).is_err());
        let nan = encode_fp32(&[0.0, f32::NAN]);
        assert!(decode_fp32(&nan, 2).unwrap_err().contains("element 1"));
        let inf = encode_fp32(&[f32::INFINITY]);
        assert!(decode_fp32(&inf, 1).is_err());
        // A count whose byte size overflows is refused, not wrapped to a small size.
        assert!(decode_fp32(&[], usize::MAX).is_err());
        assert!(decode_fp32(&[], usize::MAX / 4 + 1).is_err());
        assert_eq!(decode_fp32(&[], 0).unwrap(), Vec::<f32>::new());
    }

    #[test]
    fn bytes_elements_round_trip_and_truncation_is_refused() {
        let items: [&[u8]; 3] = [b"png", b"", b"\x00\xff"];
        let raw = Bytes::from(encode_bytes(items));
        // Triton's layout by hand: 3,0,0,0,'p','n','g', 0,0,0,0, 2,0,0,0,0x00,0xff.
        assert_eq!(
            &raw[..],
            b"\x03\x00\x00\x00png\x00\x00\x00\x00\x02\x00\x00\x00\x00\xff"
        );
        let back = decode_bytes(&raw).unwrap();
        assert_eq!(back.iter().map(|b| &b[..]).collect::<Vec<_>>(), items);
        let e = decode_bytes(&raw.slice(..raw.len() - 1)).unwrap_err();
        assert!(
            e.contains("element 2 at byte 11 declares 2 bytes but only 1 follow"),
            "{e}"
        );
        let e = decode_bytes(&raw.slice(..9)).unwrap_err();
        assert!(e.contains("element 1 at byte 7: 2 bytes left"), "{e}");
        assert!(decode_bytes(&Bytes::new()).unwrap().is_empty());
        // A length prefix near 4 GiB on a short buffer is refused, not trusted.
        let huge = Bytes::from_static(b"\xff\xff\xff\xffab");
        assert!(
            decode_bytes(&huge)
                .unwrap_err()
                .contains("declares 4294967295")
        );
    }

    #[test]
    fn bool_is_one_byte_per_element() {
        assert_eq!(encode_bool(&[true, false, true]), [1, 0, 1]);
    }
}
