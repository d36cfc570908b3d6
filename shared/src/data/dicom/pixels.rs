//! Stored samples → modality values (f32), one buffer per frame.
//!
//! dicom-pixeldata turns every supported transfer syntax into native
//! little-endian samples; this module checks there are as many as the header
//! promises (a short buffer is truncation, never zero-padding), masks or
//! sign-extends to BitsStored, and applies each frame's rescale. It does its
//! own conversion instead of dicom-pixeldata's `to_vec` so that per-frame
//! rescale from functional groups and the length check are under our control.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;

use dicom_dictionary_std::tags;
use dicom_object::DefaultDicomObject;
use dicom_pixeldata::PixelDecoder;

use super::error::DicomError;
use super::header::{InstanceHeader, PixelFormat, Rescale};

/// Decoded pixel data above this size is refused before decoding starts.
pub const MAX_DECODED_BYTES: u64 = 1 << 31;

/// Decodes every frame of `file` into row-major f32 modality values.
pub(crate) fn decode_frames(
    path: &Path,
    file: &DefaultDicomObject,
    header: &InstanceHeader,
) -> Result<Vec<Vec<f32>>, DicomError> {
    if file.get(tags::PIXEL_DATA).is_none() {
        return Err(DicomError::NoPixelData {
            path: path.to_path_buf(),
        });
    }
    let bytes_per_sample = u64::from(header.format.bits_allocated / 8);
    let frame_len = u64::from(header.rows) * u64::from(header.cols);
    let expected = frame_len * header.frames.len() as u64 * bytes_per_sample;
    if expected > MAX_DECODED_BYTES {
        return Err(DicomError::PixelDataTooLarge {
            path: path.to_path_buf(),
            bytes: expected,
            limit: MAX_DECODED_BYTES,
        });
    }

    // Third-party codecs index into untrusted buffers; a panic in one must
    // become this file's error, not the end of the ingestion run.
    let decoded = catch_unwind(AssertUnwindSafe(|| {
        file.decode_pixel_data().map(|d| d.into_data())
    }))
    .map_err(|_| DicomError::Decode {
        path: path.to_path_buf(),
        reason: "the codec panicked on this data".into(),
    })?
    .map_err(|e| DicomError::Decode {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;

    if (decoded.len() as u64) < expected {
        return Err(DicomError::TruncatedPixelData {
            path: path.to_path_buf(),
            expected,
            actual: decoded.len() as u64,
        });
    }

    let frame_bytes = (frame_len * bytes_per_sample) as usize;
    Ok(header
        .frames
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let start = i * frame_bytes;
            convert(
                &decoded[start..start + frame_bytes],
                header.format,
                f.rescale,
            )
        })
        .collect())
}

/// Converts one frame of little-endian stored samples.
pub(crate) fn convert(bytes: &[u8], format: PixelFormat, rescale: Rescale) -> Vec<f32> {
    let bits = u32::from(format.bits_stored);
    let alloc = u32::from(format.bits_allocated);
    // Stored values live in the low `bits` bits (HighBit = BitsStored − 1 in
    // every MR object we know of); the rest may hold overlay bits or garbage.
    let interpret = |raw: u32| -> f64 {
        if format.signed {
            let shift = 32 - bits;
            f64::from(((raw << shift) as i32) >> shift)
        } else if bits == 32 {
            f64::from(raw)
        } else {
            f64::from(raw & ((1u32 << bits) - 1))
        }
    };
    let apply = |v: f64| (v * rescale.slope + rescale.intercept) as f32;
    match alloc {
        8 => bytes
            .iter()
            .map(|&b| apply(interpret(u32::from(b))))
            .collect(),
        16 => bytes
            .chunks_exact(2)
            .map(|c| apply(interpret(u32::from(u16::from_le_bytes([c[0], c[1]])))))
            .collect(),
        _ => bytes
            .chunks_exact(4)
            .map(|c| apply(interpret(u32::from_le_bytes([c[0], c[1], c[2], c[3]]))))
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fmt(bits_allocated: u16, bits_stored: u16, signed: bool) -> PixelFormat {
        PixelFormat {
            bits_allocated,
            bits_stored,
            signed,
        }
    }

    #[test]
    fn signed_12_bit_is_sign_extended() {
        // 0x0FFF in 12 bits is −1; the high nibble is ignored.
        let v = convert(
            &[0xFF, 0xFF, 0x01, 0x00],
            fmt(16, 12, true),
            Rescale::IDENTITY,
        );
        assert_eq!(v, vec![-1.0, 1.0]);
    }

    #[test]
    fn unsigned_masks_unused_bits() {
        let v = convert(&[0xFF, 0xFF], fmt(16, 12, false), Rescale::IDENTITY);
        assert_eq!(v, vec![4095.0]);
    }

    #[test]
    fn eight_bit_signed_and_rescale() {
        let r = Rescale {
            slope: 2.0,
            intercept: -1.0,
        };
        let v = convert(&[0x80, 0x7F], fmt(8, 8, true), r);
        assert_eq!(v, vec![-257.0, 253.0]);
    }

    #[test]
    fn thirty_two_bit_unsigned() {
        let v = convert(
            &u32::MAX.to_le_bytes(),
            fmt(32, 32, false),
            Rescale::IDENTITY,
        );
        assert_eq!(v, vec![u32::MAX as f32]);
    }
}
