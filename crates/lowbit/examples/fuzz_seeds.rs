//! Writes the seed corpora of the fuzz targets (see `fuzz/README.md`): small valid files that reach every op of
//! the `.lbq` reader (format versions 1 to 3) and of the float model reader (versions 1 and 2), each a few KB so
//! that libFuzzer's `-max_len` keeps them whole. Every seed is read back before it is written.
//!
//! ```sh
//! cargo run --release -p lowbit --example fuzz_seeds -- fuzz/seeds
//! ```
//!
//! writes `DIR/load_lbq/*.lbq` and `DIR/load_float/*.f32` (deterministic: the same files on every run).
use lowbit::modelfile::{float_from_bytes, float_to_bytes};
use lowbit::nn::{
    Add, AvgPool2d, AxisSlice, BatchNorm2d, Clip, Concat, Conv2d, Dense, Dropout, Flatten, Layer,
    MaxPool2d, Model, Node, Pad, Relu, Slice, UnaryOp,
};
use lowbit::quant::{convert, ptq, QuantConfig};
use lowbit::rng::Rng;
use lowbit::runtime::format::{self, container_bytes, from_bytes, to_bytes};
use lowbit::runtime::model::Provenance;
use lowbit::runtime::testutil::{
    lbq_as_version_1, lbq_as_version_2, random_cnn, random_graph, random_mlp, LayerOpts,
};
use lowbit::tensor::Tensor;
use std::path::{Path, PathBuf};

type Res<T> = Result<T, Box<dyn std::error::Error>>;

