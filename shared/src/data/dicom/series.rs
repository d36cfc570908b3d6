//! From a folder tree of files to sorted, validated series and their volumes.
//!
//! Scanning reads headers only (pixel data is skipped), so a site can list
//! every exam and choose the plane it needs before paying for decoding. The
//! one exception is a file whose SOPInstanceUID another file of the series
//! already has: both are decoded to tell an identical copy (dropped) from a
//! conflicting one (refused).
//! Files are grouped by StudyInstanceUID and SeriesInstanceUID; a series'
//! slices are ordered by their position along the slice normal, which is
//! what the anatomy needs, falling back to InstanceNumber (and then to frame
//! order) only when positions or orientation are missing. A series that cannot
//! be assembled carries its error; other series of the study are unaffected.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::data::Volume;

use super::error::DicomError;
use super::geometry::{Plane, Spacing, plane_of, position_along, same_orientation, slice_normal};
use super::header::{FrameInfo, InstanceHeader, read_header};
use super::identity::{Identifier, SeriesKey};
use super::open::{Depth, open};
use super::pixels::decode_frames;

/// Slices closer than this along the normal are the same slice position.
const SAME_POSITION_MM: f64 = 1e-3;

/// How the slice order of a series was decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SliceOrder {
    /// By ImagePositionPatient along the slice normal (the reliable way).
    Position,
    /// By InstanceNumber, because positions or orientation were missing.
    InstanceNumber,
    /// The frames of a single multi-frame object as stored.
    Stored,
}

/// Where the slice spacing came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpacingSource {
    /// Mean gap between sorted slice positions.
    Positions,
    SpacingBetweenSlices,
    SliceThickness,
    /// Nothing in the header: 1 mm assumed.
    Assumed,
}

/// What a series is, without its pixels and without identifiers.
#[derive(Debug, Clone)]
pub struct SeriesInfo {
    pub key: SeriesKey,
    pub plane: Plane,
    pub spacing: Spacing,
    pub spacing_source: SpacingSource,
    /// False when PixelSpacing was absent and 1 mm was assumed.
    pub pixel_spacing_known: bool,
    pub order: SliceOrder,
    /// Position of each slice along the normal in mm, in volume order, when
    /// the order came from positions.
    pub slice_positions: Option<Vec<f64>>,
    pub depth: usize,
    pub height: usize,
    pub width: usize,
    /// Distinct transfer syntax UIDs of the files (usually one).
    pub transfer_syntaxes: Vec<String>,
    pub modality: Option<String>,
    pub files: usize,
}

/// One slice of a series: a frame of a file.
#[derive(Debug, Clone)]
struct SliceRef {
    path: PathBuf,
    frame: usize,
}

/// A validated, ordered series ready to decode.
#[derive(Debug, Clone)]
pub struct SeriesLayout {
    pub info: SeriesInfo,
    slices: Vec<SliceRef>,
}

/// A decoded series.
#[derive(Debug, Clone)]
pub struct DicomSeries {
    pub info: SeriesInfo,
    /// Slices in [`SeriesInfo::order`]; each slice in the file's own row-major
    /// order (row 0 at the top of the image as stored, no flips applied).
    pub volume: Volume,
}

/// A series as found by the scan.
#[derive(Debug)]
pub struct SeriesEntry {
    pub key: SeriesKey,
    pub series_uid: Identifier,
    pub files: Vec<PathBuf>,
    /// The ordered layout, or why the files do not form one volume.
    pub layout: Result<SeriesLayout, DicomError>,
}

/// The series of one study (one exam).
#[derive(Debug)]
pub struct StudyEntry {
    /// Position in scan order; safe to log.
    pub index: usize,
    pub study_uid: Identifier,
    pub patient_id: Identifier,
    pub series: Vec<SeriesEntry>,
}

/// A file the scan could not use, and why.
#[derive(Debug)]
pub struct SkippedFile {
    pub path: PathBuf,
    pub error: DicomError,
}

/// Everything found under a folder.
#[derive(Debug, Default)]
pub struct DicomScan {
    pub studies: Vec<StudyEntry>,
    pub skipped: Vec<SkippedFile>,
}

impl StudyEntry {
    /// The series in `plane` with the most slices (ties: the first scanned).
    pub fn best_in_plane(&self, plane: Plane) -> Option<&SeriesLayout> {
        let mut best: Option<&SeriesLayout> = None;
        for l in self.series.iter().filter_map(|s| s.layout.as_ref().ok()) {
            if l.info.plane == plane && best.is_none_or(|b| l.info.depth > b.info.depth) {
                best = Some(l);
            }
        }
        best
    }
}

