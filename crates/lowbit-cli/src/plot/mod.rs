//! Pictures: training curves for `train --plot`, accuracy against size for `demo --plot` and `sweep --plot`,
//! per-layer costs for `sensitivity --plot`; SVG or PNG by the file's extension.
//!
//! Text is laid out and (for PNG) drawn with a font embedded in the binary (`assets/DejaVuSans-subset.ttf`, an ASCII
//! and Latin-1 subset of DejaVu Sans, see `assets/README.md`): a fresh machine needs no system fonts, and the
//! SVG's layout (label areas, legend boxes) is measured with real glyph widths instead of a guess.
mod curves;
mod raster;
mod sensitivity;
mod size;
#[cfg(test)]
mod tests;

pub use curves::{training_curves, Phase, TrainingCurves};
pub use sensitivity::{sensitivity_picture, SensitivityPicture};
pub use size::{accuracy_vs_size, AccuracyVsSize, Marker, SizePoint};

use anyhow::{anyhow, bail, Result};
use plotters::coord::Shift;
use plotters::prelude::*;
use raster::RgbCanvas;
use std::path::{Path, PathBuf};
use std::sync::Once;

/// The family name every text style here uses; [`register_font`] maps it to the embedded font.
const FONT: &str = "sans-serif";
const FONT_BYTES: &[u8] = include_bytes!("../../assets/DejaVuSans-subset.ttf");

/// Series colours (Tableau 10 without its yellow, too faint on white), in the order methods are drawn.
// Tableau 10 without its grey (kept for reference lines) plus two darker tones, so a sweep's dozen settings
// get distinct colours.
const PALETTE: [RGBColor; 11] = [
    RGBColor(78, 121, 167),
    RGBColor(242, 142, 43),
    RGBColor(89, 161, 79),
    RGBColor(225, 87, 89),
    RGBColor(176, 122, 161),
    RGBColor(156, 117, 95),
    RGBColor(118, 183, 178),
    RGBColor(255, 157, 167),
    RGBColor(237, 201, 72),
    RGBColor(40, 70, 110),
    RGBColor(120, 40, 60),
];
const GREY: RGBColor = RGBColor(110, 110, 110);

/// File format of a picture.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Scalable vector graphics (text as text, for browsers and editors).
    Svg,
    /// 8-bit RGB PNG (for READMEs, chats and viewers without SVG).
    Png,
}

impl Format {
    /// The format named by `path`'s extension (`.svg` or `.png`, any case).
    pub fn from_path(path: &Path) -> Result<Format> {
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase);
        match ext.as_deref() {
            Some("svg") => Ok(Format::Svg),
            Some("png") => Ok(Format::Png),
            _ => bail!(
                "{}: a picture file name must end in .svg or .png",
                path.display()
            ),
        }
    }
}

/// Clap value parser for `--plot`: rejects an unknown extension before any work starts.
pub fn parse_plot_path(s: &str) -> std::result::Result<PathBuf, String> {
    let path = PathBuf::from(s);
    Format::from_path(&path).map_err(|e| e.to_string())?;
    Ok(path)
}

fn register_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // The font is a compile-time constant checked by the tests, so a failure here is a build defect.
        if plotters::style::register_font(FONT, FontStyle::Normal, FONT_BYTES).is_err() {
            panic!("the embedded font assets/DejaVuSans-subset.ttf does not parse");
        }
    });
}

type DrawResult<DB> =
    std::result::Result<(), DrawingAreaErrorKind<<DB as DrawingBackend>::ErrorType>>;

/// Something that draws itself on any plotters backend, so SVG and PNG come from one drawing code.
trait Picture {
    /// Width and height in pixels (SVG user units).
    fn size(&self) -> (u32, u32);
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DrawResult<DB>;
}

/// Renders `picture` in the format `path` names and writes it atomically.
fn save(path: &Path, picture: &impl Picture) -> Result<()> {
    register_font();
    let format = Format::from_path(path)?;
    let fail = |e: String| anyhow!("{}: cannot draw picture: {e}", path.display());
    let (w, h) = picture.size();
    let bytes = match format {
        Format::Svg => {
            let mut svg = String::new();
            {
                let root = SVGBackend::with_string(&mut svg, (w, h)).into_drawing_area();
                picture.draw(&root).map_err(|e| fail(e.to_string()))?;
                root.present().map_err(|e| fail(e.to_string()))?;
            }
            svg.into_bytes()
        }
        Format::Png => {
            let mut rgb = vec![0u8; w as usize * h as usize * 3];
            {
                let canvas = RgbCanvas::new(&mut rgb, (w, h), FONT_BYTES).map_err(fail)?;
                let root = canvas.into_drawing_area();
                picture.draw(&root).map_err(|e| fail(e.to_string()))?;
                root.present().map_err(|e| fail(e.to_string()))?;
            }
            encode_png(&rgb, w, h).map_err(|e| fail(e.to_string()))?
        }
    };
    lowbit::modelfile::write_atomic(path, &bytes)?;
    Ok(())
}

fn encode_png(rgb: &[u8], w: u32, h: u32) -> std::result::Result<Vec<u8>, png::EncodingError> {
    let mut out = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut out, w, h);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        enc.set_compression(png::Compression::Best);
        let mut writer = enc.write_header()?;
        writer.write_image_data(rgb)?;
    }
    Ok(out)
}

/// An axis number without trailing zeros: `0.5`, `2`, `0.25`.
pub(crate) fn epoch_label(v: f64) -> String {
    let s = format!("{v:.2}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// "203.6 kB", "6.6 kB", "950 B": decimal units, as the log axis is in powers of ten.
pub fn human_bytes(bytes: f64) -> String {
    if bytes >= 1e6 {
        format!("{} MB", epoch_label(bytes / 1e6))
    } else if bytes >= 1e3 {
        format!("{} kB", epoch_label(bytes / 1e3))
    } else {
        format!("{} B", epoch_label(bytes))
    }
}
