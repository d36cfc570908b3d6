//! The MRNet layout: `{train,valid}/sagittal/NNNN.npy` plus `{train,valid}-acl.csv`.
//!
//! MRNet is the public knee MRI dataset most ACL work is compared on, so the project
//! reads its layout as-is and writes its synthetic cohorts the same way. As in MRNet,
//! validation cases are numbered after the training cases (train `0000..n`, valid `n..`),
//! and label rows are `case,label` with no header and the case number unpadded.

use std::collections::HashMap;
use std::fs;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use npyz::{DType, Order, TypeChar, WriterBuilder};
use rayon::prelude::*;

use crate::data::{Exam, Volume};

const SPLITS: [&str; 2] = ["train", "valid"];
/// The plane `write_site` writes (the phantom is sagittal).
const PLANE: &str = "sagittal";
const PLANES: [&str; 3] = ["sagittal", "coronal", "axial"];

#[derive(Debug, thiserror::Error)]
pub enum MrnetError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Npy { path: PathBuf, message: String },
    #[error("{path}: {message}")]
    Labels { path: PathBuf, message: String },
    #[error("{path}: not an MRNet folder (no train/sagittal or valid/sagittal)")]
    NotMrnet { path: PathBuf },
    #[error("{path}: already holds .npy files; refusing to mix cohorts")]
    NotEmpty { path: PathBuf },
    #[error("exam {id}: {message}")]
    Exam { id: String, message: String },
}

/// One site's exams as read from disk.
#[derive(Debug, Clone)]
pub struct MrnetSite {
    pub train: Vec<Exam>,
    pub valid: Vec<Exam>,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> MrnetError + '_ {
    move |source| MrnetError::Io {
        path: path.to_path_buf(),
        source,
    }
}

pub fn is_mrnet_dir(dir: &Path) -> bool {
    SPLITS
        .iter()
        .any(|s| PLANES.iter().any(|p| dir.join(s).join(p).is_dir()))
}

/// Checks every exam before writing anything, so a bad voxel cannot leave half a site.
/// Voxels must already be integers in 0..=255: MRNet stores uint8, and silently
/// clamping or rounding would make written data differ from what was generated.
fn check_exam(exam: &Exam) -> Result<(), MrnetError> {
    let v = &exam.volume;
    let bad = |message: String| MrnetError::Exam {
        id: exam.id.clone(),
        message,
    };
    if v.voxels.len() != v.depth * v.height * v.width {
        return Err(bad(format!(
            "{} voxels for shape {}×{}×{}",
            v.voxels.len(),
            v.depth,
            v.height,
            v.width
        )));
    }
    if let Some((i, x)) = v
        .voxels
        .iter()
        .enumerate()
        .find(|(_, x)| !(x.is_finite() && x.fract() == 0.0 && (0.0..=255.0).contains(*x)))
    {
        let plane = v.slice_len().max(1);
        let width = v.width.max(1);
        return Err(bad(format!(
            "voxel (z={}, y={}, x={}) is {x}; MRNet needs integers in 0..=255",
            i / plane,
            (i % plane) / width,
            i % width
        )));
    }
    Ok(())
}

/// Writes one site. Labels `None` get no csv row (MRNet's way of saying "unlabelled").
pub fn write_site(dir: &Path, train: &[Exam], valid: &[Exam]) -> Result<(), MrnetError> {
    for exam in train.iter().chain(valid) {
        check_exam(exam)?;
    }
    let mut first_case = 0usize;
    for (split, exams) in SPLITS.iter().zip([train, valid]) {
        let folder = dir.join(split).join(PLANE);
        fs::create_dir_all(&folder).map_err(io_err(&folder))?;
        let existing = fs::read_dir(&folder).map_err(io_err(&folder))?;
        for entry in existing {
            let entry = entry.map_err(io_err(&folder))?;
            if entry.path().extension().is_some_and(|e| e == "npy") {
                return Err(MrnetError::NotEmpty { path: folder });
            }
        }
        exams.par_iter().enumerate().try_for_each(|(i, exam)| {
            write_npy(
                &folder.join(format!("{:04}.npy", first_case + i)),
                &exam.volume,
            )
        })?;
        let csv_path = dir.join(format!("{split}-acl.csv"));
        let mut out = String::new();
        for (i, exam) in exams.iter().enumerate() {
            if let Some(label) = exam.label {
                out.push_str(&format!("{},{}\n", first_case + i, u8::from(label)));
            }
        }
        fs::write(&csv_path, out).map_err(io_err(&csv_path))?;
        first_case += exams.len();
    }
    Ok(())
}

