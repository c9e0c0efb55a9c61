//! Seeded builders of small random valid [`QuantModel`]s for tests in this and other crates. Not a stable API.
use crate::model::{
    InputSpec, OutputStage, Provenance, QAdd, QAvgPool2d, QConcat, QConv2d, QDense, QLut,
    QMaxPool2d, QNode, QOp, QPad, QSlice, QuantModel,
};
use crate::pack::PackedWeights;
use crate::qparams::{act_code_range, weight_code_range, QParams, Requant};

/// SplitMix64: tiny, seeded, good enough for test data.
#[derive(Debug, Clone)]
pub struct Rng(pub u64);

impl Rng {
    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: i64, hi: i64) -> i64 {
        lo + (self.next_u64() % ((hi - lo + 1) as u64)) as i64
    }
    /// Uniform in `[lo, hi)`.
    pub fn float(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    /// `n` random bytes.
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next_u64() as u8).collect()
    }
}

/// Exact comparison of kernel outputs: on the first differing index, `assert_eq!` fails naming that index, both
/// values, how many elements differ, and `context` (shape, parameters, tier, seed).
pub fn assert_same<T: PartialEq + std::fmt::Debug>(
    expected: &[T],
    got: &[T],
    context: impl std::fmt::Display,
) {
    assert_eq!(expected.len(), got.len(), "output length; {context}");
    if let Some(i) = expected.iter().zip(got).position(|(e, g)| e != g) {
        let differ = expected.iter().zip(got).filter(|(e, g)| e != g).count();
        assert_eq!(
            got[i],
            expected[i],
            "index {i} of {} ({differ} differ): got {:?}, expected {:?}; {context}",
            got.len(),
            got[i],
            expected[i]
        );
    }
}

/// Options of a random matrix layer.
#[derive(Debug, Clone, Copy)]
pub struct LayerOpts {
    /// Weight bit width.
    pub weight_bits: u32,
    /// Output activation bit width.
    pub act_bits: u32,
    /// Per-channel (true) or per-tensor weight scales.
    pub per_channel: bool,
}

/// Random weight codes, scales and bias for `rows x k`.
fn random_params(
    rng: &mut Rng,
    rows: usize,
    k: usize,
    o: LayerOpts,
) -> (PackedWeights, Vec<f32>, Vec<i32>) {
    let (lo, hi) = weight_code_range(o.weight_bits).unwrap_or((-1, 1));
    let codes: Vec<i8> = (0..rows * k)
        .map(|_| {
            if o.weight_bits == 1 {
                if rng.next_u64() & 1 == 1 {
                    1
                } else {
                    -1
                }
            } else {
                rng.range(lo as i64, hi as i64) as i8
            }
        })
        .collect();
    let weights =
        PackedWeights::pack(o.weight_bits, rows, k, &codes).unwrap_or_else(|e| panic!("pack: {e}"));
    let n_scales = if o.per_channel { rows } else { 1 };
    let scales = (0..n_scales)
        .map(|_| rng.float(0.002, 0.05) as f32)
        .collect();
    let bias = (0..rows).map(|_| rng.range(-2000, 2000) as i32).collect();
    (weights, scales, bias)
}

/// Output stage that maps typical accumulators onto the output code range.
fn random_requant(
    rng: &mut Rng,
    input: QParams,
    scales: &[f32],
    k: usize,
    o: LayerOpts,
) -> (OutputStage, QParams) {
    let (_, hi_w) = weight_code_range(o.weight_bits).unwrap_or((-1, 1));
    let (_, qmax) = act_code_range(o.act_bits).unwrap_or((0, 255));
    let s0 = scales.first().copied().unwrap_or(1.0) as f64;
    // A typical |acc| is about sqrt(K) * 64 * hi_w; aim it at a quarter of the output range.
    let typical = (k as f64).sqrt() * 64.0 * hi_w as f64;
    let m = rng.float(0.5, 2.0) * qmax as f64 / (4.0 * typical);
    let s_out = (input.scale as f64 * s0 / m) as f32;
    let zero_point = rng.range(0, (qmax / 2) as i64) as i32;
    let qparams = QParams {
        scale: s_out,
        zero_point,
    };
    let requant = scales
        .iter()
        .map(|&sw| {
            Requant::from_real(input.scale as f64 * sw as f64 / s_out as f64)
                .unwrap_or_else(|e| panic!("requant: {e}"))
        })
        .collect();
    let relu = rng.next_u64() & 1 == 1;
    (
        OutputStage::Requantize {
            qparams,
            bits: o.act_bits,
            relu,
            requant,
            max_code: None,
        },
        qparams,
    )
}

