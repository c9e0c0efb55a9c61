//! The pictures' content, read back from the SVG plotters writes (one element per series point, line or
//! text) and from the decoded PNG.
use super::curves::smooth;
use super::size::{interval_95, log_ticks, pareto_front};
use super::*;
use tempfile::TempDir;

/// One SVG element: tag, attribute text, and the text content (for `<text>`).
struct Element {
    tag: String,
    attrs: String,
    text: String,
}

impl Element {
    fn attr(&self, name: &str) -> Option<&str> {
        let key = format!(" {name}=\"");
        let start = self.attrs.find(&key)? + key.len();
        let len = self.attrs[start..].find('"')?;
        Some(&self.attrs[start..start + len])
    }

    /// Number of points of a `<polyline>` or `<polygon>`.
    fn point_count(&self) -> usize {
        self.attr("points")
            .map_or(0, |p| p.split_whitespace().count())
    }
}

fn elements(svg: &str) -> Vec<Element> {
    svg.split('<')
        .filter(|c| !c.starts_with('/') && !c.is_empty())
        .map(|chunk| {
            let (head, rest) = chunk.split_once('>').unwrap_or((chunk, ""));
            let (tag, attrs) = head.split_once(' ').unwrap_or((head, ""));
            Element {
                tag: tag.to_string(),
                attrs: format!(" {attrs}"),
                text: rest.trim().to_string(),
            }
        })
        .collect()
}

fn texts(els: &[Element]) -> Vec<&str> {
    els.iter()
        .filter(|e| e.tag == "text")
        .map(|e| e.text.as_str())
        .collect()
}

/// Chart lines (legend keys are 2-point lines) of `colour` and `width`, as their point counts.
fn lines(els: &[Element], colour: &str, width: &str) -> Vec<usize> {
    els.iter()
        .filter(|e| e.tag == "polyline" && e.attr("stroke") == Some(colour))
        .filter(|e| e.attr("stroke-width") == Some(width) && e.point_count() > 2)
        .map(Element::point_count)
        .collect()
}

fn count(els: &[Element], tag: &str, fill: &str) -> usize {
    els.iter()
        .filter(|e| e.tag == tag && e.attr("fill") == Some(fill))
        .count()
}

const BLUE_HEX: &str = "#4E79A7";
const ORANGE_HEX: &str = "#F28E2B";
const GREY_HEX: &str = "#6E6E6E";

/// A phase of `epochs` epochs of `steps` steps whose loss falls and accuracy rises.
fn phase(label: &str, epochs: usize, steps: usize) -> Phase {
    let n = epochs * steps;
    let batch_loss: Vec<f32> = (0..n).map(|i| 2.3 / (1.0 + i as f32 / 10.0)).collect();
    let batch_accuracy: Vec<f32> = (0..n).map(|i| 0.1 + 0.8 * i as f32 / n as f32).collect();
    let mean = |v: &[f32], e: usize| {
        v[e * steps..(e + 1) * steps]
            .iter()
            .map(|&x| f64::from(x))
            .sum::<f64>()
            / steps as f64
    };
    Phase {
        label: label.into(),
        steps_per_epoch: steps,
        epoch_loss: (0..epochs).map(|e| mean(&batch_loss, e)).collect(),
        epoch_accuracy: (0..epochs).map(|e| mean(&batch_accuracy, e)).collect(),
        batch_loss,
        batch_accuracy,
    }
}

/// The elements of the training-curves SVG of `phases`.
fn curves_svg(title: &str, phases: &[Phase], validation: &[f64]) -> Vec<Element> {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("c.svg");
    let curves = TrainingCurves {
        title,
        phases,
        validation,
    };
    training_curves(&path, &curves).unwrap();
    elements(&std::fs::read_to_string(&path).unwrap())
}

#[test]
fn the_format_follows_the_extension_and_anything_else_is_an_error() {
    assert_eq!(
        Format::from_path(Path::new("a/b.svg")).unwrap(),
        Format::Svg
    );
    assert_eq!(Format::from_path(Path::new("b.PNG")).unwrap(), Format::Png);
    for bad in ["c.jpg", "svg", "d.svg.gz", "e."] {
        let err = Format::from_path(Path::new(bad)).unwrap_err().to_string();
        assert!(err.contains(".svg or .png") && err.contains(bad), "{err}");
        assert!(parse_plot_path(bad).is_err());
    }
}