fn write_npy(path: &Path, v: &Volume) -> Result<(), MrnetError> {
    let file = fs::File::create(path).map_err(io_err(path))?;
    let mut w = BufWriter::new(file);
    let shape = [v.depth as u64, v.height as u64, v.width as u64];
    let mut npy = npyz::WriteOptions::<u8>::new()
        .default_dtype()
        .shape(&shape)
        .writer(&mut w)
        .begin_nd()
        .map_err(io_err(path))?;
    // Exact: `check_exam` has proven every voxel is an integer in 0..=255.
    npy.extend(v.voxels.iter().map(|&x| x as u8))
        .map_err(io_err(path))?;
    npy.finish().map_err(io_err(path))?;
    w.flush().map_err(io_err(path))
}

/// One case of an MRNet-layout site, located but not yet read.
#[derive(Debug, Clone)]
pub struct MrnetCase {
    /// `"{split}/{case:04}"`.
    pub id: String,
    /// `"train"` or `"valid"`.
    pub split: &'static str,
    pub path: PathBuf,
    pub label: Option<bool>,
}

/// Lists a site's sagittal cases and their ACL labels without reading any
/// volume: train cases first, each split sorted by case number; a case without
/// a csv row is unlabelled.
pub fn list_site(dir: &Path) -> Result<Vec<MrnetCase>, MrnetError> {
    list_site_plane(dir, crate::data::plane::Plane::Sagittal)
}

/// [`list_site`] for the series of another plane (`{split}/{plane}/NNNN.npy`).
pub fn list_site_plane(
    dir: &Path,
    plane: crate::data::plane::Plane,
) -> Result<Vec<MrnetCase>, MrnetError> {
    if !is_mrnet_dir(dir) {
        return Err(MrnetError::NotMrnet {
            path: dir.to_path_buf(),
        });
    }
    let mut out = Vec::new();
    for split in SPLITS {
        let folder = dir.join(split).join(plane.to_string());
        let labels = read_labels(&dir.join(format!("{split}-acl.csv")))?;
        let mut cases = Vec::new();
        if folder.is_dir() {
            for entry in fs::read_dir(&folder).map_err(io_err(&folder))? {
                let path = entry.map_err(io_err(&folder))?.path();
                if path.extension().is_none_or(|e| e != "npy") {
                    continue;
                }
                let case = path
                    .file_stem()
                    .and_then(|s| s.to_str())
                    .and_then(|s| s.parse::<u64>().ok())
                    .ok_or_else(|| MrnetError::Npy {
                        path: path.clone(),
                        message: "file name is not a case number".into(),
                    })?;
                cases.push((case, path));
            }
        }
        cases.sort();
        out.extend(cases.into_iter().map(|(case, path)| MrnetCase {
            id: format!("{split}/{case:04}"),
            split,
            path,
            label: labels.get(&case).copied(),
        }));
    }
    Ok(out)
}

/// Reads a site's sagittal series and ACL labels. Ids are `"{split}/{case:04}"`; exams
/// are sorted by case number; a case without a csv row is unlabelled.
pub fn read_site(dir: &Path) -> Result<MrnetSite, MrnetError> {
    let cases = list_site(dir)?;
    let exams = cases
        .par_iter()
        .map(|case| {
            Ok(Exam {
                id: case.id.clone(),
                volume: read_npy(&case.path)?,
                label: case.label,
                spacing: None,
            })
        })
        .collect::<Result<Vec<_>, MrnetError>>()?;
    let (train, valid) = exams
        .into_iter()
        .zip(&cases)
        .partition::<Vec<_>, _>(|(_, case)| case.split == "train");
    Ok(MrnetSite {
        train: train.into_iter().map(|(e, _)| e).collect(),
        valid: valid.into_iter().map(|(e, _)| e).collect(),
    })
}

