//! Accuracy against model size for `demo --plot`: one colour per method, the f32 line, the Pareto front.
use super::{human_bytes, save, DrawResult, Picture, FONT, GREY, PALETTE};
use anyhow::{bail, Result};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use std::path::Path;

/// Marker shape of a point in the accuracy-versus-size picture, by kind of method.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Marker {
    /// The float reference.
    Float,
    /// Post-training quantization.
    Ptq,
    /// Quantization-aware training.
    Qat,
    /// A mixed-precision allocation.
    Mixed,
}

/// One point of the accuracy-versus-size picture.
pub struct SizePoint {
    /// Recipe label.
    pub label: String,
    /// Parameter bytes.
    pub bytes: usize,
    /// Test accuracy, 0..1.
    pub accuracy: f64,
    /// Marker shape.
    pub marker: Marker,
}

/// Indices of the points no other point beats on both size and accuracy, ordered by size
/// ([`lowbit::sweep::pareto_front`]).
pub fn pareto_front(points: &[SizePoint]) -> Vec<usize> {
    let pairs: Vec<(usize, f64)> = points.iter().map(|p| (p.bytes, p.accuracy)).collect();
    lowbit::sweep::pareto_front(&pairs)
}

/// 1, 2 and 5 times the powers of ten in `lo..=hi` (labelled ticks) and every integer multiple (grid lines).
pub(super) fn log_ticks(lo: f64, hi: f64) -> (Vec<f64>, Vec<f64>) {
    let (mut bold, mut light) = (Vec::new(), Vec::new());
    let mut decade = 10f64.powf(lo.log10().floor());
    while decade <= hi {
        for m in 1..10 {
            let v = decade * f64::from(m);
            if v >= lo && v <= hi {
                light.push(v);
                if matches!(m, 1 | 2 | 5) {
                    bold.push(v);
                }
            }
        }
        decade *= 10.0;
    }
    (bold, light)
}

/// Half-width of a 95% interval of an accuracy measured on `n` test samples (normal approximation to the
/// binomial, `1.96 * sqrt(p (1 - p) / n)`).
pub fn interval_95(accuracy: f64, n: usize) -> f64 {
    1.96 * (accuracy * (1.0 - accuracy) / n.max(1) as f64).sqrt()
}

/// Accuracy (y) against parameter bytes (x, log scale): one colour per method with its 95% interval, the f32
/// accuracy as a dashed reference line and the Pareto front (best accuracy at or below each size) as a grey
/// staircase. The legend sits beside the chart, so it never hides a point.
pub struct AccuracyVsSize<'a> {
    /// Caption.
    pub title: &'a str,
    /// The methods, the f32 reference among them (marker [`Marker::Float`]).
    pub points: &'a [SizePoint],
    /// Test samples behind each accuracy (for the interval bars).
    pub test_samples: usize,
    /// A point to ring, with its legend text (e.g. the smallest model within an accuracy budget).
    pub recommended: Option<(usize, String)>,
}

/// Writes the picture to `path` (SVG or PNG by extension).
pub fn accuracy_vs_size(path: &Path, picture: &AccuracyVsSize) -> Result<()> {
    if picture.points.is_empty() {
        bail!("{}: no points to draw", path.display());
    }
    save(path, picture)
}

/// Draws `marker` centred at backend pixel `at` on `area` (whose origin is the backend's).
fn draw_marker<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    marker: Marker,
    colour: RGBColor,
    (x, y): (i32, i32),
) -> DrawResult<DB> {
    match marker {
        Marker::Float => area.draw(&Circle::new((x, y), 7, colour.filled())),
        Marker::Ptq => area.draw(&Rectangle::new(
            [(x - 6, y - 6), (x + 6, y + 6)],
            colour.filled(),
        )),
        Marker::Qat => area.draw(&TriangleMarker::new((x, y), 8, colour.filled())),
        Marker::Mixed => area.draw(&Polygon::new(
            vec![(x, y - 8), (x + 8, y), (x, y + 8), (x - 8, y)],
            colour.filled(),
        )),
    }
}

/// One legend row: what its key shows.
enum Key {
    Marker(Marker, RGBColor),
    Line(ShapeStyle),
    Dashed(ShapeStyle),
    Interval,
    Ring,
}

