//! Training curves for `train --plot`: per-step loss and accuracy, smoothed, with per-epoch markers.
use super::{epoch_label, save, DrawResult, Picture, FONT, GREY, PALETTE};
use anyhow::{bail, Result};
use plotters::coord::types::RangedCoordf64;
use plotters::coord::Shift;
use plotters::prelude::*;
use std::path::Path;

/// The per-step record of one training phase (e.g. the f32 baseline, then the QAT run).
#[derive(Debug, Clone, Default)]
pub struct Phase {
    /// Phase label (`f32`, `QAT W4A8`, ...).
    pub label: String,
    /// Optimizer steps per epoch.
    pub steps_per_epoch: usize,
    /// Loss of each step's batch, in step order.
    pub batch_loss: Vec<f32>,
    /// Accuracy of each step's batch, in [0, 1].
    pub batch_accuracy: Vec<f32>,
    /// Mean training loss of each completed epoch.
    pub epoch_loss: Vec<f64>,
    /// Training accuracy of each completed epoch (mean over its steps), in [0, 1].
    pub epoch_accuracy: Vec<f64>,
}

/// Exponential moving average with bias correction (TensorBoard's smoothing): the first values are not
/// pulled toward zero. `span` steps ~ the average's memory (`alpha = 2 / (span + 1)`).
pub fn smooth(values: &[f32], span: usize) -> Vec<f64> {
    let alpha = 2.0 / (span.max(1) as f64 + 1.0);
    let (mut avg, mut weight) = (0.0f64, 0.0f64);
    values
        .iter()
        .map(|&v| {
            avg = (1.0 - alpha) * avg + alpha * f64::from(v);
            weight = (1.0 - alpha) * weight + alpha;
            avg / weight
        })
        .collect()
}

/// Smoothing span for a run of `steps`: a tenth of it, between 1 and 100 steps, so one epoch of the
/// embedded sample (157 steps) is smoothed over 15 and long runs over at most 100.
fn smoothing_span(steps: usize) -> usize {
    (steps / 10).clamp(1, 100)
}

/// Most points drawn per line; longer runs are drawn as means of equal buckets of steps.
const MAX_LINE_POINTS: usize = 1500;

/// `(x, y)` points of a per-step series at x = step / steps_per_epoch (epochs), bucket-averaged to at most
/// [`MAX_LINE_POINTS`]; returns the points and the bucket size.
fn step_points(values: &[f64], steps_per_epoch: usize, scale: f64) -> (Vec<(f64, f64)>, usize) {
    let bucket = values.len().div_ceil(MAX_LINE_POINTS).max(1);
    let per = steps_per_epoch.max(1) as f64;
    let points = values
        .chunks(bucket)
        .enumerate()
        .map(|(i, c)| {
            let end = (i * bucket + c.len()) as f64;
            (end / per, scale * c.iter().sum::<f64>() / c.len() as f64)
        })
        .collect();
    (points, bucket)
}

/// Training curves: left, per-step batch loss (faint) and its smoothed curve, with epoch means as markers;
/// right, smoothed per-step batch accuracy with each epoch's training accuracy and (when measured) validation
/// accuracy as markers. One colour per phase. x is in epochs, so a 1-epoch run is a full curve, not one point.
pub struct TrainingCurves<'a> {
    /// Caption.
    pub title: &'a str,
    /// Phases in the order they ran.
    pub phases: &'a [Phase],
    /// Validation accuracy per epoch of the last phase (the reported model), when measured.
    pub validation: &'a [f64],
}

/// Writes `curves` to `path` (SVG or PNG by extension).
pub fn training_curves(path: &Path, curves: &TrainingCurves) -> Result<()> {
    if curves.phases.iter().all(|p| p.batch_loss.is_empty()) {
        bail!("{}: no training steps to draw", path.display());
    }
    save(path, curves)
}

type Panel<'a, DB> = ChartContext<'a, DB, Cartesian2d<RangedCoordf64, RangedCoordf64>>;
type Built<'a, DB> =
    std::result::Result<Panel<'a, DB>, DrawingAreaErrorKind<<DB as DrawingBackend>::ErrorType>>;

/// One panel's axes: x in epochs from 0 to `x_max`, y over `y`, integer y labels when `whole_y`.
fn panel<'a, DB: DrawingBackend>(
    area: &'a DrawingArea<DB, Shift>,
    x_max: f64,
    y: std::ops::Range<f64>,
    y_desc: &str,
    whole_y: bool,
) -> Built<'a, DB> {
    let mut chart = ChartBuilder::on(area)
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..x_max, y)?;
    let y_label = |v: &f64| {
        if whole_y {
            format!("{v:.0}")
        } else {
            format!("{v:.1}")
        }
    };
    chart
        .configure_mesh()
        .x_desc("epoch")
        .y_desc(y_desc)
        .x_label_formatter(&|v| epoch_label(*v))
        .y_label_formatter(&y_label)
        .label_style((FONT, 14))
        .axis_desc_style((FONT, 15))
        .light_line_style(WHITE.mix(0.0))
        .draw()?;
    Ok(chart)
}

/// A line with its legend key.
fn line<'a, DB: DrawingBackend + 'a>(
    chart: &mut Panel<'a, DB>,
    points: Vec<(f64, f64)>,
    style: ShapeStyle,
    label: String,
) -> DrawResult<DB> {
    chart
        .draw_series(LineSeries::new(points, style))?
        .label(label)
        .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], style));
    Ok(())
}