fn read_labels(path: &Path) -> Result<HashMap<u64, bool>, MrnetError> {
    let mut labels = HashMap::new();
    if !path.exists() {
        return Ok(labels);
    }
    let bad = |message: String| MrnetError::Labels {
        path: path.to_path_buf(),
        message,
    };
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .trim(csv::Trim::All)
        .from_path(path)
        .map_err(|e| bad(e.to_string()))?;
    for (line, record) in reader.records().enumerate() {
        let record = record.map_err(|e| bad(e.to_string()))?;
        if record.len() != 2 {
            return Err(bad(format!("row {}: expected `case,label`", line + 1)));
        }
        let case: u64 = record[0].parse().map_err(|_| {
            bad(format!(
                "row {}: case {:?} is not a number",
                line + 1,
                &record[0]
            ))
        })?;
        let label = match &record[1] {
            "0" | "0.0" => false,
            "1" | "1.0" => true,
            other => {
                return Err(bad(format!(
                    "row {}: label {other:?} is not 0 or 1",
                    line + 1
                )));
            }
        };
        if labels.insert(case, label).is_some() {
            return Err(bad(format!("row {}: case {case} labelled twice", line + 1)));
        }
    }
    Ok(labels)
}

/// numpy's own ceiling on the header text (`np.load`'s `max_header_size`); a
/// 3-D array's header is about 120 bytes.
const MAX_NPY_HEADER_BYTES: u64 = 10_000;

/// Checks the header length a `.npy` file declares before npyz allocates it
/// (a version 2/3 file can declare 4 GiB in four bytes).
fn check_header_len(bytes: &[u8]) -> Result<(), String> {
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Ok(()); // npyz says what is wrong
    }
    let (declared, start) = match bytes[6] {
        1 => (u64::from(u16::from_le_bytes([bytes[8], bytes[9]])), 10),
        2 | 3 if bytes.len() >= 12 => (
            u64::from(u32::from_le_bytes([
                bytes[8], bytes[9], bytes[10], bytes[11],
            ])),
            12,
        ),
        _ => return Ok(()), // npyz names the bad version or short file
    };
    if declared > MAX_NPY_HEADER_BYTES {
        return Err(format!(
            "header declares {declared} bytes; numpy refuses more than {MAX_NPY_HEADER_BYTES}"
        ));
    }
    if start + declared > bytes.len() as u64 {
        return Err(format!(
            "truncated: header declares {declared} bytes, file has {}",
            bytes.len() - start as usize
        ));
    }
    Ok(())
}