/// A random Dense layer from `k` inputs to `n` outputs; returns it and its output parameters.
pub fn random_dense(
    rng: &mut Rng,
    input: QParams,
    k: usize,
    n: usize,
    logits: bool,
    o: LayerOpts,
) -> (QOp, QParams) {
    let (weights, weight_scales, bias) = random_params(rng, n, k, o);
    let (output, out_qp) = if logits {
        (OutputStage::Logits, input)
    } else {
        random_requant(rng, input, &weight_scales, k, o)
    };
    (
        QOp::Dense(QDense {
            in_features: k,
            out_features: n,
            weights,
            weight_scales,
            bias,
            input,
            output,
        }),
        out_qp,
    )
}

/// A random Conv2d layer; returns it and its output parameters.
#[allow(clippy::too_many_arguments)]
pub fn random_conv(
    rng: &mut Rng,
    input: QParams,
    in_channels: usize,
    out_channels: usize,
    kernel: (usize, usize),
    stride: (usize, usize),
    padding: (usize, usize),
    o: LayerOpts,
) -> (QOp, QParams) {
    let geometry = (kernel, stride, padding);
    random_grouped_conv(rng, input, in_channels, out_channels, geometry, 1, o)
}

/// A random Conv2d layer in `groups` channel groups (`geometry`: kernel, stride, padding); returns it and its
/// output parameters.
pub fn random_grouped_conv(
    rng: &mut Rng,
    input: QParams,
    in_channels: usize,
    out_channels: usize,
    (kernel, stride, padding): ((usize, usize), (usize, usize), (usize, usize)),
    groups: usize,
    o: LayerOpts,
) -> (QOp, QParams) {
    let k = in_channels / groups * kernel.0 * kernel.1;
    let (weights, weight_scales, bias) = random_params(rng, out_channels, k, o);
    let (output, out_qp) = random_requant(rng, input, &weight_scales, k, o);
    (
        QOp::Conv2d(QConv2d {
            in_channels,
            out_channels,
            kernel,
            stride,
            padding,
            groups,
            weights,
            weight_scales,
            bias,
            input,
            output,
        }),
        out_qp,
    )
}

fn input_spec(rng: &mut Rng, c: usize, h: usize, w: usize) -> InputSpec {
    let zero_point = if rng.next_u64() & 1 == 1 {
        0
    } else {
        rng.range(1, 255) as i32
    };
    InputSpec {
        channels: c,
        height: h,
        width: w,
        qparams: QParams {
            scale: 1.0 / 255.0,
            zero_point,
        },
    }
}

fn finish(input: InputSpec, layers: Vec<QOp>, classes: usize, seed: u64) -> QuantModel {
    QuantModel {
        class_names: (0..classes).map(|i| format!("class{i}")).collect(),
        provenance: Provenance {
            dataset: "random".into(),
            seed,
            test_accuracy: Some(0.5),
            recipe: "testutil".into(),
        },
        ..QuantModel::chain(input, layers, classes)
    }
}

/// Input (1x4x4) -> Dense 16->8 (requantized) -> Dense 8->3 (logits).
pub fn random_mlp(seed: u64, o: LayerOpts) -> QuantModel {
    let mut rng = Rng(seed);
    let input = input_spec(&mut rng, 1, 4, 4);
    let (l0, qp) = random_dense(&mut rng, input.qparams, 16, 8, false, o);
    let (l1, _) = random_dense(&mut rng, qp, 8, 3, true, o);
    finish(input, vec![l0, l1], 3, seed)
}

/// The 784-64-10 MLP of the benchmarks (raw u8 pixels with scale 1/255, ReLU hidden layer, per-channel weight
/// scales, 8-bit activations) at `bits` weight bits: 51K multiply-accumulates per sample.
pub fn reference_mlp(seed: u64, bits: u32) -> QuantModel {
    let mut rng = Rng(seed);
    let o = LayerOpts {
        weight_bits: bits,
        act_bits: 8,
        per_channel: true,
    };
    let input = InputSpec {
        channels: 1,
        height: 28,
        width: 28,
        qparams: QParams {
            scale: 1.0 / 255.0,
            zero_point: 0,
        },
    };
    let (l0, qp) = random_dense(&mut rng, input.qparams, 784, 64, false, o);
    let (l1, _) = random_dense(&mut rng, qp, 64, 10, true, o);
    QuantModel::chain(input, vec![l0, l1], 10)
}