impl Picture for AccuracyVsSize<'_> {
    fn size(&self) -> (u32, u32) {
        (1100, 560)
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DrawResult<DB> {
        root.fill(&WHITE)?;
        let points = self.points;
        let colours: Vec<RGBColor> = {
            let mut palette = PALETTE.iter().cycle();
            points
                .iter()
                .map(|p| match p.marker {
                    Marker::Float => BLACK,
                    _ => *palette.next().unwrap_or(&BLACK),
                })
                .collect()
        };
        let half = |p: &SizePoint| interval_95(p.accuracy, self.test_samples) * 100.0;
        let lo = points
            .iter()
            .map(|p| p.accuracy * 100.0 - half(p))
            .fold(100.0, f64::min);
        let hi = points
            .iter()
            .map(|p| p.accuracy * 100.0 + half(p))
            .fold(0.0, f64::max);
        let (y0, y1) = ((lo - 1.0).floor().max(0.0), (hi + 1.0).ceil().min(100.0));
        let xmin = points.iter().map(|p| p.bytes).min().unwrap_or(1).max(1) as f64 / 1.6;
        let xmax = points.iter().map(|p| p.bytes).max().unwrap_or(1).max(1) as f64 * 1.6;
        let (bold, light) = log_ticks(xmin, xmax);

        let body = root.titled(self.title, (FONT, 20))?;
        let (left, legend) = body.split_horizontally(700);
        let mut chart = ChartBuilder::on(&left)
            .margin(15)
            .x_label_area_size(50)
            .y_label_area_size(65)
            .build_cartesian_2d(
                (xmin..xmax)
                    .log_scale()
                    .with_key_points(bold)
                    .with_light_points(light),
                y0..y1,
            )?;
        chart
            .configure_mesh()
            .x_desc("parameter bytes (log scale)")
            .y_desc("test accuracy (%)")
            .x_label_formatter(&|v| human_bytes(*v))
            .y_label_formatter(&|v| format!("{v:.0}"))
            .label_style((FONT, 14))
            .axis_desc_style((FONT, 16))
            .y_max_light_lines(1)
            .light_line_style(BLACK.mix(0.06))
            .bold_line_style(BLACK.mix(0.18))
            .draw()?;
        let mut keys: Vec<(Key, String)> = Vec::new();
        let dashed = GREY.stroke_width(1);
        if let Some(f) = points.iter().find(|p| p.marker == Marker::Float) {
            let y = f.accuracy * 100.0;
            chart.draw_series(DashedLineSeries::new([(xmin, y), (xmax, y)], 8, 6, dashed))?;
            keys.push((Key::Dashed(dashed), format!("f32 accuracy ({y:.1}%)")));
        }
        let front_style = BLACK.mix(0.3).stroke_width(3);
        let mut stairs: Vec<(f64, f64)> = Vec::new();
        for &i in &pareto_front(points) {
            let p = (points[i].bytes as f64, points[i].accuracy * 100.0);
            if let Some(&(_, previous)) = stairs.last() {
                stairs.push((p.0, previous));
            }
            stairs.push(p);
        }
        if let Some(&(_, last)) = stairs.last() {
            stairs.push((xmax, last));
        }
        chart.draw_series(LineSeries::new(stairs, front_style))?;
        keys.push((
            Key::Line(front_style),
            "Pareto front: best accuracy at or below a size".into(),
        ));
        keys.push((
            Key::Interval,
            format!("95% interval ({} test images)", self.test_samples),
        ));
        for (p, &colour) in points.iter().zip(&colours) {
            let (x, y) = (p.bytes as f64, p.accuracy * 100.0);
            let (px, top) = chart.backend_coord(&(x, y + half(p)));
            let (_, bottom) = chart.backend_coord(&(x, y - half(p)));
            let bar = colour.mix(0.7).stroke_width(1);
            for path in [
                [(px, top), (px, bottom)],
                [(px - 4, top), (px + 4, top)],
                [(px - 4, bottom), (px + 4, bottom)],
            ] {
                root.draw(&PathElement::new(path, bar))?;
            }
            draw_marker(root, p.marker, colour, chart.backend_coord(&(x, y)))?;
            keys.push((
                Key::Marker(p.marker, colour),
                format!(
                    "{}: {:.1}%, {}",
                    p.label,
                    p.accuracy * 100.0,
                    human_bytes(p.bytes as f64)
                ),
            ));
        }

        if let Some((i, text)) = &self.recommended {
            if let Some(p) = points.get(*i) {
                let at = chart.backend_coord(&(p.bytes as f64, p.accuracy * 100.0));
                root.draw(&Circle::new(at, 13, BLACK.stroke_width(2)))?;
                keys.push((Key::Ring, text.clone()));
            }
        }
        let (lx, ly) = legend.get_base_pixel();
        let text = TextStyle::from((FONT, 14).into_font()).pos(Pos::new(HPos::Left, VPos::Center));
        for (row, (key, label)) in keys.iter().enumerate() {
            let (x, y) = (lx + 10, ly + 40 + 26 * row as i32);
            match key {
                Key::Marker(m, c) => draw_marker(root, *m, *c, (x + 12, y))?,
                Key::Line(style) => root.draw(&PathElement::new([(x, y), (x + 24, y)], *style))?,
                Key::Dashed(style) => {
                    root.draw(&PathElement::new([(x, y), (x + 9, y)], *style))?;
                    root.draw(&PathElement::new([(x + 15, y), (x + 24, y)], *style))?;
                }
                Key::Ring => root.draw(&Circle::new((x + 12, y), 10, BLACK.stroke_width(2)))?,
                Key::Interval => {
                    let bar = GREY.stroke_width(1);
                    root.draw(&PathElement::new([(x + 12, y - 8), (x + 12, y + 8)], bar))?;
                    root.draw(&PathElement::new([(x + 8, y - 8), (x + 16, y - 8)], bar))?;
                    root.draw(&PathElement::new([(x + 8, y + 8), (x + 16, y + 8)], bar))?;
                }
            }
            root.draw(&Text::new(label.clone(), (x + 34, y), text.clone()))?;
        }
        Ok(())
    }
}