impl SeriesLayout {
    /// The files holding the slices, in slice order, each once.
    pub fn files(&self) -> Vec<PathBuf> {
        let mut out: Vec<PathBuf> = Vec::with_capacity(self.slices.len());
        for slice in &self.slices {
            if out.last() != Some(&slice.path) {
                out.push(slice.path.clone());
            }
        }
        out
    }

    /// Decodes every slice into a volume.
    ///
    /// Every file is decoded before the volume is allocated: only decoding
    /// proves that the pixels a header declares are in the file, so a corrupt
    /// Rows, Columns or NumberOfFrames costs an error, not an allocation of
    /// whatever size they multiply to.
    pub fn load(&self) -> Result<DicomSeries, DicomError> {
        let info = &self.info;
        let n = info.height * info.width;
        let mut slices: Vec<Option<Vec<f32>>> = vec![None; self.slices.len()];
        // Decode each file once, however many of its frames the series uses.
        let mut by_file: BTreeMap<&Path, Vec<(usize, usize)>> = BTreeMap::new();
        for (z, s) in self.slices.iter().enumerate() {
            by_file.entry(&s.path).or_default().push((z, s.frame));
        }
        for (path, wanted) in by_file {
            let file = open(path, Depth::Full)?;
            let header = read_header(path, &file)?;
            let changed = |reason: String| DicomError::ChangedSinceScan {
                series: info.key.clone(),
                path: path.to_path_buf(),
                reason,
            };
            if header.rows as usize != info.height || header.cols as usize != info.width {
                return Err(changed("image size differs".into()));
            }
            let mut frames: Vec<Option<Vec<f32>>> = decode_frames(path, &file, &header)?
                .into_iter()
                .map(Some)
                .collect();
            for (z, f) in wanted {
                let frame = frames
                    .get_mut(f)
                    .and_then(Option::take)
                    .ok_or_else(|| changed(format!("frame {f} is gone")))?;
                if frame.len() != n {
                    return Err(changed("frame length differs".into()));
                }
                slices[z] = Some(frame);
            }
        }
        let mut voxels = Vec::with_capacity(slices.len() * n);
        for slice in slices.into_iter().flatten() {
            voxels.extend_from_slice(&slice);
        }
        // Each z is in exactly one file's `wanted` list, so every slot was filled.
        debug_assert_eq!(voxels.len(), info.depth * n);
        Ok(DicomSeries {
            info: self.info.clone(),
            volume: Volume {
                depth: info.depth,
                height: info.height,
                width: info.width,
                voxels,
            },
        })
    }
}

/// Lists regular files under `root`, depth first, in name order so that scans
/// are reproducible. Symlinked folders are not followed (loops).
fn list_files(root: &Path, out: &mut Vec<PathBuf>, skipped: &mut Vec<SkippedFile>) {
    let entries = match std::fs::read_dir(root) {
        Ok(e) => e,
        Err(e) => {
            skipped.push(SkippedFile {
                path: root.to_path_buf(),
                error: DicomError::io(root, e),
            });
            return;
        }
    };
    let mut paths: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    paths.sort();
    for p in paths {
        match std::fs::symlink_metadata(&p) {
            Ok(m) if m.is_dir() => list_files(&p, out, skipped),
            Ok(m) if m.is_file() => out.push(p),
            Ok(m) if m.file_type().is_symlink() && p.is_file() => out.push(p),
            Ok(_) => {}
            Err(e) => skipped.push(SkippedFile {
                error: DicomError::io(&p, e),
                path: p,
            }),
        }
    }
}

/// Scans every file under `root` (any name, any extension).
///
/// Only an unreadable `root` is an error; every bad file lands in
/// [`DicomScan::skipped`] and every bad series carries its own error.
pub fn scan_dir(root: &Path) -> Result<DicomScan, DicomError> {
    std::fs::read_dir(root).map_err(|e| DicomError::io(root, e))?;
    let mut files = Vec::new();
    let mut skipped = Vec::new();
    list_files(root, &mut files, &mut skipped);
    let mut scan = scan_files(files);
    skipped.append(&mut scan.skipped);
    scan.skipped = skipped;
    Ok(scan)
}

