//! Opening one file as a DICOM object, whatever the archive did to its start.
//!
//! Part 10 files begin with a 128-byte preamble and `DICM`, but PACS exports
//! and research archives routinely strip the preamble, the magic, or the whole
//! file meta group, and drop the `.dcm` extension. This module recognises all
//! four layouts from the first bytes, guards against impossible lengths, and
//! hands dicom-rs a stream it can parse.

use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::Path;

use dicom_dictionary_std::tags;
use dicom_encoding::TransferSyntaxIndex;
use dicom_object::file::ReadPreamble;
use dicom_object::meta::FileMetaTableBuilder;
use dicom_object::{DefaultDicomObject, InMemDicomObject, OpenFileOptions};
use dicom_transfer_syntax_registry::TransferSyntaxRegistry;

use super::error::DicomError;
use super::guard::{self, Encoding, Start, WalkError};

/// Files above this size are refused rather than read: the largest enhanced
/// MR objects are a few hundred MB, and a bound keeps a stray disk image from
/// exhausting memory.
pub const MAX_FILE_BYTES: u64 = 2 << 30;

/// How much of a file to parse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Depth {
    /// Stop before Pixel Data: enough to group, sort and validate a series.
    Header,
    /// Everything, for decoding.
    Full,
}

/// Where the parseable stream starts and what it lacks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Layout {
    /// Standard Part 10: `DICM` at byte 128.
    Preamble,
    /// `DICM` at byte 0.
    MagicOnly,
    /// A file meta group without `DICM` in front of it.
    MetaWithoutMagic,
    /// A bare data set with no meta group (ACR-NEMA style export).
    Bare(Encoding),
}

fn classify(path: &Path, head: &[u8]) -> Result<Layout, DicomError> {
    if head.len() >= 132 && &head[128..132] == b"DICM" {
        return Ok(Layout::Preamble);
    }
    if head.len() >= 4 && &head[..4] == b"DICM" {
        return Ok(Layout::MagicOnly);
    }
    if head.len() < 8 {
        return Err(DicomError::NotDicom {
            path: path.to_path_buf(),
            reason: format!("only {} bytes", head.len()),
        });
    }
    let group = u16::from_le_bytes([head[0], head[1]]);
    if group == 0x0002 {
        return Ok(Layout::MetaWithoutMagic);
    }
    // A bare data set starts with a low, even group number (0008 in practice).
    if group.is_multiple_of(2) && (0x0008..=0x0028).contains(&group) {
        let vr_like = head[4].is_ascii_uppercase() && head[5].is_ascii_uppercase();
        let enc = if vr_like && dicom_core::VR::from_binary([head[4], head[5]]).is_some() {
            Encoding::EXPLICIT_LE
        } else {
            Encoding::IMPLICIT_LE
        };
        return Ok(Layout::Bare(enc));
    }
    Err(DicomError::NotDicom {
        path: path.to_path_buf(),
        reason: "no DICM magic, no file meta group and no recognisable data set at the start"
            .into(),
    })
}

/// Opens `path`, tolerating a missing preamble, magic or meta group.
pub(crate) fn open(path: &Path, depth: Depth) -> Result<DefaultDicomObject, DicomError> {
    let mut file = File::open(path).map_err(|e| DicomError::io(path, e))?;
    let size = file.metadata().map_err(|e| DicomError::io(path, e))?.len();
    if size > MAX_FILE_BYTES {
        return Err(DicomError::FileTooLarge {
            path: path.to_path_buf(),
            size,
            limit: MAX_FILE_BYTES,
        });
    }
    let mut head = Vec::with_capacity(132);
    (&mut file)
        .take(132)
        .read_to_end(&mut head)
        .map_err(|e| DicomError::io(path, e))?;
    let layout = classify(path, &head)?;

    let start = match layout {
        Layout::Preamble => 132,
        Layout::MagicOnly => 4,
        Layout::MetaWithoutMagic | Layout::Bare(_) => 0,
    };
    let mut reader = BufReader::new(file);
    reader
        .seek(SeekFrom::Start(start))
        .map_err(|e| DicomError::io(path, e))?;
    let start = match layout {
        Layout::Bare(enc) => Start::DataSet(enc),
        _ => Start::Meta,
    };
    let pixel_end = match guard::check_lengths(&mut reader, size, start) {
        Ok(end) => end,
        // Pixel data longer than the file is the common truncated download.
        Err(WalkError::Oversized(o)) if o.tag == (0x7FE0, 0x0010) || o.tag.0 == 0xFFFE => {
            return Err(DicomError::TruncatedPixelData {
                path: path.to_path_buf(),
                expected: o.declared,
                actual: o.remaining,
            });
        }
        Err(WalkError::Oversized(o)) => {
            return Err(DicomError::DeclaredLengthTooLarge {
                path: path.to_path_buf(),
                group: o.tag.0,
                element: o.tag.1,
                offset: o.offset,
                declared: o.declared,
                remaining: o.remaining,
            });
        }
        Err(WalkError::InflatedTooLarge) => {
            return Err(DicomError::InflatedTooLarge {
                path: path.to_path_buf(),
                limit: guard::MAX_INFLATED_BYTES,
            });
        }
        Err(WalkError::Inflate(e)) => {
            return Err(DicomError::Unreadable {
                path: path.to_path_buf(),
                reason: format!("the deflated data set does not inflate: {e}"),
            });
        }
        // A short read inside a header: the parser below reports it precisely.
        Err(WalkError::ShortRead) => None,
    };

    let meta_start = match layout {
        Layout::Preamble => 128,
        _ => 0,
    };
    reader
        .seek(SeekFrom::Start(meta_start))
        .map_err(|e| DicomError::io(path, e))?;
    // The parser sees the file only up to the end of Pixel Data.
    let reader = reader.take(pixel_end.map_or(u64::MAX, |end| end - meta_start));

    let options = OpenFileOptions::new().read_preamble(ReadPreamble::Never);
    let options = match depth {
        Depth::Header => options.read_until(tags::PIXEL_DATA),
        Depth::Full => options,
    };
    let unreadable = |e: &dyn std::fmt::Display| DicomError::Unreadable {
        path: path.to_path_buf(),
        reason: e.to_string(),
    };
    match layout {
        Layout::Preamble | Layout::MagicOnly => {
            options.from_reader(reader).map_err(|e| unreadable(&e))
        }
        Layout::MetaWithoutMagic => options
            .from_reader((&b"DICM"[..]).chain(reader))
            .map_err(|e| unreadable(&e)),
        Layout::Bare(enc) => {
            let uid = if enc.explicit_vr {
                "1.2.840.10008.1.2.1"
            } else {
                "1.2.840.10008.1.2"
            };
            let ts = TransferSyntaxRegistry
                .get(uid)
                .ok_or_else(|| unreadable(&"built-in transfer syntax missing from registry"))?;
            let obj =
                InMemDicomObject::read_dataset_with_ts(reader, ts).map_err(|e| unreadable(&e))?;
            obj.with_meta(FileMetaTableBuilder::new().transfer_syntax(uid))
                .map_err(|e| unreadable(&e))
        }
    }
}
