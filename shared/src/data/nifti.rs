//! NIfTI-1 volumes (`.nii`, `.nii.gz`, `.hdr`/`.img` pairs) into [`Volume`]s
//! in the same orientation the DICOM reader produces, and a writer for the
//! phantom.
//!
//! The `nifti` crate parses the 348-byte header; everything after it is read
//! here. The crate's own volume reader reserves whatever the header declares
//! (dimensions, extension sizes) before reading a byte, so a few corrupt header
//! bytes could cost gigabytes; here every declared size is checked against the
//! bytes that follow, extensions are only skipped, and only the first volume
//! is held in memory. Conversion, scaling and reorientation are done here
//! because the crate converts types and affines only through ndarray/nalgebra,
//! which the site agent does not otherwise need. NIfTI-2 files are not
//! supported by the crate and are rejected with a clear error.
//!
//! # Orientation of the returned volume
//!
//! NIfTI world space is RAS+ (+x right, +y anterior, +z superior). The voxel
//! axis whose affine direction is closest to the chosen plane's normal becomes
//! the depth; the others become height and width, each flipped if needed, so
//! that for every file the output matches a DICOM series of that plane:
//!
//! | plane    | depth grows towards | height (rows) grow towards | width (columns) grow towards |
//! |----------|---------------------|----------------------------|------------------------------|
//! | sagittal | right (+x)          | inferior (−z)              | posterior (−y)               |
//! | coronal  | posterior (−y)      | inferior (−z)              | patient left (−x)            |
//! | axial    | superior (+z)       | posterior (−y)             | patient left (−x)            |
//!
//! 4-D (and higher) files: the first volume (t = 0) is read; the count of
//! volumes in the file is reported.

use std::fs::File;
use std::io::{self, BufReader, Read, Write};
use std::path::{Path, PathBuf};

use nifti::{Endianness, NiftiHeader};

use crate::data::Volume;
use crate::data::dicom::{Plane, Spacing};

/// Why a NIfTI file could not become a volume.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NiftiReadError {
    #[error("{path}: cannot read NIfTI: {reason}")]
    Unreadable { path: PathBuf, reason: String },
    #[error("{path}: unsupported NIfTI datatype {code} ({name})")]
    UnsupportedDatatype {
        path: PathBuf,
        code: i16,
        name: &'static str,
    },
    #[error("{path}: invalid header: {reason}")]
    InvalidHeader { path: PathBuf, reason: String },
    #[error("{path}: invalid scaling: scl_slope={slope}, scl_inter={inter}")]
    InvalidScaling {
        path: PathBuf,
        slope: f32,
        inter: f32,
    },
    #[error("{path}: {count} voxels are NaN or infinite")]
    NonFiniteVoxels { path: PathBuf, count: usize },
    #[error("{plane} is not a slicing plane")]
    NoSuchPlane { plane: Plane },
}

/// A NIfTI volume in the documented orientation.
#[derive(Debug, Clone)]
pub struct NiftiVolume {
    /// Scaled values (scl_slope/scl_inter applied when the slope is non-zero).
    pub volume: Volume,
    /// Spacing along depth, height and width in mm, from the affine.
    pub spacing: Spacing,
    /// The plane the depth axis slices in.
    pub plane: Plane,
    /// Which voxel axis (0 = i, 1 = j, 2 = k) became depth, height, width.
    pub axes: [usize; 3],
    /// Whether each of those axes was reversed.
    pub flipped: [bool; 3],
    /// Volumes in the file (the 4th dimension); only the first was read.
    pub volumes_in_file: usize,
    /// The NIfTI datatype code of the stored voxels.
    pub datatype: i16,
    /// Which transform gave the geometry.
    pub transform: Transform,
}

/// Where the voxel-to-world transform came from (NIfTI-1 methods 3, 2, 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transform {
    Sform,
    Qform,
    /// Neither code set: pixdim scaling only, orientation unknown (assumed RAS).
    PixdimOnly,
}

/// Reads a NIfTI file sliced sagittally (the knee task's plane).
pub fn read_nifti(path: &Path) -> Result<NiftiVolume, NiftiReadError> {
    read_nifti_plane(path, Plane::Sagittal)
}

/// The first volume of a file may not need more memory than this; larger
/// declarations are refused before anything is read. A knee MRI volume is
/// tens of MB.
pub const MAX_VOLUME_BYTES: u64 = 1 << 31;