/// Scans the given files.
pub fn scan_files(paths: impl IntoIterator<Item = PathBuf>) -> DicomScan {
    let mut skipped = Vec::new();
    // study key → series key → headers; BTreeMap keeps output deterministic.
    let mut studies: BTreeMap<Identifier, BTreeMap<Identifier, Vec<InstanceHeader>>> =
        BTreeMap::new();
    for path in paths {
        let header = open(&path, Depth::Header).and_then(|f| read_header(&path, &f));
        match header {
            Ok(h) => {
                // Without a SeriesInstanceUID the folder is the best guess at a series.
                let series = if h.series_uid.is_empty() {
                    Identifier::new(format!(
                        "folder:{}",
                        path.parent().unwrap_or(Path::new("")).display()
                    ))
                } else {
                    h.series_uid.clone()
                };
                studies
                    .entry(h.study_uid.clone())
                    .or_default()
                    .entry(series)
                    .or_default()
                    .push(h);
            }
            Err(error) => skipped.push(SkippedFile { path, error }),
        }
    }

    let mut out: Vec<StudyEntry> = studies
        .into_iter()
        .map(|(study_uid, series)| {
            let patient_id = series
                .values()
                .flat_map(|hs| hs.iter())
                .map(|h| h.patient_id.clone())
                .next()
                .unwrap_or_default();
            let mut series: Vec<SeriesEntry> = series
                .into_iter()
                .map(|(series_uid, headers)| {
                    let key = SeriesKey::digest(&study_uid, &series_uid);
                    let files = headers.iter().map(|h| h.path.clone()).collect();
                    let layout = assemble(key.clone(), headers);
                    SeriesEntry {
                        key,
                        series_uid,
                        files,
                        layout,
                    }
                })
                .collect();
            series.sort_by(|a, b| a.files.first().cmp(&b.files.first()));
            StudyEntry {
                index: 0,
                study_uid,
                patient_id,
                series,
            }
        })
        .collect();
    out.sort_by(|a, b| {
        let first = |s: &StudyEntry| {
            s.series
                .iter()
                .filter_map(|e| e.files.first())
                .min()
                .cloned()
        };
        first(a).cmp(&first(b))
    });
    for (i, s) in out.iter_mut().enumerate() {
        s.index = i;
    }
    DicomScan {
        studies: out,
        skipped,
    }
}

/// Why two frames' geometry differs, if it does (same tolerances as the
/// series checks in [`assemble`]).
fn geometry_difference(a: &FrameInfo, b: &FrameInfo) -> Option<&'static str> {
    let position = match (a.position, b.position) {
        (Some(p), Some(q)) => p
            .iter()
            .zip(&q)
            .all(|(x, y)| (x - y).abs() < SAME_POSITION_MM),
        (None, None) => true,
        _ => false,
    };
    let orientation = match (&a.orientation, &b.orientation) {
        (Some(p), Some(q)) => same_orientation(p, q),
        (None, None) => true,
        _ => false,
    };
    let spacing = match (a.pixel_spacing, b.pixel_spacing) {
        (Some(p), Some(q)) => (p[0] - q[0]).abs() < 1e-4 && (p[1] - q[1]).abs() < 1e-4,
        (None, None) => true,
        _ => false,
    };
    if !position {
        Some("ImagePositionPatient")
    } else if !orientation {
        Some("ImageOrientationPatient")
    } else if !spacing {
        Some("PixelSpacing")
    } else {
        None
    }
}

/// Decodes every frame of one file, for comparing copies of an instance.
fn decode_file(path: &Path) -> Result<Vec<Vec<f32>>, DicomError> {
    let file = open(path, Depth::Full)?;
    let header = read_header(path, &file)?;
    decode_frames(path, &file, &header)
}

