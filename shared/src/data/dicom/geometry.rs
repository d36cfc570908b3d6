//! Patient-space geometry: which anatomical plane a slice lies in and where
//! along the slice normal it sits.
//!
//! DICOM's patient coordinate system is LPS (+x towards the patient's left,
//! +y posterior, +z superior). ImageOrientationPatient gives the direction of a
//! row (first triplet, along which the column index grows) and of a column
//! (second triplet, along which the row index grows); their cross product is the
//! slice normal, and ImagePositionPatient · normal orders the slices regardless
//! of how the scanner numbered them.

pub use crate::data::plane::Plane;

pub use crate::data::Spacing;

/// Two orientations whose direction cosines differ by less than this are the same.
///
/// Scanners write IOP with 5–6 significant digits, so 1e-4 accepts rounding
/// noise while still catching a series that mixes genuinely different planes.
pub(crate) const ORIENTATION_TOLERANCE: f64 = 1e-4;

/// The slice normal (row direction × column direction).
pub fn slice_normal(iop: &[f64; 6]) -> [f64; 3] {
    let r = [iop[0], iop[1], iop[2]];
    let c = [iop[3], iop[4], iop[5]];
    [
        r[1] * c[2] - r[2] * c[1],
        r[2] * c[0] - r[0] * c[2],
        r[0] * c[1] - r[1] * c[0],
    ]
}

/// Position of a slice along `normal`.
pub fn position_along(ipp: &[f64; 3], normal: &[f64; 3]) -> f64 {
    ipp[0] * normal[0] + ipp[1] * normal[1] + ipp[2] * normal[2]
}

/// The plane whose axis the slice normal is closest to.
pub fn plane_of(iop: Option<&[f64; 6]>) -> Plane {
    let Some(iop) = iop else {
        return Plane::Unknown;
    };
    let n = slice_normal(iop);
    let (x, y, z) = (n[0].abs(), n[1].abs(), n[2].abs());
    if x >= y && x >= z {
        Plane::Sagittal
    } else if y >= z {
        Plane::Coronal
    } else {
        Plane::Axial
    }
}

/// Checks that an ImageOrientationPatient value is two orthogonal unit vectors,
/// so that the normal and plane derived from it mean something.
pub(crate) fn validate_orientation(iop: &[f64; 6]) -> Result<(), String> {
    if iop.iter().any(|v| !v.is_finite()) {
        return Err("non-finite direction cosine".into());
    }
    let r = (iop[0] * iop[0] + iop[1] * iop[1] + iop[2] * iop[2]).sqrt();
    let c = (iop[3] * iop[3] + iop[4] * iop[4] + iop[5] * iop[5]).sqrt();
    let dot = iop[0] * iop[3] + iop[1] * iop[4] + iop[2] * iop[5];
    if (r - 1.0).abs() > 1e-2 || (c - 1.0).abs() > 1e-2 {
        return Err(format!(
            "direction cosines are not unit vectors (|row|={r:.4}, |col|={c:.4})"
        ));
    }
    if dot.abs() > 1e-2 {
        return Err(format!(
            "row and column directions are not orthogonal (dot={dot:.4})"
        ));
    }
    Ok(())
}

pub(crate) fn same_orientation(a: &[f64; 6], b: &[f64; 6]) -> bool {
    a.iter()
        .zip(b)
        .all(|(x, y)| (x - y).abs() < ORIENTATION_TOLERANCE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn planes_from_standard_orientations() {
        assert_eq!(plane_of(Some(&[0., 1., 0., 0., 0., -1.])), Plane::Sagittal);
        assert_eq!(plane_of(Some(&[1., 0., 0., 0., 0., -1.])), Plane::Coronal);
        assert_eq!(plane_of(Some(&[1., 0., 0., 0., 1., 0.])), Plane::Axial);
        // The GE fixture: axial, tilted 7.7°.
        assert_eq!(
            plane_of(Some(&[1.0, 0.0, 0.0, 0.0, 0.99096, 0.134158])),
            Plane::Axial
        );
        assert_eq!(plane_of(None), Plane::Unknown);
    }

    #[test]
    fn normal_is_right_handed() {
        assert_eq!(slice_normal(&[1., 0., 0., 0., 1., 0.]), [0., 0., 1.]);
        assert_eq!(slice_normal(&[0., 1., 0., 0., 0., -1.]), [-1., 0., 0.]);
    }

    #[test]
    fn rejects_degenerate_orientation() {
        assert!(validate_orientation(&[1., 0., 0., 1., 0., 0.]).is_err());
        assert!(validate_orientation(&[0., 0., 0., 0., 1., 0.]).is_err());
        assert!(validate_orientation(&[f64::NAN, 0., 0., 0., 1., 0.]).is_err());
        assert!(validate_orientation(&[1., 0., 0., 0., 1., 0.]).is_ok());
    }
}