/// Size of the NIfTI-1 header proper, and where the voxels of a single-file
/// `.nii` can start at the earliest (header plus the 4-byte extension flag).
const HEADER_BYTES: u64 = 348;
const MIN_VOX_OFFSET: u64 = 352;

fn img_to_hdr(path: &Path) -> Option<PathBuf> {
    let name = path.file_name()?.to_str()?;
    let stem = name
        .strip_suffix(".img.gz")
        .or_else(|| name.strip_suffix(".img"))?;
    let hdr = path.with_file_name(format!("{stem}.hdr"));
    hdr.exists().then_some(hdr)
}

/// The `.img` (or `.img.gz`) beside a `.hdr` (or `.hdr.gz`).
fn hdr_to_img(path: &Path) -> Option<PathBuf> {
    let name = path.file_name()?.to_str()?;
    let stem = name
        .strip_suffix(".hdr.gz")
        .or_else(|| name.strip_suffix(".hdr"))?;
    [".img.gz", ".img"]
        .iter()
        .map(|ext| path.with_file_name(format!("{stem}{ext}")))
        .find(|p| p.exists())
}

/// An open file, decompressed if its name ends in `.gz`.
struct Source {
    reader: Box<dyn Read>,
    /// The file's length when it is not compressed (known before reading).
    len: Option<u64>,
}

fn open_source(path: &Path) -> io::Result<Source> {
    let file = File::open(path)?;
    let len = file.metadata()?.len();
    let file = BufReader::new(file);
    if path.to_string_lossy().ends_with(".gz") {
        Ok(Source {
            reader: Box::new(flate2::read::GzDecoder::new(file)),
            len: None,
        })
    } else {
        Ok(Source {
            reader: Box::new(file),
            len: Some(len),
        })
    }
}

/// Reads and discards up to `n` bytes; returns how many there were.
fn skip(r: &mut dyn Read, n: u64) -> io::Result<u64> {
    io::copy(&mut r.take(n), &mut io::sink())
}

/// Walks the extensions of a single-file NIfTI (the stream is just past the
/// header) and skips to the voxel data at `data_start`. Each extension must
/// fit between the header and `data_start`; bytes left over are padding.
fn skip_to_data(r: &mut dyn Read, data_start: u64, big_endian: bool) -> Result<(), String> {
    let mut pos = HEADER_BYTES;
    let ended =
        |pos: u64| format!("the file ends at byte {pos}, before the voxel data at {data_start}");
    let mut flag = [0u8; 4];
    r.read_exact(&mut flag).map_err(|_| ended(pos))?;
    pos += 4;
    if flag[0] != 0 {
        while data_start - pos >= 8 {
            let mut head = [0u8; 8];
            r.read_exact(&mut head).map_err(|_| ended(pos))?;
            let size = [head[0], head[1], head[2], head[3]];
            let esize = if big_endian {
                i32::from_be_bytes(size)
            } else {
                i32::from_le_bytes(size)
            };
            if esize < 8 || i64::from(esize) > (data_start - pos) as i64 {
                return Err(format!(
                    "extension at byte {pos} declares {esize} bytes; {} remain before the voxel data",
                    data_start - pos
                ));
            }
            let body = esize as u64 - 8;
            if skip(r, body).map_err(|e| e.to_string())? < body {
                return Err(ended(pos + 8));
            }
            pos += esize as u64;
        }
    }
    let gap = data_start - pos;
    if skip(r, gap).map_err(|e| e.to_string())? < gap {
        return Err(ended(pos));
    }
    Ok(())
}

