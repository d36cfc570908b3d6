//! A pre-parse walk over element headers that rejects impossible lengths.
//!
//! dicom-rs reserves and zero-fills a value's declared length before reading
//! it, so a 4-byte length field saying 0xFFFFFFF0 costs 4 GiB of memory before
//! the read fails. Hostile or corrupt files must not cost more memory than
//! their own size, so every defined length is checked against the bytes that
//! remain in the file before the real parser sees it. The walk only reads
//! headers (it seeks over values), so it is cheap even for large files.
//!
//! The walk follows the element stream the way dicom-rs reads it, not the way
//! the standard says it should be written, because it is the parser's
//! allocations it guards: an unknown VR is UN with a 4-byte length, any
//! undefined length other than Pixel Data opens a sequence of items in the
//! data set's own encoding, and the file meta group runs for as many bytes as
//! its group length says, whatever groups its tags claim.
//!
//! When the walk meets an encoding it cannot follow (deflated data sets,
//! unknown transfer syntaxes), it stops and lets the parser proceed: the guard
//! can only reject a file for a length that truly exceeds the file.

use std::io::{Read, Seek, SeekFrom};

use dicom_core::dictionary::{DataDictionary, DataDictionaryEntry, VirtualVr};
use dicom_core::{Tag, VR};
use dicom_dictionary_std::StandardDataDictionary;

const UNDEFINED: u32 = 0xFFFF_FFFF;
const ITEM: (u16, u16) = (0xFFFE, 0xE000);
const ITEM_END: (u16, u16) = (0xFFFE, 0xE00D);
const SEQ_END: (u16, u16) = (0xFFFE, 0xE0DD);
const PIXEL_DATA: (u16, u16) = (0x7FE0, 0x0010);

/// How the bytes after the file meta group are encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Encoding {
    pub explicit_vr: bool,
    pub big_endian: bool,
}

impl Encoding {
    pub const EXPLICIT_LE: Self = Self {
        explicit_vr: true,
        big_endian: false,
    };
    pub const IMPLICIT_LE: Self = Self {
        explicit_vr: false,
        big_endian: false,
    };

    /// The encoding of a transfer syntax, or `None` when the data set is not a
    /// plain element stream (deflate) or the syntax is unknown.
    pub fn of_transfer_syntax(uid: &str) -> Option<Self> {
        match uid.trim_end_matches(['\0', ' ']) {
            "1.2.840.10008.1.2" => Some(Self::IMPLICIT_LE),
            "1.2.840.10008.1.2.2" => Some(Self {
                explicit_vr: true,
                big_endian: true,
            }),
            "1.2.840.10008.1.2.1.99" => None,
            // Every other standard syntax (native explicit LE and all the
            // encapsulated ones) is explicit VR little endian.
            s if s.starts_with("1.2.840.10008.1.2") => Some(Self::EXPLICIT_LE),
            _ => None,
        }
    }
}

/// A declared length larger than the rest of the file.
#[derive(Debug)]
pub(crate) struct Oversized {
    pub tag: (u16, u16),
    pub offset: u64,
    pub declared: u64,
    pub remaining: u64,
}

/// Why the walk stopped early (harmless) or failed.
#[derive(Debug)]
pub(crate) enum WalkError {
    Oversized(Oversized),
    /// The file ended inside a header; the parser reports it precisely.
    ShortRead,
}

impl From<std::io::Error> for WalkError {
    fn from(_: std::io::Error) -> Self {
        WalkError::ShortRead
    }
}