#[test]
fn smoothing_is_unbiased_from_the_first_step_and_follows_a_change() {
    assert_eq!(smooth(&[2.0; 5], 10), vec![2.0; 5]);
    let s = smooth(&[0.0, 0.0, 1.0, 1.0, 1.0], 3);
    assert_eq!(s[0], 0.0);
    assert!(
        s[2] > 0.0 && s[2] < s[3] && s[3] < s[4] && s[4] < 1.0,
        "{s:?}"
    );
}

#[test]
fn a_one_epoch_run_is_drawn_as_curves_over_every_step() {
    let els = curves_svg("one epoch", &[phase("f32", 1, 50)], &[0.5]);
    // Smoothed loss and smoothed accuracy, then the faint raw loss: every step a point.
    assert_eq!(lines(&els, BLUE_HEX, "2"), vec![50, 50]);
    assert_eq!(lines(&els, BLUE_HEX, "1"), vec![50]);
    // Epoch-mean markers on both panels plus their two legend keys; the validation triangle and its key.
    assert_eq!(count(&els, "circle", BLUE_HEX), 4);
    assert_eq!(count(&els, "polygon", "#000000"), 2);
    let t = texts(&els);
    for label in [
        "one epoch",
        "f32: batch loss",
        "f32: smoothed (5-step EMA)",
        "f32: epoch mean",
        "f32: batch accuracy (5-step EMA)",
        "f32: train accuracy, epoch mean",
        "f32: validation accuracy, epoch end",
    ] {
        assert!(t.contains(&label), "no {label:?} in {t:?}");
    }
}

#[test]
fn each_phase_gets_its_own_colour_and_markers_per_epoch() {
    let phases = [phase("f32 baseline", 3, 20), phase("QAT W4A8", 3, 20)];
    let els = curves_svg("two phases", &phases, &[0.5, 0.6, 0.7]);
    for colour in [BLUE_HEX, ORANGE_HEX] {
        assert_eq!(lines(&els, colour, "2"), vec![60, 60], "{colour}");
        // 3 epochs x 2 panels + 2 legend keys.
        assert_eq!(count(&els, "circle", colour), 8, "{colour}");
    }
    assert_eq!(count(&els, "polygon", "#000000"), 4);
    assert!(texts(&els).contains(&"QAT W4A8: validation accuracy, epoch end"));
}

#[test]
fn long_runs_are_drawn_as_bucket_means_and_say_so() {
    let els = curves_svg("long", &[phase("f32", 2, 1875)], &[]);
    assert_eq!(lines(&els, BLUE_HEX, "1"), vec![3750usize.div_ceil(3)]);
    assert!(texts(&els).contains(&"f32: batch loss (mean of 3 steps)"));
}

fn size_points() -> Vec<SizePoint> {
    let p = |label: &str, bytes, accuracy, marker| SizePoint {
        label: label.into(),
        bytes,
        accuracy,
        marker,
    };
    vec![
        p("f32", 203_560, 0.804, Marker::Float),
        p("PTQ W8A8", 51_952, 0.805, Marker::Ptq),
        p("PTQ W4A8", 26_544, 0.796, Marker::Ptq),
        p("QAT W4A8", 26_544, 0.808, Marker::Qat),
        p("QAT W1A8 binary", 7_488, 0.79, Marker::Qat),
    ]
}

#[test]
fn the_pareto_front_keeps_exactly_the_points_nothing_beats() {
    let points = size_points();
    // binary (smallest), QAT W4A8 (beats PTQ W4A8 at the same size); PTQ W8A8 and f32 are beaten by QAT W4A8.
    assert_eq!(pareto_front(&points), vec![4, 3]);
    assert_eq!(pareto_front(&points[..1]), vec![0]);
}

#[test]
fn log_axis_ticks_are_labelled_at_one_two_five_in_bytes() {
    let (bold, light) = log_ticks(4_000.0, 300_000.0);
    assert_eq!(bold, vec![5e3, 1e4, 2e4, 5e4, 1e5, 2e5]);
    assert_eq!(light.len(), 6 + 9 + 3);
    assert_eq!(human_bytes(1e4), "10 kB");
    assert_eq!(human_bytes(203_560.0), "203.56 kB");
    assert_eq!(human_bytes(950.0), "950 B");
    assert_eq!(human_bytes(2.5e6), "2.5 MB");
    // 1000 test images at 80%: 1.96 * sqrt(0.16 / 1000) = 2.48 pp.
    assert!((interval_95(0.8, 1000) - 0.02479).abs() < 1e-4);
}

