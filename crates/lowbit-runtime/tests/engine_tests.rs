//! Integer engine: hand-computed outputs, agreement with a naive direct evaluator, batch and granularity
//! invariances, every bit width, and structural validation.
use lowbit_runtime::engine::{argmax_rows, Engine};
use lowbit_runtime::model::{
    InputSpec, OutputStage, QAvgPool2d, QConv2d, QDense, QMaxPool2d, QOp, QuantModel,
};
use lowbit_runtime::pack::PackedWeights;
use lowbit_runtime::qparams::{act_code_range, requantize, QParams, Requant};
use lowbit_runtime::testutil::{random_cnn, random_conv, random_dense, random_mlp, LayerOpts, Rng};
use lowbit_runtime::QuantError;

fn qp(scale: f32, zero_point: i32) -> QParams {
    QParams { scale, zero_point }
}

/// Two dense layers whose outputs are worked out by hand in `hand_computed_two_layer_dense_model_*`.
fn hand_model(relu: bool) -> QuantModel {
    let l0 = QDense {
        in_features: 2,
        out_features: 2,
        weights: PackedWeights::pack(8, 2, 2, &[1, 2, -1, 3]).unwrap(),
        weight_scales: vec![0.5],
        bias: vec![10, -5],
        input: qp(1.0, 1),
        output: OutputStage::Requantize {
            qparams: qp(1.0, 3),
            bits: 8,
            relu,
            requant: vec![Requant::from_real(0.5).unwrap()],
            max_code: None,
        },
    };
    let l1 = QDense {
        in_features: 2,
        out_features: 2,
        weights: PackedWeights::pack(4, 2, 2, &[2, -1, 0, 7]).unwrap(),
        weight_scales: vec![0.25, 0.125],
        bias: vec![1, -2],
        input: qp(1.0, 3),
        output: OutputStage::Logits,
    };
    QuantModel::chain(
        InputSpec {
            channels: 1,
            height: 1,
            width: 2,
            qparams: qp(1.0, 1),
        },
        vec![QOp::Dense(l0), QOp::Dense(l1)],
        2,
    )
}

#[test]
fn hand_computed_two_layer_dense_model_gives_known_outputs() {
    // input [5, 2], zp 1 -> [4, 1]; acc0 = 10 + 4 + 2 = 16, acc1 = -5 - 4 + 3 = -6;
    // x0.5 -> 8, -3 (half rounds up: -3.0 exact); + zp 3 -> [11, 0].
    // layer 1: [11, 0] - 3 = [8, -3]; acc0 = 1 + 16 + 3 = 20, acc1 = -2 + 0 - 21 = -23.
    let e = Engine::new(&hand_model(false)).unwrap();
    let t = e.run_traced(&[5, 2], 1).unwrap();
    assert_eq!(t.codes, vec![vec![11u8, 0]]);
    assert_eq!(t.accumulators, vec![20, -23]);
    assert_eq!(t.logits, vec![5.0, -2.875]);
    assert_eq!(e.run(&[5, 2], 1).unwrap(), vec![5.0, -2.875]);
    assert_eq!(e.predict(&[5, 2], 1).unwrap(), vec![0]);
}

#[test]
fn hand_computed_model_with_fused_relu_clamps_at_the_zero_point() {
    // Same as above but the -3 clamps to the zero point 3: layer-1 input [8, 0]; acc = [17, -2].
    let e = Engine::new(&hand_model(true)).unwrap();
    let t = e.run_traced(&[5, 2], 1).unwrap();
    assert_eq!(t.codes, vec![vec![11u8, 3]]);
    assert_eq!(t.accumulators, vec![17, -2]);
    assert_eq!(t.logits, vec![17.0 * 0.25, -2.0 * 0.125]);
}

// ----------------------------------------------------------------------------------------------------------------
// A naive evaluator written independently of the engine: direct convolution with explicit zero-point
// subtraction, no im2col, no folded bias.

fn out_stage(acc: i64, o: &OutputStage, c: usize) -> u8 {
    match o {
        OutputStage::Requantize {
            qparams,
            bits,
            relu,
            requant,
            max_code,
        } => {
            let (_, full) = act_code_range(*bits).unwrap();
            let qmax = max_code.map_or(full, |m| m.min(full));
            let rq = if requant.len() == 1 {
                requant[0]
            } else {
                requant[c]
            };
            let qmin = if *relu { qparams.zero_point } else { 0 };
            requantize(
                i32::try_from(acc).unwrap(),
                rq,
                qparams.zero_point,
                qmin,
                qmax,
            ) as u8
        }
        OutputStage::Logits => unreachable!(),
    }
}

