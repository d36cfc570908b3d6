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
//! A deflated data set is walked too: dicom-rs inflates it without bound, so
//! the guard inflates it first through a bounded reader, refuses it when it
//! inflates past [`MAX_INFLATED_BYTES`], and checks each length against the
//! inflated bytes that remain. When the walk meets an encoding it cannot
//! follow (unknown transfer syntaxes), it stops and lets the parser proceed:
//! dicom-rs cannot parse those either.
//!
//! Data sets held in memory (DIMSE command sets) go through the same walk via
//! [`check_data_set`].

use std::io::{self, Read, Seek, SeekFrom};

use dicom_core::dictionary::{DataDictionary, DataDictionaryEntry, VirtualVr};
use dicom_core::{Tag, VR};
use dicom_dictionary_std::StandardDataDictionary;

const UNDEFINED: u32 = 0xFFFF_FFFF;
const ITEM: (u16, u16) = (0xFFFE, 0xE000);
const ITEM_END: (u16, u16) = (0xFFFE, 0xE00D);
const SEQ_END: (u16, u16) = (0xFFFE, 0xE0DD);
const PIXEL_DATA: (u16, u16) = (0x7FE0, 0x0010);

/// How the elements of a data set are encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Encoding {
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
    pub(crate) fn of_transfer_syntax(uid: &str) -> Option<Self> {
        match uid.trim_end_matches(['\0', ' ']) {
            "1.2.840.10008.1.2" => Some(Self::IMPLICIT_LE),
            "1.2.840.10008.1.2.2" => Some(Self {
                explicit_vr: true,
                big_endian: true,
            }),
            DEFLATED_EXPLICIT_LE => None,
            // Every other standard syntax (native explicit LE and all the
            // encapsulated ones) is explicit VR little endian.
            s if s.starts_with("1.2.840.10008.1.2") => Some(Self::EXPLICIT_LE),
            _ => None,
        }
    }
}

const DEFLATED_EXPLICIT_LE: &str = "1.2.840.10008.1.2.1.99";

/// The most a deflated data set may inflate to: the bound a plain file has,
/// so a small upload cannot cost more than a large one.
pub const MAX_INFLATED_BYTES: u64 = super::open::MAX_FILE_BYTES;

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
    /// The deflated data set inflates to more than [`MAX_INFLATED_BYTES`].
    InflatedTooLarge,
    /// The deflated data set is not a valid deflate stream. Refused rather
    /// than left to the parser, which would meet the elements before the
    /// damage unchecked.
    Inflate(io::Error),
}

impl From<io::Error> for WalkError {
    fn from(_: io::Error) -> Self {
        WalkError::ShortRead
    }
}

/// Where the walk starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Start {
    /// At a file meta group, whose transfer syntax says how the data set
    /// after it is encoded.
    Meta,
    /// At a data set without a meta group. Group 0002 tags there are
    /// ordinary elements in this encoding: dicom-rs reads them so, and a walk
    /// that read them as meta elements would take different lengths than it.
    DataSet(Encoding),
}

/// An element of an in-memory data set whose declared length runs past the
/// end of the bytes that hold it.
#[derive(Debug, thiserror::Error)]
#[error(
    "element ({group:04X},{element:04X}) at byte {offset} declares {declared} bytes but only {remaining} follow"
)]
pub struct LengthPastEnd {
    pub group: u16,
    pub element: u16,
    pub offset: u64,
    pub declared: u64,
    pub remaining: u64,
}

/// Checks every length an in-memory data set (no meta group, such as a DIMSE
/// command set) declares, so dicom-rs can parse it without allocating more
/// than `bytes` holds.
///
/// Returns the bytes the parser may read: all of them, or those up to the end
/// of a top-level Pixel Data element, where the walk stops.
pub fn check_data_set(bytes: &[u8], encoding: Encoding) -> Result<&[u8], LengthPastEnd> {
    let len = bytes.len() as u64;
    match check_lengths(&mut io::Cursor::new(bytes), len, Start::DataSet(encoding)) {
        Ok(Some(end)) => Ok(usize::try_from(end)
            .ok()
            .and_then(|end| bytes.get(..end))
            .unwrap_or(bytes)),
        Ok(None) | Err(WalkError::ShortRead) => Ok(bytes),
        Err(WalkError::Oversized(o)) => Err(LengthPastEnd {
            group: o.tag.0,
            element: o.tag.1,
            offset: o.offset,
            declared: o.declared,
            remaining: o.remaining,
        }),
        // A data set start never reaches a transfer syntax, so never inflates.
        Err(WalkError::InflatedTooLarge | WalkError::Inflate(_)) => Ok(bytes),
    }
}

