//! Constants of an ONNX graph and the folding of the shape-computing ops exporters emit around `Reshape` and
//! `Pad` (`Shape`, `Gather`, `Unsqueeze`, `Squeeze`, `Concat`, `Cast`, `ConstantOfShape`, `Slice`, `Transpose`,
//! `Reshape`, `Identity` on constants).
//!
//! The batch dimension is symbolic: `Shape` of a run-time value gives [`BATCH`] in its first entry, which the
//! folds move around but never compute with (an arithmetic use of it is refused by the op that meets it).
use super::proto::{tensor_proto::DataType, TensorProto};
use super::OnnxError;

/// The symbolic batch size inside folded integer tensors (no real dimension is this large and negative).
pub(super) const BATCH: i64 = -(1 << 50);

/// Largest element count of a constant (4 Gi floats would not fit the 1 GiB file cap anyway).
const MAX_CONST_ELEMS: usize = 1 << 28;

/// The elements of a constant.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Data {
    /// Floating point (FLOAT; DOUBLE converted).
    F32(Vec<f32>),
    /// Integers (INT64, INT32, BOOL converted).
    I64(Vec<i64>),
}

/// A constant tensor.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Const {
    /// Dimensions (empty for a scalar).
    pub dims: Vec<usize>,
    /// Row-major elements, `product(dims)` of them.
    pub data: Data,
}

type R<T> = std::result::Result<T, String>;

fn elems(dims: &[usize]) -> R<usize> {
    dims.iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d))
        .filter(|&n| n <= MAX_CONST_ELEMS)
        .ok_or_else(|| format!("dimensions {dims:?} are too large"))
}

impl Const {
    /// A 1-D integer constant.
    pub fn ints(v: Vec<i64>) -> Self {
        Const {
            dims: vec![v.len()],
            data: Data::I64(v),
        }
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        match &self.data {
            Data::F32(v) => v.len(),
            Data::I64(v) => v.len(),
        }
    }

    /// The elements as floats (integers converted; the batch symbol refused).
    pub fn to_f32(&self) -> R<Vec<f32>> {
        match &self.data {
            Data::F32(v) => Ok(v.clone()),
            Data::I64(v) if v.contains(&BATCH) => {
                Err("uses the batch size as a number".to_string())
            }
            Data::I64(v) => Ok(v.iter().map(|&x| x as f32).collect()),
        }
    }

    /// The elements as integers (floats must be integral).
    pub fn to_i64(&self) -> R<Vec<i64>> {
        match &self.data {
            Data::I64(v) => Ok(v.clone()),
            Data::F32(v) => v
                .iter()
                .map(|&x| {
                    (x.fract() == 0.0 && x.abs() < 9e15)
                        .then_some(x as i64)
                        .ok_or_else(|| format!("value {x} is not an integer"))
                })
                .collect(),
        }
    }