/// Reads a NIfTI file sliced in `plane`.
pub fn read_nifti_plane(path: &Path, plane: Plane) -> Result<NiftiVolume, NiftiReadError> {
    let targets = match plane {
        Plane::Sagittal => [[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, -1.0, 0.0]],
        Plane::Coronal => [[0.0, -1.0, 0.0], [0.0, 0.0, -1.0], [-1.0, 0.0, 0.0]],
        Plane::Axial => [[0.0, 0.0, 1.0], [0.0, -1.0, 0.0], [-1.0, 0.0, 0.0]],
        Plane::Unknown => return Err(NiftiReadError::NoSuchPlane { plane }),
    };
    let unreadable = |reason: String| NiftiReadError::Unreadable {
        path: path.to_path_buf(),
        reason,
    };
    let invalid = |reason: String| NiftiReadError::InvalidHeader {
        path: path.to_path_buf(),
        reason,
    };

    let (hdr_path, img_path) = match img_to_hdr(path) {
        Some(hdr) => (hdr, Some(path.to_path_buf())),
        None => (path.to_path_buf(), None),
    };
    let mut source = open_source(&hdr_path).map_err(|e| unreadable(e.to_string()))?;
    let header =
        NiftiHeader::from_reader(&mut source.reader).map_err(|e| unreadable(e.to_string()))?;

    let ndim = usize::from(header.dim[0]);
    if !(1..=7).contains(&ndim) {
        return Err(invalid(format!("dim[0] = {ndim}")));
    }
    let mut shape = [1usize; 3];
    for (a, s) in shape.iter_mut().enumerate().take(ndim.min(3)) {
        *s = usize::from(header.dim[a + 1]);
    }
    if shape.contains(&0) {
        return Err(invalid(format!("a spatial dimension is zero ({shape:?})")));
    }
    if let Some(a) = (4..=ndim).find(|&a| header.dim[a] == 0) {
        return Err(invalid(format!("dim[{a}] is zero")));
    }
    let volumes_in_file: u64 = (4..=ndim).map(|a| u64::from(header.dim[a])).product();

    let size = datatype_size(header.datatype).ok_or(NiftiReadError::UnsupportedDatatype {
        path: path.to_path_buf(),
        code: header.datatype,
        name: datatype_name(header.datatype),
    })?;
    // At most 65535³ voxels × 8 bytes, and at most 65535⁴ volumes: u64 holds
    // the first, the total needs checking.
    let n = shape[0] * shape[1] * shape[2];
    let first = n as u64 * size as u64;
    if first > MAX_VOLUME_BYTES {
        return Err(invalid(format!(
            "the first volume would be {first} bytes, over the {MAX_VOLUME_BYTES}-byte limit"
        )));
    }
    let total = first
        .checked_mul(volumes_in_file)
        .ok_or_else(|| invalid("the declared data size overflows".into()))?;

    let vox_offset = header.vox_offset;
    if !vox_offset.is_finite() || vox_offset < 0.0 {
        return Err(invalid(format!("vox_offset = {vox_offset}")));
    }
    let big = matches!(header.endianness, Endianness::Big);
    let (mut data, data_start) = if &header.magic == b"n+1\0" {
        // One file: extensions and padding lie between the header and the
        // voxels. An offset inside the header itself is read as the earliest
        // possible one, as the nifti crate did.
        let start = (vox_offset as u64).max(MIN_VOX_OFFSET);
        skip_to_data(&mut source.reader, start, big).map_err(&unreadable)?;
        (source, start)
    } else {
        // "ni1": the voxels are in the .img, `vox_offset` bytes in.
        let img = img_path
            .or_else(|| hdr_to_img(&hdr_path))
            .ok_or_else(|| unreadable("the header's image file (.img) is missing".into()))?;
        let mut img = open_source(&img).map_err(|e| unreadable(e.to_string()))?;
        let start = vox_offset as u64;
        if skip(&mut img.reader, start).map_err(|e| unreadable(e.to_string()))? < start {
            return Err(unreadable(format!(
                "the image file ends before the voxel data at byte {start}"
            )));
        }
        (img, start)
    };
    let short = |got: u64| {
        unreadable(format!(
            "voxel data is {got} bytes, the header declares {total}"
        ))
    };
    // An uncompressed file's size settles it before any allocation; a gzip
    // stream's buffer grows only as bytes arrive, so one shorter than its
    // header claims costs no more memory than it holds.
    let mut raw = Vec::new();
    if let Some(len) = data.len {
        let got = len.saturating_sub(data_start);
        if got < total {
            return Err(short(got));
        }
        raw.reserve_exact(first as usize);
    }
    let got = (&mut data.reader)
        .take(first)
        .read_to_end(&mut raw)
        .map_err(|e| unreadable(e.to_string()))? as u64;
    if got < first {
        return Err(short(got));
    }
    // The other volumes are never used, but their absence means a truncated file.
    let rest = skip(&mut data.reader, total - first).map_err(|e| unreadable(e.to_string()))?;
    if rest < total - first {
        return Err(short(first + rest));
    }
    let volumes_in_file = volumes_in_file as usize;

    let slope = header.scl_slope;
    let inter = header.scl_inter;
    let scaling = if slope == 0.0 {
        None
    } else if slope.is_finite() && inter.is_finite() {
        Some((f64::from(slope), f64::from(inter)))
    } else {
        return Err(NiftiReadError::InvalidScaling {
            path: path.to_path_buf(),
            slope,
            inter,
        });
    };

    let big = matches!(header.endianness, Endianness::Big);
    let mut values = Vec::with_capacity(n);
    for chunk in raw[..n * size].chunks_exact(size) {
        let v = sample(header.datatype, chunk, big);
        let v = match scaling {
            Some((s, i)) => v * s + i,
            None => v,
        };
        values.push(v as f32);
    }
    let bad = values.iter().filter(|v| !v.is_finite()).count();
    if bad > 0 {
        return Err(NiftiReadError::NonFiniteVoxels {
            path: path.to_path_buf(),
            count: bad,
        });
    }

    let (matrix, transform) = affine(&header).map_err(invalid)?;
    let columns: Vec<[f64; 3]> = (0..3)
        .map(|a| [matrix[0][a], matrix[1][a], matrix[2][a]])
        .collect();
    let norms: Vec<f64> = columns
        .iter()
        .map(|c| (c[0] * c[0] + c[1] * c[1] + c[2] * c[2]).sqrt())
        .collect();
    if norms.iter().any(|v| !v.is_finite() || *v <= 0.0) {
        return Err(invalid("degenerate voxel-to-world transform".into()));
    }
    let cosine = |axis: usize, t: &[f64; 3]| {
        let c = columns[axis];
        (c[0] * t[0] + c[1] * t[1] + c[2] * t[2]) / norms[axis]
    };

    // The assignment of voxel axes to output axes that best matches the plane.
    const PERMS: [[usize; 3]; 6] = [
        [0, 1, 2],
        [0, 2, 1],
        [1, 0, 2],
        [1, 2, 0],
        [2, 0, 1],
        [2, 1, 0],
    ];
    let mut axes = PERMS[0];
    let mut best = f64::NEG_INFINITY;
    for p in PERMS {
        let score: f64 = (0..3).map(|o| cosine(p[o], &targets[o]).abs()).sum();
        if score > best + 1e-9 {
            best = score;
            axes = p;
        }
    }
    let flipped = [0, 1, 2].map(|o| cosine(axes[o], &targets[o]) < 0.0);

    let (d, h, w) = (shape[axes[0]], shape[axes[1]], shape[axes[2]]);
    let mut volume = Volume::zeros(d, h, w);
    let strides = [1, shape[0], shape[0] * shape[1]];
    let mut out = 0;
    for z in 0..d {
        let vz = if flipped[0] { d - 1 - z } else { z };
        for y in 0..h {
            let vy = if flipped[1] { h - 1 - y } else { y };
            let base = vz * strides[axes[0]] + vy * strides[axes[1]];
            for x in 0..w {
                let vx = if flipped[2] { w - 1 - x } else { x };
                volume.voxels[out] = values[base + vx * strides[axes[2]]];
                out += 1;
            }
        }
    }

    Ok(NiftiVolume {
        volume,
        spacing: Spacing {
            slice: norms[axes[0]],
            row: norms[axes[1]],
            col: norms[axes[2]],
        },
        plane,
        axes,
        flipped,
        volumes_in_file,
        datatype: header.datatype,
        transform,
    })
}