#[test]
fn accuracy_vs_size_shows_each_method_in_its_colour_with_reference_front_and_legend() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("s.svg");
    let points = size_points();
    let picture = AccuracyVsSize {
        title: "sizes",
        points: &points,
        test_samples: 1000,
        recommended: None,
    };
    accuracy_vs_size(&path, &picture).unwrap();
    let els = elements(&std::fs::read_to_string(&path).unwrap());
    // Marker in the chart and in the legend: f32 a black circle, PTQ squares, QAT triangles, colours distinct.
    assert_eq!(count(&els, "circle", "#000000"), 2);
    for (colour, tag) in [
        (BLUE_HEX, "rect"),
        (ORANGE_HEX, "rect"),
        ("#59A14F", "polygon"),
        ("#E15759", "polygon"),
    ] {
        assert_eq!(count(&els, tag, colour), 2, "{colour} {tag}");
    }
    // The front: binary, step up to QAT W4A8, then flat to the right edge.
    let front: Vec<usize> = els
        .iter()
        .filter(|e| e.tag == "polyline" && e.attr("stroke-width") == Some("3"))
        .map(Element::point_count)
        .collect();
    assert_eq!(front, vec![4, 2]);
    // The f32 line is dashed: many short segments of the grey.
    let dashes = els
        .iter()
        .filter(|e| e.tag == "polyline" && e.attr("stroke") == Some(GREY_HEX))
        .count();
    assert!(dashes > 10, "{dashes} dashes");
    let t = texts(&els);
    for label in [
        "f32 accuracy (80.4%)",
        "Pareto front: best accuracy at or below a size",
        "95% interval (1000 test images)",
        "f32: 80.4%, 203.56 kB",
        "QAT W1A8 binary: 79.0%, 7.49 kB",
        "10 kB",
        "100 kB",
    ] {
        assert!(t.contains(&label), "no {label:?} in {t:?}");
    }
    assert!(!t.iter().any(|s| s.contains("10000")), "{t:?}");
    assert_eq!(t.iter().filter(|s| **s == "100 kB").count(), 1);
}

#[test]
fn the_recommended_point_is_ringed_in_the_chart_and_named_in_the_legend() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("r.svg");
    let points = size_points();
    let rings = |recommended: Option<(usize, String)>| {
        let picture = AccuracyVsSize {
            title: "sizes",
            points: &points,
            test_samples: 1000,
            recommended,
        };
        accuracy_vs_size(&path, &picture).unwrap();
        let els = elements(&std::fs::read_to_string(&path).unwrap());
        let n = els
            .iter()
            .filter(|e| e.tag == "circle" && e.attr("fill") == Some("none"))
            .count();
        (
            n,
            texts(&els)
                .iter()
                .map(|s| s.to_string())
                .collect::<Vec<_>>(),
        )
    };
    let (none, _) = rings(None);
    let (some, t) = rings(Some((2, "recommended: smallest within 1 pp of f32".into())));
    assert_eq!((none, some), (0, 2));
    assert!(
        t.iter()
            .any(|s| s == "recommended: smallest within 1 pp of f32"),
        "{t:?}"
    );
    // An index past the points draws nothing rather than failing.
    assert_eq!(rings(Some((99, "x".into()))).0, 0);
}

fn decode(path: &Path) -> (png::OutputInfo, Vec<u8>) {
    let file = std::fs::File::open(path).unwrap();
    let mut reader = png::Decoder::new(std::io::BufReader::new(file))
        .read_info()
        .unwrap();
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).unwrap();
    buf.truncate(info.buffer_size());
    (info, buf)
}

fn has_colour(rgb: &[u8], c: RGBColor) -> bool {
    rgb.chunks_exact(3).any(|p| p == [c.0, c.1, c.2])
}