/// Input (2x7x6) -> Conv 2->3 k3 s1 p1 -> MaxPool 2 s2 -> AvgPool 2 s1 -> Conv 3->2 k2 s1 p0 -> Flatten -> Dense
/// -> 4 logits. Exercises padding, odd sizes, both pools and conv after pool.
pub fn random_cnn(seed: u64, o: LayerOpts) -> QuantModel {
    let mut rng = Rng(seed);
    let input = input_spec(&mut rng, 2, 7, 6);
    let (c0, qp) = random_conv(&mut rng, input.qparams, 2, 3, (3, 3), (1, 1), (1, 1), o);
    // 3x7x6 -> maxpool 2/2 -> 3x3x3 -> avgpool 2/1 -> 3x2x2 -> conv k2 -> 2x1x1
    let pool = QOp::MaxPool2d(QMaxPool2d {
        kernel: (2, 2),
        stride: (2, 2),
    });
    let (_, qmax) = act_code_range(o.act_bits).unwrap_or((0, 255));
    let avg_out = QParams {
        scale: qp.scale * rng.float(0.8, 1.2) as f32,
        zero_point: rng.range(0, (qmax / 2) as i64) as i32,
    };
    let avg = QOp::AvgPool2d(QAvgPool2d {
        kernel: (2, 2),
        stride: (1, 1),
        input: qp,
        output: avg_out,
        bits: o.act_bits,
    });
    let (c1, qp) = random_conv(&mut rng, avg_out, 3, 2, (2, 2), (1, 1), (0, 0), o);
    let (d, _) = random_dense(&mut rng, qp, 2, 4, true, o);
    finish(input, vec![c0, pool, avg, c1, QOp::Flatten, d], 4, seed)
}

/// A random model: [`random_mlp`] or [`random_cnn`] with random bit widths and granularity.
pub fn random_model(seed: u64) -> QuantModel {
    let mut rng = Rng(seed ^ 0x5eed);
    let o = LayerOpts {
        weight_bits: rng.range(1, 8) as u32,
        act_bits: rng.range(2, 8) as u32,
        per_channel: rng.next_u64() & 1 == 1,
    };
    if rng.next_u64() & 1 == 1 {
        random_mlp(seed, o)
    } else {
        random_cnn(seed, o)
    }
}

/// Random output parameters at `scale_base` times a factor in `[0.8, 1.6)`, zero point in the lower half.
fn random_out_qparams(rng: &mut Rng, scale_base: f32, o: LayerOpts) -> QParams {
    let (_, qmax) = act_code_range(o.act_bits).unwrap_or((0, 255));
    QParams {
        scale: scale_base * rng.float(0.8, 1.6) as f32,
        zero_point: rng.range(0, (qmax / 2) as i64) as i32,
    }
}