struct Naive {
    codes: Vec<Vec<u8>>,
    acc: Vec<i32>,
    logits: Vec<f32>,
}

fn naive_run(m: &QuantModel, x: &[u8]) -> Naive {
    let (mut c, mut h, mut w) = (m.input.channels, m.input.height, m.input.width);
    let mut cur: Vec<u8> = x.to_vec();
    let mut codes = Vec::new();
    for (li, layer) in m.ops().enumerate() {
        let last = li == m.nodes.len() - 1;
        match layer {
            QOp::Dense(d) => {
                let zp = d.input.zero_point as i64;
                let accs: Vec<i64> = (0..d.out_features)
                    .map(|j| {
                        d.bias[j] as i64
                            + (0..d.in_features)
                                .map(|k| (cur[k] as i64 - zp) * d.weights.code(j, k) as i64)
                                .sum::<i64>()
                    })
                    .collect();
                if last {
                    let acc: Vec<i32> = accs.iter().map(|&a| a as i32).collect();
                    let logits = acc
                        .iter()
                        .enumerate()
                        .map(|(j, &a)| {
                            let sw = if d.weight_scales.len() == 1 {
                                d.weight_scales[0]
                            } else {
                                d.weight_scales[j]
                            };
                            a as f32 * (d.input.scale * sw)
                        })
                        .collect();
                    return Naive { codes, acc, logits };
                }
                cur = accs
                    .iter()
                    .enumerate()
                    .map(|(j, &a)| out_stage(a, &d.output, j))
                    .collect();
                (c, h, w) = (d.out_features, 1, 1);
            }
            QOp::Conv2d(cv) => {
                let (kh, kw) = cv.kernel;
                let (sh, sw) = cv.stride;
                let (ph, pw) = cv.padding;
                let oh = (h + 2 * ph - kh) / sh + 1;
                let ow = (w + 2 * pw - kw) / sw + 1;
                let zp = cv.input.zero_point as i64;
                let mut out = vec![0u8; cv.out_channels * oh * ow];
                for oc in 0..cv.out_channels {
                    for oy in 0..oh {
                        for ox in 0..ow {
                            let mut acc = cv.bias[oc] as i64;
                            for ic in 0..c {
                                for ky in 0..kh {
                                    for kx in 0..kw {
                                        let iy = (oy * sh + ky) as i64 - ph as i64;
                                        let ix = (ox * sw + kx) as i64 - pw as i64;
                                        // Padding holds the zero point, i.e. contributes 0 after subtraction.
                                        if iy < 0 || ix < 0 || iy >= h as i64 || ix >= w as i64 {
                                            continue;
                                        }
                                        let a =
                                            cur[ic * h * w + iy as usize * w + ix as usize] as i64;
                                        let wc =
                                            cv.weights.code(oc, ic * kh * kw + ky * kw + kx) as i64;
                                        acc += (a - zp) * wc;
                                    }
                                }
                            }
                            out[oc * oh * ow + oy * ow + ox] = out_stage(acc, &cv.output, oc);
                        }
                    }
                }
                cur = out;
                (c, h, w) = (cv.out_channels, oh, ow);
            }
            QOp::MaxPool2d(QMaxPool2d { kernel, stride })
            | QOp::AvgPool2d(QAvgPool2d { kernel, stride, .. }) => {
                let oh = (h - kernel.0) / stride.0 + 1;
                let ow = (w - kernel.1) / stride.1 + 1;
                let mut out = vec![0u8; c * oh * ow];
                for ch in 0..c {
                    for oy in 0..oh {
                        for ox in 0..ow {
                            let vals: Vec<u8> = (0..kernel.0)
                                .flat_map(|ky| (0..kernel.1).map(move |kx| (ky, kx)))
                                .map(|(ky, kx)| {
                                    cur[ch * h * w + (oy * stride.0 + ky) * w + ox * stride.1 + kx]
                                })
                                .collect();
                            out[ch * oh * ow + oy * ow + ox] = match layer {
                                QOp::AvgPool2d(QAvgPool2d {
                                    input,
                                    output,
                                    bits,
                                    ..
                                }) => {
                                    let sum: i32 =
                                        vals.iter().map(|&v| v as i32 - input.zero_point).sum();
                                    let real = input.scale as f64
                                        / (output.scale as f64 * vals.len() as f64);
                                    let (_, qmax) = act_code_range(*bits).unwrap();
                                    requantize(
                                        sum,
                                        Requant::from_real(real).unwrap(),
                                        output.zero_point,
                                        0,
                                        qmax,
                                    ) as u8
                                }
                                _ => *vals.iter().max().unwrap(),
                            };
                        }
                    }
                }
                cur = out;
                (h, w) = (oh, ow);
            }
            QOp::Flatten => {
                (c, h, w) = (c * h * w, 1, 1);
            }
            other => panic!("the chain evaluator does not run {}", other.describe()),
        }
        codes.push(cur.clone());
    }
    unreachable!("model without logits layer")
}