    /// Decodes an initializer or a `Constant`'s tensor.
    pub fn from_proto(t: &TensorProto) -> std::result::Result<Const, OnnxError> {
        let bad = |reason: String| OnnxError::BadTensor {
            name: t.name().to_string(),
            reason,
        };
        if t.data_location == Some(super::proto::tensor_proto::DataLocation::External as i32)
            || !t.external_data.is_empty()
        {
            return Err(OnnxError::ExternalData {
                name: t.name().to_string(),
            });
        }
        let dims = t
            .dims
            .iter()
            .map(|&d| usize::try_from(d).map_err(|_| bad(format!("negative dimension {d}"))))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let n = elems(&dims).map_err(bad)?;
        let raw = t.raw_data.as_deref().filter(|r| !r.is_empty());
        let dtype = DataType::try_from(t.data_type.unwrap_or(0)).unwrap_or(DataType::Undefined);
        let width = match dtype {
            DataType::Float | DataType::Int32 => 4,
            DataType::Double | DataType::Int64 => 8,
            DataType::Bool => 1,
            other => {
                return Err(bad(format!(
                    "element type {} is not supported (need FLOAT, DOUBLE, INT64, INT32 or BOOL)",
                    other.as_str_name()
                )))
            }
        };
        let count = match raw {
            Some(r) => r.len() / width,
            None => match dtype {
                DataType::Float => t.float_data.len(),
                DataType::Double => t.double_data.len(),
                DataType::Int64 => t.int64_data.len(),
                _ => t.int32_data.len(),
            },
        };
        if count != n || raw.is_some_and(|r| r.len() % width != 0) {
            return Err(bad(format!(
                "holds {count} elements of {} (expected {n} for dimensions {dims:?})",
                dtype.as_str_name()
            )));
        }
        let data = match (dtype, raw) {
            (DataType::Float, Some(r)) => Data::F32(
                r.chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect(),
            ),
            (DataType::Float, None) => Data::F32(t.float_data.clone()),
            (DataType::Double, Some(r)) => Data::F32(
                r.chunks_exact(8)
                    .map(|b| {
                        let mut a = [0u8; 8];
                        a.copy_from_slice(b);
                        f64::from_le_bytes(a) as f32
                    })
                    .collect(),
            ),
            (DataType::Double, None) => {
                Data::F32(t.double_data.iter().map(|&x| x as f32).collect())
            }
            (DataType::Int64, Some(r)) => Data::I64(
                r.chunks_exact(8)
                    .map(|b| {
                        let mut a = [0u8; 8];
                        a.copy_from_slice(b);
                        i64::from_le_bytes(a)
                    })
                    .collect(),
            ),
            (DataType::Int64, None) => Data::I64(t.int64_data.clone()),
            (DataType::Int32, Some(r)) => Data::I64(
                r.chunks_exact(4)
                    .map(|b| i64::from(i32::from_le_bytes([b[0], b[1], b[2], b[3]])))
                    .collect(),
            ),
            (DataType::Bool, Some(r)) => Data::I64(r.iter().map(|&b| i64::from(b != 0)).collect()),
            (_, None) => Data::I64(t.int32_data.iter().map(|&x| i64::from(x)).collect()),
            _ => unreachable!("element types are matched above"),
        };
        if let Data::F32(v) = &data {
            if v.iter().any(|x| !x.is_finite()) {
                return Err(bad("holds NaN or Inf".into()));
            }
        }
        Ok(Const { dims, data })
    }
}

/// Resolves an axis that may count from the end, for a tensor of `rank` dimensions (`rank + 1` for Unsqueeze).
pub(super) fn axis(a: i64, rank: usize) -> R<usize> {
    let r = rank as i64;
    let a2 = if a < 0 { a + r } else { a };
    if (0..r).contains(&a2) {
        Ok(a2 as usize)
    } else {
        Err(format!("axis {a} is out of range for rank {rank}"))
    }
}

/// Row-major strides of `dims`.
fn strides(dims: &[usize]) -> Vec<usize> {
    let mut s = vec![1; dims.len()];
    for i in (0..dims.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1] * dims[i + 1];
    }
    s
}

/// Builds a constant of `dims` whose element `k` is `src[index(k)]`, for either element type.
fn gather_elems(src: &Data, dims: Vec<usize>, index: impl Fn(usize) -> usize) -> R<Const> {
    let n = elems(&dims)?;
    let data = match src {
        Data::F32(v) => Data::F32((0..n).map(|k| v[index(k)]).collect()),
        Data::I64(v) => Data::I64((0..n).map(|k| v[index(k)]).collect()),
    };
    Ok(Const { dims, data })
}

/// `Gather` along `axis_` with integer `indices`.
pub(super) fn gather(data: &Const, indices: &Const, axis_: i64) -> R<Const> {
    let ax = axis(axis_, data.dims.len())?;
    let len = data.dims[ax] as i64;
    let idx = indices
        .to_i64()?
        .into_iter()
        .map(|i| {
            let j = if i < 0 { i + len } else { i };
            (0..len)
                .contains(&j)
                .then_some(j as usize)
                .ok_or_else(|| format!("index {i} is out of range for a dimension of {len}"))
        })
        .collect::<R<Vec<_>>>()?;
    let inner: usize = data.dims[ax + 1..].iter().product();
    let mut dims = data.dims[..ax].to_vec();
    dims.extend_from_slice(&indices.dims);
    dims.extend_from_slice(&data.dims[ax + 1..]);
    let m = idx.len();
    gather_elems(&data.data, dims, |k| {
        let (o, rest) = (k / (m * inner), k % (m * inner));
        let (i, r) = (rest / inner, rest % inner);
        (o * data.dims[ax] + idx[i]) * inner + r
    })
}