/// Bytes per voxel of the scalar datatypes we convert (complex, RGB and
/// float128 are refused: they have no single MR intensity).
fn datatype_size(code: i16) -> Option<usize> {
    match code {
        2 | 256 => Some(1),
        4 | 512 => Some(2),
        8 | 16 | 768 => Some(4),
        64 | 1024 | 1280 => Some(8),
        _ => None,
    }
}

fn datatype_name(code: i16) -> &'static str {
    match code {
        2 => "uint8",
        4 => "int16",
        8 => "int32",
        16 => "float32",
        32 => "complex64",
        64 => "float64",
        128 => "rgb24",
        256 => "int8",
        512 => "uint16",
        768 => "uint32",
        1024 => "int64",
        1280 => "uint64",
        1536 => "float128",
        1792 => "complex128",
        2048 => "complex256",
        2304 => "rgba32",
        _ => "unknown",
    }
}

fn sample(code: i16, b: &[u8], big: bool) -> f64 {
    macro_rules! num {
        ($t:ty, $n:literal) => {{
            let mut a = [0u8; $n];
            a.copy_from_slice(b);
            if big {
                <$t>::from_be_bytes(a)
            } else {
                <$t>::from_le_bytes(a)
            }
        }};
    }
    match code {
        2 => f64::from(b[0]),
        256 => f64::from(b[0] as i8),
        4 => f64::from(num!(i16, 2)),
        512 => f64::from(num!(u16, 2)),
        8 => f64::from(num!(i32, 4)),
        768 => f64::from(num!(u32, 4)),
        16 => f64::from(num!(f32, 4)),
        64 => num!(f64, 8),
        1024 => num!(i64, 8) as f64,
        _ => num!(u64, 8) as f64,
    }
}

