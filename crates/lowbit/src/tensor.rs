//! A minimal dense f32 tensor: row-major data plus a shape. Batches are the leading dimension; images are NCHW.

/// Row-major f32 tensor.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Tensor {
    /// Elements, row-major.
    pub data: Vec<f32>,
    /// Dimensions, outermost first.
    pub shape: Vec<usize>,
}

impl Tensor {
    /// Wraps data with a shape; the caller guarantees `data.len() == shape.product()`.
    pub fn new(data: Vec<f32>, shape: Vec<usize>) -> Self {
        debug_assert_eq!(data.len(), shape.iter().product::<usize>());
        Self { data, shape }
    }

    /// All zeros.
    pub fn zeros(shape: &[usize]) -> Self {
        Self {
            data: vec![0.0; shape.iter().product()],
            shape: shape.to_vec(),
        }
    }

    /// Leading (batch) dimension.
    pub fn rows(&self) -> usize {
        self.shape.first().copied().unwrap_or(0)
    }

    /// Elements per batch item.
    pub fn row_len(&self) -> usize {
        self.shape.iter().skip(1).product()
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.data.len()
    }

    /// True when there are no elements.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }
}