/// `Concat` of constants along `axis_`.
pub(super) fn concat(parts: &[&Const], axis_: i64) -> R<Const> {
    let first = parts.first().ok_or("no inputs")?;
    let ax = axis(axis_, first.dims.len())?;
    let mut dims = first.dims.clone();
    dims[ax] = 0;
    for p in parts {
        let fits = p.dims.len() == first.dims.len()
            && p.dims[..ax] == first.dims[..ax]
            && p.dims[ax + 1..] == first.dims[ax + 1..];
        if !fits {
            return Err(format!(
                "shapes {:?} and {:?} do not concatenate",
                first.dims, p.dims
            ));
        }
        dims[ax] += p.dims[ax];
    }
    let outer: usize = dims[..ax].iter().product();
    let floats = parts.iter().any(|p| matches!(p.data, Data::F32(_)));
    let mut f = Vec::new();
    let mut i = Vec::new();
    for o in 0..outer {
        for p in parts {
            let chunk: usize = p.dims[ax..].iter().product();
            if floats {
                f.extend_from_slice(&p.to_f32()?[o * chunk..(o + 1) * chunk]);
            } else {
                i.extend_from_slice(&p.to_i64()?[o * chunk..(o + 1) * chunk]);
            }
        }
    }
    let data = if floats { Data::F32(f) } else { Data::I64(i) };
    Ok(Const { dims, data })
}

/// `Transpose` by `perm` (reversed dimensions when empty).
pub(super) fn transpose(c: &Const, perm: &[i64]) -> R<Const> {
    let rank = c.dims.len();
    let perm: Vec<usize> = if perm.is_empty() {
        (0..rank).rev().collect()
    } else {
        perm.iter().map(|&p| axis(p, rank)).collect::<R<_>>()?
    };
    let mut seen = vec![false; rank];
    for &p in &perm {
        if std::mem::replace(&mut seen[p], true) {
            return Err(format!("perm {perm:?} is not a permutation"));
        }
    }
    if perm.len() != rank {
        return Err(format!("perm {perm:?} does not fit rank {rank}"));
    }
    let dims: Vec<usize> = perm.iter().map(|&p| c.dims[p]).collect();
    let src = strides(&c.dims);
    let dst = strides(&dims);
    gather_elems(&c.data, dims.clone(), |k| {
        (0..rank)
            .map(|d| (k / dst[d]) % dims[d] * src[perm[d]])
            .sum()
    })
}

/// The new dimensions of a `Reshape` of `dims` to `target` (`0` copies, one `-1` is inferred).
pub(super) fn reshape_dims(dims: &[usize], target: &[i64]) -> R<Vec<usize>> {
    let total = elems(dims)?;
    let mut out = Vec::with_capacity(target.len());
    let mut infer = None;
    for (i, &t) in target.iter().enumerate() {
        match t {
            0 => out.push(*dims.get(i).ok_or("0 copies a missing dimension")?),
            -1 if infer.is_none() => {
                infer = Some(i);
                out.push(1);
            }
            t if t > 0 => out.push(t as usize),
            t => return Err(format!("target dimension {t}")),
        }
    }
    let known = elems(&out)?;
    if let Some(i) = infer {
        if known == 0 || total % known != 0 {
            return Err(format!("cannot reshape {dims:?} to {target:?}"));
        }
        out[i] = total / known;
    }
    if elems(&out)? != total {
        return Err(format!("cannot reshape {dims:?} to {target:?}"));
    }
    Ok(out)
}

/// The indices `Slice` keeps along one axis of length `len`.
pub(super) fn slice_indices(len: usize, start: i64, end: i64, step: i64) -> R<Vec<usize>> {
    if step == 0 {
        return Err("slice step 0".into());
    }
    let n = len as i64;
    let norm = |v: i64| if v < 0 { v.saturating_add(n) } else { v };
    let (s, e) = (norm(start), norm(end));
    let mut out = Vec::new();
    if step > 0 {
        let (s, e) = (s.clamp(0, n), e.clamp(0, n));
        let mut i = s;
        while i < e {
            out.push(i as usize);
            i += step;
        }
    } else {
        let (s, e) = (s.clamp(0, n - 1), e.clamp(-1, n - 1));
        let mut i = s;
        while i > e {
            out.push(i as usize);
            i += step;
        }
    }
    Ok(out)
}

