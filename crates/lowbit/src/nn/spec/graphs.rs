//! Graph model specs: the CIFAR-style ResNet of He et al. (2016, sec. 4.2) and a MobileNetV2-style
//! depthwise-separable net (Sandler et al. 2018), built node by node for any input shape.
//!
//! - `resnet:N` (`N = 6n + 2`; `resnet:20`, `resnet:32`...): 3x3 conv 16 + BN + ReLU, then three stages of `n`
//!   basic blocks (3x3 conv + BN + ReLU, 3x3 conv + BN, add the shortcut, ReLU) with 16, 32 and 64 channels, the
//!   first block of stages 2 and 3 at stride 2; global average pool and a fully connected layer. Shortcuts:
//!   `resnet:N` or `resnet:N:a` is option A (identity; at a downsampling block `x[:, :, ::2, ::2]` zero-padded
//!   with `(out - in) / 2` channels before and the rest after), `resnet:N:b` option B (1x1 conv stride 2 + BN
//!   at downsampling blocks).
//! - `mobilenet`: stem 3x3 conv 16 + BN + ReLU6, inverted residual blocks `(t, c, n, s)` = (1, 16, 1, 1),
//!   (4, 24, 2, 2), (4, 32, 2, 2), (4, 64, 2, 2) (1x1 expansion to `t * in` channels + BN + ReLU6 when `t > 1`,
//!   3x3 depthwise at stride `s` + BN + ReLU6, 1x1 projection + BN, the input added when the stride is 1 and
//!   the channels match), 1x1 conv 128 + BN + ReLU6, global average pool, fully connected.
//!   `mobilenet:B1-B2-...[-hH]` sets the blocks, each `tTcCnNsS` (e.g. `t4c24n2s2`), and the head width `H`.
//!
//! Layers are initialised as everywhere in lowbit (Glorot-uniform weights, zero biases, batch norms at identity).
use super::super::{
    Add, AvgPool2d, AxisSlice, BatchNorm2d, Clip, Conv2d, Dense, Flatten, Layer, Model, Node, Pad,
    Relu, Slice, ValueId,
};
use crate::error::{Error, Result};
use crate::rng::Rng;

/// Builds a graph node by node, tracking every value's per-sample shape.
struct Builder {
    spec: String,
    nodes: Vec<Node>,
    shapes: Vec<Vec<usize>>,
    rng: Rng,
}

impl Builder {
    fn new(spec: &str, input: [usize; 3], seed: u64) -> Self {
        Self {
            spec: spec.to_string(),
            nodes: Vec::new(),
            shapes: vec![input.to_vec()],
            rng: Rng::new(seed),
        }
    }

    fn bad(&self, what: String) -> Error {
        Error::option("--model", format!("'{}': {what}", self.spec))
    }

    /// Adds a node; its output shape is inferred (an error for a spec that does not fit the input).
    fn add(&mut self, name: String, inputs: Vec<ValueId>, layer: Layer) -> Result<ValueId> {
        let in_shapes: Vec<&[usize]> = inputs.iter().map(|&v| self.shapes[v].as_slice()).collect();
        let shape = layer
            .output_shape(&in_shapes)
            .map_err(|e| self.bad(format!("node {name}: {e}")))?;
        if shape.iter().product::<usize>() == 0 {
            return Err(self.bad(format!("node {name} has an empty output {shape:?}")));
        }
        self.shapes.push(shape);
        self.nodes.push(Node {
            name,
            inputs,
            layer,
        });
        Ok(self.nodes.len())
    }

    fn channels(&self, v: ValueId) -> usize {
        self.shapes[v][0]
    }

    /// `conv (groups) + batch norm`, weights from the next forked stream.
    #[allow(clippy::too_many_arguments)]
    fn conv_bn(
        &mut self,
        name: &str,
        x: ValueId,
        out: usize,
        kernel: usize,
        stride: usize,
        groups: usize,
    ) -> Result<ValueId> {
        let c_in = self.channels(x);
        let mut rng = self.rng.fork(self.nodes.len() as u64);
        let pad = kernel / 2;
        let conv = Conv2d::new_grouped(
            c_in,
            out,
            (kernel, kernel),
            (stride, stride),
            (pad, pad),
            groups,
            &mut rng,
        )
        .map_err(|e| self.bad(format!("{name}: {e}")))?;
        let c = self.add(format!("{name}.conv"), vec![x], Layer::Conv2d(conv))?;
        self.add(
            format!("{name}.bn"),
            vec![c],
            Layer::BatchNorm2d(BatchNorm2d::new(out)),
        )
    }