#[test]
fn png_pictures_decode_at_their_size_with_their_series_colours_and_text() {
    let dir = TempDir::new().unwrap();
    let curves = dir.path().join("c.png");
    let phases = [phase("f32", 2, 40)];
    training_curves(
        &curves,
        &TrainingCurves {
            title: "png",
            phases: &phases,
            validation: &[],
        },
    )
    .unwrap();
    let (info, rgb) = decode(&curves);
    assert_eq!((info.width, info.height), (1100, 460));
    assert_eq!(info.color_type, png::ColorType::Rgb);
    assert!(has_colour(&rgb, PALETTE[0]));
    // The title row (text only) holds dark anti-aliased glyph pixels.
    let title_dark = rgb[..1100 * 3 * 30]
        .chunks_exact(3)
        .filter(|p| p.iter().all(|&v| v < 100))
        .count();
    assert!(title_dark > 20, "{title_dark} dark pixels in the title row");

    let size = dir.path().join("s.png");
    let points = size_points();
    accuracy_vs_size(
        &size,
        &AccuracyVsSize {
            title: "png",
            points: &points,
            test_samples: 1000,
            recommended: None,
        },
    )
    .unwrap();
    let (info, rgb) = decode(&size);
    assert_eq!((info.width, info.height), (1100, 560));
    for c in &PALETTE[..4] {
        assert!(has_colour(&rgb, *c), "{c:?}");
    }
}

#[test]
fn text_keeps_each_glyphs_side_bearing() {
    // plotters' own ab_glyph path drew each glyph's ink at the pen position; here the ink of "o" starts one
    // left side bearing after the anchor.
    use ab_glyph::{Font, FontRef, PxScale, ScaleFont};
    let font = FontRef::try_from_slice(FONT_BYTES).unwrap();
    let scaled = font.as_scaled(PxScale::from(80.0));
    let bearing = scaled.h_side_bearing(scaled.glyph_id('o'));
    assert!(bearing >= 3.0, "side bearing {bearing}");
    register_font();
    let (w, h) = (200u32, 120u32);
    let mut rgb = vec![255u8; (w * h * 3) as usize];
    {
        let root = raster::RgbCanvas::new(&mut rgb, (w, h), FONT_BYTES)
            .unwrap()
            .into_drawing_area();
        root.draw(&Text::new("o", (50, 20), (FONT, 80.0).into_font()))
            .unwrap();
    }
    let first_ink = (0..w as usize)
        .find(|&x| (0..h as usize).any(|y| rgb[(y * w as usize + x) * 3] < 128))
        .unwrap();
    assert!(
        (first_ink as f32 - (50.0 + bearing)).abs() <= 1.0,
        "ink at {first_ink}, expected {}",
        50.0 + bearing
    );
}

#[test]
fn drawing_nothing_is_an_error_not_an_empty_picture() {
    let dir = TempDir::new().unwrap();
    let none = TrainingCurves {
        title: "none",
        phases: &[],
        validation: &[],
    };
    assert!(training_curves(&dir.path().join("c.svg"), &none).is_err());
    let empty = AccuracyVsSize {
        title: "none",
        points: &[],
        test_samples: 1,
        recommended: None,
    };
    assert!(accuracy_vs_size(&dir.path().join("s.png"), &empty).is_err());
    assert!(!dir.path().join("c.svg").exists());
}

/// Three layers at 2 and 4 bits: activations measured on the first two, the Hessian estimate on all, one
/// measured loss increase below zero.
fn sensitivity_of(predicted: bool) -> lowbit::sensitivity::Sensitivity {
    use lowbit::sensitivity::{BitCost, LayerSensitivity, Sensitivity};
    let layers = (0..3)
        .map(|l| LayerSensitivity {
            index: l,
            name: format!("conv{l}"),
            weights: 100,
            rows: 10,
            hessian_trace: predicted.then_some(1.0),
            costs: [2u32, 4]
                .iter()
                .map(|&b| BitCost {
                    bits: b,
                    weight_perturbation: 1.0,
                    predicted: predicted.then_some(0.01 * (l + 1) as f64 / f64::from(b)),
                    predicted_gn: predicted.then_some(0.02 * (l + 1) as f64 / f64::from(b)),
                    weight_drop_pp: Some(3.0 / f64::from(b) - l as f64),
                    weight_loss_delta: Some(if l == 2 && b == 4 {
                        -0.001
                    } else {
                        0.02 / f64::from(b)
                    }),
                    act_drop_pp: (l < 2).then_some(1.0),
                })
                .collect(),
        })
        .collect();
    Sensitivity {
        float_accuracy: 0.9,
        base_accuracy: 0.9,
        base_loss: 0.3,
        measured_on: lowbit::sensitivity::MeasureOn::Train,
        samples: 1000,
        layers,
        spearman: vec![(2, Some(0.5)), (4, None)],
        spearman_pooled: predicted.then_some(0.25),
        spearman_gn: vec![(2, Some(0.75)), (4, None)],
        spearman_gn_pooled: predicted.then_some(0.5),
    }
}