/// One marker per epoch at `(x_of(epoch), value * scale)`, with its legend key; circles, or triangles when
/// `triangles`.
fn markers<'a, DB: DrawingBackend + 'a>(
    chart: &mut Panel<'a, DB>,
    values: &[f64],
    (x_offset, scale): (f64, f64),
    colour: RGBColor,
    triangles: bool,
    label: String,
) -> DrawResult<DB> {
    let at = |e: usize, v: f64| (e as f64 + x_offset, v * scale);
    let series = if triangles {
        chart.draw_series(
            values
                .iter()
                .enumerate()
                .map(|(e, &v)| TriangleMarker::new(at(e, v), 7, colour.filled()).into_dyn()),
        )?
    } else {
        chart.draw_series(
            values
                .iter()
                .enumerate()
                .map(|(e, &v)| Circle::new(at(e, v), 5, colour.filled()).into_dyn()),
        )?
    };
    series.label(label).legend(move |(x, y)| {
        if triangles {
            TriangleMarker::new((x + 10, y), 7, colour.filled()).into_dyn()
        } else {
            Circle::new((x + 10, y), 5, colour.filled()).into_dyn()
        }
    });
    Ok(())
}

fn legend<'a, DB: DrawingBackend + 'a>(
    chart: &mut Panel<'a, DB>,
    at: SeriesLabelPosition,
) -> DrawResult<DB> {
    chart
        .configure_series_labels()
        .position(at)
        .label_font((FONT, 13))
        .background_style(WHITE.mix(0.85))
        .border_style(GREY)
        .draw()
}

impl Picture for TrainingCurves<'_> {
    fn size(&self) -> (u32, u32) {
        (1100, 460)
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DrawResult<DB> {
        root.fill(&WHITE)?;
        let root = root.titled(self.title, (FONT, 22))?;
        let (left, right) = root.split_horizontally(550);
        let epochs = self
            .phases
            .iter()
            .map(|p| p.batch_loss.len() as f64 / p.steps_per_epoch.max(1) as f64)
            .fold(0.0, f64::max)
            .max(f64::MIN_POSITIVE);
        // A little room on the right so the last epoch's markers are not cut in half.
        let x_max = epochs * 1.02;
        // Epoch means sit mid-epoch (they average over it); validation is measured at the epoch's end.
        let (mid, end) = (0.5, 1.0);

        // Loss panel: 0 at the bottom, so the drop is seen at its true size.
        let loss_max = self
            .phases
            .iter()
            .flat_map(|p| p.batch_loss.iter().map(|&v| f64::from(v)))
            .filter(|v| v.is_finite())
            .fold(0.0, f64::max)
            .max(1e-6);
        let mut chart = panel(&left, x_max, 0.0..loss_max * 1.05, "training loss", false)?;
        let mut smoothed_accuracy = Vec::with_capacity(self.phases.len());
        for (i, p) in self.phases.iter().enumerate() {
            let colour = PALETTE[i % PALETTE.len()];
            let span = smoothing_span(p.batch_loss.len());
            let raw: Vec<f64> = p.batch_loss.iter().map(|&v| f64::from(v)).collect();
            let (raw_points, bucket) = step_points(&raw, p.steps_per_epoch, 1.0);
            let raw_name = match bucket {
                1 => format!("{}: batch loss", p.label),
                b => format!("{}: batch loss (mean of {b} steps)", p.label),
            };
            line(
                &mut chart,
                raw_points,
                colour.mix(0.3).stroke_width(1),
                raw_name,
            )?;
            let (smooth_points, _) =
                step_points(&smooth(&p.batch_loss, span), p.steps_per_epoch, 1.0);
            let name = format!("{}: smoothed ({span}-step EMA)", p.label);
            line(&mut chart, smooth_points, colour.stroke_width(2), name)?;
            let name = format!("{}: epoch mean", p.label);
            markers(&mut chart, &p.epoch_loss, (mid, 1.0), colour, false, name)?;
            smoothed_accuracy.push((smooth(&p.batch_accuracy, span), span));
        }
        legend(&mut chart, SeriesLabelPosition::UpperRight)?;

        // Accuracy panel, its y axis from the tens below the lowest value to those above the highest.
        let all = smoothed_accuracy
            .iter()
            .flat_map(|(acc, _)| acc.iter())
            .chain(self.phases.iter().flat_map(|p| p.epoch_accuracy.iter()))
            .chain(self.validation);
        let (lo, hi) = all.fold((1.0f64, 0.0f64), |(lo, hi), &v| (lo.min(v), hi.max(v)));
        let y0 = ((lo * 10.0).floor() * 10.0).min(90.0);
        let y1 = ((hi * 10.0).ceil() * 10.0).clamp(y0 + 10.0, 100.0);
        let mut chart = panel(&right, x_max, y0..y1, "accuracy (%)", true)?;
        for (i, (p, (acc, span))) in self.phases.iter().zip(&smoothed_accuracy).enumerate() {
            let colour = PALETTE[i % PALETTE.len()];
            let (points, _) = step_points(acc, p.steps_per_epoch, 100.0);
            let name = format!("{}: batch accuracy ({span}-step EMA)", p.label);
            line(&mut chart, points, colour.stroke_width(2), name)?;
            let name = format!("{}: train accuracy, epoch mean", p.label);
            markers(
                &mut chart,
                &p.epoch_accuracy,
                (mid, 100.0),
                colour,
                false,
                name,
            )?;
        }
        if let (false, Some(last)) = (self.validation.is_empty(), self.phases.last()) {
            let name = format!("{}: validation accuracy, epoch end", last.label);
            markers(&mut chart, self.validation, (end, 100.0), BLACK, true, name)?;
        }
        legend(&mut chart, SeriesLabelPosition::LowerRight)
    }
}