    fn relu(&mut self, name: String, x: ValueId) -> Result<ValueId> {
        self.add(name, vec![x], Layer::Relu(Relu::new()))
    }

    fn relu6(&mut self, name: String, x: ValueId) -> Result<ValueId> {
        self.add(name, vec![x], Layer::Clip(Clip::relu6()))
    }

    /// Global average pool, flatten and the classifier.
    fn head(mut self, x: ValueId, classes: usize) -> Result<Model> {
        let p = self.add(
            "pool".into(),
            vec![x],
            Layer::AvgPool2d(AvgPool2d::global()),
        )?;
        let f = self.add("flatten".into(), vec![p], Layer::Flatten(Flatten::new()))?;
        let features = self.channels(f);
        let mut rng = self.rng.fork(self.nodes.len() as u64);
        self.add(
            "fc".into(),
            vec![f],
            Layer::Dense(Dense::new(features, classes, &mut rng)),
        )?;
        let input = &self.shapes[0];
        Ok(Model {
            nodes: self.nodes,
            input_shape: [input[0], input[1], input[2]],
            classes,
            spec: self.spec,
            normalization: None,
        })
    }
}

/// `resnet:N[:a|:b]` (see the module doc).
pub(super) fn resnet(
    spec: &str,
    args: &str,
    seed: u64,
    input: [usize; 3],
    classes: usize,
) -> Result<Model> {
    let bad = |what: &str| {
        Error::option(
            "--model",
            format!("'{spec}': {what}; valid forms: resnet:N, resnet:N:a, resnet:N:b with N = 6n + 2 (20, 32, 44, 56, 110)"),
        )
    };
    let (depth, option) = match args.split_once(':') {
        Some((d, o)) => (d, o),
        None => (args, "a"),
    };
    let depth: usize = depth
        .trim()
        .parse()
        .map_err(|_| bad("the depth is not a number"))?;
    if depth < 8 || !(depth - 2).is_multiple_of(6) || depth > 1202 {
        return Err(bad(&format!("depth {depth} is not 6n + 2 in 8..=1202")));
    }
    let option_b = match option.trim() {
        "a" | "A" => false,
        "b" | "B" => true,
        other => return Err(bad(&format!("shortcut option '{other}'"))),
    };
    let n = (depth - 2) / 6;
    let mut b = Builder::new(spec, input, seed);
    let s = b.conv_bn("stem", 0, 16, 3, 1, 1)?;
    let mut x = b.relu("stem.relu".into(), s)?;
    for (stage, width) in [16usize, 32, 64].into_iter().enumerate() {
        for block in 0..n {
            let name = format!("s{}.b{block}", stage + 1);
            let stride = if stage > 0 && block == 0 { 2 } else { 1 };
            let c_in = b.channels(x);
            let h = b.conv_bn(&format!("{name}.1"), x, width, 3, stride, 1)?;
            let h = b.relu(format!("{name}.1.relu"), h)?;
            let h = b.conv_bn(&format!("{name}.2"), h, width, 3, 1, 1)?;
            let shortcut = if stride == 1 && c_in == width {
                x
            } else if option_b {
                b.conv_bn(&format!("{name}.short"), x, width, 1, stride, 1)?
            } else {
                let sub = b.add(
                    format!("{name}.short.slice"),
                    vec![x],
                    Layer::Slice(Slice::new(
                        AxisSlice::all(),
                        AxisSlice::every(stride),
                        AxisSlice::every(stride),
                    )),
                )?;
                let extra = width - c_in;
                b.add(
                    format!("{name}.short.pad"),
                    vec![sub],
                    Layer::Pad(Pad::channels(extra / 2, extra - extra / 2)),
                )?
            };
            let sum = b.add(
                format!("{name}.add"),
                vec![h, shortcut],
                Layer::Add(Add::new()),
            )?;
            x = b.relu(format!("{name}.relu"), sum)?;
        }
    }
    b.head(x, classes)
}

