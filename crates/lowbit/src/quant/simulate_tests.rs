//! The simulation's convolution sums against the formula written out directly, on random shapes.
use super::*;
use crate::rng::Rng;
use lowbit_runtime::qparams::{weight_code_range, QParams};

/// `bias[o] + sum (x - zp) * w` over in-bounds taps, one output at a time, in i64.
fn direct(
    cv: &QConv2d,
    x: &[u8],
    batch: usize,
    (h, w): (usize, usize),
) -> (Vec<i64>, usize, usize) {
    let wts = unpack(&cv.weights).unwrap();
    let ((kh, kw), (sh, sw), (ph, pw)) = (cv.kernel, cv.stride, cv.padding);
    let (ic_g, oc_g) = (cv.in_channels / cv.groups, cv.out_channels / cv.groups);
    let oh = window_len(h, kh, sh, ph).unwrap();
    let ow = window_len(w, kw, sw, pw).unwrap();
    let zp = i64::from(cv.input.zero_point);
    let mut out = Vec::new();
    for b in 0..batch {
        for o in 0..cv.out_channels {
            for oy in 0..oh {
                for ox in 0..ow {
                    let mut acc = i64::from(cv.bias[o]);
                    for c in 0..ic_g {
                        let ic = (o / oc_g) * ic_g + c;
                        for ky in 0..kh {
                            for kx in 0..kw {
                                let iy = (oy * sh + ky) as isize - ph as isize;
                                let ix = (ox * sw + kx) as isize - pw as isize;
                                if iy < 0 || ix < 0 || iy >= h as isize || ix >= w as isize {
                                    continue;
                                }
                                let v = x[((b * cv.in_channels + ic) * h + iy as usize) * w
                                    + ix as usize];
                                let q = wts[o * ic_g * kh * kw + (c * kh + ky) * kw + kx];
                                acc += (i64::from(v) - zp) * i64::from(q);
                            }
                        }
                    }
                    out.push(acc);
                }
            }
        }
    }
    (out, oh, ow)
}

#[test]
fn conv_sums_equal_the_direct_formula_on_random_shapes_strides_paddings_groups_and_zero_points() {
    let mut rng = Rng::new(41);
    let (mut exact, mut overflowed, mut wide_exact) = (0, 0, 0);
    for case in 0..400 {
        let groups = [1, 1, 2, 3][rng.below(4)];
        let ic = groups * (1 + rng.below(3));
        let oc = groups * (1 + rng.below(3));
        let (kh, kw) = (1 + rng.below(3), 1 + rng.below(4));
        let (sh, sw) = (1 + rng.below(3), 1 + rng.below(3));
        let (ph, pw) = (rng.below(3), rng.below(4));
        let (h, w) = (
            kh + rng.below(6),
            kw.saturating_sub(2 * pw).max(1) + rng.below(7),
        );
        if window_len(h, kh, sh, ph).is_none() || window_len(w, kw, sw, pw).is_none() {
            continue;
        }
        let bits = [2, 3, 4, 8][rng.below(4)];
        let (lo, hi) = weight_code_range(bits).unwrap();
        let cols = ic / groups * kh * kw;
        let codes: Vec<i8> = (0..oc * cols)
            .map(|_| (lo + rng.below((hi - lo + 1) as usize) as i32) as i8)
            .collect();
        // Zero points at both extremes and between; every fifth case a bias that forces the i64 path.
        let zp = [0, 255, 128, rng.below(256) as i32][case % 4];
        let big = case % 5 == 0;
        let bias: Vec<i32> = (0..oc)
            .map(|_| match big {
                true => i32::MAX - rng.below(1000) as i32,
                false => rng.below(20_001) as i32 - 10_000,
            })
            .collect();
        let cv = QConv2d {
            in_channels: ic,
            out_channels: oc,
            kernel: (kh, kw),
            stride: (sh, sw),
            padding: (ph, pw),
            groups,
            weights: lowbit_runtime::pack::PackedWeights::pack(bits, oc, cols, &codes).unwrap(),
            weight_scales: vec![1.0],
            bias,
            input: QParams {
                scale: 1.0,
                zero_point: zp,
            },
            output: OutputStage::Logits,
        };
        let batch = 1 + rng.below(2);
        let x: Vec<u8> = (0..batch * ic * h * w)
            .map(|_| rng.below(256) as u8)
            .collect();
        let (want, oh, ow) = direct(&cv, &x, batch, (h, w));
        let what = format!(
            "case {case}: {ic}->{oc}/{groups} k{kh}x{kw} s{sh}x{sw} p{ph}x{pw} {h}x{w} zp {zp}"
        );
        match conv_acc(&cv, &x, batch, (h, w), "c") {
            Ok((got, gh, gw)) => {
                assert_eq!((gh, gw), (oh, ow), "{what}");
                let got: Vec<i64> = got.into_iter().map(i64::from).collect();
                assert_eq!(got, want, "{what}");
                exact += 1;
                wide_exact += usize::from(big);
            }
            Err(e) => {
                assert!(
                    want.iter().any(|&v| i32::try_from(v).is_err()),
                    "{what}: {e} though every sum fits"
                );
                assert!(e.to_string().contains("overflows i32"), "{what}: {e}");
                overflowed += 1;
            }
        }
    }
    // The shapes drawn exercise both the exact sums and the overflow error, and the i64 path where it fits.
    assert!(
        exact > 200 && overflowed > 10 && wide_exact > 5,
        "{exact} {overflowed} {wide_exact}"
    );
}