/// Runs the engine traced on `batch` random samples and compares it with [`naive_run`], sample by sample.
fn assert_matches_naive(m: &QuantModel, batch: usize, seed: u64) {
    let e = Engine::new(m).unwrap_or_else(|err| panic!("seed {seed}: {err}"));
    let f = e.input_features();
    let x = Rng(seed).bytes(batch * f);
    let t = e.run_traced(&x, batch).unwrap();
    let n = e.classes();
    for b in 0..batch {
        let r = naive_run(m, &x[b * f..(b + 1) * f]);
        for (li, codes) in r.codes.iter().enumerate() {
            let got = &t.codes[li][b * codes.len()..(b + 1) * codes.len()];
            for (i, (&g, &want)) in got.iter().zip(codes).enumerate() {
                assert_eq!(
                    g, want,
                    "seed {seed} sample {b} layer {li} index {i}: got {g} want {want}"
                );
            }
        }
        assert_eq!(
            &t.accumulators[b * n..(b + 1) * n],
            &r.acc[..],
            "seed {seed} sample {b} accumulators"
        );
        let got_bits: Vec<u32> = t.logits[b * n..(b + 1) * n]
            .iter()
            .map(|v| v.to_bits())
            .collect();
        let want_bits: Vec<u32> = r.logits.iter().map(|v| v.to_bits()).collect();
        assert_eq!(got_bits, want_bits, "seed {seed} sample {b} logits bits");
    }
    // Untraced runs fuse each conv with a following 2 x 2 max pool (pool on accumulators, then requantize):
    // they must give the traced, layer-by-layer logits bit for bit.
    let fused: Vec<u32> = e
        .run(&x, batch)
        .unwrap()
        .iter()
        .map(|v| v.to_bits())
        .collect();
    let traced: Vec<u32> = t.logits.iter().map(|v| v.to_bits()).collect();
    assert_eq!(
        fused, traced,
        "seed {seed}: untraced (fused) run vs traced run"
    );
}

fn opts(weight_bits: u32, act_bits: u32, per_channel: bool) -> LayerOpts {
    LayerOpts {
        weight_bits,
        act_bits,
        per_channel,
    }
}

#[test]
fn conv_relu_maxpool_flatten_dense_matches_direct_convolution() {
    for seed in 0..6u64 {
        let o = opts(8, 8, seed % 2 == 0);
        let mut rng = Rng(seed);
        let input = InputSpec {
            channels: 1,
            height: 8,
            width: 8,
            qparams: qp(1.0 / 255.0, 0),
        };
        let (mut conv, q1) = random_conv(&mut rng, input.qparams, 1, 4, (3, 3), (1, 1), (1, 1), o);
        if let QOp::Conv2d(QConv2d {
            output: OutputStage::Requantize { relu, .. },
            ..
        }) = &mut conv
        {
            *relu = true;
        }
        let pool = QOp::MaxPool2d(QMaxPool2d {
            kernel: (2, 2),
            stride: (2, 2),
        });
        let (dense, _) = random_dense(&mut rng, q1, 4 * 4 * 4, 10, true, o);
        let m = QuantModel::chain(input, vec![conv, pool, QOp::Flatten, dense], 10);
        assert_matches_naive(&m, 3, seed);
    }
}

