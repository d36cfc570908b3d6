//! A PNG a person can look at to judge whether a cohort looks like knees and tears.
//!
//! Numbers in tests say a tear changes the ACL region; only a picture says it changes it
//! the way a radiologist would expect, so every cohort can be eyeballed in seconds.

use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};

use crate::data::Volume;

#[derive(Debug, thiserror::Error)]
pub enum PreviewError {
    #[error("montage needs at least one slice per row")]
    NoSlices,
    #[error("grid tile {row}/{col} has {len} pixels, not {height}×{width}")]
    BadTile {
        row: usize,
        col: usize,
        len: usize,
        height: usize,
        width: usize,
    },
    #[error("the {0} volume is empty")]
    EmptyVolume(&'static str),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Png {
        path: PathBuf,
        #[source]
        source: png::EncodingError,
    },
}

/// Frame colour of a torn exam's tiles.
pub const TORN: [u8; 3] = [220, 40, 40];
/// Frame colour of an intact exam's tiles.
pub const INTACT: [u8; 3] = [40, 190, 60];
/// Frame colour of a tile that is neither (e.g. a slice off the ligament).
pub const NEUTRAL: [u8; 3] = [90, 90, 90];

/// Frame width in pixels around every tile.
fn border(tile: usize) -> usize {
    (tile / 64).max(2)
}

/// Writes an RGB montage of two rows of tiles.
///
/// Layout: top row = the `torn` exam's `slices` central slices, bottom row = the
/// `intact` exam's, left to right in slice order (medial → lateral). Each tile is one
/// slice window-levelled to its own volume's 1st–99th percentiles, surrounded by a
/// frame `b = max(2, tile/64)` pixels wide: red for the torn row, green for the intact
/// row. Tiles are `max(H) + 2b` high and `max(W) + 2b` wide over both volumes (smaller
/// slices are centred on black), so the image is `slices × tile_w` by `2 × tile_h`.
/// A volume with fewer slices than asked leaves black tiles at the end of its row.
pub fn write_montage(
    path: &Path,
    torn: &Volume,
    intact: &Volume,
    slices: usize,
) -> Result<(), PreviewError> {
    if slices == 0 {
        return Err(PreviewError::NoSlices);
    }
    for (name, v) in [("torn", torn), ("intact", intact)] {
        if v.depth == 0
            || v.height == 0
            || v.width == 0
            || v.voxels.len() != v.depth * v.slice_len()
        {
            return Err(PreviewError::EmptyVolume(name));
        }
    }
    let h = torn.height.max(intact.height);
    let w = torn.width.max(intact.width);
    let b = border(h.max(w));
    let (tile_h, tile_w) = (h + 2 * b, w + 2 * b);
    let (img_w, img_h) = (slices * tile_w, 2 * tile_h);
    let mut rgb = vec![0u8; img_w * img_h * 3];
    for (row, (v, colour)) in [(torn, TORN), (intact, INTACT)].into_iter().enumerate() {
        let (lo, hi) = window(v);
        let shown = slices.min(v.depth);
        let first = (v.depth - shown) / 2;
        for col in 0..slices {
            let (ty, tx) = (row * tile_h, col * tile_w);
            for y in 0..tile_h {
                for x in 0..tile_w {
                    let frame = y < b || x < b || y >= tile_h - b || x >= tile_w - b;
                    if frame {
                        put(&mut rgb, img_w, ty + y, tx + x, colour);
                    }
                }
            }
            if col >= shown {
                continue;
            }
            let s = v.slice(first + col);
            let (oy, ox) = (b + (h - v.height) / 2, b + (w - v.width) / 2);
            for y in 0..v.height {
                for x in 0..v.width {
                    let g = (((s[y * v.width + x] - lo) / (hi - lo)).clamp(0.0, 1.0) * 255.0)
                        .round() as u8;
                    put(&mut rgb, img_w, ty + oy + y, tx + ox + x, [g, g, g]);
                }
            }
        }
    }
    write_rgb(path, &rgb, img_w, img_h)
}

