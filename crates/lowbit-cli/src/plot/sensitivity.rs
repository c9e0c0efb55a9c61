//! `lowbit sensitivity --plot`: which layers each bit width hurts (bars), and how well the second-order
//! estimate ranks them (scatter).
use super::size::log_ticks;
use super::{save, DrawResult, Picture, FONT, GREY, PALETTE};
use anyhow::{bail, Result};
use lowbit::sensitivity::{BitCost, Sensitivity};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use std::path::Path;

/// Layers named on the x axis up to this count; beyond it the axis shows weight-layer indices (the table names
/// them), so labels never overlap.
const MAX_NAMED_LAYERS: usize = 12;

/// Left: per weight layer, grouped bars of the engine accuracy drop with only that layer's weights (filled) or
/// output activations (outlined) at each bit width, one colour per width. Right (when either estimate was
/// computed): the Gauss-Newton estimate (HAWQ's trace estimate when there is none) against the measured loss
/// increase, log-log, one colour per width, with Spearman's rank correlation of both estimates in the legend and,
/// since the Gauss-Newton estimate is in nats too, the line where estimate and measurement agree; a measured
/// increase at or below zero sits on the floor as a hollow marker, since a log axis cannot show it.
pub struct SensitivityPicture<'a> {
    /// Caption.
    pub title: &'a str,
    /// What `lowbit::sensitivity::analyse` found.
    pub sensitivity: &'a Sensitivity,
}

/// Writes the picture to `path` (SVG or PNG by extension).
pub fn sensitivity_picture(path: &Path, picture: &SensitivityPicture) -> Result<()> {
    let s = picture.sensitivity;
    if s.layers.is_empty() || s.layers[0].costs.is_empty() {
        bail!("{}: no layers to draw", path.display());
    }
    save(path, picture)
}

impl SensitivityPicture<'_> {
    fn bits(&self) -> Vec<u32> {
        self.sensitivity.layers[0]
            .costs
            .iter()
            .map(|c| c.bits)
            .collect()
    }

    /// Whether the scatter shows the Gauss-Newton estimate (else HAWQ's).
    fn gauss_newton(&self) -> bool {
        self.sensitivity
            .layers
            .iter()
            .flat_map(|l| &l.costs)
            .any(|c| c.predicted_gn.is_some_and(|p| p > 0.0))
    }

    /// The estimate the scatter draws.
    fn estimate(&self, c: &BitCost) -> Option<f64> {
        match self.gauss_newton() {
            true => c.predicted_gn,
            false => c.predicted,
        }
        .filter(|&p| p > 0.0)
    }

    fn has_scatter(&self) -> bool {
        self.sensitivity
            .layers
            .iter()
            .flat_map(|l| &l.costs)
            .any(|c| self.estimate(c).is_some())
    }

    fn has_activations(&self) -> bool {
        self.sensitivity
            .layers
            .iter()
            .flat_map(|l| &l.costs)
            .any(|c| c.act_drop_pp.is_some())
    }
}

/// Labelled ticks of a log axis: 1, 2 and 5 per decade while they fit (at most 8), else the powers of ten alone,
/// so labels over five or more decades do not run into each other.
pub(super) fn decades_only(bold: Vec<f64>) -> Vec<f64> {
    if bold.len() <= 8 {
        return bold;
    }
    bold.into_iter()
        .filter(|v| (v.log10() - v.log10().round()).abs() < 1e-9)
        .collect()
}

/// Legend rows.
enum Key {
    Filled(RGBColor),
    Outlined(RGBColor),
    Dot(RGBColor),
    Hollow,
    Line,
    Blank,
}

