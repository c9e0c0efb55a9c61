//! A plotters backend that draws into an RGB buffer for PNG output, with its own text drawing.
//!
//! Lines, rectangles, circles and polygons use plotters' default rasterizer (the one its bitmap backend uses
//! too). Text is drawn here with `ab_glyph` because plotters 0.3.7's `ab_glyph` text path places each glyph's
//! ink box at the pen position and drops the glyph's left side bearing, so "epoch" rendered as "ep och".
use ab_glyph::{point, Font, FontRef, PxScale, ScaleFont};
use plotters_backend::text_anchor::{HPos, VPos};
use plotters_backend::{
    BackendColor, BackendCoord, BackendTextStyle, DrawingBackend, DrawingErrorKind,
};
use std::convert::Infallible;

/// An 8-bit RGB canvas, row-major, 3 bytes per pixel.
pub struct RgbCanvas<'a> {
    width: u32,
    height: u32,
    rgb: &'a mut [u8],
    font: FontRef<'static>,
}

impl<'a> RgbCanvas<'a> {
    /// Wraps `rgb` (`width * height * 3` bytes); text uses `font` (a TrueType/OpenType file).
    pub fn new(
        rgb: &'a mut [u8],
        (width, height): (u32, u32),
        font: &'static [u8],
    ) -> Result<Self, String> {
        if rgb.len() != width as usize * height as usize * 3 {
            return Err(format!(
                "{} bytes do not hold a {width}x{height} RGB image",
                rgb.len()
            ));
        }
        let font = FontRef::try_from_slice(font).map_err(|e| format!("embedded font: {e}"))?;
        Ok(Self {
            width,
            height,
            rgb,
            font,
        })
    }
}

type Drawn = Result<(), DrawingErrorKind<Infallible>>;

impl DrawingBackend for RgbCanvas<'_> {
    type ErrorType = Infallible;

    fn get_size(&self) -> (u32, u32) {
        (self.width, self.height)
    }

    fn ensure_prepared(&mut self) -> Drawn {
        Ok(())
    }

    fn present(&mut self) -> Drawn {
        Ok(())
    }

    /// Blends `color` over the pixel by its alpha; points off the canvas are ignored.
    fn draw_pixel(&mut self, (x, y): BackendCoord, color: BackendColor) -> Drawn {
        if x < 0 || y < 0 || x >= self.width as i32 || y >= self.height as i32 {
            return Ok(());
        }
        let at = (y as usize * self.width as usize + x as usize) * 3;
        let a = color.alpha.clamp(0.0, 1.0);
        let (r, g, b) = color.rgb;
        for (dst, src) in self.rgb[at..at + 3].iter_mut().zip([r, g, b]) {
            *dst = (f64::from(*dst) * (1.0 - a) + f64::from(src) * a).round() as u8;
        }
        Ok(())
    }

    /// Draws `text` anchored at `pos` in the layout box plotters measured for it (so placement agrees with
    /// the layout of axes and legends), with the baseline set so the capital letters sit centred in that box.
    fn draw_text<S: BackendTextStyle>(
        &mut self,
        text: &str,
        style: &S,
        pos: BackendCoord,
    ) -> Drawn {
        let color = style.color();
        if color.alpha == 0.0 {
            return Ok(());
        }
        let ((x0, y0), (x1, y1)) = style
            .layout_box(text)
            .map_err(|e| DrawingErrorKind::FontError(Box::new(e)))?;
        let (width, height) = (x1 - x0, y1 - y0);
        let dx = match style.anchor().h_pos {
            HPos::Left => 0,
            HPos::Right => -width,
            HPos::Center => -width / 2,
        };
        let dy = match style.anchor().v_pos {
            VPos::Top => 0,
            VPos::Center => -height / 2,
            VPos::Bottom => -height,
        };
        let font = self.font.as_scaled(PxScale::from(style.size() as f32));
        let cap_height = font
            .outline_glyph(font.scaled_glyph('H'))
            .map_or(font.ascent(), |g| g.px_bounds().max.y - g.px_bounds().min.y);
        let baseline = (height as f32 + cap_height) / 2.0;
        let transform = style.transform();
        let mut pen = 0.0f32;
        let mut previous = None;
        let mut pixels = Vec::new();
        for c in text.chars() {
            let id = font.glyph_id(c);
            if let Some(p) = previous {
                pen += font.kern(p, id);
            }
            previous = Some(id);
            let glyph = id.with_scale_and_position(font.scale(), point(pen, baseline));
            pen += font.h_advance(id);
            if let Some(outline) = font.outline_glyph(glyph) {
                let min = outline.px_bounds().min;
                outline.draw(|gx, gy, coverage| {
                    pixels.push((min.x as i32 + gx as i32, min.y as i32 + gy as i32, coverage));
                });
            }
        }
        for (x, y, coverage) in pixels {
            let (tx, ty) = transform.transform(x + dx, y + dy);
            let c = BackendColor {
                alpha: color.alpha * f64::from(coverage),
                rgb: color.rgb,
            };
            self.draw_pixel((pos.0 + tx, pos.1 + ty), c)?;
        }
        Ok(())
    }
}
