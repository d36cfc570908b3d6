//! Strip charts of per-seed results, written as PNG: one row per arm of a
//! study, a dot per seed, the mean as a tick and mean ± sample sd as a bar.
//!
//! It owns the layout, the colours and the embedded font (a DejaVu Sans Mono
//! subset, licence in `shared/assets/LICENSE-DejaVu.txt`), so a chart renders
//! the same on every machine without looking up system fonts. It does not
//! compute or judge results: callers pass the values and name the file, and
//! any statistics beyond a row's mean and sd belong to them.
//!
//! Shapes are drawn with plotters; text is rasterised here with ab_glyph,
//! because plotters 0.3.7's ab_glyph text path drops each glyph's side
//! bearing, which turns "0.913" into "0. 913".

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use ab_glyph::{Font, FontRef, PxScale, ScaleFont, point};
use plotters::element::DashedPathElement;
use plotters::prelude::*;

/// One row of a strip chart.
#[derive(Debug, Clone, PartialEq)]
pub struct StripRow {
    pub label: String,
    /// One point per seed; NaN and infinite values are skipped.
    pub values: Vec<f64>,
    /// Rows sharing a group share a colour (and a legend entry).
    pub group: Option<String>,
}

/// A whole chart; see [`write_strip_chart`].
#[derive(Debug, Clone, PartialEq)]
pub struct StripChart<'a> {
    pub title: &'a str,
    pub x_label: &'a str,
    /// Values outside it are drawn at its edge, so none disappears; the
    /// printed mean ± sd still uses the true values.
    pub x_range: (f64, f64),
    /// Vertical dashed lines, e.g. `(0.5, "chance")`.
    pub reference_lines: Vec<(f64, String)>,
    pub rows: Vec<StripRow>,
}