/// One inverted-residual stage: expansion `t`, output channels `c`, blocks `n`, first stride `s`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stage {
    t: usize,
    c: usize,
    n: usize,
    s: usize,
}

/// The default `mobilenet` (see the module doc).
const MOBILENET_STAGES: [Stage; 4] = [
    Stage {
        t: 1,
        c: 16,
        n: 1,
        s: 1,
    },
    Stage {
        t: 4,
        c: 24,
        n: 2,
        s: 2,
    },
    Stage {
        t: 4,
        c: 32,
        n: 2,
        s: 2,
    },
    Stage {
        t: 4,
        c: 64,
        n: 2,
        s: 2,
    },
];
const MOBILENET_STEM: usize = 16;
const MOBILENET_HEAD: usize = 128;

/// `mobilenet[:B1-B2-...[-hH]]` (see the module doc).
pub(super) fn mobilenet(
    spec: &str,
    args: Option<&str>,
    seed: u64,
    input: [usize; 3],
    classes: usize,
) -> Result<Model> {
    let bad = |what: String| {
        Error::option(
            "--model",
            format!("'{spec}': {what}; valid forms: mobilenet, or mobilenet:B1-B2-...[-hH] with blocks tTcCnNsS (e.g. mobilenet:t1c16n1s1-t4c24n2s2-h128)"),
        )
    };
    let (stages, head) = match args {
        None => (MOBILENET_STAGES.to_vec(), MOBILENET_HEAD),
        Some(a) => {
            let mut stages = Vec::new();
            let mut head = MOBILENET_HEAD;
            for tok in a.split('-').map(str::trim) {
                if let Some(h) = tok.strip_prefix('h') {
                    head = h
                        .parse()
                        .ok()
                        .filter(|&v| (1..=4096).contains(&v))
                        .ok_or_else(|| bad(format!("head width '{h}'")))?;
                    continue;
                }
                stages.push(parse_stage(tok).ok_or_else(|| bad(format!("block '{tok}'")))?);
            }
            if stages.is_empty() {
                return Err(bad("no blocks".into()));
            }
            (stages, head)
        }
    };
    let mut b = Builder::new(spec, input, seed);
    let s = b.conv_bn("stem", 0, MOBILENET_STEM, 3, 1, 1)?;
    let mut x = b.relu6("stem.relu6".into(), s)?;
    for (si, st) in stages.iter().enumerate() {
        for block in 0..st.n {
            let name = format!("s{}.b{block}", si + 1);
            let stride = if block == 0 { st.s } else { 1 };
            let c_in = b.channels(x);
            let hidden = c_in * st.t;
            let mut h = x;
            if st.t != 1 {
                h = b.conv_bn(&format!("{name}.expand"), h, hidden, 1, 1, 1)?;
                h = b.relu6(format!("{name}.expand.relu6"), h)?;
            }
            h = b.conv_bn(&format!("{name}.dw"), h, hidden, 3, stride, hidden)?;
            h = b.relu6(format!("{name}.dw.relu6"), h)?;
            h = b.conv_bn(&format!("{name}.project"), h, st.c, 1, 1, 1)?;
            x = if stride == 1 && c_in == st.c {
                b.add(format!("{name}.add"), vec![h, x], Layer::Add(Add::new()))?
            } else {
                h
            };
        }
    }
    let h = b.conv_bn("head", x, head, 1, 1, 1)?;
    let h = b.relu6("head.relu6".into(), h)?;
    b.head(h, classes)
}

/// `tTcCnNsS` with every number at least 1 (channels at most 4096, expansion and stride at most 8).
fn parse_stage(tok: &str) -> Option<Stage> {
    let mut rest = tok;
    let mut take = |key: char, max: usize| -> Option<usize> {
        let r = rest.strip_prefix(key)?;
        let end = r.find(|ch: char| !ch.is_ascii_digit()).unwrap_or(r.len());
        let v: usize = r[..end].parse().ok().filter(|&v| (1..=max).contains(&v))?;
        rest = &r[end..];
        Some(v)
    };
    let st = Stage {
        t: take('t', 8)?,
        c: take('c', 4096)?,
        n: take('n', 16)?,
        s: take('s', 8)?,
    };
    rest.is_empty().then_some(st)
}
