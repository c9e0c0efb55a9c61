//! Model specifications.
//!
//! - `mlp:I-H1-...-O`: Dense layers with ReLU between them (e.g. `mlp:784-64-10`).
//! - `lenet5`: LeCun et al. 1998 on 1x28x28 inputs: conv 6@5x5 pad 2, ReLU, maxpool 2, conv 16@5x5, ReLU,
//!   maxpool 2, flatten, fc 120, ReLU, fc 84, ReLU, fc 10.
//! - `cnn:T1-T2-...-N`: a small VGG-style network on 1x28x28 inputs, tokens separated by `-`:
//!   - `cK`: 3x3 convolution to K channels, padding 1, then ReLU; `cK.bn` adds a batch norm before the ReLU;
//!   - `p`: 2x2 max pooling, stride 2; `a`: 2x2 average pooling, stride 2; `g`: global average pooling;
//!   - `dP`: dropout with probability P in [0, 1) (e.g. `d0.25`);
//!   - `fK`: fully connected layer of K units, then ReLU (a flatten is inserted before the first one);
//!   - the last token, a plain number N: the fully connected output layer of N classes.
//!
//!   Example: `cnn:c16-c16-p-c32.bn-p-f64-10`.
//! - `resnet:N[:a|:b]` (`N = 6n + 2`): the CIFAR-style ResNet of He et al. (16-32-64 channels, global average
//!   pool); `:a` (default) identity / zero-pad shortcuts, `:b` 1x1-conv shortcuts at downsampling blocks.
//! - `mobilenet[:B1-B2-...[-hH]]`: MobileNetV2-style inverted residual blocks with ReLU6, each block
//!   `tTcCnNsS` (expansion, channels, repeats, stride), head width `H`; `mobilenet` alone is a small default.
//!
//! [`from_spec_for`] builds a spec for a given input shape and class count (the data's); [`from_spec`] for
//! 1x28x28 images and 10 classes. `lenet5` and `cnn:` adapt their sizes to the input; `mlp:` states it.
mod graphs;

use super::{
    AvgPool2d, BatchNorm2d, Conv2d, Dense, Dropout, Flatten, Layer, MaxPool2d, Model, Relu,
};
use crate::error::{Error, Result};
use crate::rng::Rng;

/// The input shape (C, H, W) of the image datasets lowbit trains on (MNIST, Fashion-MNIST).
pub const IMAGE_SHAPE: [usize; 3] = [1, 28, 28];

const VALID_FORMS: &str = "valid forms: mlp:I-H1-...-O (e.g. mlp:784-64-10, I = 784 for 28x28x1 images); \
     lenet5; resnet:N[:a|:b] (N = 6n+2, e.g. resnet:20); mobilenet[:tTcCnNsS-...-hH]; cnn:T1-...-N with tokens cK (3x3 conv, pad 1, ReLU), cK.bn (conv, batch norm, ReLU), p (2x2 max \
     pool), a (2x2 average pool), g (global average pool), dP (dropout, P in [0, 1)), fK (fully connected + \
     ReLU) and a final class count N (e.g. cnn:c16-c16-p-c32-p-f64-10)";

/// Builds a freshly initialised model from a spec string for 1x28x28 images and 10 classes, with weights drawn
/// from `seed`.
pub fn from_spec(spec: &str, seed: u64) -> Result<Model> {
    from_spec_for(spec, seed, IMAGE_SHAPE, 10)
}

/// Builds a freshly initialised model from a spec string for inputs of `input_shape` (C, H, W) and `classes`
/// classes (the graph specs' and `lenet5`'s output width; `mlp:` and `cnn:` state theirs).
pub fn from_spec_for(
    spec: &str,
    seed: u64,
    input_shape: [usize; 3],
    classes: usize,
) -> Result<Model> {
    let spec = spec.trim();
    if let Some(sizes) = spec.strip_prefix("mlp:") {
        return mlp(spec, sizes, seed, input_shape);
    }
    if spec == "lenet5" {
        return lenet5(seed, input_shape, classes);
    }
    if let Some(tokens) = spec.strip_prefix("cnn:") {
        return cnn(spec, tokens, seed, input_shape);
    }
    if let Some(args) = spec.strip_prefix("resnet:") {
        return graphs::resnet(spec, args, seed, input_shape, classes);
    }
    if spec == "mobilenet" {
        return graphs::mobilenet(spec, None, seed, input_shape, classes);
    }
    if let Some(args) = spec.strip_prefix("mobilenet:") {
        return graphs::mobilenet(spec, Some(args), seed, input_shape, classes);
    }
    Err(Error::option(
        "--model",
        format!("unknown model spec '{spec}'; {VALID_FORMS}"),
    ))
}