/// Per-axis `(start, end, step)` of a `Slice` with these inputs, for a tensor of `rank` dimensions; axes not
/// named keep everything (`(0, i64::MAX, 1)`).
pub(super) fn slice_params(
    rank: usize,
    starts: &[i64],
    ends: &[i64],
    axes: Option<&[i64]>,
    steps: Option<&[i64]>,
) -> R<Vec<(i64, i64, i64)>> {
    let mut out = vec![(0, i64::MAX, 1); rank];
    let default_axes: Vec<i64> = (0..starts.len() as i64).collect();
    let axes = axes.unwrap_or(&default_axes);
    if ends.len() != starts.len()
        || axes.len() != starts.len()
        || steps.is_some_and(|s| s.len() != starts.len())
    {
        return Err("starts, ends, axes and steps differ in length".into());
    }
    for (k, &a) in axes.iter().enumerate() {
        let step = steps.map_or(1, |s| s[k]);
        out[axis(a, rank)?] = (starts[k], ends[k], step);
    }
    Ok(out)
}

/// `Slice` of a constant.
pub(super) fn slice(c: &Const, params: &[(i64, i64, i64)]) -> R<Const> {
    let keep = c
        .dims
        .iter()
        .zip(params)
        .map(|(&len, &(s, e, st))| slice_indices(len, s, e, st))
        .collect::<R<Vec<_>>>()?;
    let dims: Vec<usize> = keep.iter().map(Vec::len).collect();
    let src = strides(&c.dims);
    let dst = strides(&dims);
    gather_elems(&c.data, dims.clone(), |k| {
        (0..dims.len())
            .map(|d| keep[d][(k / dst[d]) % dims[d]] * src[d])
            .sum()
    })
}

/// `Unsqueeze` dimensions after inserting ones at `axes` (counted in the output's rank).
pub(super) fn unsqueeze_dims(dims: &[usize], axes: &[i64]) -> R<Vec<usize>> {
    let rank = dims.len() + axes.len();
    let mut at = axes.iter().map(|&a| axis(a, rank)).collect::<R<Vec<_>>>()?;
    at.sort_unstable();
    let mut src = dims.iter();
    (0..rank)
        .map(|i| {
            if at.binary_search(&i).is_ok() {
                Ok(1)
            } else {
                src.next()
                    .copied()
                    .ok_or_else(|| "repeated axes".to_string())
            }
        })
        .collect()
}

/// `Squeeze` dimensions after removing `axes` (all ones when `None`).
pub(super) fn squeeze_dims(dims: &[usize], axes: Option<&[i64]>) -> R<Vec<usize>> {
    let rank = dims.len();
    let drop: Vec<usize> = match axes {
        Some(a) => a.iter().map(|&x| axis(x, rank)).collect::<R<_>>()?,
        None => (0..rank).filter(|&i| dims[i] == 1).collect(),
    };
    if let Some(&d) = drop.iter().find(|&&d| dims[d] != 1) {
        return Err(format!("cannot squeeze axis {d} of size {}", dims[d]));
    }
    Ok((0..rank)
        .filter(|i| !drop.contains(i))
        .map(|i| dims[i])
        .collect())
}

/// `ConstantOfShape`: `value` (one element) repeated over `shape`.
pub(super) fn constant_of_shape(shape: &[i64], value: Option<&Const>) -> R<Const> {
    let dims = shape
        .iter()
        .map(|&d| usize::try_from(d).map_err(|_| format!("dimension {d}")))
        .collect::<R<Vec<_>>>()?;
    let n = elems(&dims)?;
    let data = match value.map(|v| &v.data) {
        None => Data::F32(vec![0.0; n]),
        Some(Data::F32(v)) => Data::F32(vec![*v.first().ok_or("empty value")?; n]),
        Some(Data::I64(v)) => Data::I64(vec![*v.first().ok_or("empty value")?; n]),
    };
    Ok(Const { dims, data })
}

/// `Cast` to ONNX element type `to`.
pub(super) fn cast(c: &Const, to: i64) -> R<Const> {
    let to = DataType::try_from(to as i32).unwrap_or(DataType::Undefined);
    let data = match to {
        DataType::Float | DataType::Double => Data::F32(c.to_f32()?),
        DataType::Int64 | DataType::Int32 => Data::I64(match &c.data {
            Data::I64(v) => v.clone(),
            Data::F32(v) => v.iter().map(|&x| x.trunc() as i64).collect(),
        }),
        other => return Err(format!("cast to {} is not supported", other.as_str_name())),
    };
    Ok(Const {
        dims: c.dims.clone(),
        data,
    })
}