/// A small graph with every op kind (about 2 KB as a file at 8 bits), for tests of the reader, the engine and
/// fuzzing seeds. Input 3x6x6:
///
/// ```text
/// stem: conv 3->8 3x3 pad 1 -> dw: depthwise 3x3 pad 1, clipped (max_code) -> pw: 1x1 conv in 2 groups
/// add(stem, pw) -> max pool 2x2 -> pad (channels 1+3, rows 1+0, cols 0+1) -> slice (every 2nd channel, cols 1..)
/// lut(slice) -> concat(lut rescaled, slice copied) -> avg pool 2x2 stride 1 -> global avg pool -> flatten
/// -> fc: dense 12->3 logits
/// ```
pub fn random_graph(seed: u64, o: LayerOpts) -> QuantModel {
    let mut rng = Rng(seed);
    let input = input_spec(&mut rng, 3, 6, 6);
    let (_, qmax) = act_code_range(o.act_bits).unwrap_or((0, 255));
    let same = ((3, 3), (1, 1), (1, 1));
    let (stem, qp_stem) = random_grouped_conv(&mut rng, input.qparams, 3, 8, same, 1, o);
    let (mut dw, qp_dw) = random_grouped_conv(&mut rng, qp_stem, 8, 8, same, 8, o);
    if let QOp::Conv2d(QConv2d {
        output:
            OutputStage::Requantize {
                qparams,
                relu,
                max_code,
                ..
            },
        ..
    }) = &mut dw
    {
        let qmin = if *relu { qparams.zero_point } else { 0 };
        *max_code = Some(((qparams.zero_point + qmax) / 2).max(qmin));
    }
    let pointwise = ((1, 1), (1, 1), (0, 0));
    let (pw, qp_pw) = random_grouped_conv(&mut rng, qp_dw, 8, 8, pointwise, 2, o);
    let qp_add = random_out_qparams(&mut rng, qp_stem.scale.max(qp_pw.scale), o);
    let add = QOp::Add(QAdd {
        inputs: [qp_stem, qp_pw],
        output: qp_add,
        bits: o.act_bits,
        relu: rng.next_u64() & 1 == 1,
    });
    let pool = QOp::MaxPool2d(QMaxPool2d {
        kernel: (2, 2),
        stride: (2, 2),
    });
    // 8x3x3 -> 12x4x4 -> 6x4x3
    let pad = QOp::Pad(QPad {
        channels: (1, 3),
        rows: (1, 0),
        cols: (0, 1),
    });
    let slice = QOp::Slice(QSlice {
        channels: [0, 12, 2],
        rows: [0, 4, 1],
        cols: [1, 4, 1],
    });
    let qp_lut = random_out_qparams(&mut rng, qp_add.scale, o);
    let table = crate::kernels::eltwise::unary_table(qp_add, qp_lut, 0, qmax, f32::abs)
        .unwrap_or_else(|e| panic!("table: {e}"));
    let lut = QOp::Lut(QLut {
        input: qp_add,
        output: qp_lut,
        bits: o.act_bits,
        table: table.to_vec(),
    });
    // The slice keeps the output's parameters (a copy), the table's output is rescaled.
    let concat = QOp::Concat(QConcat {
        inputs: vec![qp_lut, qp_add],
        output: qp_add,
        bits: o.act_bits,
    });
    let qp_avg = random_out_qparams(&mut rng, qp_add.scale, o);
    let avg = QOp::AvgPool2d(QAvgPool2d {
        kernel: (2, 2),
        stride: (1, 1),
        input: qp_add,
        output: qp_avg,
        bits: o.act_bits,
    });
    let qp_gap = random_out_qparams(&mut rng, qp_avg.scale, o);
    let gap = QOp::AvgPool2d(QAvgPool2d {
        kernel: (3, 2),
        stride: (1, 1),
        input: qp_avg,
        output: qp_gap,
        bits: o.act_bits,
    });
    let (fc, _) = random_dense(&mut rng, qp_gap, 12, 3, true, o);
    let nodes = [
        ("stem", vec![0], stem),
        ("dw", vec![1], dw),
        ("pw", vec![2], pw),
        ("add", vec![1, 3], add),
        ("pool", vec![4], pool),
        ("pad", vec![5], pad),
        ("slice", vec![6], slice),
        ("lut", vec![7], lut),
        ("concat", vec![8, 7], concat),
        ("avg", vec![9], avg),
        ("gap", vec![10], gap),
        ("flatten", vec![11], QOp::Flatten),
        ("fc", vec![12], fc),
    ];
    QuantModel {
        nodes: nodes
            .into_iter()
            .map(|(name, inputs, op)| QNode {
                name: name.into(),
                inputs,
                op,
            })
            .collect(),
        ..finish(input, Vec::new(), 3, seed)
    }
}

/// Minimum over `windows` windows of about `window` each of the mean wall seconds per call of `f` (after one
/// warm-up call): on a shared machine this filters out the windows in which the thread was descheduled.
pub fn min_window_secs(window: std::time::Duration, windows: usize, mut f: impl FnMut()) -> f64 {
    f();
    let mut best = f64::INFINITY;
    for _ in 0..windows {
        let t0 = std::time::Instant::now();
        let mut iters = 0u32;
        while t0.elapsed() < window || iters == 0 {
            f();
            iters += 1;
        }
        best = best.min(t0.elapsed().as_secs_f64() / f64::from(iters));
    }
    best
}

/// CPU time of this process (every thread, user + system) in seconds, from `CLOCK_PROCESS_CPUTIME_ID` (Unix; to
/// the nanosecond on Linux, where /proc/self/stat counts 10 ms ticks; 0 elsewhere). On a loaded machine it still
/// measures the work done, where wall time measures the machine.
pub fn process_cpu_secs() -> f64 {
    #[cfg(unix)]
    {
        let mut t = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `t` is a live, writable `timespec`, the only memory `clock_gettime` writes.
        if unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut t) } == 0 {
            return t.tv_sec as f64 + t.tv_nsec as f64 * 1e-9;
        }
    }
    0.0
}

