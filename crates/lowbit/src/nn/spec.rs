//! Model specifications: `mlp:784-64-10` and (later) `lenet5`, `cnn:...`.
use super::{Dense, Layer, Model, Relu};
use crate::error::{Error, Result};
use crate::rng::Rng;

/// The input shape (C, H, W) of the image datasets lowbit trains on (MNIST, Fashion-MNIST).
pub const IMAGE_SHAPE: [usize; 3] = [1, 28, 28];

const VALID_FORMS: &str =
    "valid forms: mlp:I-H1-...-O (e.g. mlp:784-64-10, I = 784 for 28x28x1 images); \
                           lenet5 and cnn:... are not yet supported";

/// Builds a freshly initialised model from a spec string, with weights drawn from `seed`.
pub fn from_spec(spec: &str, seed: u64) -> Result<Model> {
    let spec = spec.trim();
    if let Some(sizes) = spec.strip_prefix("mlp:") {
        return mlp(spec, sizes, seed);
    }
    if spec == "lenet5" || spec.starts_with("cnn:") {
        return Err(Error::option(
            "--model",
            format!("'{spec}' is not yet supported; {VALID_FORMS}"),
        ));
    }
    Err(Error::option(
        "--model",
        format!("unknown model spec '{spec}'; {VALID_FORMS}"),
    ))
}

fn mlp(spec: &str, sizes: &str, seed: u64) -> Result<Model> {
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
    let input_len: usize = IMAGE_SHAPE.iter().product();
    if sizes[0] != input_len {
        return Err(Error::option(
            "--model",
            format!(
                "'{spec}': input size {} does not match the {}x{}x{} images ({input_len})",
                sizes[0], IMAGE_SHAPE[0], IMAGE_SHAPE[1], IMAGE_SHAPE[2]
            ),
        ));
    }
    // Keep weights a sane size; a typo like 784-640000-10 should not try to allocate gigabytes.
    const MAX_PARAMS: usize = 1 << 28;
    let mut params = 0usize;
    for w in sizes.windows(2) {
        params = w[0]
            .checked_mul(w[1])
            .and_then(|p| params.checked_add(p))
            .filter(|&p| p <= MAX_PARAMS)
            .ok_or_else(|| Error::option("--model", format!("'{spec}' has too many parameters")))?;
    }
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
    Ok(Model {
        layers,
        input_shape: IMAGE_SHAPE,
        classes: sizes[sizes.len() - 1],
        spec: spec.to_string(),
    })
}