/// Drops later copies of an SOP instance that match an earlier one, and
/// refuses copies that do not.
///
/// Archives and re-exports can leave one instance twice in a folder, often
/// in different transfer syntaxes; stacking both would put two slices at
/// one position. A copy is identical when its geometry and its *decoded*
/// pixels match, since the encodings of one image differ byte for byte.
/// Only files of an instance that appears twice are decoded here, so a scan
/// without duplicates still reads headers only. `headers` must be in path order: the first file of
/// an instance is the one kept.
fn drop_identical_copies(
    key: &SeriesKey,
    headers: Vec<InstanceHeader>,
) -> Result<Vec<InstanceHeader>, DicomError> {
    let mut kept: Vec<InstanceHeader> = Vec::with_capacity(headers.len());
    // SOP UID → index in `kept`; the kept file's decoded frames, once needed.
    let mut first_of: BTreeMap<Identifier, usize> = BTreeMap::new();
    let mut decoded: BTreeMap<usize, Vec<Vec<f32>>> = BTreeMap::new();
    for h in headers {
        // Without a UID nothing says two files are one instance.
        let seen = (!h.sop_uid.is_empty())
            .then(|| first_of.get(&h.sop_uid).copied())
            .flatten();
        let Some(i) = seen else {
            if !h.sop_uid.is_empty() {
                first_of.insert(h.sop_uid.clone(), kept.len());
            }
            kept.push(h);
            continue;
        };
        let original = &kept[i];
        let conflict = |reason: String| DicomError::ConflictingDuplicate {
            series: key.clone(),
            first: original.path.clone(),
            second: h.path.clone(),
            reason,
        };
        if (original.rows, original.cols) != (h.rows, h.cols) {
            return Err(conflict(format!(
                "image size {}x{} and {}x{}",
                original.rows, original.cols, h.rows, h.cols
            )));
        }
        if original.frames.len() != h.frames.len() {
            return Err(conflict(format!(
                "{} and {} frames",
                original.frames.len(),
                h.frames.len()
            )));
        }
        if let Some(what) = original
            .frames
            .iter()
            .zip(&h.frames)
            .find_map(|(a, b)| geometry_difference(a, b))
        {
            return Err(conflict(format!("{what} differs")));
        }
        let first = match decoded.entry(i) {
            std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::btree_map::Entry::Vacant(e) => e.insert(
                decode_file(&original.path)
                    .map_err(|e| conflict(format!("the first cannot be decoded: {e}")))?,
            ),
        };
        let copy = decode_file(&h.path)
            .map_err(|e| conflict(format!("the second cannot be decoded: {e}")))?;
        if *first != copy {
            return Err(conflict("pixel data differs".into()));
        }
        tracing::warn!(
            series = %key,
            kept = %original.path.display(),
            dropped = %h.path.display(),
            "same SOP instance twice with identical geometry and pixels; using the first file"
        );
    }
    Ok(kept)
}

/// Orders and validates the slices of one series.
fn assemble(key: SeriesKey, mut headers: Vec<InstanceHeader>) -> Result<SeriesLayout, DicomError> {
    headers.sort_by(|a, b| a.path.cmp(&b.path));
    let headers = drop_identical_copies(&key, headers)?;
    let Some(first) = headers.first() else {
        return Err(DicomError::NotOneSeries {
            dir: PathBuf::new(),
            count: 0,
        });
    };
    let (rows, cols) = (first.rows, first.cols);
    for h in &headers {
        if (h.rows, h.cols) != (rows, cols) {
            return Err(DicomError::InconsistentSliceSize {
                series: key,
                first_rows: rows,
                first_cols: cols,
                rows: h.rows,
                cols: h.cols,
                path: h.path.clone(),
            });
        }
    }

    struct Candidate<'a> {
        header: &'a InstanceHeader,
        frame: usize,
    }
    let cands: Vec<Candidate> = headers
        .iter()
        .flat_map(|h| (0..h.frames.len()).map(move |frame| Candidate { header: h, frame }))
        .collect();
    fn info_of<'a>(c: &Candidate<'a>) -> &'a super::header::FrameInfo {
        &c.header.frames[c.frame]
    }

    // Orientation: all frames must agree, or none may have one.
    let orientation = info_of(&cands[0]).orientation;
    let mut orientation_known = orientation.is_some();
    for c in &cands {
        match (&orientation, &info_of(c).orientation) {
            (Some(a), Some(b)) if same_orientation(a, b) => {}
            (None, None) => {}
            (Some(_), None) => orientation_known = false,
            _ => {
                return Err(DicomError::MixedOrientations {
                    series: key,
                    path: c.header.path.clone(),
                });
            }
        }
    }
    let orientation = orientation.filter(|_| orientation_known);

    // Pixel spacing must agree too; a mismatch is a different acquisition.
    let pixel_spacing = info_of(&cands[0]).pixel_spacing;
    for c in &cands {
        let ok = match (pixel_spacing, info_of(c).pixel_spacing) {
            (Some(a), Some(b)) => (a[0] - b[0]).abs() < 1e-4 && (a[1] - b[1]).abs() < 1e-4,
            (None, None) => true,
            _ => false,
        };
        if !ok {
            return Err(DicomError::InconsistentPixelSpacing {
                series: key,
                path: c.header.path.clone(),
            });
        }
    }

    let positions: Option<Vec<f64>> = orientation.and_then(|iop| {
        let normal = slice_normal(&iop);
        cands
            .iter()
            .map(|c| info_of(c).position.map(|p| position_along(&p, &normal)))
            .collect()
    });

    let mut order: Vec<usize> = (0..cands.len()).collect();
    let (slice_order, sorted_positions) = if let Some(pos) = &positions {
        order.sort_by(|&a, &b| pos[a].total_cmp(&pos[b]));
        let sorted: Vec<f64> = order.iter().map(|&i| pos[i]).collect();
        // Two slices at one position mean echoes, phases or repeats mixed in
        // one series: stacking them would corrupt the anatomy.
        let mut i = 0;
        while i < sorted.len() {
            let j = sorted[i..]
                .iter()
                .take_while(|p| (**p - sorted[i]).abs() < SAME_POSITION_MM)
                .count();
            if j > 1 {
                return Err(DicomError::DuplicateSlicePositions {
                    series: key,
                    position: sorted[i],
                    count: j,
                });
            }
            i += j;
        }
        (SliceOrder::Position, Some(sorted))
    } else if headers.len() == 1 {
        (SliceOrder::Stored, None)
    } else {
        order.sort_by_key(|&i| {
            let c = &cands[i];
            (c.header.instance_number.unwrap_or(i64::MAX), c.frame)
        });
        (SliceOrder::InstanceNumber, None)
    };

    let (slice_spacing, spacing_source) = match &sorted_positions {
        Some(p) if p.len() > 1 => (
            (p[p.len() - 1] - p[0]) / (p.len() - 1) as f64,
            SpacingSource::Positions,
        ),
        _ => match (first.spacing_between_slices, first.slice_thickness) {
            (Some(s), _) if s > 0.0 => (s, SpacingSource::SpacingBetweenSlices),
            (_, Some(t)) if t > 0.0 => (t, SpacingSource::SliceThickness),
            _ => (1.0, SpacingSource::Assumed),
        },
    };

    let mut transfer_syntaxes: Vec<String> =
        headers.iter().map(|h| h.transfer_syntax.clone()).collect();
    transfer_syntaxes.sort();
    transfer_syntaxes.dedup();

    let ps = pixel_spacing.unwrap_or([1.0, 1.0]);
    let info = SeriesInfo {
        key,
        plane: plane_of(orientation.as_ref()),
        spacing: Spacing {
            slice: slice_spacing,
            row: ps[0],
            col: ps[1],
        },
        spacing_source,
        pixel_spacing_known: pixel_spacing.is_some(),
        order: slice_order,
        slice_positions: sorted_positions,
        depth: cands.len(),
        height: rows as usize,
        width: cols as usize,
        transfer_syntaxes,
        modality: first.modality.clone(),
        files: headers.len(),
    };
    let slices = order
        .into_iter()
        .map(|i| SliceRef {
            path: cands[i].header.path.clone(),
            frame: cands[i].frame,
        })
        .collect();
    Ok(SeriesLayout { info, slices })
}