#[test]
fn sensitivity_picture_draws_a_bar_per_layer_and_width_and_the_estimate_against_the_measurement() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("s.svg");
    let s = sensitivity_of(true);
    let picture = SensitivityPicture {
        title: "sens",
        sensitivity: &s,
    };
    sensitivity_picture(&path, &picture).unwrap();
    let els = elements(&std::fs::read_to_string(&path).unwrap());
    let stroked = |tag: &str, colour: &str| {
        els.iter()
            .filter(|e| {
                e.tag == tag && e.attr("stroke") == Some(colour) && e.attr("fill") == Some("none")
            })
            .count()
    };
    for colour in [BLUE_HEX, ORANGE_HEX] {
        // Weight bars: one per layer, plus the legend key.
        assert_eq!(count(&els, "rect", colour), 4, "{colour}");
        // Activation bars (outlined): the two layers that have them, plus the key.
        assert_eq!(stroked("rect", colour), 3, "{colour}");
    }
    // Scatter: the points with a positive measured increase (3 at 2 bits, 2 at 4), plus a key dot each.
    assert_eq!(count(&els, "circle", BLUE_HEX), 4);
    assert_eq!(count(&els, "circle", ORANGE_HEX), 3);
    assert_eq!(stroked("circle", ORANGE_HEX), 1);
    let t = texts(&els);
    for label in [
        "conv0",
        "conv2",
        "W2: weights alone",
        "A4: activations alone",
        "W2 (right): Spearman 0.75 (HAWQ 0.50)",
        "W4 (right)",
        "all widths: Spearman 0.50 (HAWQ 0.25)",
        "estimate = measurement",
        "no increase measured: at the floor",
    ] {
        assert!(t.contains(&label), "no {label:?} in {t:?}");
    }
    assert!(t.contains(&"Gauss-Newton estimate 1/2 dW^T G dW (nats)"));
    let grey_lines = |els: &[Element]| {
        els.iter()
            .filter(|e| e.tag == "polyline" && e.attr("stroke") == Some(GREY_HEX))
            .count()
    };
    let with_diagonal = grey_lines(&els);

    // Without the Gauss-Newton estimate the scatter draws HAWQ's, with no diagonal.
    let mut s = sensitivity_of(true);
    for c in s.layers.iter_mut().flat_map(|l| &mut l.costs) {
        c.predicted_gn = None;
    }
    s.spearman_gn = vec![(2, None), (4, None)];
    s.spearman_gn_pooled = None;
    let picture = SensitivityPicture {
        title: "sens",
        sensitivity: &s,
    };
    sensitivity_picture(&path, &picture).unwrap();
    let els = elements(&std::fs::read_to_string(&path).unwrap());
    assert_eq!(count(&els, "circle", BLUE_HEX), 4);
    let t = texts(&els);
    for label in [
        "W2 (right): Spearman 0.50",
        "all widths: Spearman 0.25",
        "Hessian estimate tr(H)/n ||Q(W)-W||^2",
    ] {
        assert!(t.contains(&label), "no {label:?} in {t:?}");
    }
    assert!(!t.contains(&"estimate = measurement"));
    // The diagonal where estimate and measurement agree (both in nats) and its key are gone.
    assert_eq!(with_diagonal, grey_lines(&els) + 2);

    // Without the Hessian estimate there is no scatter.
    let s = sensitivity_of(false);
    let picture = SensitivityPicture {
        title: "sens",
        sensitivity: &s,
    };
    assert_eq!(picture.size(), (1000, 560));
    sensitivity_picture(&path, &picture).unwrap();
    let els = elements(&std::fs::read_to_string(&path).unwrap());
    assert_eq!(count(&els, "circle", BLUE_HEX), 0);
    assert_eq!(count(&els, "rect", BLUE_HEX), 4);
}

#[test]
fn log_axes_over_many_decades_label_only_the_powers_of_ten() {
    let (bold, _) = log_ticks(5e-5, 2.0);
    assert_eq!(bold.len(), 15);
    let thin = super::sensitivity::decades_only(bold);
    let want = [1e-4, 1e-3, 1e-2, 1e-1, 1.0];
    assert_eq!(thin.len(), want.len(), "{thin:?}");
    for (t, w) in thin.iter().zip(want) {
        assert!((t / w - 1.0).abs() < 1e-9, "{thin:?}");
    }
    let (few, _) = log_ticks(1e-3, 1e-1);
    assert_eq!(super::sensitivity::decades_only(few.clone()), few);
}
