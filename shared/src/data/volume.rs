//! The in-memory form of one exam, independent of the file format it came from.

/// A stack of 2-D slices (`depth × height × width`, row-major, slice-major).
///
/// Intensities are in the source's own units (after any rescale slope/intercept);
/// normalisation happens in preprocessing, never in the readers.
#[derive(Debug, Clone, PartialEq)]
pub struct Volume {
    pub depth: usize,
    pub height: usize,
    pub width: usize,
    pub voxels: Vec<f32>,
}

impl Volume {
    /// A volume of zeros.
    pub fn zeros(depth: usize, height: usize, width: usize) -> Self {
        Self {
            depth,
            height,
            width,
            voxels: vec![0.0; depth * height * width],
        }
    }

    /// Number of voxels in one slice.
    pub fn slice_len(&self) -> usize {
        self.height * self.width
    }

    /// Slice `z` as a row-major `height × width` view.
    pub fn slice(&self, z: usize) -> &[f32] {
        let n = self.slice_len();
        &self.voxels[z * n..(z + 1) * n]
    }

    /// Mutable slice `z`.
    pub fn slice_mut(&mut self, z: usize) -> &mut [f32] {
        let n = self.slice_len();
        &mut self.voxels[z * n..(z + 1) * n]
    }

    /// Voxel at (z, y, x).
    pub fn at(&self, z: usize, y: usize, x: usize) -> f32 {
        self.voxels[(z * self.height + y) * self.width + x]
    }
}

/// Voxel spacing in millimetres.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Spacing {
    /// Between consecutive slices (depth).
    pub slice: f64,
    /// Between consecutive rows (height): DICOM PixelSpacing\[0\].
    pub row: f64,
    /// Between consecutive columns (width): DICOM PixelSpacing\[1\].
    pub col: f64,
}

impl Spacing {
    /// Finite and positive along every axis.
    pub fn is_valid(&self) -> bool {
        [self.slice, self.row, self.col]
            .iter()
            .all(|v| v.is_finite() && *v > 0.0)
    }
}

/// One exam as the training code sees it.
#[derive(Debug, Clone)]
pub struct Exam {
    /// Identifier local to the site (never a patient identifier).
    pub id: String,
    pub volume: Volume,
    /// `Some(true)` = ACL tear, `Some(false)` = intact, `None` = unlabelled.
    pub label: Option<bool>,
    /// Voxel spacing when the format records it (DICOM, NIfTI); MRNet `.npy`
    /// files carry none, and preprocessing then assumes a field of view.
    pub spacing: Option<Spacing>,
}