fn no_images(dir: &Path, scan: &DicomScan) -> DicomError {
    DicomError::NoImages {
        dir: dir.to_path_buf(),
        skipped: scan.skipped.len(),
        first: scan
            .skipped
            .first()
            .map(|s| format!("; first: {}", s.error))
            .unwrap_or_default(),
    }
}

/// Reads a folder that must hold exactly one series, whatever its plane.
pub fn read_series_dir(dir: &Path) -> Result<DicomSeries, DicomError> {
    let scan = scan_dir(dir)?;
    let mut all: Vec<SeriesEntry> = Vec::new();
    let mut scan = scan;
    for s in scan.studies.drain(..) {
        all.extend(s.series);
    }
    match all.len() {
        0 => Err(no_images(dir, &scan)),
        1 => match all.pop() {
            Some(entry) => entry.layout?.load(),
            None => Err(no_images(dir, &scan)),
        },
        count => Err(DicomError::NotOneSeries {
            dir: dir.to_path_buf(),
            count,
        }),
    }
}

/// Reads one exam folder's series in `plane` (the one with the most slices if
/// there are several), as a site does for the knee task.
pub fn read_exam_plane(dir: &Path, plane: Plane) -> Result<DicomSeries, DicomError> {
    let scan = scan_dir(dir)?;
    let found: usize = scan.studies.iter().map(|s| s.series.len()).sum();
    if found == 0 {
        return Err(no_images(dir, &scan));
    }
    let best = scan
        .studies
        .iter()
        .filter_map(|s| s.best_in_plane(plane))
        .max_by_key(|l| l.info.depth);
    match best {
        Some(layout) => layout.load(),
        None => {
            // A lone series that failed to assemble explains itself better
            // than "no series in that plane".
            if found == 1 {
                let mut scan = scan;
                let lone = scan
                    .studies
                    .iter_mut()
                    .flat_map(|s| s.series.drain(..))
                    .next();
                if let Some(SeriesEntry { layout: Err(e), .. }) = lone {
                    return Err(e);
                }
            }
            Err(DicomError::NoSeriesInPlane {
                dir: dir.to_path_buf(),
                plane,
                series_found: found,
            })
        }
    }
}