/// Reads one 3-D C-order array of a common numeric dtype into a volume.
pub fn read_npy(path: &Path) -> Result<Volume, MrnetError> {
    let bad = |message: String| MrnetError::Npy {
        path: path.to_path_buf(),
        message,
    };
    // Whole-file read: MRNet volumes are a few MB, and knowing the size lets a corrupt
    // header be rejected before it asks for a huge allocation.
    let bytes = fs::read(path).map_err(io_err(path))?;
    check_header_len(&bytes).map_err(bad)?;
    let mut data: &[u8] = &bytes;
    let header = npyz::NpyHeader::from_reader(&mut data)
        .map_err(|e| bad(format!("not a readable .npy file: {e}")))?;
    let available = data.len() as u64;
    let npy = npyz::NpyFile::with_header(header, data);
    if npy.order() == Order::Fortran {
        return Err(bad(
            "Fortran-order arrays are not supported; save with C order".into(),
        ));
    }
    let shape = npy.shape().to_vec();
    let [depth, height, width] = shape[..] else {
        return Err(bad(format!(
            "expected a 3-D array (slices, height, width), got shape {shape:?}"
        )));
    };
    if shape.contains(&0) {
        return Err(bad(format!(
            "shape {shape:?} has an empty axis; an exam needs at least one voxel"
        )));
    }
    let DType::Plain(ts) = npy.dtype() else {
        return Err(bad(format!("unsupported dtype {}", npy.dtype().descr())));
    };
    let item = ts.num_bytes().unwrap_or(0);
    let count = depth
        .checked_mul(height)
        .and_then(|n| n.checked_mul(width))
        .ok_or_else(|| bad(format!("shape {shape:?} is too large")))?;
    let needed = count.saturating_mul(item as u64);
    if available < needed {
        return Err(bad(format!(
            "truncated: shape {shape:?} needs {needed} data bytes, file has {available}"
        )));
    }
    let read_err = |e: std::io::Error| bad(format!("reading data: {e}"));
    let voxels: Vec<f32> = match (ts.type_char(), item) {
        (TypeChar::Uint, 1) => npy
            .into_vec::<u8>()
            .map_err(read_err)?
            .into_iter()
            .map(f32::from)
            .collect(),
        (TypeChar::Int, 1) => npy
            .into_vec::<i8>()
            .map_err(read_err)?
            .into_iter()
            .map(f32::from)
            .collect(),
        (TypeChar::Uint, 2) => npy
            .into_vec::<u16>()
            .map_err(read_err)?
            .into_iter()
            .map(f32::from)
            .collect(),
        (TypeChar::Int, 2) => npy
            .into_vec::<i16>()
            .map_err(read_err)?
            .into_iter()
            .map(f32::from)
            .collect(),
        (TypeChar::Int, 4) => npy
            .into_vec::<i32>()
            .map_err(read_err)?
            .into_iter()
            .map(|x| x as f32)
            .collect(),
        (TypeChar::Float, 4) => npy.into_vec::<f32>().map_err(read_err)?,
        (TypeChar::Float, 8) => npy
            .into_vec::<f64>()
            .map_err(read_err)?
            .into_iter()
            .map(|x| x as f32)
            .collect(),
        _ => {
            return Err(bad(format!(
                "unsupported dtype {ts}; expected uint8, int8, uint16, int16, int32, float32 or float64"
            )));
        }
    };
    if let Some(i) = voxels.iter().position(|x| !x.is_finite()) {
        return Err(bad(format!("voxel {i} is not finite")));
    }
    if voxels.len() as u64 != count {
        return Err(bad(format!(
            "expected {count} voxels, read {}",
            voxels.len()
        )));
    }
    Ok(Volume {
        depth: depth as usize,
        height: height as usize,
        width: width as usize,
        voxels,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exam(id: &str, seed: u32, label: Option<bool>) -> Exam {
        let mut v = Volume::zeros(3, 4, 5);
        for (i, x) in v.voxels.iter_mut().enumerate() {
            *x = ((i as u32 * 37 + seed * 11) % 256) as f32;
        }
        Exam {
            id: id.into(),
            volume: v,
            label,
            spacing: None,
        }
    }

    fn write_raw<T: npyz::AutoSerialize + Copy>(
        path: &Path,
        shape: &[u64],
        data: &[T],
        fortran: bool,
    ) {
        let mut buf = Vec::new();
        let order = if fortran { Order::Fortran } else { Order::C };
        let mut w = npyz::WriteOptions::<T>::new()
            .default_dtype()
            .shape(shape)
            .order(order)
            .writer(&mut buf)
            .begin_nd()
            .unwrap();
        w.extend(data.iter().copied()).unwrap();
        w.finish().unwrap();
        fs::write(path, buf).unwrap();
    }

    fn layout(dir: &Path) -> PathBuf {
        let folder = dir.join("train").join(PLANE);
        fs::create_dir_all(&folder).unwrap();
        folder
    }

    #[test]
    fn round_trip_keeps_voxels_labels_and_order() {
        let dir = tempfile::tempdir().unwrap();
        let train: Vec<Exam> = (0..12).map(|i| exam("t", i, Some(i % 3 == 0))).collect();
        let valid = vec![exam("v", 99, Some(true)), exam("v", 100, None)];
        write_site(dir.path(), &train, &valid).unwrap();
        assert!(is_mrnet_dir(dir.path()));
        let csv = fs::read_to_string(dir.path().join("valid-acl.csv")).unwrap();
        assert_eq!(csv, "12,1\n");
        assert!(
            fs::read_to_string(dir.path().join("train-acl.csv"))
                .unwrap()
                .starts_with("0,1\n1,0\n")
        );
        let site = read_site(dir.path()).unwrap();
        assert_eq!(site.train.len(), 12);
        for (i, (a, b)) in train.iter().zip(&site.train).enumerate() {
            assert_eq!(b.id, format!("train/{i:04}"));
            assert_eq!(a.volume, b.volume);
            assert_eq!(a.label, b.label);
        }
        assert_eq!(site.valid[0].id, "valid/0012");
        assert_eq!(site.valid[0].volume, valid[0].volume);
        assert_eq!(site.valid[0].label, Some(true));
        assert_eq!(site.valid[1].label, None);
        // A second write into the same folder would mix cohorts.
        assert!(matches!(
            write_site(dir.path(), &train, &[]),
            Err(MrnetError::NotEmpty { .. })
        ));
    }

    #[test]
    fn non_integral_or_out_of_range_voxels_are_refused() {
        for bad in [300.0, 1.5, -1.0, f32::NAN] {
            let dir = tempfile::tempdir().unwrap();
            let mut e = exam("bad", 1, Some(false));
            e.volume.voxels[7] = bad;
            let err = write_site(dir.path(), &[e], &[]).unwrap_err();
            assert!(matches!(err, MrnetError::Exam { .. }), "{err}");
            assert!(err.to_string().contains("bad"), "{err}");
            assert!(
                !dir.path().join("train").exists(),
                "nothing written before validation"
            );
        }
    }

    #[test]
    fn other_dtypes_are_read_as_values() {
        let dir = tempfile::tempdir().unwrap();
        let folder = layout(dir.path());
        write_raw(
            &folder.join("0003.npy"),
            &[1, 2, 2],
            &[-5i16, 0, 7, 1000],
            false,
        );
        write_raw(&folder.join("0001.npy"), &[1, 1, 2], &[0.5f64, 2.0], false);
        fs::write(dir.path().join("train-acl.csv"), "3,1\n").unwrap();
        let site = read_site(dir.path()).unwrap();
        assert_eq!(site.train[0].id, "train/0001");
        assert_eq!(site.train[0].volume.voxels, vec![0.5, 2.0]);
        assert_eq!(site.train[0].label, None);
        assert_eq!(site.train[1].volume.voxels, vec![-5.0, 0.0, 7.0, 1000.0]);
        assert_eq!(site.train[1].label, Some(true));
        assert!(site.valid.is_empty());
    }

    #[test]
    fn malformed_files_give_errors_naming_the_file() {
        type Case = (&'static str, Box<dyn Fn(&Path)>, &'static str);
        let cases: Vec<Case> = vec![
            (
                "2-D",
                Box::new(|p| write_raw(p, &[2, 2], &[1u8, 2, 3, 4], false)),
                "3-D",
            ),
            (
                "fortran",
                Box::new(|p| write_raw(p, &[1, 2, 2], &[1u8, 2, 3, 4], true)),
                "Fortran",
            ),
            (
                "truncated",
                Box::new(|p| {
                    write_raw(p, &[2, 8, 8], &[7u8; 128], false);
                    let bytes = fs::read(p).unwrap();
                    fs::write(p, &bytes[..bytes.len() - 20]).unwrap();
                }),
                "truncated",
            ),
            (
                "garbage",
                Box::new(|p| fs::write(p, b"not numpy at all").unwrap()),
                "npy",
            ),
            (
                "dtype",
                Box::new(|p| write_raw(p, &[1, 1, 2], &[1u64, 2], false)),
                "dtype",
            ),
        ];
        for (name, make, expect) in cases {
            let dir = tempfile::tempdir().unwrap();
            let file = layout(dir.path()).join("0000.npy");
            make(&file);
            let err = read_site(dir.path()).unwrap_err();
            let msg = err.to_string();
            assert!(
                msg.contains("0000.npy") && msg.contains(expect),
                "{name}: {msg}"
            );
        }
    }

    #[test]
    fn bad_label_rows_and_missing_layout_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            read_site(dir.path()),
            Err(MrnetError::NotMrnet { .. })
        ));
        layout(dir.path());
        fs::write(dir.path().join("train-acl.csv"), "0,2\n").unwrap();
        assert!(matches!(
            read_site(dir.path()),
            Err(MrnetError::Labels { .. })
        ));
        fs::write(dir.path().join("train-acl.csv"), "0,1\n0,0\n").unwrap();
        assert!(matches!(
            read_site(dir.path()),
            Err(MrnetError::Labels { .. })
        ));
    }
}