impl Picture for SensitivityPicture<'_> {
    fn size(&self) -> (u32, u32) {
        (if self.has_scatter() { 1400 } else { 1000 }, 560)
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DrawResult<DB> {
        root.fill(&WHITE)?;
        let s = self.sensitivity;
        let bits = self.bits();
        let acts = self.has_activations();
        let colour = |k: usize| PALETTE[k % PALETTE.len()];
        let body = root.titled(self.title, (FONT, 20))?;
        let (charts, legend) = body.split_horizontally(body.dim_in_pixel().0 - 280);
        let (bars_area, scatter_area) = if self.has_scatter() {
            let (a, b) = charts.split_horizontally(660);
            (a, Some(b))
        } else {
            (charts, None)
        };

        // Bars.
        let nl = s.layers.len();
        let drops = s.layers.iter().flat_map(|l| &l.costs).flat_map(|c| {
            c.weight_drop_pp
                .into_iter()
                .chain(c.act_drop_pp.filter(|_| acts))
        });
        let (lo, hi) = drops.fold((0.0f64, 0.0f64), |(lo, hi), d| (lo.min(d), hi.max(d)));
        let pad = ((hi - lo) * 0.06).max(0.1);
        let (y0, y1) = (if lo < 0.0 { lo - pad } else { 0.0 }, hi.max(1.0) + pad);
        let names: Vec<String> = s
            .layers
            .iter()
            .map(|l| {
                if nl <= MAX_NAMED_LAYERS {
                    l.name.clone()
                } else {
                    l.index.to_string()
                }
            })
            .collect();
        let mut chart = ChartBuilder::on(&bars_area)
            .margin(15)
            .x_label_area_size(50)
            .y_label_area_size(65)
            .build_cartesian_2d(-0.5..nl as f64 - 0.5, y0..y1)?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_desc(if nl <= MAX_NAMED_LAYERS {
                "weight layer"
            } else {
                "weight layer (index, as --layer-bits counts)"
            })
            .y_desc("engine accuracy drop (pp), that layer alone at b bits")
            .x_labels(0)
            .y_label_formatter(&|v| format!("{v:.1}"))
            .y_max_light_lines(1)
            .label_style((FONT, 13))
            .axis_desc_style((FONT, 15))
            .light_line_style(BLACK.mix(0.06))
            .bold_line_style(BLACK.mix(0.18))
            .draw()?;
        // One label under each group of bars (plotters' own ticks would fall between layers).
        let below = TextStyle::from((FONT, 13).into_font()).pos(Pos::new(HPos::Center, VPos::Top));
        for (l, name) in names.iter().enumerate() {
            let (px, py) = chart.backend_coord(&(l as f64, y0));
            root.draw(&Text::new(name.clone(), (px, py + 8), below.clone()))?;
        }
        if y0 < 0.0 {
            chart.draw_series(LineSeries::new(
                [(-0.5, 0.0), (nl as f64 - 0.5, 0.0)],
                GREY.stroke_width(1),
            ))?;
        }
        let per_layer = bits.len() * if acts { 2 } else { 1 };
        let width = 0.8 / per_layer as f64;
        for (l, layer) in s.layers.iter().enumerate() {
            for (k, c) in layer.costs.iter().enumerate() {
                let slot = if acts { 2 * k } else { k };
                let x = l as f64 - 0.4 + slot as f64 * width;
                if let Some(d) = c.weight_drop_pp {
                    chart.draw_series(std::iter::once(Rectangle::new(
                        [(x, 0.0), (x + width * 0.9, d)],
                        colour(k).filled(),
                    )))?;
                }
                if let Some(a) = c.act_drop_pp.filter(|_| acts) {
                    let x = x + width;
                    chart.draw_series(std::iter::once(Rectangle::new(
                        [(x, 0.0), (x + width * 0.9, a)],
                        colour(k).stroke_width(2),
                    )))?;
                }
            }
        }

        // Scatter.
        let mut keys: Vec<(Key, String)> = Vec::new();
        for (k, &b) in bits.iter().enumerate() {
            keys.push((Key::Filled(colour(k)), format!("W{b}: weights alone")));
            if acts {
                keys.push((Key::Outlined(colour(k)), format!("A{b}: activations alone")));
            }
        }
        if let Some(area) = scatter_area {
            let points: Vec<(usize, f64, f64)> = s
                .layers
                .iter()
                .flat_map(|l| l.costs.iter().enumerate())
                .filter_map(|(k, c)| Some((k, self.estimate(c)?, c.weight_loss_delta?)))
                .collect();
            let positive = points.iter().map(|p| p.2).filter(|&m| m > 0.0);
            let (mmin, mmax) =
                positive.fold((f64::INFINITY, 0.0f64), |(a, b), m| (a.min(m), b.max(m)));
            let (mmin, mmax) = if mmax > 0.0 {
                (mmin, mmax)
            } else {
                (1e-4, 1e-3)
            };
            let floor = mmin / 3.0;
            let (pmin, pmax) = points.iter().fold((f64::INFINITY, 0.0f64), |(a, b), p| {
                (a.min(p.1), b.max(p.1))
            });
            let (xlo, xhi) = (pmin / 2.0, pmax * 2.0);
            let (ylo, yhi) = (floor / 2.0, mmax * 2.0);
            let (xbold, xlight) = log_ticks(xlo, xhi);
            let (ybold, ylight) = log_ticks(ylo, yhi);
            let (xbold, ybold) = (decades_only(xbold), decades_only(ybold));
            let mut sc = ChartBuilder::on(&area)
                .margin(15)
                .x_label_area_size(50)
                .y_label_area_size(70)
                .build_cartesian_2d(
                    (xlo..xhi)
                        .log_scale()
                        .with_key_points(xbold)
                        .with_light_points(xlight),
                    (ylo..yhi)
                        .log_scale()
                        .with_key_points(ybold)
                        .with_light_points(ylight),
                )?;
            let gn = self.gauss_newton();
            sc.configure_mesh()
                .x_desc(match gn {
                    true => "Gauss-Newton estimate 1/2 dW^T G dW (nats)",
                    false => "Hessian estimate tr(H)/n ||Q(W)-W||^2",
                })
                .y_desc("measured loss increase (nats)")
                .x_label_formatter(&|v| format!("{v:.0e}"))
                .y_label_formatter(&|v| format!("{v:.0e}"))
                .label_style((FONT, 13))
                .axis_desc_style((FONT, 15))
                .y_max_light_lines(1)
                .x_max_light_lines(1)
                .light_line_style(BLACK.mix(0.06))
                .bold_line_style(BLACK.mix(0.18))
                .draw()?;
            if gn {
                // Both axes in nats: points on the line were predicted exactly.
                let (a, b) = (xlo.max(ylo), xhi.min(yhi));
                if a < b {
                    sc.draw_series(LineSeries::new([(a, a), (b, b)], GREY.stroke_width(1)))?;
                }
            }
            let mut any_floor = false;
            for &(k, p, m) in &points {
                if m > 0.0 {
                    sc.draw_series(std::iter::once(Circle::new((p, m), 5, colour(k).filled())))?;
                } else {
                    any_floor = true;
                    sc.draw_series(std::iter::once(Circle::new(
                        (p, floor),
                        5,
                        colour(k).stroke_width(2),
                    )))?;
                }
            }
            // Spearman of the drawn estimate first, the other's beside it.
            let of = |v: &[(u32, Option<f64>)], b: u32| {
                v.iter().find(|(sb, _)| *sb == b).and_then(|(_, r)| *r)
            };
            let both = |d: f64, other: Option<f64>| match other {
                Some(o) if gn => format!("Spearman {d:.2} (HAWQ {o:.2})"),
                _ => format!("Spearman {d:.2}"),
            };
            let (drawn, other) = match gn {
                true => (&s.spearman_gn, &s.spearman),
                false => (&s.spearman, &s.spearman_gn),
            };
            for (k, &b) in bits.iter().enumerate() {
                let text = match of(drawn, b) {
                    Some(d) => format!("W{b} (right): {}", both(d, of(other, b))),
                    None => format!("W{b} (right)"),
                };
                keys.push((Key::Dot(colour(k)), text));
            }
            let pooled = match gn {
                true => (s.spearman_gn_pooled, s.spearman_pooled),
                false => (s.spearman_pooled, None),
            };
            if let Some(d) = pooled.0 {
                keys.push((Key::Blank, format!("all widths: {}", both(d, pooled.1))));
            }
            if gn {
                keys.push((Key::Line, "estimate = measurement".into()));
            }
            if any_floor {
                keys.push((Key::Hollow, "no increase measured: at the floor".into()));
            }
        }

        let (lx, ly) = legend.get_base_pixel();
        let text = TextStyle::from((FONT, 13).into_font()).pos(Pos::new(HPos::Left, VPos::Center));
        for (row, (key, label)) in keys.iter().enumerate() {
            let (x, y) = (lx + 10, ly + 40 + 24 * row as i32);
            match key {
                Key::Filled(c) => {
                    root.draw(&Rectangle::new([(x, y - 7), (x + 18, y + 7)], c.filled()))?
                }
                Key::Outlined(c) => root.draw(&Rectangle::new(
                    [(x, y - 7), (x + 18, y + 7)],
                    c.stroke_width(2),
                ))?,
                Key::Dot(c) => root.draw(&Circle::new((x + 9, y), 5, c.filled()))?,
                Key::Hollow => root.draw(&Circle::new((x + 9, y), 5, GREY.stroke_width(2)))?,
                Key::Line => root.draw(&PathElement::new(
                    [(x, y), (x + 18, y)],
                    GREY.stroke_width(1),
                ))?,
                Key::Blank => {}
            }
            root.draw(&Text::new(label.clone(), (x + 28, y), text.clone()))?;
        }
        Ok(())
    }
}