/// Scales the int8 conv weights of `m` by `num / den` (codes stay int8), e.g. to within +-64 where every pair
/// of taps is safe for the u8 quad scheme.
fn scale_conv_codes(m: &mut QuantModel, num: i32, den: i32) {
    for layer in m.ops_mut() {
        if let QOp::Conv2d(c) = layer {
            if c.weights.packing != lowbit_runtime::pack::Packing::I8 {
                continue;
            }
            let (rows, cols) = (c.weights.rows, c.weights.cols);
            let mut row = vec![0i8; cols];
            let mut codes = Vec::with_capacity(rows * cols);
            for r in 0..rows {
                c.weights.unpack_row(r, &mut row);
                codes.extend(row.iter().map(|&q| (q as i32 * num / den) as i8));
            }
            c.weights = PackedWeights::pack(8, rows, cols, &codes).unwrap();
        }
    }
}

/// A one-channel `height x width` input with codes scaled to [0, 1], and a 2 x 2, stride-2 max pool.
fn gray_input_and_pool(height: usize, width: usize) -> (InputSpec, QOp) {
    let input = InputSpec {
        channels: 1,
        height,
        width,
        qparams: qp(1.0 / 255.0, 0),
    };
    let pool = QOp::MaxPool2d(QMaxPool2d {
        kernel: (2, 2),
        stride: (2, 2),
    });
    (input, pool)
}

fn ten_class_model(input: InputSpec, layers: Vec<QOp>) -> QuantModel {
    QuantModel::chain(input, layers, 10)
}

/// LeNet's layer pattern at odd sizes (pooled planes drop a row and a column), on the direct (i16 and u8 quad
/// schemes) and the im2col convolution paths, over a batch large enough to be split across threads.
#[test]
fn lenet_shaped_conv_pool_stacks_match_the_naive_evaluator() {
    for seed in 0..6u64 {
        let o = opts(if (2..4).contains(&seed) { 4 } else { 8 }, 8, seed % 2 == 0);
        let mut rng = Rng(seed + 40);
        let (input, pool) = gray_input_and_pool(13, 11);
        // 1x13x11 -> conv 6@5x5 pad 2 -> 6x13x11 -> pool -> 6x6x5 -> conv 16@3x3 -> 16x4x3 -> pool -> 16x2x1
        let (c1, q1) = random_conv(&mut rng, input.qparams, 1, 6, (5, 5), (1, 1), (2, 2), o);
        let (c2, q2) = random_conv(&mut rng, q1, 6, 16, (3, 3), (1, 1), (0, 0), o);
        let (d1, q3) = random_dense(&mut rng, q2, 16 * 2, 12, false, o);
        let (d2, _) = random_dense(&mut rng, q3, 12, 10, true, o);
        let layers = vec![c1, pool.clone(), c2, pool, QOp::Flatten, d1, d2];
        let mut m = ten_class_model(input, layers);
        if seed >= 4 {
            // Trained-like magnitudes: quads after re-pairing and flips (seed 4), or as they are (seed 5).
            scale_conv_codes(
                &mut m,
                if seed == 4 { 3 } else { 1 },
                if seed == 4 { 4 } else { 2 },
            );
            let e = Engine::new(&m).unwrap();
            // The loader's memory bound covers the quads' accumulators: whole padded rows (11 + 4 wide) rounded up
            // to 16 positions, 6 channels.
            assert!(e.max_sample_elems() >= 6 * (13 * 15usize).next_multiple_of(16));
            let paths = e.kernel_paths();
            use lowbit_runtime::kernels::{selected_isa, Isa};
            if matches!(selected_isa(), Isa::Avx2 | Isa::Avx512Vnni) {
                assert!(paths[0].contains("quads"), "seed {seed}: {paths:?}");
            }
        }
        assert_matches_naive(&m, 40, seed);
    }
}