/// The sizes of an `mlp:` spec, checked against the input and [`MAX_PARAMS`].
fn mlp_sizes(spec: &str, sizes: &str, input_shape: [usize; 3]) -> Result<Vec<usize>> {
    let sizes = sizes
        .split('-')
        .map(|s| {
            s.trim()
                .parse::<usize>()
                .ok()
                .filter(|&n| n > 0)
                .ok_or_else(|| {
                    Error::option(
                        "--model",
                        format!(
                            "'{spec}': layer size '{s}' is not a positive integer; {VALID_FORMS}"
                        ),
                    )
                })
        })
        .collect::<Result<Vec<_>>>()?;
    if sizes.len() < 2 {
        return Err(Error::option(
            "--model",
            format!("'{spec}' needs at least an input and an output size; {VALID_FORMS}"),
        ));
    }
    let input_len: usize = input_shape.iter().product();
    if sizes[0] != input_len {
        return Err(Error::option(
            "--model",
            format!(
                "'{spec}': input size {} does not match the {}x{}x{} images ({input_len})",
                sizes[0], input_shape[0], input_shape[1], input_shape[2]
            ),
        ));
    }
    // Keep weights a sane size; a typo like 784-640000-10 should not try to allocate gigabytes.
    let mut params = 0usize;
    for w in sizes.windows(2) {
        params = w[0]
            .checked_mul(w[1])
            .and_then(|p| p.checked_add(w[1]))
            .and_then(|p| params.checked_add(p))
            .filter(|&p| p <= MAX_PARAMS)
            .ok_or_else(|| Error::option("--model", format!("'{spec}' has too many parameters")))?;
    }
    Ok(sizes)
}

fn mlp(spec: &str, sizes: &str, seed: u64, input_shape: [usize; 3]) -> Result<Model> {
    let sizes = mlp_sizes(spec, sizes, input_shape)?;
    let mut rng = Rng::new(seed);
    let mut layers = Vec::new();
    let last = sizes.len() - 2;
    for (i, w) in sizes.windows(2).enumerate() {
        let mut layer_rng = rng.fork(i as u64);
        layers.push(Layer::Dense(Dense::new(w[0], w[1], &mut layer_rng)));
        if i != last {
            layers.push(Layer::Relu(Relu::new()));
        }
    }
    Ok(Model::sequential(
        spec,
        input_shape,
        sizes[sizes.len() - 1],
        layers,
    ))
}

/// LeNet-5 (see the module doc); the sizes after the convolutions follow the input's (16x5x5 for 28x28).
fn lenet5(seed: u64, input: [usize; 3], classes: usize) -> Result<Model> {
    let [c, h, w] = input;
    // conv1 keeps the size (pad 2), pool halves, conv2 (5x5, no pad) takes 4, pool halves.
    let after = |n: usize| (n / 2).checked_sub(4).map(|m| m / 2).filter(|&m| m > 0);
    let (Some(h2), Some(w2)) = (after(h), after(w)) else {
        return Err(Error::option(
            "--model",
            format!("lenet5 needs inputs of at least 12x12, got {h}x{w}"),
        ));
    };
    let mut rng = Rng::new(seed);
    let layers = vec![
        Layer::Conv2d(Conv2d::new(c, 6, (5, 5), (1, 1), (2, 2), &mut rng.fork(0))),
        Layer::Relu(Relu::new()),
        Layer::MaxPool2d(MaxPool2d::new((2, 2), (2, 2))),
        Layer::Conv2d(Conv2d::new(6, 16, (5, 5), (1, 1), (0, 0), &mut rng.fork(1))),
        Layer::Relu(Relu::new()),
        Layer::MaxPool2d(MaxPool2d::new((2, 2), (2, 2))),
        Layer::Flatten(Flatten::new()),
        Layer::Dense(Dense::new(16 * h2 * w2, 120, &mut rng.fork(2))),
        Layer::Relu(Relu::new()),
        Layer::Dense(Dense::new(120, 84, &mut rng.fork(3))),
        Layer::Relu(Relu::new()),
        Layer::Dense(Dense::new(84, classes, &mut rng.fork(4))),
    ];
    Ok(Model::sequential("lenet5", input, classes, layers))
}

/// One token of a `cnn:` spec with the sizes it sees.
enum CnnToken {
    /// 3x3 convolution from `c_in` to `k` channels, with a batch norm when `bn`, then ReLU.
    Conv {
        c_in: usize,
        k: usize,
        bn: bool,
    },
    MaxPool,
    AvgPool,
    Global,
    Dropout(f32),
    /// Fully connected `fan_in -> k` then ReLU, after a flatten when `flatten`.
    Fc {
        fan_in: usize,
        k: usize,
        flatten: bool,
    },
}