#[derive(Debug, thiserror::Error)]
pub enum PlotError {
    #[error("x range {0}..{1} must be finite and increasing")]
    InvalidRange(f64, f64),
    #[error("{0} rows is more than a strip chart can show legibly (at most {MAX_ROWS})")]
    TooManyRows(usize),
    #[error("the embedded font could not be loaded")]
    Font,
    #[error("drawing the chart: {0}")]
    Draw(String),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Beyond this the image grows past what a README or a screen shows usefully.
pub const MAX_ROWS: usize = 500;

const WIDTH: u32 = 1000;
const ROW_H: i32 = 40;
const TITLE_H: i32 = 44;
/// Room above the rows for the reference lines' labels.
const REF_LABEL_H: i32 = 24;
/// Axis, tick labels and the x label.
const AXIS_H: i32 = 62;
/// A legend line of its own under the axis, so it never collides with the
/// title or the reference labels however long they are.
const LEGEND_H: i32 = 28;
/// Keeps dots at the range's ends clear of the columns beside the plot.
const INNER_PAD: i32 = 12;
/// The label column never takes more than this; longer labels are cut.
const MAX_LABEL_W: f32 = 300.0;

const FONT: &[u8] = include_bytes!("../assets/DejaVuSansMono-subset.ttf");

const TEXT_SIZE: f32 = 16.0;
const SMALL_SIZE: f32 = 14.0;
const TITLE_SIZE: f32 = 21.0;

const INK: RGBColor = RGBColor(25, 25, 25);
const MUTED: RGBColor = RGBColor(110, 110, 110);
const GRID: RGBColor = RGBColor(228, 228, 228);
const STRIPE: RGBColor = RGBColor(246, 246, 246);

/// Okabe–Ito colours: distinguishable with the common colour-vision
/// deficiencies and on grey-scale prints.
const PALETTE: [RGBColor; 6] = [
    RGBColor(0, 114, 178),
    RGBColor(230, 159, 0),
    RGBColor(0, 158, 115),
    RGBColor(213, 94, 0),
    RGBColor(204, 121, 167),
    RGBColor(86, 180, 233),
];
/// Rows without a group in a chart that has groups: neutral, so they need no
/// legend entry.
const UNGROUPED: RGBColor = RGBColor(120, 120, 120);

/// Writes `chart` as a PNG 1000 pixels wide and about 40 pixels per row
/// tall. The file is replaced atomically, so a reader never sees half a chart.
pub fn write_strip_chart(path: &Path, chart: &StripChart) -> Result<(), PlotError> {
    let (lo, hi) = chart.x_range;
    if !(lo.is_finite() && hi.is_finite() && lo < hi) {
        return Err(PlotError::InvalidRange(lo, hi));
    }
    if chart.rows.len() > MAX_ROWS {
        return Err(PlotError::TooManyRows(chart.rows.len()));
    }
    let font = font()?;
    let layout = Layout::new(chart, font);
    let mut rgb = vec![255u8; WIDTH as usize * layout.height as usize * 3];
    let mut labels = Vec::new();
    {
        let root = BitMapBackend::with_buffer(&mut rgb, (WIDTH, layout.height)).into_drawing_area();
        draw(&root, chart, &layout, font, &mut labels)
            .and_then(|()| root.present())
            .map_err(|e| PlotError::Draw(e.to_string()))?;
    }
    for label in &labels {
        label.render(&mut rgb, layout.height, font);
    }
    crate::atomic_file::write_with(path, |file| {
        let mut enc = png::Encoder::new(std::io::BufWriter::new(file), WIDTH, layout.height);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        let mut writer = enc.write_header().map_err(std::io::Error::other)?;
        writer
            .write_image_data(&rgb)
            .map_err(std::io::Error::other)?;
        writer.finish().map_err(std::io::Error::other)
    })
    .map_err(|source| PlotError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Parsed once per process: the bytes never change.
fn font() -> Result<&'static FontRef<'static>, PlotError> {
    static FONT_REF: OnceLock<Option<FontRef<'static>>> = OnceLock::new();
    FONT_REF
        .get_or_init(|| FontRef::try_from_slice(FONT).ok())
        .as_ref()
        .ok_or(PlotError::Font)
}

fn text_width(font: &FontRef, size: f32, text: &str) -> f32 {
    let scaled = font.as_scaled(PxScale::from(size));
    let mut width = 0.0;
    let mut prev = None;
    for c in text.chars() {
        let id = font.glyph_id(c);
        if let Some(p) = prev {
            width += scaled.kern(p, id);
        }
        width += scaled.h_advance(id);
        prev = Some(id);
    }
    width
}

#[derive(Debug, Clone, Copy)]
enum Align {
    Left,
    Center,
    Right,
}

/// Text to draw once plotters has released the pixel buffer, anchored at `at` horizontally as
/// `align` says and vertically on the middle of its capitals and digits.
struct Label {
    text: String,
    at: (i32, i32),
    size: f32,
    colour: RGBColor,
    align: Align,
}

impl Label {
    fn new(
        text: impl Into<String>,
        at: (i32, i32),
        size: f32,
        colour: RGBColor,
        align: Align,
    ) -> Self {
        Self {
            text: text.into(),
            at,
            size,
            colour,
            align,
        }
    }

    fn render(&self, rgb: &mut [u8], height: u32, font: &FontRef) {
        let scale = PxScale::from(self.size);
        let scaled = font.as_scaled(scale);
        let width = text_width(font, self.size, &self.text);
        let mut caret = self.at.0 as f32
            - match self.align {
                Align::Left => 0.0,
                Align::Center => width / 2.0,
                Align::Right => width,
            };
        // DejaVu's capitals and digits are 0.73 em tall: half of that below
        // the anchor puts the baseline where the text looks centred.
        let baseline = self.at.1 as f32 + 0.365 * self.size;
        let mut prev = None;
        for c in self.text.chars() {
            let id = font.glyph_id(c);
            if let Some(p) = prev {
                caret += scaled.kern(p, id);
            }
            let glyph = id.with_scale_and_position(scale, point(caret, baseline));
            if let Some(outline) = font.outline_glyph(glyph) {
                let bounds = outline.px_bounds();
                outline.draw(|gx, gy, coverage| {
                    let x = bounds.min.x as i64 + i64::from(gx);
                    let y = bounds.min.y as i64 + i64::from(gy);
                    if (0..i64::from(WIDTH)).contains(&x) && (0..i64::from(height)).contains(&y) {
                        let i = (y as usize * WIDTH as usize + x as usize) * 3;
                        let ink = [self.colour.0, self.colour.1, self.colour.2];
                        for (dst, src) in rgb[i..i + 3].iter_mut().zip(ink) {
                            let a = coverage.clamp(0.0, 1.0);
                            *dst = (f32::from(*dst) * (1.0 - a) + f32::from(src) * a).round() as u8;
                        }
                    }
                });
            }
            caret += scaled.h_advance(id);
            prev = Some(id);
        }
    }
}

/// Mean, sample sd (`None` below two values) and count of the finite values.
fn summary(values: &[f64]) -> Option<(f64, Option<f64>, usize)> {
    let finite: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
    let n = finite.len();
    if n == 0 {
        return None;
    }
    let mean = finite.iter().sum::<f64>() / n as f64;
    let sd = (n > 1).then(|| {
        let ss: f64 = finite.iter().map(|v| (v - mean).powi(2)).sum();
        (ss / (n - 1) as f64).sqrt()
    });
    Some((mean, sd, n))
}

fn summary_text(values: &[f64]) -> String {
    match summary(values) {
        None => String::new(),
        Some((mean, Some(sd), _)) => format!("{mean:.3} ± {sd:.3}"),
        Some((mean, None, _)) => format!("{mean:.3} (n=1)"),
    }
}

/// A round step (1, 2 or 5 times a power of ten) as close to 0.1 as gives
/// between 4 and 12 intervals: 0.1 for the usual AUC ranges, and still a
/// readable axis for other quantities.
fn tick_step(span: f64) -> f64 {
    let distance = |s: f64| (s.ln() - 0.1f64.ln()).abs();
    let mut candidates: Vec<f64> = (-8..=8)
        .flat_map(|e| [1.0, 2.0, 5.0].map(|m| m * 10f64.powi(e)))
        .collect();
    candidates.sort_by(|a, b| distance(*a).total_cmp(&distance(*b)));
    candidates
        .into_iter()
        .find(|step| (4.0..=12.0).contains(&(span / step)))
        .unwrap_or(span / 10.0)
}

/// Tick values computed from integer multiples, so 0.3 is 3 × 0.1 rather than
/// an accumulated 0.30000000000000004 that could drop the last tick.
fn ticks(lo: f64, hi: f64) -> (Vec<f64>, usize) {
    let step = tick_step(hi - lo);
    let first = (lo / step - 1e-9).ceil() as i64;
    let last = (hi / step + 1e-9).floor() as i64;
    let decimals = (-step.log10().floor()).max(0.0) as usize;
    ((first..=last).map(|k| k as f64 * step).collect(), decimals)
}

/// Where everything goes, worked out once from the text it has to hold.
struct Layout {
    /// Right edge of the label column and left edge of the plot.
    left: i32,
    /// Right edge of the plot and left edge of the mean ± sd column.
    right: i32,
    top: i32,
    bottom: i32,
    height: u32,
    x_range: (f64, f64),
    has_legend: bool,
    labels: Vec<String>,
    summaries: Vec<String>,
}

impl Layout {
    fn new(chart: &StripChart, font: &FontRef) -> Self {
        let labels: Vec<String> = chart
            .rows
            .iter()
            .map(|r| fit(font, &r.label, MAX_LABEL_W))
            .collect();
        let widest_label = labels
            .iter()
            .map(|l| text_width(font, TEXT_SIZE, l))
            .fold(0.0, f32::max);
        let summaries: Vec<String> = chart.rows.iter().map(|r| summary_text(&r.values)).collect();
        let widest_summary = summaries
            .iter()
            .map(|s| text_width(font, TEXT_SIZE, s))
            .fold(text_width(font, TEXT_SIZE, "0.000 ± 0.000"), f32::max);
        let has_legend = chart.rows.iter().any(|r| r.group.is_some());
        let top = TITLE_H + REF_LABEL_H;
        let bottom = top + ROW_H * chart.rows.len().max(1) as i32;
        let height = bottom + AXIS_H + if has_legend { LEGEND_H } else { 0 };
        Self {
            left: (widest_label.ceil() as i32 + 28).max(100),
            right: WIDTH as i32 - (widest_summary.ceil() as i32 + 32),
            top,
            bottom,
            height: height as u32,
            x_range: chart.x_range,
            has_legend,
            labels,
            summaries,
        }
    }

    fn x_of(&self, v: f64) -> i32 {
        let (lo, hi) = self.x_range;
        let t = ((v - lo) / (hi - lo)).clamp(0.0, 1.0);
        let span = f64::from(self.right - self.left - 2 * INNER_PAD);
        self.left + INNER_PAD + (t * span).round() as i32
    }

    fn row_centre(&self, row: usize) -> i32 {
        self.top + ROW_H * row as i32 + ROW_H / 2
    }
}

/// `text`, cut with "..." if it is wider than `max_width` pixels.
fn fit(font: &FontRef, text: &str, max_width: f32) -> String {
    if text_width(font, TEXT_SIZE, text) <= max_width {
        return text.to_string();
    }
    let mut kept: Vec<char> = text.chars().collect();
    while !kept.is_empty() {
        kept.pop();
        let cut = format!("{}...", kept.iter().collect::<String>());
        if text_width(font, TEXT_SIZE, &cut) <= max_width {
            return cut;
        }
    }
    "...".to_string()
}

type Area<'b> = DrawingArea<BitMapBackend<'b>, plotters::coord::Shift>;
type DrawResult<'b> =
    Result<(), DrawingAreaErrorKind<<BitMapBackend<'b> as DrawingBackend>::ErrorType>>;

fn draw<'b>(
    root: &Area<'b>,
    chart: &StripChart,
    layout: &Layout,
    font: &FontRef,
    labels: &mut Vec<Label>,
) -> DrawResult<'b> {
    root.fill(&WHITE)?;
    let (lo, hi) = chart.x_range;
    let width = WIDTH as i32;
    let (left, right, top, bottom) = (layout.left, layout.right, layout.top, layout.bottom);

    // Alternate rows are shaded so a long chart's dots stay with their label.
    for i in (1..chart.rows.len()).step_by(2) {
        let y = top + ROW_H * i as i32;
        root.draw(&Rectangle::new(
            [(0, y), (width, y + ROW_H)],
            STRIPE.filled(),
        ))?;
    }

    let (tick_values, decimals) = ticks(lo, hi);
    for &v in &tick_values {
        let x = layout.x_of(v);
        root.draw(&PathElement::new(vec![(x, top), (x, bottom)], GRID))?;
        root.draw(&PathElement::new(vec![(x, bottom), (x, bottom + 6)], INK))?;
        labels.push(Label::new(
            format!("{v:.decimals$}"),
            (x, bottom + 18),
            SMALL_SIZE,
            INK,
            Align::Center,
        ));
    }
    root.draw(&PathElement::new(
        vec![(left, bottom), (right, bottom)],
        INK,
    ))?;
    labels.push(Label::new(
        chart.x_label,
        ((left + right) / 2, bottom + 44),
        TEXT_SIZE,
        INK,
        Align::Center,
    ));

    for (v, label) in &chart.reference_lines {
        if !v.is_finite() || *v < lo || *v > hi {
            continue;
        }
        let x = layout.x_of(*v);
        root.draw(&DashedPathElement::new(
            vec![(x, top - 4), (x, bottom)],
            6,
            4,
            MUTED.stroke_width(2),
        ))?;
        labels.push(Label::new(
            label.as_str(),
            (x, top - REF_LABEL_H / 2 - 2),
            SMALL_SIZE,
            MUTED,
            Align::Center,
        ));
    }

    labels.push(Label::new(
        chart.title,
        (width / 2, TITLE_H / 2 + 2),
        TITLE_SIZE,
        INK,
        Align::Center,
    ));

    let colours = group_colours(&chart.rows);
    if layout.has_legend {
        draw_legend(root, layout, &chart.rows, &colours, font, labels)?;
    }

    for (i, row) in chart.rows.iter().enumerate() {
        let cy = layout.row_centre(i);
        labels.push(Label::new(
            layout.labels[i].as_str(),
            (left - 14, cy),
            TEXT_SIZE,
            INK,
            Align::Right,
        ));
        let Some((mean, sd, _)) = summary(&row.values) else {
            labels.push(Label::new(
                "no runs",
                (left + INNER_PAD, cy),
                TEXT_SIZE,
                MUTED,
                Align::Left,
            ));
            continue;
        };
        if let Some(sd) = sd {
            let (a, b) = (layout.x_of(mean - sd), layout.x_of(mean + sd));
            let bar = INK.stroke_width(2);
            root.draw(&PathElement::new(vec![(a, cy), (b, cy)], bar))?;
            root.draw(&PathElement::new(vec![(a, cy - 5), (a, cy + 5)], bar))?;
            root.draw(&PathElement::new(vec![(b, cy - 5), (b, cy + 5)], bar))?;
        }
        let dot = colours[i].mix(0.75).filled();
        for (j, v) in row.values.iter().filter(|v| v.is_finite()).enumerate() {
            root.draw(&Circle::new((layout.x_of(*v), cy + jitter(j)), 5, dot))?;
        }
        let mx = layout.x_of(mean);
        root.draw(&Rectangle::new(
            [(mx - 1, cy - 14), (mx + 1, cy + 14)],
            INK.filled(),
        ))?;
        labels.push(Label::new(
            layout.summaries[i].as_str(),
            (right + 18, cy),
            TEXT_SIZE,
            INK,
            Align::Left,
        ));
    }
    Ok(())
}

/// A fixed up-and-down pattern by index: repeated seeds with close values stay
/// visible, and the same data always gives the same picture.
fn jitter(index: usize) -> i32 {
    ((index * 7) % 5) as i32 * 3 - 6
}

/// Groups are coloured in order of first appearance. Rows without a group
/// are grey beside grouped rows, and all take the first colour when no row
/// has a group.
fn group_colours(rows: &[StripRow]) -> Vec<RGBColor> {
    let any_group = rows.iter().any(|r| r.group.is_some());
    let mut seen: Vec<&str> = Vec::new();
    rows.iter()
        .map(|row| match row.group.as_deref() {
            None if any_group => UNGROUPED,
            None => PALETTE[0],
            Some(g) => {
                let index = seen.iter().position(|s| *s == g).unwrap_or_else(|| {
                    seen.push(g);
                    seen.len() - 1
                });
                PALETTE[index % PALETTE.len()]
            }
        })
        .collect()
}

/// One entry per named group, centred on the plot under the x label.
fn draw_legend<'b>(
    root: &Area<'b>,
    layout: &Layout,
    rows: &[StripRow],
    colours: &[RGBColor],
    font: &FontRef,
    labels: &mut Vec<Label>,
) -> DrawResult<'b> {
    let mut entries: Vec<(&str, RGBColor)> = Vec::new();
    for (row, colour) in rows.iter().zip(colours) {
        if let Some(g) = row.group.as_deref()
            && !entries.iter().any(|(name, _)| *name == g)
        {
            entries.push((g, *colour));
        }
    }
    const DOT_GAP: i32 = 16;
    const ENTRY_GAP: i32 = 28;
    let widths: Vec<i32> = entries
        .iter()
        .map(|(name, _)| text_width(font, SMALL_SIZE, name).ceil() as i32)
        .collect();
    let total: i32 = widths.iter().map(|w| w + DOT_GAP + ENTRY_GAP).sum::<i32>() - ENTRY_GAP;
    let mut x = (layout.left + layout.right) / 2 - total / 2;
    let y = layout.bottom + AXIS_H + LEGEND_H / 2 - 6;
    for ((name, colour), w) in entries.iter().zip(widths) {
        root.draw(&Circle::new((x + 5, y), 5, colour.mix(0.75).filled()))?;
        labels.push(Label::new(
            *name,
            (x + DOT_GAP, y),
            SMALL_SIZE,
            INK,
            Align::Left,
        ));
        x += DOT_GAP + w + ENTRY_GAP;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(label: &str, values: &[f64], group: Option<&str>) -> StripRow {
        StripRow {
            label: label.to_string(),
            values: values.to_vec(),
            group: group.map(str::to_string),
        }
    }

    fn decode(path: &Path) -> (u32, u32, Vec<u8>) {
        let file = std::io::BufReader::new(std::fs::File::open(path).unwrap());
        let mut reader = png::Decoder::new(file).read_info().unwrap();
        let mut buf = vec![0; reader.output_buffer_size().unwrap()];
        let info = reader.next_frame(&mut buf).unwrap();
        assert_eq!(info.color_type, png::ColorType::Rgb);
        (info.width, info.height, buf)
    }

    fn example() -> StripChart<'static> {
        StripChart {
            title: "Slice AUC by arm (5 seeds)",
            x_label: "AUC (test split) →",
            x_range: (0.4, 1.0),
            reference_lines: vec![(0.5, "chance".into()), (0.85, "target".into())],
            rows: vec![
                row(
                    "centralised",
                    &[0.93, 0.91, 0.92, 0.89, 0.915],
                    Some("baseline"),
                ),
                row(
                    "fedavg, 3 sites",
                    &[0.88, 0.86, f64::NAN, 0.90, 0.87],
                    Some("federated"),
                ),
                row("fedavg, non-IID", &[], Some("federated")),
                row(
                    "local only (site A)",
                    &[0.71, 0.64, 0.78, 0.69, 0.58],
                    Some("local only"),
                ),
                row("one seed – rounds ≥ 8", &[0.82], None),
            ],
        }
    }

    #[test]
    fn strip_chart_has_expected_size_and_marks_the_mean() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("strip.png");
        let chart = StripChart {
            title: "test",
            x_label: "AUC",
            x_range: (0.0, 1.0),
            reference_lines: vec![(0.5, "chance".into())],
            rows: vec![
                row("a", &[0.7, 0.8, 0.9], None),
                row("b", &[0.6, f64::NAN], Some("g")),
                row("empty", &[], None),
            ],
        };
        write_strip_chart(&path, &chart).unwrap();
        let (w, h, px) = decode(&path);
        // Title, reference labels, 3 rows of 40 px, axis and a legend line.
        assert_eq!((w, h), (1000, 44 + 24 + 3 * 40 + 62 + 28));
        assert!(px.chunks(3).any(|p| p != &px[..3]), "uniform image");

        let at = |x: i32, y: i32| {
            let i = (y as usize * w as usize + x as usize) * 3;
            [px[i], px[i + 1], px[i + 2]]
        };
        let layout = Layout::new(&chart, font().unwrap());
        // The plot must take most of the width, or the positions mean little.
        assert!(
            layout.left < 200 && layout.right > 800,
            "{}..{}",
            layout.left,
            layout.right
        );
        let cy = layout.row_centre(0);
        let dark = |p: [u8; 3]| p.iter().all(|&c| c < 80);
        // Row "a" has mean 0.8; 12 px off the centre is beyond the dots'
        // jitter and the sd bar, so only the mean tick can be dark there.
        for y in [cy - 12, cy + 12] {
            let p = at(layout.x_of(0.8), y);
            assert!(dark(p), "no mean tick at y {y}: {p:?}");
        }
        // Far from every mark on the row and between grid lines.
        for (v, y) in [(0.15, cy - 12), (0.35, cy + 12), (0.25, cy)] {
            let p = at(layout.x_of(v), y);
            assert_eq!(p, [255, 255, 255], "at {v}");
        }
    }

    #[test]
    fn rejects_an_empty_range_without_writing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("strip.png");
        let mut chart = example();
        chart.x_range = (1.0, 1.0);
        assert!(matches!(
            write_strip_chart(&path, &chart),
            Err(PlotError::InvalidRange(..))
        ));
        assert!(!path.exists());
    }

    #[test]
    fn summary_uses_sample_sd_and_skips_nan() {
        let (mean, sd, n) = summary(&[1.0, f64::NAN, 3.0]).unwrap();
        assert_eq!((mean, n), (2.0, 2));
        assert!((sd.unwrap() - 2f64.sqrt()).abs() < 1e-12);
        assert_eq!(summary_text(&[0.9]), "0.900 (n=1)");
        assert!(summary(&[f64::NAN]).is_none());
    }

    #[test]
    fn ticks_fall_every_tenth_on_auc_ranges() {
        let (t, d) = ticks(0.4, 1.0);
        assert_eq!(d, 1);
        assert_eq!(t.len(), 7);
        assert!((t[6] - 1.0).abs() < 1e-12);
        assert_eq!(ticks(0.0, 1.0).0.len(), 11);
        assert_eq!(ticks(0.0, 100.0).0.len(), 11);
    }

    #[test]
    fn groups_share_colours_and_ungrouped_rows_are_grey() {
        let rows = [
            row("a", &[], Some("x")),
            row("b", &[], None),
            row("c", &[], Some("y")),
            row("d", &[], Some("x")),
        ];
        let c = group_colours(&rows);
        assert_eq!(c, [PALETTE[0], UNGROUPED, PALETTE[1], PALETTE[0]]);
        assert_eq!(group_colours(&[row("a", &[], None)]), [PALETTE[0]]);
    }

    #[test]
    fn every_character_the_charts_use_is_in_the_font() {
        let font = font().unwrap();
        for c in (' '..='~').chain(['±', '→', '–', '≥']) {
            assert_ne!(font.glyph_id(c).0, 0, "{c:?} missing");
        }
    }

    /// Writes the example chart to `FEDSLICE_PLOT_EXAMPLE` (a path) for a
    /// look by eye; does nothing without it.
    #[test]
    fn example_chart_renders() {
        let dir = tempfile::tempdir().unwrap();
        let path = std::env::var_os("FEDSLICE_PLOT_EXAMPLE")
            .map(PathBuf::from)
            .unwrap_or_else(|| dir.path().join("example.png"));
        write_strip_chart(&path, &example()).unwrap();
        let (w, h, _) = decode(&path);
        assert_eq!((w, h), (1000, 44 + 24 + 5 * 40 + 62 + 28));
    }
}