/// Pooled planes at least 8 wide (the vector path of the fused pool and requantization, with a tail), a strided
/// im2col convolution with a kernel wider than 8, and 9 channels pooled in the GEMM's position layout.
#[test]
fn wide_planes_and_wide_strided_kernels_match_the_naive_evaluator() {
    for seed in 0..4u64 {
        let o = opts(8, 8, seed % 2 == 0);
        let mut rng = Rng(seed + 70);
        let (input, pool) = gray_input_and_pool(20, 19);
        // 1x20x19 -> conv 3@5x5 pad 2 -> 3x20x19 -> pool -> 3x10x9 -> conv 9@3x9 stride (2, 1) pad (1, 4)
        // -> 9x5x9 -> pool -> 9x2x4
        let (c1, q1) = random_conv(&mut rng, input.qparams, 1, 3, (5, 5), (1, 1), (2, 2), o);
        let (c2, q2) = random_conv(&mut rng, q1, 3, 9, (3, 9), (2, 1), (1, 4), o);
        let (d, _) = random_dense(&mut rng, q2, 9 * 2 * 4, 10, true, o);
        let layers = vec![c1, pool.clone(), c2, pool, QOp::Flatten, d];
        assert_matches_naive(&ten_class_model(input, layers), 30, seed);
    }
}

#[test]
fn every_weight_and_activation_bit_width_matches_the_naive_evaluator() {
    for &wb in &[8u32, 6, 4, 3, 2, 1] {
        for &ab in &[8u32, 4, 2, 1] {
            for per_channel in [false, true] {
                let seed = (wb * 100 + ab * 10) as u64 + per_channel as u64;
                assert_matches_naive(&random_cnn(seed, opts(wb, ab, per_channel)), 2, seed);
                assert_matches_naive(&random_mlp(seed, opts(wb, ab, per_channel)), 3, seed);
            }
        }
    }
}

#[test]
fn batch_of_n_equals_n_runs_of_batch_one() {
    for seed in 0..4u64 {
        let m = random_cnn(seed, opts(4, 8, true));
        let e = Engine::new(&m).unwrap();
        let f = e.input_features();
        let batch = 7;
        let x = Rng(seed + 99).bytes(batch * f);
        let all = e.run(&x, batch).unwrap();
        let single: Vec<f32> = (0..batch)
            .flat_map(|b| e.run(&x[b * f..(b + 1) * f], 1).unwrap())
            .collect();
        assert_eq!(
            all.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            single.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
        );
        assert_eq!(
            e.predict(&x, batch).unwrap(),
            argmax_rows(&single, e.classes())
        );
    }
}

/// Expands per-tensor scales and requant to per-channel copies of the same values.
fn to_per_channel(m: &QuantModel) -> QuantModel {
    let mut m = m.clone();
    for l in m.ops_mut() {
        let (rows, scales, output) = match l {
            QOp::Dense(d) => (d.out_features, &mut d.weight_scales, &mut d.output),
            QOp::Conv2d(c) => (c.out_channels, &mut c.weight_scales, &mut c.output),
            _ => continue,
        };
        assert_eq!(scales.len(), 1);
        *scales = vec![scales[0]; rows];
        if let OutputStage::Requantize { requant, .. } = output {
            *requant = vec![requant[0]; rows];
        }
    }
    m
}

#[test]
fn per_channel_parameters_with_equal_values_match_per_tensor() {
    for seed in 0..4u64 {
        for m in [
            random_cnn(seed, opts(8, 8, false)),
            random_mlp(seed, opts(2, 4, false)),
        ] {
            let pc = to_per_channel(&m);
            assert_ne!(pc, m);
            let e1 = Engine::new(&m).unwrap();
            let e2 = Engine::new(&pc).unwrap();
            let x = Rng(seed).bytes(3 * e1.input_features());
            assert_eq!(e1.run_traced(&x, 3).unwrap(), e2.run_traced(&x, 3).unwrap());
        }
    }
}

#[test]
fn per_channel_scales_change_the_logits_of_their_channel_only() {
    let m = random_mlp(5, opts(8, 8, true));
    let e = Engine::new(&m).unwrap();
    let x = Rng(1).bytes(e.input_features());
    let base = e.run(&x, 1).unwrap();
    let mut m2 = m.clone();
    if let Some(QOp::Dense(d)) = m2.nodes.last_mut().map(|n| &mut n.op) {
        d.weight_scales[1] *= 2.0;
    }
    let got = Engine::new(&m2).unwrap().run(&x, 1).unwrap();
    assert_eq!(got[0], base[0]);
    assert_eq!(got[1], base[1] * 2.0);
    assert_eq!(got[2], base[2]);
}

#[test]
fn argmax_ties_go_to_the_lowest_index() {
    assert_eq!(
        argmax_rows(&[1.0, 3.0, 3.0, 0.0, 2.0, 2.0, 2.0, 2.0], 4),
        vec![1, 0]
    );
}