/// A `.lbq` (or float model) file with its `model` metadata JSON edited by `edit` and everything else kept
/// (header order, tensors): the surgery of reader tests. `None` if `bytes` is not a safetensors file with a
/// `model` JSON.
pub fn edit_model_json(bytes: &[u8], edit: impl FnOnce(&mut serde_json::Value)) -> Option<Vec<u8>> {
    let (mut header, start) = st_header(bytes)?;
    let meta = header.get_mut("__metadata__")?;
    let mut model: serde_json::Value = serde_json::from_str(meta.get("model")?.as_str()?).ok()?;
    edit(&mut model);
    meta["model"] = model.to_string().into();
    Some(st_with_header(&header, bytes.get(start..)?))
}

/// CPU time of the calling thread in seconds (`CLOCK_THREAD_CPUTIME_ID` on Unix; 0 elsewhere): for per-step
/// profiles of single-threaded work on a shared machine.
pub fn thread_cpu_secs() -> f64 {
    #[cfg(unix)]
    {
        let mut t = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `t` is a live, writable `timespec`, the only memory `clock_gettime` writes.
        if unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) } == 0 {
            return t.tv_sec as f64 + t.tv_nsec as f64 * 1e-9;
        }
    }
    0.0
}

/// A convolution's accumulators (groups 1), NCHW, written out independently of the engine's convolution kernels:
/// im2col (`[positions][c_in * kh * kw]`, padded positions holding `pad`) and the normative reference GEMM.
pub fn im2col_conv_acc(
    g: &crate::kernels::depthwise::GroupedConvGeometry,
    x: &[u8],
    pad: u8,
    w: &PackedWeights,
    bias: &[i32],
) -> Vec<i32> {
    let (oh, ow, k) = (g.oh(), g.ow(), g.taps());
    let (sh, sw) = g.stride;
    let (ph, pw) = g.padding;
    let mut col = vec![pad; oh * ow * k];
    for oy in 0..oh {
        for ox in 0..ow {
            for ic in 0..g.c_in {
                for ky in 0..g.kh {
                    for kx in 0..g.kw {
                        let (y, xx) = (oy * sh + ky, ox * sw + kx);
                        if y >= ph && y - ph < g.h && xx >= pw && xx - pw < g.w {
                            col[(oy * ow + ox) * k + (ic * g.kh + ky) * g.kw + kx] =
                                x[(ic * g.h + y - ph) * g.w + xx - pw];
                        }
                    }
                }
            }
        }
    }
    let mut acc = vec![0i32; oh * ow * g.c_out];
    crate::kernels::reference::gemm_u8i8_i32(&col, oh * ow, k, w, bias, &mut acc);
    let mut nchw = vec![0i32; acc.len()];
    for p in 0..oh * ow {
        for c in 0..g.c_out {
            nchw[c * oh * ow + p] = acc[p * g.c_out + c];
        }
    }
    nchw
}

/// Rewrites a version-3 `.lbq` file of a chain (nodes `layers.{i}`, each reading the one before) as version 2,
/// which held the ops as a `layers` list (for tests of the reader's compatibility). `None` if `bytes` is not such
/// a file.
pub fn lbq_as_version_2(bytes: &[u8]) -> Option<Vec<u8>> {
    let st = safetensors::SafeTensors::deserialize(bytes).ok()?;
    let mut meta = crate::format::read_metadata(bytes).ok()?;
    if meta.get("format_version")? != "3" {
        return None;
    }
    let mut model: serde_json::Value = serde_json::from_str(meta.get("model")?).ok()?;
    let obj = model.as_object_mut()?;
    let nodes = obj.remove("nodes")?;
    let mut layers = Vec::new();
    // Version 2 names node i `layers.{i}`: rename the chain's nodes, and their tensors with them.
    let mut renamed: std::collections::HashMap<String, String> = std::collections::HashMap::new();
    let mut prev = "input".to_string();
    for (i, n) in nodes.as_array()?.iter().enumerate() {
        let name = n.get("name")?.as_str()?.to_string();
        if n.get("inputs")? != &serde_json::json!([prev]) {
            return None;
        }
        renamed.insert(name.clone(), format!("layers.{i}"));
        prev = name;
        layers.push(n.get("op")?.clone());
    }
    obj.insert("layers".into(), serde_json::Value::Array(layers));
    let mut tensors: Vec<crate::format::Tensor> = Vec::new();
    let mut names = st.names();
    names.sort();
    for name in names {
        let t = st.tensor(name).ok()?;
        let dtype = match t.dtype() {
            safetensors::tensor::Dtype::U8 => "U8",
            safetensors::tensor::Dtype::I32 => "I32",
            safetensors::tensor::Dtype::F32 => "F32",
            _ => return None,
        };
        let (node, what) = name.rsplit_once('.')?;
        let new = format!("{}.{what}", renamed.get(node)?);
        tensors.push((new, dtype, t.shape().to_vec(), t.data().to_vec()));
    }
    meta.insert("model".into(), model.to_string());
    meta.insert("format_version".into(), "2".into());
    let mut keys: Vec<(&str, String)> = meta.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
    keys.sort();
    crate::format::container_bytes(&keys, &tensors).ok()
}