/// The voxel-to-world (RAS) 3×4 matrix: sform if set, else qform, else pixdim.
fn affine(h: &nifti::NiftiHeader) -> Result<([[f64; 4]; 3], Transform), String> {
    let f = f64::from;
    if h.sform_code > 0 {
        let rows = [h.srow_x, h.srow_y, h.srow_z].map(|r| r.map(f));
        if rows.iter().flatten().any(|v| !v.is_finite()) {
            return Err("non-finite sform".into());
        }
        return Ok((rows, Transform::Sform));
    }
    let pix = [f(h.pixdim[1]), f(h.pixdim[2]), f(h.pixdim[3])];
    if pix.iter().any(|v| !v.is_finite()) {
        return Err("non-finite pixdim".into());
    }
    // Voxel sizes are magnitudes; a zero size (2-D files) means 1 mm.
    let pix = pix.map(|v| if v == 0.0 { 1.0 } else { v.abs() });
    if h.qform_code > 0 {
        let (b, c, d) = (f(h.quatern_b), f(h.quatern_c), f(h.quatern_d));
        if ![b, c, d].iter().all(|v| v.is_finite()) {
            return Err("non-finite quaternion".into());
        }
        let a2 = 1.0 - (b * b + c * c + d * d);
        let (a, b, c, d) = if a2 < 1e-7 {
            // The standard's recipe for a 180° rotation: renormalise b, c, d.
            let s = (b * b + c * c + d * d).sqrt();
            (0.0, b / s, c / s, d / s)
        } else {
            (a2.sqrt(), b, c, d)
        };
        let qfac = if h.pixdim[0] < 0.0 { -1.0 } else { 1.0 };
        let r = [
            [
                a * a + b * b - c * c - d * d,
                2.0 * (b * c - a * d),
                2.0 * (b * d + a * c),
            ],
            [
                2.0 * (b * c + a * d),
                a * a + c * c - b * b - d * d,
                2.0 * (c * d - a * b),
            ],
            [
                2.0 * (b * d - a * c),
                2.0 * (c * d + a * b),
                a * a + d * d - c * c - b * b,
            ],
        ];
        let scale = [pix[0], pix[1], pix[2] * qfac];
        let off = [f(h.quatern_x), f(h.quatern_y), f(h.quatern_z)];
        let m = [0, 1, 2].map(|i| {
            [
                r[i][0] * scale[0],
                r[i][1] * scale[1],
                r[i][2] * scale[2],
                off[i],
            ]
        });
        return Ok((m, Transform::Qform));
    }
    Ok((
        [
            [pix[0], 0.0, 0.0, 0.0],
            [0.0, pix[1], 0.0, 0.0],
            [0.0, 0.0, pix[2], 0.0],
        ],
        Transform::PixdimOnly,
    ))
}

/// Why a volume could not be written as NIfTI.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NiftiWriteError {
    #[error("volume has no voxels or its shape does not fit NIfTI-1 (≤ 32767 per axis)")]
    BadShape,
    #[error("spacing must be finite and positive, got {0:?}")]
    InvalidSpacing(Spacing),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Writes a sagittal-convention volume (see the module docs) as gzipped