#[test]
fn run_rejects_input_of_the_wrong_length() {
    let e = Engine::new(&hand_model(false)).unwrap();
    assert!(matches!(
        e.run(&[1, 2, 3], 1),
        Err(QuantError::ShapeMismatch { .. })
    ));
    assert!(matches!(
        e.run(&[1, 2, 3], 2),
        Err(QuantError::ShapeMismatch { .. })
    ));
    assert_eq!(e.run(&[], 0).unwrap(), Vec::<f32>::new());
}

fn dense_mut(m: &mut QuantModel, i: usize) -> &mut QDense {
    match &mut m.nodes[i].op {
        QOp::Dense(d) => d,
        _ => panic!("layer {i} is not dense"),
    }
}

#[test]
fn new_rejects_inconsistent_models() {
    type Edit = fn(&mut QuantModel);
    let cases: Vec<(&str, Edit)> = vec![
        ("bias length", |m| dense_mut(m, 0).bias.push(0)),
        ("weight scales length", |m| {
            dense_mut(m, 1).weight_scales = vec![1.0; 3]
        }),
        ("nan weight scale", |m| {
            dense_mut(m, 1).weight_scales[0] = f32::NAN
        }),
        ("zero input scale", |m| m.input.qparams.scale = 0.0),
        ("input zero point above 255", |m| {
            m.input.qparams.zero_point = 256
        }),
        ("in_features", |m| dense_mut(m, 0).in_features = 3),
        ("chain of qparams", |m| dense_mut(m, 1).input.scale = 2.0),
        ("classes", |m| m.classes = 3),
        ("class names", |m| m.class_names = vec!["a".into()]),
        ("logits not last", |m| {
            dense_mut(m, 0).output = OutputStage::Logits
        }),
        ("requant last", |m| {
            let o = dense_mut(m, 0).output.clone();
            dense_mut(m, 1).output = o;
        }),
        ("requant length", |m| {
            if let OutputStage::Requantize { requant, .. } = &mut dense_mut(m, 0).output {
                requant.push(requant[0]);
                requant.push(requant[0]);
            }
        }),
        ("invalid requant", |m| {
            if let OutputStage::Requantize { requant, .. } = &mut dense_mut(m, 0).output {
                requant[0].multiplier = 5;
            }
        }),
        ("output zero point", |m| {
            if let OutputStage::Requantize { qparams, bits, .. } = &mut dense_mut(m, 0).output {
                *bits = 2;
                qparams.zero_point = 4;
            }
        }),
        ("weight rows", |m| dense_mut(m, 0).weights.rows = 3),
        ("accumulator overflow bias", |m| {
            dense_mut(m, 0).bias[0] = i32::MAX - 10
        }),
        ("no layers", |m| m.nodes.clear()),
    ];
    for (name, edit) in cases {
        let mut m = hand_model(false);
        edit(&mut m);
        assert!(Engine::new(&m).is_err(), "{name} was accepted");
    }
}

#[test]
fn new_rejects_k_above_the_kernel_overflow_bound() {
    let k = lowbit_runtime::kernels::MAX_K + 1;
    let mut rng = Rng(3);
    let input = InputSpec {
        channels: k,
        height: 1,
        width: 1,
        qparams: qp(1.0, 0),
    };
    let (d, _) = random_dense(&mut rng, input.qparams, k, 1, true, opts(1, 8, false));
    let m = QuantModel::chain(input, vec![d], 1);
    assert!(matches!(
        Engine::new(&m),
        Err(QuantError::ShapeMismatch { .. })
    ));
}

#[test]
fn random_test_models_produce_spread_out_codes_not_saturated_ones() {
    // Guards the tests above against passing trivially on all-zero or all-max activations.
    let m = random_cnn(11, opts(8, 8, true));
    let e = Engine::new(&m).unwrap();
    let x = Rng(2).bytes(4 * e.input_features());
    let t = e.run_traced(&x, 4).unwrap();
    let mut distinct: Vec<u8> = t.codes[0].clone();
    distinct.sort_unstable();
    distinct.dedup();
    assert!(
        distinct.len() >= 16,
        "only {} distinct codes after conv 0",
        distinct.len()
    );
}