/// Rewrites a version-3 (or 2) `.lbq` file of a chain as version 1: the per-channel tensors go back into the
/// model JSON as text, as version 1 stored them (for tests of the reader's compatibility). `None` if `bytes` is
/// not such a file.
pub fn lbq_as_version_1(bytes: &[u8]) -> Option<Vec<u8>> {
    use safetensors::tensor::Dtype;
    let v2;
    let bytes = match crate::format::read_metadata(bytes)
        .ok()?
        .get("format_version")?
        .as_str()
    {
        "3" => {
            v2 = lbq_as_version_2(bytes)?;
            &v2[..]
        }
        _ => bytes,
    };
    let st = safetensors::SafeTensors::deserialize(bytes).ok()?;
    let mut meta = crate::format::read_metadata(bytes).ok()?;
    let mut model: serde_json::Value = serde_json::from_str(meta.get("model")?).ok()?;
    let words = |name: &str| -> Option<Vec<[u8; 4]>> {
        let t = st.tensor(name).ok()?;
        Some(
            t.data()
                .chunks_exact(4)
                .filter_map(|c| c.try_into().ok())
                .collect(),
        )
    };
    let mut tensors: Vec<crate::format::Tensor> = Vec::new();
    for (i, layer) in model
        .get_mut("layers")?
        .as_array_mut()?
        .iter_mut()
        .enumerate()
    {
        let Some(scales) = words(&format!("layers.{i}.weight_scales")) else {
            continue;
        };
        let scales: Vec<f64> = scales
            .into_iter()
            .map(|c| f64::from(f32::from_le_bytes(c)))
            .collect();
        layer
            .as_object_mut()?
            .insert("weight_scales".into(), serde_json::json!(scales));
        if let Some(rq) = words(&format!("layers.{i}.requant")) {
            let rq: Vec<serde_json::Value> = rq
                .chunks_exact(2)
                .map(|p| {
                    let [m, s] = [p[0], p[1]].map(i32::from_le_bytes);
                    serde_json::json!({ "multiplier": m, "shift": s })
                })
                .collect();
            layer
                .get_mut("output")?
                .as_object_mut()?
                .insert("requant".into(), serde_json::json!(rq));
        }
        for (what, dtype) in [("weight", "U8"), ("bias", "I32")] {
            let name = format!("layers.{i}.{what}");
            let t = st.tensor(&name).ok()?;
            let expected = if dtype == "U8" { Dtype::U8 } else { Dtype::I32 };
            if t.dtype() != expected {
                return None;
            }
            tensors.push((name, dtype, t.shape().to_vec(), t.data().to_vec()));
        }
    }
    meta.insert("model".into(), model.to_string());
    meta.insert("format_version".into(), "1".into());
    let mut keys: Vec<(&str, String)> = meta.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
    keys.sort();
    crate::format::container_bytes(&keys, &tensors).ok()
}

/// The JSON header of a safetensors file and where its data section starts (`8 +` header length), for tests
/// that edit a file's raw header. `None` if `bytes` has no readable header.
pub fn st_header(bytes: &[u8]) -> Option<(serde_json::Value, usize)> {
    let n = usize::try_from(u64::from_le_bytes(bytes.get(..8)?.try_into().ok()?)).ok()?;
    let header = serde_json::from_slice(bytes.get(8..8usize.checked_add(n)?)?).ok()?;
    Some((header, 8 + n))
}

/// A safetensors file made of `header` (padded with spaces to a multiple of 8 bytes) and the data section `data`.
pub fn st_with_header(header: &serde_json::Value, data: &[u8]) -> Vec<u8> {
    let mut h = header.to_string().into_bytes();
    h.resize(h.len().next_multiple_of(8), b' ');
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&h);
    out.extend_from_slice(data);
    out
}
