//! Inverted dropout: in training each element is zeroed with probability `p` and the survivors are scaled by
//! `1 / (1 - p)`, so inference is the identity.
use crate::error::{Error, Result};
use crate::rng::Rng;
use crate::state::{StateValue, StateVisitor, Stateful};
use crate::tensor::Tensor;

/// Dropout with a seeded mask stream: the same seed gives the same masks, and a clone of the layer draws the
/// same next mask as the original (what gradient checks use to hold the mask fixed).
#[derive(Debug, Clone)]
pub struct Dropout {
    /// Drop probability in [0, 1).
    pub p: f32,
    rng: Rng,
    /// Per-element factor of the last training forward: 0 or `1 / (1 - p)`.
    mask: Vec<f32>,
    shape: Vec<usize>,
}

impl Dropout {
    /// Dropout with probability `p` (must be in [0, 1)) and a mask stream from `seed`.
    pub fn new(p: f32, seed: u64) -> Result<Self> {
        if !(0.0..1.0).contains(&p) {
            return Err(Error::option(
                "--model",
                format!("dropout {p} is not in [0, 1)"),
            ));
        }
        Ok(Self {
            p,
            rng: Rng::new(seed),
            mask: Vec::new(),
            shape: Vec::new(),
        })
    }

    /// Per-sample output shape: the input's.
    pub fn output_shape(&self, input: &[usize]) -> Result<Vec<usize>> {
        Ok(input.to_vec())
    }

    /// Forward pass: a fresh mask in training, identity in inference.
    pub fn forward(&mut self, x: &Tensor, train: bool) -> Tensor {
        if !train {
            return x.clone();
        }
        let keep = 1.0 / (1.0 - self.p);
        let p = self.p;
        let rng = &mut self.rng;
        self.mask.clear();
        self.mask
            .extend((0..x.len()).map(|_| if rng.uniform() < p { 0.0 } else { keep }));
        self.shape.clone_from(&x.shape);
        let data = x
            .data
            .iter()
            .zip(&self.mask)
            .map(|(&v, &m)| v * m)
            .collect();
        Tensor::new(data, x.shape.clone())
    }

    /// Backward pass: the gradient through the last mask.
    pub fn backward(&mut self, grad: &Tensor) -> Result<Tensor> {
        if grad.shape != self.shape {
            return Err(Error::Shape(format!(
                "dropout: backward with gradient {:?} after forward of {:?}",
                grad.shape, self.shape
            )));
        }
        let data = grad
            .data
            .iter()
            .zip(&self.mask)
            .map(|(&g, &m)| g * m)
            .collect();
        Ok(Tensor::new(data, grad.shape.clone()))
    }
}

impl Stateful for Dropout {
    /// The mask generator's position (`rng`), so a resumed run draws the masks an uninterrupted one would.
    fn visit_state(&mut self, v: &mut StateVisitor<'_>) -> Result<()> {
        v.value("rng", StateValue::U64(self.rng.state_mut()))
    }
}