fn main() -> Res<()> {
    let dir = std::env::args()
        .nth(1)
        .map(PathBuf::from)
        .ok_or("usage: fuzz_seeds DIR (writes DIR/load_lbq and DIR/load_float)")?;
    let lbq_dir = dir.join("load_lbq");
    let float_dir = dir.join("load_float");
    std::fs::create_dir_all(&lbq_dir)?;
    std::fs::create_dir_all(&float_dir)?;
    let mut biggest = 0;
    for (name, bytes) in lbq_seeds()? {
        from_bytes(&bytes).map_err(|e| format!("seed {name} does not read back: {e}"))?;
        biggest = biggest.max(bytes.len());
        write(&lbq_dir, &name, &bytes)?;
    }
    for (name, bytes) in float_seeds()? {
        float_from_bytes(&bytes, Path::new(&name))
            .map_err(|e| format!("seed {name} does not read back: {e}"))?;
        biggest = biggest.max(bytes.len());
        write(&float_dir, &name, &bytes)?;
    }
    println!("largest seed: {biggest} bytes");
    Ok(())
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> Res<()> {
    format::write_atomic(&dir.join(name), bytes)?;
    println!("{:>6} bytes  {}", bytes.len(), dir.join(name).display());
    Ok(())
}

fn opts(weight_bits: u32, act_bits: u32, per_channel: bool) -> LayerOpts {
    LayerOpts {
        weight_bits,
        act_bits,
        per_channel,
    }
}

/// `.lbq` seeds: the hand-built graph with every op at several bit widths, chains in all three versions, and the
/// float graph below quantized by the library (PTQ, conversion).
fn lbq_seeds() -> Res<Vec<(String, Vec<u8>)>> {
    let mut seeds = Vec::new();
    for (seed, (wb, ab, pc)) in [(8, 8, true), (4, 4, false), (2, 2, true), (1, 8, false)]
        .into_iter()
        .enumerate()
    {
        let m = random_graph(seed as u64, opts(wb, ab, pc));
        seeds.push((format!("graph_w{wb}a{ab}.lbq"), to_bytes(&m)?));
    }
    let cnn = to_bytes(&random_cnn(1, opts(4, 6, true)))?;
    seeds.push(("cnn_v2.lbq".into(), lbq_as_version_2(&cnn).ok_or("v2")?));
    seeds.push(("cnn_v1.lbq".into(), lbq_as_version_1(&cnn).ok_or("v1")?));
    seeds.push(("cnn_w4a6_v3.lbq".into(), cnn));
    let mlp = to_bytes(&random_mlp(2, opts(1, 8, true)))?;
    seeds.push(("mlp_w1_v1.lbq".into(), lbq_as_version_1(&mlp).ok_or("v1")?));
    let float = every_layer_graph()?;
    let mut rng = Rng::new(11);
    let calib: Vec<Tensor> = (0..2)
        .map(|_| {
            let x = (0..16 * 3 * 6 * 6).map(|_| rng.uniform()).collect();
            Tensor::new(x, vec![16, 3, 6, 6])
        })
        .collect();
    for (bits, per_channel) in [(8, true), (4, false)] {
        let cfg = QuantConfig {
            weight_bits: bits,
            per_channel,
            ..QuantConfig::default()
        };
        let q = convert(&ptq(&float, &cfg, &calib)?, Provenance::default())?;
        seeds.push((format!("converted_w{bits}.lbq"), to_bytes(&q)?));
    }
    Ok(seeds)
}

/// A float graph with every layer kind the float file stores (input 3x6x6, 3 classes):
///
/// ```text
/// stem: conv 3->8 3x3 pad 1 -> bn -> relu -> dw: depthwise 3x3 -> relu6 (clip) -> pw: 1x1 conv in 2 groups
/// add(relu, pw) -> max pool 2x2 -> pad -> slice -> relu -> concat(relu, slice) -> avg pool 2x2 stride 1
/// -> global avg pool -> flatten -> dropout -> fc: dense 12->3
/// ```
fn every_layer_graph() -> Res<Model> {
    let mut rng = Rng::new(5);
    let same = ((3, 3), (1, 1), (1, 1));
    let conv =
        |i, o, (k, s, p): ((usize, usize), (usize, usize), (usize, usize)), g, rng: &mut Rng| {
            Conv2d::new_grouped(i, o, k, s, p, g, rng).map(Layer::Conv2d)
        };
    let mut bn = BatchNorm2d::new(8);
    for (c, (m, v)) in bn
        .running_mean
        .iter_mut()
        .zip(&mut bn.running_var)
        .enumerate()
    {
        *m = 0.05 * c as f32;
        *v = 1.0 + 0.1 * c as f32;
    }
    let layers: Vec<(&str, Vec<usize>, Layer)> = vec![
        ("stem", vec![0], conv(3, 8, same, 1, &mut rng)?),
        ("bn", vec![1], Layer::BatchNorm2d(bn)),
        ("relu", vec![2], Layer::Relu(Relu::new())),
        ("dw", vec![3], conv(8, 8, same, 8, &mut rng)?),
        ("relu6", vec![4], Layer::Clip(Clip::new(0.0, 6.0)?)),
        (
            "pw",
            vec![5],
            conv(8, 8, ((1, 1), (1, 1), (0, 0)), 2, &mut rng)?,
        ),
        ("add", vec![3, 6], Layer::Add(Add::new())),
        (
            "pool",
            vec![7],
            Layer::MaxPool2d(MaxPool2d::new((2, 2), (2, 2))),
        ),
        ("pad", vec![8], Layer::Pad(Pad::new((1, 3), (1, 0), (0, 1)))),
        (
            "slice",
            vec![9],
            Layer::Slice(Slice::new(
                AxisSlice::every(2),
                AxisSlice::all(),
                AxisSlice::new(1, usize::MAX, 1),
            )),
        ),
        ("act", vec![10], Layer::Relu(Relu::new())),
        ("concat", vec![11, 10], Layer::Concat(Concat::new())),
        (
            "avg",
            vec![12],
            Layer::AvgPool2d(AvgPool2d::new((2, 2), (1, 1))),
        ),
        ("gap", vec![13], Layer::AvgPool2d(AvgPool2d::global())),
        ("flatten", vec![14], Layer::Flatten(Flatten::new())),
        ("dropout", vec![15], Layer::Dropout(Dropout::new(0.1, 1)?)),
        ("fc", vec![16], Layer::Dense(Dense::new(12, 3, &mut rng))),
    ];
    let model = Model {
        nodes: layers
            .into_iter()
            .map(|(name, inputs, layer)| Node {
                name: name.into(),
                inputs,
                layer,
            })
            .collect(),
        input_shape: [3, 6, 6],
        classes: 3,
        spec: "fuzz seed: every layer".into(),
        normalization: None,
    };
    model.check_structure()?;
    // Shapes are checked by running it.
    let mut m = model.clone();
    m.forward(&Tensor::zeros(&[1, 3, 6, 6]), false)?;
    Ok(model)
}

/// A chain through every element-wise function (`nn::unary`), then a dense layer.
fn unary_chain() -> Res<Model> {
    let mut nodes: Vec<Node> = UnaryOp::examples()
        .into_iter()
        .enumerate()
        .map(|(i, u)| Node {
            name: format!("unary{i}"),
            inputs: vec![i],
            layer: Layer::Unary(u),
        })
        .collect();
    let n = nodes.len();
    nodes.push(Node {
        name: "flatten".into(),
        inputs: vec![n],
        layer: Layer::Flatten(Flatten::new()),
    });
    nodes.push(Node {
        name: "fc".into(),
        inputs: vec![n + 1],
        layer: Layer::Dense(Dense::new(4, 3, &mut Rng::new(5))),
    });
    let mut model = Model {
        nodes,
        input_shape: [1, 2, 2],
        classes: 3,
        spec: "fuzz seed: every element-wise function".into(),
        normalization: None,
    };
    model.check_structure()?;
    model.forward(&Tensor::zeros(&[1, 1, 2, 2]), false)?;
    Ok(model)
}

/// Float seeds: the every-layer graph and a chain of every element-wise function (version 2), a small
/// mobilenet, and a version-1 file (spec + tensors).
fn float_seeds() -> Res<Vec<(String, Vec<u8>)>> {
    let prov = Provenance::default();
    let mut seeds = vec![
        (
            "every_layer_v2.f32".to_string(),
            float_to_bytes(&every_layer_graph()?, &prov)?,
        ),
        (
            "unary_v2.f32".to_string(),
            float_to_bytes(&unary_chain()?, &prov)?,
        ),
    ];
    let mobilenet = Model::from_spec_for("mobilenet:t1c4n1s1-h8", 3, [1, 6, 6], 3)?;
    seeds.push((
        "mobilenet_v2.f32".into(),
        float_to_bytes(&mobilenet, &prov)?,
    ));
    // Version 1 stored the spec and `layers.{i}.weight` / `.bias` of the spec's layer list.
    let spec = "mlp:784-1-10";
    let mlp = Model::from_spec(spec, 4)?;
    let mut tensors: Vec<format::Tensor> = Vec::new();
    for (i, node) in mlp.nodes.iter().enumerate() {
        if let Layer::Dense(d) = &node.layer {
            for (what, v, shape) in [
                ("weight", &d.weight, vec![d.out_features, d.in_features]),
                ("bias", &d.bias, vec![d.out_features]),
            ] {
                let bytes = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                tensors.push((format!("layers.{i}.{what}"), "F32", shape, bytes));
            }
        }
    }
    let meta = [
        ("format", "lowbit.f32".to_string()),
        ("format_version", "1".to_string()),
        ("spec", spec.to_string()),
        ("provenance", serde_json::to_string(&prov)?),
    ];
    seeds.push(("mlp_v1.f32".into(), container_bytes(&meta, &tensors)?));
    Ok(seeds)
}