/// float32 NIfTI-1 (`.nii.gz`; plain `.nii` if the name does not end in `.gz`).
///
/// float32 holds every f32 exactly, so reading back is bit-identical. The
/// voxel axes are i = width, j = height, k = depth, which makes the file's
/// Fortran order the same bytes as the volume's row-major order, and the
/// affine (sform and qform) maps them to posterior, inferior and right.
pub fn write_nifti(path: &Path, volume: &Volume, spacing: Spacing) -> Result<(), NiftiWriteError> {
    let (d, h, w) = (volume.depth, volume.height, volume.width);
    if d == 0 || h == 0 || w == 0 || d > 32767 || h > 32767 || w > 32767 {
        return Err(NiftiWriteError::BadShape);
    }
    if volume.voxels.len() != d * h * w {
        return Err(NiftiWriteError::BadShape);
    }
    if [spacing.slice, spacing.row, spacing.col]
        .iter()
        .any(|s| !s.is_finite() || *s <= 0.0)
    {
        return Err(NiftiWriteError::InvalidSpacing(spacing));
    }
    let (sx, sy, sz) = (spacing.col as f32, spacing.row as f32, spacing.slice as f32);
    // Centre of the volume at the world origin.
    let ox = -((d - 1) as f32) * sz / 2.0;
    let oy = (w - 1) as f32 * sx / 2.0;
    let oz = (h - 1) as f32 * sy / 2.0;

    let mut hdr = vec![0u8; 352];
    let put_i16 = |b: &mut [u8], at: usize, v: i16| b[at..at + 2].copy_from_slice(&v.to_le_bytes());
    let put_f32 = |b: &mut [u8], at: usize, v: f32| b[at..at + 4].copy_from_slice(&v.to_le_bytes());
    hdr[0..4].copy_from_slice(&348i32.to_le_bytes());
    hdr[38] = b'r';
    for (i, v) in [3, w as i16, h as i16, d as i16, 1, 1, 1, 1]
        .into_iter()
        .enumerate()
    {
        put_i16(&mut hdr, 40 + 2 * i, v);
    }
    put_i16(&mut hdr, 70, 16); // datatype float32
    put_i16(&mut hdr, 72, 32); // bitpix
    for (i, v) in [1.0, sx, sy, sz, 0.0, 0.0, 0.0, 0.0]
        .into_iter()
        .enumerate()
    {
        put_f32(&mut hdr, 76 + 4 * i, v);
    }
    put_f32(&mut hdr, 108, 352.0); // vox_offset
    put_f32(&mut hdr, 112, 1.0); // scl_slope
    put_f32(&mut hdr, 116, 0.0); // scl_inter
    hdr[123] = 2; // xyzt_units: mm
    let descrip = b"fedslice synthetic phantom";
    hdr[148..148 + descrip.len()].copy_from_slice(descrip);
    put_i16(&mut hdr, 252, 1); // qform_code: scanner
    put_i16(&mut hdr, 254, 1); // sform_code: scanner
    // Rotation [[0,0,1],[-1,0,0],[0,-1,0]] as a quaternion (a = 0.5).
    put_f32(&mut hdr, 256, -0.5);
    put_f32(&mut hdr, 260, 0.5);
    put_f32(&mut hdr, 264, -0.5);
    put_f32(&mut hdr, 268, ox);
    put_f32(&mut hdr, 272, oy);
    put_f32(&mut hdr, 276, oz);
    for (i, v) in [0.0, 0.0, sz, ox].into_iter().enumerate() {
        put_f32(&mut hdr, 280 + 4 * i, v);
    }
    for (i, v) in [-sx, 0.0, 0.0, oy].into_iter().enumerate() {
        put_f32(&mut hdr, 296 + 4 * i, v);
    }
    for (i, v) in [0.0, -sy, 0.0, oz].into_iter().enumerate() {
        put_f32(&mut hdr, 312 + 4 * i, v);
    }
    hdr[344..348].copy_from_slice(b"n+1\0");

    let mut body = hdr;
    body.reserve(volume.voxels.len() * 4);
    for v in &volume.voxels {
        body.extend_from_slice(&v.to_le_bytes());
    }
    let io = |source| NiftiWriteError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::create(path).map_err(io)?;
    let mut file = std::io::BufWriter::new(file);
    if path.extension().is_some_and(|e| e == "gz") {
        let mut gz = flate2::write::GzEncoder::new(file, flate2::Compression::fast());
        gz.write_all(&body).map_err(io)?;
        gz.finish().map_err(io)?.flush().map_err(io)?;
    } else {
        file.write_all(&body).map_err(io)?;
        file.flush().map_err(io)?;
    }
    Ok(())
}