fn write_rgb(path: &Path, rgb: &[u8], img_w: usize, img_h: usize) -> Result<(), PreviewError> {
    let file = File::create(path).map_err(|source| PreviewError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let png_err = |source| PreviewError::Png {
        path: path.to_path_buf(),
        source,
    };
    let mut enc = png::Encoder::new(BufWriter::new(file), img_w as u32, img_h as u32);
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    enc.set_compression(png::Compression::Fast);
    let mut writer = enc.write_header().map_err(png_err)?;
    writer.write_image_data(rgb).map_err(png_err)?;
    writer.finish().map_err(png_err)
}

/// One slice to place in a [`write_grid`] montage.
#[derive(Debug, Clone)]
pub struct Tile {
    pub pixels: Vec<f32>,
    pub height: usize,
    pub width: usize,
    /// Grey levels shown black and white.
    pub window: (f32, f32),
    pub frame: [u8; 3],
}

impl Tile {
    /// Slice `z` of `v`, window-levelled to the volume's 1st–99th percentiles.
    /// `None` when `z` is outside the volume.
    pub fn from_volume(v: &Volume, z: usize, frame: [u8; 3]) -> Option<Self> {
        (z < v.depth && v.voxels.len() == v.depth * v.slice_len()).then(|| Self {
            pixels: v.slice(z).to_vec(),
            height: v.height,
            width: v.width,
            window: window(v),
            frame,
        })
    }
}

/// Writes an RGB montage of rows of tiles.
///
/// Every tile is resampled (area average, or nearest when enlarging) to
/// `tile × tile` pixels, whatever its own matrix, so slices of different fields of
/// view and matrices compare at the same displayed size; each is surrounded by a frame
/// `b = max(2, tile/64)` pixels wide in its own colour. Rows may differ in length;
/// missing cells stay black. The image is `max_row_len × (tile + 2b)` wide and
/// `rows × (tile + 2b)` high.
pub fn write_grid(path: &Path, rows: &[Vec<Tile>], tile: usize) -> Result<(), PreviewError> {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    if cols == 0 || tile == 0 {
        return Err(PreviewError::NoSlices);
    }
    for (r, row) in rows.iter().enumerate() {
        for (c, t) in row.iter().enumerate() {
            if t.height == 0 || t.width == 0 || t.pixels.len() != t.height * t.width {
                return Err(PreviewError::BadTile {
                    row: r,
                    col: c,
                    len: t.pixels.len(),
                    height: t.height,
                    width: t.width,
                });
            }
        }
    }
    let b = border(tile);
    let cell = tile + 2 * b;
    let (img_w, img_h) = (cols * cell, rows.len() * cell);
    let mut rgb = vec![0u8; img_w * img_h * 3];
    for (r, row) in rows.iter().enumerate() {
        for (c, t) in row.iter().enumerate() {
            let (ty, tx) = (r * cell, c * cell);
            for y in 0..cell {
                for x in 0..cell {
                    if y < b || x < b || y >= cell - b || x >= cell - b {
                        put(&mut rgb, img_w, ty + y, tx + x, t.frame);
                    }
                }
            }
            let (lo, hi) = t.window;
            let span = if hi > lo { hi - lo } else { 1.0 };
            let (sy, sx) = (t.height as f32 / tile as f32, t.width as f32 / tile as f32);
            for y in 0..tile {
                let (y0, y1) = span_of(y, sy, t.height);
                for x in 0..tile {
                    let (x0, x1) = span_of(x, sx, t.width);
                    let mut acc = 0.0;
                    for yy in y0..y1 {
                        for xx in x0..x1 {
                            acc += t.pixels[yy * t.width + xx];
                        }
                    }
                    let mean = acc / ((y1 - y0) * (x1 - x0)) as f32;
                    let g = (((mean - lo) / span).clamp(0.0, 1.0) * 255.0).round() as u8;
                    put(&mut rgb, img_w, ty + b + y, tx + b + x, [g, g, g]);
                }
            }
        }
    }
    write_rgb(path, &rgb, img_w, img_h)
}

/// Source pixels `[start, end)` covered by output pixel `i` at `scale` source pixels
/// per output pixel; at least one.
fn span_of(i: usize, scale: f32, len: usize) -> (usize, usize) {
    let start = ((i as f32 * scale) as usize).min(len - 1);
    let end = (((i + 1) as f32 * scale).ceil() as usize).clamp(start + 1, len);
    (start, end)
}

fn put(rgb: &mut [u8], img_w: usize, y: usize, x: usize, c: [u8; 3]) {
    let i = (y * img_w + x) * 3;
    rgb[i..i + 3].copy_from_slice(&c);
}

/// 1st and 99th percentile of a volume, widened if flat so division is safe.
pub fn window(v: &Volume) -> (f32, f32) {
    let mut vals: Vec<f32> = v.voxels.iter().copied().filter(|x| x.is_finite()).collect();
    if vals.is_empty() {
        return (0.0, 1.0);
    }
    vals.sort_unstable_by(f32::total_cmp);
    let at = |p: f64| vals[((vals.len() - 1) as f64 * p).round() as usize];
    let (lo, hi) = (at(0.01), at(0.99));
    if hi > lo { (lo, hi) } else { (lo, lo + 1.0) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ramp(depth: usize, h: usize, w: usize) -> Volume {
        let mut v = Volume::zeros(depth, h, w);
        for (i, x) in v.voxels.iter_mut().enumerate() {
            *x = (i % 97) as f32;
        }
        v
    }

    fn decode(path: &Path) -> (u32, u32, Vec<u8>) {
        let file = std::io::BufReader::new(File::open(path).unwrap());
        let mut reader = png::Decoder::new(file).read_info().unwrap();
        let mut buf = vec![0; reader.output_buffer_size().unwrap()];
        let info = reader.next_frame(&mut buf).unwrap();
        (info.width, info.height, buf)
    }

    #[test]
    fn montage_has_documented_size_and_coloured_frames() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.png");
        write_montage(&path, &ramp(5, 32, 32), &ramp(2, 32, 24), 3).unwrap();
        let (w, h, px) = decode(&path);
        let tile = 32 + 2 * 2;
        assert_eq!((w, h), (3 * tile as u32, 2 * tile as u32));
        assert_eq!(&px[0..3], &TORN);
        let bottom_left = (tile * w as usize) * 3;
        assert_eq!(&px[bottom_left..bottom_left + 3], &INTACT);
    }

    #[test]
    fn empty_inputs_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.png");
        assert!(matches!(
            write_montage(&path, &ramp(2, 8, 8), &ramp(2, 8, 8), 0),
            Err(PreviewError::NoSlices)
        ));
        assert!(matches!(
            write_montage(&path, &Volume::zeros(0, 8, 8), &ramp(2, 8, 8), 1),
            Err(PreviewError::EmptyVolume("torn"))
        ));
    }

    #[test]
    fn grid_resamples_tiles_to_one_size() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("g.png");
        let a = Tile::from_volume(&ramp(2, 40, 40), 1, TORN).unwrap();
        let b = Tile::from_volume(&ramp(1, 10, 20), 0, INTACT).unwrap();
        assert!(Tile::from_volume(&ramp(1, 10, 20), 1, INTACT).is_none());
        write_grid(&path, &[vec![a.clone(), b], vec![a]], 20).unwrap();
        let (w, h, px) = decode(&path);
        let cell = 20 + 2 * 2;
        assert_eq!((w, h), (2 * cell as u32, 2 * cell as u32));
        assert_eq!(&px[0..3], &TORN);
        let second = cell * 3;
        assert_eq!(&px[second..second + 3], &INTACT);
        // The missing cell of the second row is black.
        let missing = ((cell + cell / 2) * w as usize + cell + cell / 2) * 3;
        assert_eq!(&px[missing..missing + 3], &[0, 0, 0]);
        assert!(matches!(
            write_grid(&path, &[], 20),
            Err(PreviewError::NoSlices)
        ));
    }
}