/// A parsed and shape-checked `cnn:` spec: its tokens, the output layer and the parameter count, known before
/// anything is allocated (a float file's spec is checked against the values the file stores).
struct CnnPlan {
    tokens: Vec<CnnToken>,
    /// Input features of the output layer, and whether a flatten precedes it.
    fan_in: usize,
    flatten: bool,
    classes: usize,
    params: usize,
}

/// Most parameters a `cnn:` or `mlp:` spec may have (1 GB of f32 weights).
const MAX_PARAMS: usize = 1 << 28;

/// Parses the `cnn:` grammar (see the module doc), tracking shapes so that a bad spec fails here, not in
/// training, and counting parameters.
fn cnn_plan(spec: &str, tokens: &str, input_shape: [usize; 3]) -> Result<CnnPlan> {
    let bad =
        |reason: String| Error::option("--model", format!("'{spec}': {reason}; {VALID_FORMS}"));
    let parse_count = |t: &str, what: &str| -> Result<usize> {
        t.parse::<usize>()
            .ok()
            .filter(|&n| (1..=4096).contains(&n))
            .ok_or_else(|| bad(format!("{what} '{t}' is not an integer in 1..=4096")))
    };
    let tokens: Vec<&str> = tokens.split('-').map(str::trim).collect();
    let Some((last, body)) = tokens.split_last() else {
        return Err(bad("empty".into()));
    };
    let classes = parse_count(last, "class count")?;
    let [mut c, mut h, mut w] = input_shape;
    let mut flat: Option<usize> = None;
    let mut plan = Vec::with_capacity(body.len());
    let mut params = 0usize;
    let mut count = |p: Option<usize>| {
        params = p
            .and_then(|p| params.checked_add(p))
            .filter(|&p| p <= MAX_PARAMS)
            .ok_or_else(|| bad("too many parameters".into()))?;
        Ok::<(), Error>(())
    };
    for &t in body {
        let spatial = |what: &str| {
            if flat.is_some() {
                Err(bad(format!("'{what}' after a fully connected layer")))
            } else {
                Ok(())
            }
        };
        if let Some(rest) = t.strip_prefix('c') {
            spatial(t)?;
            let (n, bn) = match rest.strip_suffix(".bn") {
                Some(n) => (n, true),
                None => (rest, false),
            };
            let k = parse_count(n, "channel count")?;
            count(
                c.checked_mul(9 * k)
                    .map(|p| p + k + if bn { 4 * k } else { 0 }),
            )?;
            plan.push(CnnToken::Conv { c_in: c, k, bn });
            c = k;
        } else if t == "p" || t == "a" {
            spatial(t)?;
            if h < 2 || w < 2 {
                return Err(bad(format!("pooling '{t}' on a {h}x{w} map")));
            }
            plan.push(if t == "p" {
                CnnToken::MaxPool
            } else {
                CnnToken::AvgPool
            });
            (h, w) = (h / 2, w / 2);
        } else if t == "g" {
            spatial(t)?;
            plan.push(CnnToken::Global);
            (h, w) = (1, 1);
        } else if let Some(p) = t.strip_prefix('d') {
            let p: f32 = p
                .parse()
                .map_err(|_| bad(format!("dropout '{t}' is not dP with P a number")))?;
            if !(0.0..1.0).contains(&p) {
                return Err(bad(format!("dropout {p} is not in [0, 1)")));
            }
            plan.push(CnnToken::Dropout(p));
        } else if let Some(n) = t.strip_prefix('f') {
            let k = parse_count(n, "unit count")?;
            let (fan_in, flatten) = match flat {
                Some(f) => (f, false),
                None => (c * h * w, true),
            };
            count(fan_in.checked_mul(k).map(|p| p + k))?;
            plan.push(CnnToken::Fc { fan_in, k, flatten });
            flat = Some(k);
        } else {
            return Err(bad(format!("unknown token '{t}'")));
        }
    }
    let (fan_in, flatten) = match flat {
        Some(f) => (f, false),
        None => (c * h * w, true),
    };
    count(fan_in.checked_mul(classes).map(|p| p + classes))?;
    Ok(CnnPlan {
        tokens: plan,
        fan_in,
        flatten,
        classes,
        params,
    })
}

