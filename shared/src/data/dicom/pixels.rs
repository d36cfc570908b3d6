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

const RLE_LOSSLESS: &str = "1.2.840.10008.1.2.5";

/// Checks each RLE Lossless fragment's header (PS3.5 G.5: 64 bytes, a
/// segment count of 1 to 15, then the offsets). dicom-rs allocates the count
/// it reads there before checking the fragment is long enough to hold that
/// many offsets, so four corrupt bytes could ask for 16 GiB.
fn check_rle_headers(path: &Path, file: &DefaultDicomObject) -> Result<(), DicomError> {
    let Some(fragments) = file
        .get(tags::PIXEL_DATA)
        .and_then(|e| e.value().fragments())
    else {
        return Ok(());
    };
    for (i, f) in fragments.iter().enumerate() {
        let reason = if f.len() < 64 {
            format!(
                "RLE fragment {i} is {} bytes, shorter than its 64-byte header",
                f.len()
            )
        } else {
            let segments = u32::from_le_bytes([f[0], f[1], f[2], f[3]]);
            if (1..=15).contains(&segments) {
                continue;
            }
            format!("RLE fragment {i} declares {segments} segments (1 to 15 allowed)")
        };
        return Err(DicomError::Decode {
            path: path.to_path_buf(),
            reason,
        });
    }
    Ok(())
}

/// The transfer syntaxes dicom-rs decodes with its JPEG 2000 adapter
/// (Part 1, Part 2 and High-Throughput; lossless and lossy).
fn is_jpeg_2000(uid: &str) -> bool {
    matches!(
        uid,
        "1.2.840.10008.1.2.4.90"
            | "1.2.840.10008.1.2.4.91"
            | "1.2.840.10008.1.2.4.92"
            | "1.2.840.10008.1.2.4.93"
            | "1.2.840.10008.1.2.4.201"
            | "1.2.840.10008.1.2.4.202"
            | "1.2.840.10008.1.2.4.203"
    )
}

/// Checks JPEG 2000 pixel data against the header before decoding: the
/// first fragment must start a codestream (SOC, then SIZ: PS3.5 A.4.4 wants
/// the bare codestream), and every codestream must hold a Columns × Rows
/// greyscale image. dicom-rs sizes its output from the header and copies
/// whatever the decoder produced into it without comparing: a larger image
/// panics, a smaller one (or none, from bytes that are not a codestream)
/// silently leaves the rest of the frame zero.
fn check_j2k_sizes(
    path: &Path,
    file: &DefaultDicomObject,
    header: &InstanceHeader,
) -> Result<(), DicomError> {
    let Some(fragments) = file
        .get(tags::PIXEL_DATA)
        .and_then(|e| e.value().fragments())
    else {
        return Ok(());
    };
    let be32 = |f: &[u8], at: usize| u32::from_be_bytes([f[at], f[at + 1], f[at + 2], f[at + 3]]);
    for (i, f) in fragments.iter().enumerate() {
        // Later fragments may continue a frame's codestream.
        let reason = if !f.starts_with(&[0xFF, 0x4F, 0xFF, 0x51]) {
            if i > 0 {
                continue;
            }
            "JPEG 2000 pixel data does not start with a codestream (SOC, SIZ)".to_string()
        } else if f.len() < 42 {
            // SOC, SIZ, Lsiz, Rsiz, X/Ysiz, X/YOsiz, X/YTsiz, X/YTOsiz, Csiz.
            format!("JPEG 2000 fragment {i} ends inside its SIZ segment")
        } else {
            let width = be32(f, 8).saturating_sub(be32(f, 16));
            let height = be32(f, 12).saturating_sub(be32(f, 20));
            let components = u16::from_be_bytes([f[40], f[41]]);
            if (width, height, components) == (header.cols, header.rows, 1) {
                continue;
            }
            format!(
                "JPEG 2000 fragment {i} holds a {width}x{height} image with {components} components; \
                 the header says {}x{} with 1",
                header.cols, header.rows
            )
        };
        return Err(DicomError::Decode {
            path: path.to_path_buf(),
            reason,
        });
    }
    Ok(())
}

/// Compressed data per frame above which a constant decoded frame cannot be
/// genuine, for RLE and JPEG 2000: RLE stores a run of up to 128 equal bytes
/// in 2, and a constant image leaves every JPEG 2000 code-block empty except
/// the few of the lowest-resolution band, so either fits a constant frame in a
/// small fraction of its raw size (here: an eighth) or, for tiny frames,
/// within the floor. (JPEG lossless needs at least a bit per sample, so it is
/// not checked.)
const CONSTANT_FRAME_MAX_RATIO: usize = 8;
const CONSTANT_FRAME_FLOOR: usize = 1024;

/// Refuses an RLE or JPEG 2000 frame that decoded to one repeated sample from
/// far more data than a constant frame needs. Decoders are lenient about
/// corrupt entropy-coded data: openjp2, for one, decodes a tile whose first
/// packet bytes were zeroed to an all-zero image without an error, even in
/// its strict mode.
fn check_not_blanked(
    path: &Path,
    file: &DefaultDicomObject,
    decoded: &[u8],
    frame_bytes: usize,
    sample_bytes: usize,
) -> Result<(), DicomError> {
    let Some(fragments) = file
        .get(tags::PIXEL_DATA)
        .and_then(|e| e.value().fragments())
    else {
        return Ok(());
    };
    if frame_bytes == 0 {
        return Ok(());
    }
    let frames = decoded.len() / frame_bytes;
    let compressed: usize = fragments.iter().map(Vec::len).sum();
    let per_frame = compressed / frames.max(1);
    if per_frame <= CONSTANT_FRAME_FLOOR.max(frame_bytes / CONSTANT_FRAME_MAX_RATIO) {
        return Ok(());
    }
    for (i, frame) in decoded.chunks_exact(frame_bytes).enumerate() {
        let first = &frame[..sample_bytes];
        if frame.chunks_exact(sample_bytes).all(|s| s == first) {
            return Err(DicomError::Decode {
                path: path.to_path_buf(),
                reason: format!(
                    "frame {i} decoded to a single repeated value from about {per_frame} bytes \
                     of compressed data; the codec must have skipped corrupt data"
                ),
            });
        }
    }
    Ok(())
}

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

    if header.transfer_syntax == RLE_LOSSLESS {
        check_rle_headers(path, file)?;
    }
    if is_jpeg_2000(&header.transfer_syntax) {
        check_j2k_sizes(path, file, header)?;
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
    if header.transfer_syntax == RLE_LOSSLESS || is_jpeg_2000(&header.transfer_syntax) {
        check_not_blanked(path, file, &decoded, frame_bytes, bytes_per_sample as usize)?;
    }
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
