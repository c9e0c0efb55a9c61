//! SVG plots: accuracy against model size for the demo, training curves for `train`.
use anyhow::{anyhow, Result};
use plotters::prelude::*;
use std::path::Path;

/// One point of the accuracy-versus-size plot.
pub struct SizePoint {
    /// Recipe label.
    pub label: String,
    /// Parameter bytes.
    pub bytes: usize,
    /// Test accuracy, 0..1.
    pub accuracy: f64,
}

fn err<E: std::fmt::Display>(path: &Path) -> impl Fn(E) -> anyhow::Error + '_ {
    move |e| anyhow!("{}: cannot draw plot: {e}", path.display())
}

/// Accuracy (y) against parameter bytes (x, log scale), one labelled point per recipe; written as SVG.
pub fn accuracy_vs_size(path: &Path, title: &str, points: &[SizePoint]) -> Result<()> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (900, 560)).into_drawing_area();
        root.fill(&WHITE).map_err(err(path))?;
        let lo = points.iter().map(|p| p.accuracy).fold(1.0, f64::min);
        let hi = points.iter().map(|p| p.accuracy).fold(0.0, f64::max);
        let (y0, y1) = ((lo - 0.02).max(0.0) * 100.0, (hi + 0.01).min(1.0) * 100.0);
        let xmax = points.iter().map(|p| p.bytes).max().unwrap_or(1) as f64 * 2.0;
        let xmin = points.iter().map(|p| p.bytes).min().unwrap_or(1) as f64 / 2.0;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 20))
            .margin(20)
            .x_label_area_size(45)
            .y_label_area_size(60)
            .build_cartesian_2d((xmin..xmax).log_scale(), y0..y1)
            .map_err(err(path))?;
        chart
            .configure_mesh()
            .x_desc("parameter bytes (log scale)")
            .y_desc("test accuracy (%)")
            .draw()
            .map_err(err(path))?;
        chart
            .draw_series(points.iter().map(|p| {
                EmptyElement::at((p.bytes as f64, p.accuracy * 100.0))
                    + Circle::new((0, 0), 5, BLUE.filled())
                    + Text::new(p.label.clone(), (8, -12), ("sans-serif", 13))
            }))
            .map_err(err(path))?;
        root.present().map_err(err(path))?;
    }
    lowbit::modelfile::write_atomic(path, svg.as_bytes())?;
    Ok(())
}

/// Training loss and accuracy per epoch (two panels); written as SVG.
pub fn training_curves(path: &Path, title: &str, loss: &[f64], accuracy: &[f64]) -> Result<()> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (900, 420)).into_drawing_area();
        root.fill(&WHITE).map_err(err(path))?;
        let root = root.titled(title, ("sans-serif", 20)).map_err(err(path))?;
        let (left, right) = root.split_horizontally(450);
        let n = loss.len().max(1) as f64;
        for (area, values, name, scale) in [
            (&left, loss, "train loss", 1.0),
            (&right, accuracy, "train accuracy (%)", 100.0),
        ] {
            let lo = values.iter().cloned().fold(f64::INFINITY, f64::min) * scale;
            let hi = values.iter().cloned().fold(f64::NEG_INFINITY, f64::max) * scale;
            let pad = ((hi - lo) * 0.1).max(1e-3);
            let mut chart = ChartBuilder::on(area)
                .margin(15)
                .x_label_area_size(35)
                .y_label_area_size(55)
                .build_cartesian_2d(0.5..n + 0.5, (lo - pad)..(hi + pad))
                .map_err(err(path))?;
            chart
                .configure_mesh()
                .x_desc("epoch")
                .y_desc(name)
                .draw()
                .map_err(err(path))?;
            chart
                .draw_series(LineSeries::new(
                    values
                        .iter()
                        .enumerate()
                        .map(|(i, v)| (i as f64 + 1.0, v * scale)),
                    &BLUE,
                ))
                .map_err(err(path))?;
        }
        root.present().map_err(err(path))?;
    }
    lowbit::modelfile::write_atomic(path, svg.as_bytes())?;
    Ok(())
}