/// Read and seek, as one trait object: the walk of a deflated data set runs on
/// a different reader type than its file, and a generic walk would then
/// instantiate itself without end.
trait ReadSeek: Read + Seek {}
impl<T: Read + Seek> ReadSeek for T {}

/// A stream the walk reads once, front to back: seeking forward reads and
/// drops the bytes in between; seeking back is an error.
struct Forward<R> {
    inner: R,
    pos: u64,
}

impl<R: Read> Read for Forward<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl<R: Read> Seek for Forward<R> {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let target = match to {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
            SeekFrom::End(_) => None,
        };
        let skip = target
            .and_then(|t| t.checked_sub(self.pos))
            .ok_or_else(|| io::Error::new(io::ErrorKind::Unsupported, "seeking backwards"))?;
        let skipped = io::copy(&mut (&mut self.inner).take(skip), &mut io::sink())?;
        self.pos += skipped;
        if skipped < skip {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        Ok(self.pos)
    }
}

/// Walks the deflated data set that starts at `start`.
///
/// The stream is inflated twice through a bounded reader: once to learn its
/// length (the walk checks lengths against what remains), once to walk it.
/// Memory stays constant; the cost is CPU, at most two inflations of
/// [`MAX_INFLATED_BYTES`].
fn check_deflated(r: &mut dyn ReadSeek, start: u64, file_len: u64) -> Result<(), WalkError> {
    let compressed = file_len.saturating_sub(start);
    r.seek(SeekFrom::Start(start))?;
    let inflated = io::copy(
        &mut flate2::read::DeflateDecoder::new((&mut *r).take(compressed))
            .take(MAX_INFLATED_BYTES + 1),
        &mut io::sink(),
    )
    .map_err(WalkError::Inflate)?;
    if inflated > MAX_INFLATED_BYTES {
        return Err(WalkError::InflatedTooLarge);
    }
    r.seek(SeekFrom::Start(start))?;
    let mut stream = Forward {
        inner: flate2::read::DeflateDecoder::new((&mut *r).take(compressed)),
        pos: 0,
    };
    // A plain file's walk ends at Pixel Data because the parser is cut off
    // there too; the parser reads a deflated stream to its end, so the walk
    // goes on after Pixel Data, at the top level where it stopped.
    while let Some(end) = walk(&mut stream, inflated, Start::DataSet(Encoding::EXPLICIT_LE))? {
        stream.seek(SeekFrom::Start(end))?;
    }
    Ok(())
}

/// Walks element headers from the reader's current position to `file_len`.
///
/// Returns the offset just past the top-level Pixel Data element when the walk
/// reached it, so the caller can stop the parser there: some exports pad
/// files after Pixel Data with bytes that are not elements.
///
/// The file meta group (group 0002) is always explicit VR little endian; the
/// data set after it is walked in the encoding its transfer syntax names,
/// inflating it first when it is deflated (then the result is `None`: the
/// parser cannot be cut off inside a deflated stream).
pub(crate) fn check_lengths<R: Read + Seek>(
    r: &mut R,
    file_len: u64,
    start: Start,
) -> Result<Option<u64>, WalkError> {
    walk(r, file_len, start)
}

fn walk(r: &mut dyn ReadSeek, file_len: u64, start: Start) -> Result<Option<u64>, WalkError> {
    let (has_meta, mut enc) = match start {
        Start::Meta => (true, None),
        Start::DataSet(e) => (false, Some(e)),
    };
    let mut deflated = false;
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
        let in_meta = has_meta && meta_end.map_or(le_group == 0x0002, |end| pos < end);
        let cur = if in_meta {
            Encoding::EXPLICIT_LE
        } else {
            match enc {
                Some(e) => e,
                None if deflated => {
                    check_deflated(r, pos, file_len)?;
                    return Ok(None);
                }
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
            if tag == (0x0002, 0x0010) {
                let mut buf = vec![0u8; len as usize];
                r.read_exact(&mut buf)?;
                let uid = String::from_utf8_lossy(&buf);
                enc = Encoding::of_transfer_syntax(&uid);
                deflated = uid.trim_end_matches(['\0', ' ']) == DEFLATED_EXPLICIT_LE;
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
            Start::DataSet(Encoding::EXPLICIT_LE),
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
            Start::DataSet(Encoding::EXPLICIT_LE),
        );
        assert!(matches!(r, Err(WalkError::Oversized(o)) if o.declared == 0xFFFF_FFF0));
    }
}