/// Walks element headers from the reader's current position to `file_len`.
///
/// Returns the offset just past the top-level Pixel Data element when the walk
/// reached it, so the caller can stop the parser there: some exports pad
/// files after Pixel Data with bytes that are not elements.
///
/// The file meta group (group 0002) is always explicit VR little endian; the
/// rest uses `dataset`. `dataset` is `None` when only the meta group can be
/// followed; the transfer syntax found in the meta group replaces it when
/// `detect_ts` is set.
pub(crate) fn check_lengths<R: Read + Seek>(
    r: &mut R,
    file_len: u64,
    dataset: Option<Encoding>,
    detect_ts: bool,
) -> Result<Option<u64>, WalkError> {
    let mut enc = dataset;
    let mut pixel_fragments = false;
    // Where the file meta group ends, once its group length is read: the
    // meta reader takes everything before that as explicit VR little endian
    // meta elements, whatever group their tags claim.
    let mut meta_end: Option<u64> = None;
    // Open sequences: `Some(end)` for defined length, `None` for undefined.
    let mut open: Vec<Option<u64>> = Vec::new();
    loop {
        let pos = r.stream_position()?;
        while let Some(Some(end)) = open.last() {
            if pos >= *end {
                open.pop();
            } else {
                break;
            }
        }
        if pos + 8 > file_len {
            return Ok(None);
        }
        let mut head = [0u8; 8];
        r.read_exact(&mut head)?;
        // Meta elements are little endian whatever the data set uses.
        let le_group = u16::from_le_bytes([head[0], head[1]]);
        let in_meta = meta_end.map_or(le_group == 0x0002, |end| pos < end);
        let cur = if in_meta {
            Encoding::EXPLICIT_LE
        } else {
            match enc {
                Some(e) => e,
                None => return Ok(None),
            }
        };
        let u16_at = |b: [u8; 2]| {
            if cur.big_endian {
                u16::from_be_bytes(b)
            } else {
                u16::from_le_bytes(b)
            }
        };
        let u32_at = |b: [u8; 4]| {
            if cur.big_endian {
                u32::from_be_bytes(b)
            } else {
                u32::from_le_bytes(b)
            }
        };
        let tag = (u16_at([head[0], head[1]]), u16_at([head[2], head[3]]));

        // Item and delimiter headers have no VR in any encoding.
        if in_meta && tag.0 == 0xFFFE {
            // The meta reader skips such a header's value, or fails on an
            // undefined length.
            let len = u32_at([head[4], head[5], head[6], head[7]]);
            if len == UNDEFINED {
                return Ok(None);
            }
            check(tag, pos, len as u64, file_len - pos - 8)?;
            r.seek(SeekFrom::Current(len as i64))?;
            continue;
        }
        if tag.0 == 0xFFFE {
            let len = u32_at([head[4], head[5], head[6], head[7]]);
            if tag == ITEM_END {
                continue;
            }
            if tag == SEQ_END {
                if pixel_fragments {
                    pixel_fragments = false;
                    if open.is_empty() {
                        return Ok(Some(pos + 8));
                    }
                } else {
                    open.pop();
                }
                continue;
            }
            if tag == ITEM && len != UNDEFINED {
                check(tag, pos, len as u64, file_len - pos - 8)?;
                if pixel_fragments {
                    r.seek(SeekFrom::Current(len as i64))?;
                }
            }
            continue;
        }

        let (vr, len, header_len) = if cur.explicit_vr {
            // dicom-rs reads an unknown VR as UN (2 reserved bytes, then a
            // 4-byte length), so the walk must too: giving up here would let
            // the parser allocate whatever those 4 bytes say.
            let vr = VR::from_binary([head[4], head[5]]).unwrap_or(VR::UN);
            match vr {
                VR::OB
                | VR::OD
                | VR::OF
                | VR::OL
                | VR::OV
                | VR::OW
                | VR::SQ
                | VR::UC
                | VR::UN
                | VR::UR
                | VR::UT
                | VR::SV
                | VR::UV => {
                    let mut l = [0u8; 4];
                    r.read_exact(&mut l)?;
                    (Some(vr), u32_at(l), 12u64)
                }
                _ => (Some(vr), u16_at([head[6], head[7]]) as u32, 8u64),
            }
        } else {
            let vr = StandardDataDictionary
                .by_tag(Tag(tag.0, tag.1))
                .and_then(|e| match e.vr() {
                    VirtualVr::Exact(vr) => Some(vr),
                    _ => None,
                });
            (vr, u32_at([head[4], head[5], head[6], head[7]]), 8u64)
        };

        if in_meta {
            // Meta values are read or skipped whole, never descended into.
            if len == UNDEFINED {
                return Ok(None); // the meta reader refuses it
            }
            check(
                tag,
                pos,
                len as u64,
                file_len.saturating_sub(pos + header_len),
            )?;
            if tag == (0x0002, 0x0000) && len == 4 && meta_end.is_none() {
                let mut v = [0u8; 4];
                r.read_exact(&mut v)?;
                meta_end = Some(pos + header_len + 4 + u64::from(u32::from_le_bytes(v)));
                continue;
            }
            if tag == (0x0002, 0x0010) && detect_ts {
                let mut buf = vec![0u8; len as usize];
                r.read_exact(&mut buf)?;
                let uid = String::from_utf8_lossy(&buf);
                enc = Encoding::of_transfer_syntax(&uid);
                continue;
            }
            r.seek(SeekFrom::Current(len as i64))?;
            continue;
        }
        if len == UNDEFINED {
            if tag == PIXEL_DATA {
                pixel_fragments = true;
                continue;
            }
            // dicom-rs reads every other undefined-length element as a
            // sequence of items in the data set's own encoding (whatever its
            // VR), so the walk descends into it the same way.
            open.push(None);
            continue;
        }
        check(
            tag,
            pos,
            len as u64,
            file_len.saturating_sub(pos + header_len),
        )?;

        if vr == Some(VR::SQ) {
            // Defined-length sequence: its items are walked in place.
            open.push(Some(pos + header_len + u64::from(len)));
            continue;
        }
        if tag == PIXEL_DATA && open.is_empty() {
            return Ok(Some(pos + header_len + u64::from(len)));
        }
        r.seek(SeekFrom::Current(len as i64))?;
    }
}

fn check(tag: (u16, u16), offset: u64, declared: u64, remaining: u64) -> Result<(), WalkError> {
    if declared > remaining {
        return Err(WalkError::Oversized(Oversized {
            tag,
            offset,
            declared,
            remaining,
        }));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    fn explicit_le(tag: (u16, u16), vr: &[u8; 2], value: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend(tag.0.to_le_bytes());
        v.extend(tag.1.to_le_bytes());
        v.extend(vr);
        v.extend((value.len() as u16).to_le_bytes());
        v.extend(value);
        v
    }

    #[test]
    fn accepts_consistent_lengths() {
        let bytes = explicit_le((0x0008, 0x0060), b"CS", b"MR");
        let len = bytes.len() as u64;
        let r = check_lengths(
            &mut Cursor::new(bytes),
            len,
            Some(Encoding::EXPLICIT_LE),
            false,
        );
        assert!(r.is_ok());
    }

    #[test]
    fn rejects_length_past_end() {
        let mut bytes = Vec::new();
        bytes.extend(0x7FE0u16.to_le_bytes());
        bytes.extend(0x0010u16.to_le_bytes());
        bytes.extend(b"OW\0\0");
        bytes.extend(0xFFFF_FFF0u32.to_le_bytes());
        bytes.extend([0u8; 16]);
        let len = bytes.len() as u64;
        let r = check_lengths(
            &mut Cursor::new(bytes),
            len,
            Some(Encoding::EXPLICIT_LE),
            false,
        );
        assert!(matches!(r, Err(WalkError::Oversized(o)) if o.declared == 0xFFFF_FFF0));
    }
}