/// The `cnn:` model (see the module doc).
fn cnn(spec: &str, tokens: &str, seed: u64, input_shape: [usize; 3]) -> Result<Model> {
    let plan = cnn_plan(spec, tokens, input_shape)?;
    let mut rng = Rng::new(seed);
    let mut layers = Vec::new();
    for (i, t) in plan.tokens.iter().enumerate() {
        let mut layer_rng = rng.fork(i as u64);
        match *t {
            CnnToken::Conv { c_in, k, bn } => {
                layers.push(Layer::Conv2d(Conv2d::new(
                    c_in,
                    k,
                    (3, 3),
                    (1, 1),
                    (1, 1),
                    &mut layer_rng,
                )));
                if bn {
                    layers.push(Layer::BatchNorm2d(BatchNorm2d::new(k)));
                }
                layers.push(Layer::Relu(Relu::new()));
            }
            CnnToken::MaxPool => layers.push(Layer::MaxPool2d(MaxPool2d::new((2, 2), (2, 2)))),
            CnnToken::AvgPool => layers.push(Layer::AvgPool2d(AvgPool2d::new((2, 2), (2, 2)))),
            CnnToken::Global => layers.push(Layer::AvgPool2d(AvgPool2d::global())),
            CnnToken::Dropout(p) => {
                layers.push(Layer::Dropout(Dropout::new(p, layer_rng.next_u64())?))
            }
            CnnToken::Fc { fan_in, k, flatten } => {
                if flatten {
                    layers.push(Layer::Flatten(Flatten::new()));
                }
                layers.push(Layer::Dense(Dense::new(fan_in, k, &mut layer_rng)));
                layers.push(Layer::Relu(Relu::new()));
            }
        }
    }
    if plan.flatten {
        layers.push(Layer::Flatten(Flatten::new()));
    }
    layers.push(Layer::Dense(Dense::new(
        plan.fan_in,
        plan.classes,
        &mut rng.fork(plan.tokens.len() as u64),
    )));
    Ok(Model::sequential(spec, input_shape, plan.classes, layers))
}

/// The values a float file stores for a chain spec (`mlp:`, `lenet5`, `cnn:`) for `input_shape` and `classes`:
/// weights, biases and batch-norm statistics, counted without allocating the `mlp:` and `cnn:` weights (`lenet5`
/// is built: its size follows the input's). An error for invalid and graph specs. Float files of version 1,
/// which stored only the spec, are checked against it before the model is built.
pub(crate) fn chain_param_count(
    spec: &str,
    input_shape: [usize; 3],
    classes: usize,
) -> Result<usize> {
    let spec = spec.trim();
    if let Some(sizes) = spec.strip_prefix("mlp:") {
        let sizes = mlp_sizes(spec, sizes, input_shape)?;
        return Ok(sizes.windows(2).map(|w| w[0] * w[1] + w[1]).sum());
    }
    if let Some(tokens) = spec.strip_prefix("cnn:") {
        return Ok(cnn_plan(spec, tokens, input_shape)?.params);
    }
    if spec == "lenet5" {
        return Ok(lenet5(0, input_shape, classes)?.param_count());
    }
    Err(Error::option(
        "--model",
        format!("'{spec}' is not an mlp:, lenet5 or cnn: spec"),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The values a float file stores for `model`: weights, biases and batch-norm statistics.
    fn stored_values(model: &Model) -> usize {
        model
            .layers()
            .map(|l| match l {
                Layer::Dense(d) => d.weight.len() + d.bias.len(),
                Layer::Conv2d(c) => c.weight.len() + c.bias.len(),
                Layer::BatchNorm2d(b) => 4 * b.gamma.len(),
                _ => 0,
            })
            .sum()
    }

    #[test]
    fn chain_param_count_equals_the_values_of_the_built_model() {
        for spec in [
            "mlp:784-64-10",
            "mlp:784-8-8-10",
            "lenet5",
            "cnn:c16-c16-p-c32.bn-p-f64-10",
            "cnn:c8.bn-a-g-d0.25-f16-f8-10",
            "cnn:c4-12",
        ] {
            let built = from_spec(spec, 3).unwrap();
            let counted = chain_param_count(spec, IMAGE_SHAPE, 10).unwrap();
            assert_eq!(counted, stored_values(&built), "{spec}");
        }
    }

    #[test]
    fn chain_param_count_refuses_graph_specs_and_huge_chains_without_building_them() {
        for spec in [
            "resnet:20",
            "mobilenet",
            "cnn:c4096-c4096-c4096-c4096-c4096-10",
            "nonsense",
        ] {
            assert!(chain_param_count(spec, IMAGE_SHAPE, 10).is_err(), "{spec}");
        }
    }
}
