//! Activation orderings that make `vpmaddubsw` exact for a given int8 weight matrix.
//!
//! `vpmaddubsw` multiplies u8 activations by i8 weights and adds adjacent products in pairs, saturating the i16
//! sum. With activations in `0..=255` the pair `(w0, w1)` of one output column can saturate only if its positive
//! part `max(w0, 0) + max(w1, 0)` exceeds 128 or its negative part is below -128. A pair of K indices is *safe*
//! when no output column can saturate. Codes within +-64 are always safe; trained int8 weights mostly are not in
//! their natural order (a W8A8 MLP on Fashion-MNIST: 317 of its 392 adjacent pairs have an unsafe column).
//!
//! Two free transformations fix most of them:
//! - **Re-pairing within 16-byte chunks.** Any permutation of the 16 activations of a chunk is one `vpshufb`.
//! - **Flipping an index.** `a * w = (255 - a) * (-w) + 255 * w`: the activation is complemented (`xor 0xff`, in
//!   the same pass), the weights negated and `255 * w` moved into the bias. A flip turns a same-sign pair into an
//!   opposite-sign one, which saturates only where the other columns' signs agree.
//!
//! [`plan_pairs`] matches the indices of each chunk greedily (fewest compatible partners first), choosing the
//! flip per pair. Indices left without a partner get a zero weight in their chunk and are appended after the
//! chunks, each next to a zero activation (one weight alone never saturates). On that MLP 20 of 784 indices are
//! appended (824 positions); the gather is then one shuffle and one xor per 32 activations plus 20 byte copies.

use crate::pack::PackedWeights;

/// Source index meaning "a zero activation" (dead slot, zero partner or padding).
pub const ZERO: u32 = u32::MAX;

/// Activations per shuffle chunk (one `vpshufb` lane).
pub const CHUNK: usize = 16;

/// An activation ordering for pair-wise u8 x i8 products. Position `t` holds activation `src[t]` (0 for
/// [`ZERO`]), complemented when `flipped[t]`; the weights of position `t` are `w[src[t]]`, negated when flipped.
/// The first `16 * chunks` positions are the chunks in order, each a permutation of its own 16 source indices
/// (indices past `k` and unmatched ones read as 0); then each appended index followed by a zero; then zero padding
/// to a multiple of 4. Without appended indices the chunks' trailing zeros are dropped (so the natural order has
/// `round_up(k, 4)` positions). Every adjacent pair `(2i, 2i + 1)` is safe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PairPlan {
    /// Activations per row (`k`).
    k: usize,
    /// Source index per position.
    src: Vec<u32>,
    /// Whether the activation at each position is complemented (its weights negated).
    flipped: Vec<bool>,
    /// `vpshufb` masks, 16 bytes per chunk (source byte within the chunk, `0x80` for zero), then 16 zero bytes
    /// so that two chunks load as one 32-byte vector.
    shuffle: Vec<u8>,
    /// Xor masks in the same layout (`0xff` where flipped).
    xor: Vec<u8>,
    /// Indices appended after the chunks, each next to a zero.
    extra: Vec<u32>,
}

impl PairPlan {
    /// Activations per row (`k`).
    pub fn k(&self) -> usize {
        self.k
    }

    /// Positions per gathered row (a multiple of 4).
    pub fn len(&self) -> usize {
        self.src.len()
    }

    /// Whether the plan has no positions (`k == 0`).
    pub fn is_empty(&self) -> bool {
        self.src.is_empty()
    }

    /// Source index per position ([`ZERO`] for a zero).
    pub fn src(&self) -> &[u32] {
        &self.src
    }

    /// Whether each position is complemented.
    pub fn flipped(&self) -> &[bool] {
        &self.flipped
    }

    /// Number of 16-activation chunks at the start of a gathered row (the last may be cut by [`PairPlan::len`]).
    pub fn chunks(&self) -> usize {
        self.k.div_ceil(CHUNK)
    }

    /// Positions the chunks fill: `16 * chunks`, or less when the plan dropped their trailing zeros.
    pub fn main_len(&self) -> usize {
        (self.chunks() * CHUNK).min(self.len() - 2 * self.extra.len())
    }

    /// The chunks' `vpshufb` masks and xor masks, 16 bytes per chunk plus 16 zero bytes of padding each.
    pub fn masks(&self) -> (&[u8], &[u8]) {
        (&self.shuffle, &self.xor)
    }

    /// Indices appended after the chunks, each next to a zero.
    pub fn extra(&self) -> &[u32] {
        &self.extra
    }

    /// Whether the plan is the natural order with nothing flipped or appended (the gather is a copy).
    pub fn is_identity(&self) -> bool {
        self.extra.is_empty()
            && self.flipped.iter().all(|&f| !f)
            && self
                .src
                .iter()
                .enumerate()
                .all(|(t, &s)| s == t as u32 || (s == ZERO && t >= self.k))
    }

    /// The effective weight code at position `t` for a row of codes.
    pub fn code_at(&self, row: &[i8], t: usize) -> i8 {
        match self.src[t] {
            ZERO => 0,
            s if self.flipped[t] => -row[s as usize],
            s => row[s as usize],
        }
    }

    /// What flipping adds back to each output: `sum over flipped positions of 255 * w` (wrapping, like the
    /// accumulators), for the `n` rows of `w`.
    pub fn bias_fix(&self, w: &PackedWeights) -> Vec<i32> {
        let mut row = vec![0i8; w.cols];
        (0..w.rows)
            .map(|j| {
                w.unpack_row(j, &mut row);
                self.src
                    .iter()
                    .zip(&self.flipped)
                    .filter(|&(&s, &f)| f && s != ZERO)
                    .fold(0i32, |acc, (&s, _)| {
                        acc.wrapping_add(255 * i32::from(row[s as usize]))
                    })
            })
            .collect()
    }

    /// Writes row `a` (the `k` activations of one sample) in plan order into `dst[..self.len()]` (portable; the
    /// AVX2 kernels run the same gather with the chunk masks).
    ///
    /// # Panics
    /// If `a.len() != k` or `dst` is shorter than the plan.
    pub fn gather_row(&self, a: &[u8], dst: &mut [u8]) {
        assert!(a.len() == self.k && dst.len() >= self.src.len());
        for ((d, &s), &f) in dst.iter_mut().zip(&self.src).zip(&self.flipped) {
            *d = match s {
                ZERO => 0,
                s if f => !a[s as usize],
                s => a[s as usize],
            };
        }
    }
}

/// Per K index, the positive and the negative part of its code in every output column (`k x n` each, `n` padded
/// to 16 with zeros, which never make a pair unsafe), so checking a pair is two vectorizable reductions.
struct Parts {
    n: usize,
    pos: Vec<i16>,
    neg: Vec<i16>,
    /// Whether the index may be flipped (no code is -128, whose negation does not fit i8).
    flippable: Vec<bool>,
}

impl Parts {
    fn new(w: &PackedWeights) -> Parts {
        let (n, k) = (w.rows.div_ceil(16) * 16, w.cols);
        let (mut pos, mut neg) = (vec![0i16; k * n], vec![0i16; k * n]);
        let mut flippable = vec![true; k];
        let mut row = vec![0i8; k];
        for j in 0..w.rows {
            w.unpack_row(j, &mut row);
            for (t, &q) in row.iter().enumerate() {
                pos[t * n + j] = q.max(0) as i16;
                neg[t * n + j] = q.min(0) as i16;
                flippable[t] &= q != i8::MIN;
            }
        }
        Parts {
            n,
            pos,
            neg,
            flippable,
        }
    }

    /// Whether `(i, j)` is safe as is (`flip = false`) or with one of them flipped (`flip = true`).
    fn safe(&self, i: usize, j: usize, flip: bool) -> bool {
        let n = self.n;
        let (pi, ni) = (&self.pos[i * n..(i + 1) * n], &self.neg[i * n..(i + 1) * n]);
        let (pj, nj) = if flip {
            (&self.neg[j * n..(j + 1) * n], &self.pos[j * n..(j + 1) * n])
        } else {
            (&self.pos[j * n..(j + 1) * n], &self.neg[j * n..(j + 1) * n])
        };
        // Flipped, j's negative part becomes positive: compare magnitudes through the sign of the sum.
        let sj = if flip { -1i16 } else { 1 };
        let (mut hi, mut lo) = ([0i16; 16], [0i16; 16]);
        for (((a, b), c), d) in pi
            .chunks_exact(16)
            .zip(pj.chunks_exact(16))
            .zip(ni.chunks_exact(16))
            .zip(nj.chunks_exact(16))
        {
            for t in 0..16 {
                hi[t] = hi[t].max(a[t] + sj * b[t]);
                lo[t] = lo[t].min(c[t] + sj * d[t]);
            }
        }
        hi.iter().all(|&h| h <= 128) && lo.iter().all(|&l| l >= -128)
    }

    /// The flip that makes `(i, j)` safe, preferring none: `Some(false)`, `Some(true)` (flip `j`, or `i` when `j`
    /// cannot be flipped), or `None`.
    fn pairing(&self, i: usize, j: usize) -> Option<bool> {
        if self.safe(i, j, false) {
            Some(false)
        } else if (self.flippable[i] || self.flippable[j]) && self.safe(i, j, true) {
            Some(true)
        } else {
            None
        }
    }
}

/// Greedy matching of the real indices `idx` of one chunk: fewest compatible partners first, each taking its
/// compatible partner with the fewest partners. Returns the pairs with their flip, and the unmatched.
fn match_chunk(parts: &Parts, idx: &[usize]) -> (Vec<(usize, usize, bool)>, Vec<usize>) {
    let r = idx.len();
    let mut compat: Vec<Option<bool>> = vec![None; r * r];
    for a in 0..r {
        for b in a + 1..r {
            let p = parts.pairing(idx[a], idx[b]);
            compat[a * r + b] = p;
            compat[b * r + a] = p;
        }
    }
    let degree: Vec<usize> = (0..r)
        .map(|a| compat[a * r..(a + 1) * r].iter().flatten().count())
        .collect();
    let mut order: Vec<usize> = (0..r).collect();
    order.sort_by_key(|&a| (degree[a], a));
    let mut used = vec![false; r];
    let (mut pairs, mut single) = (Vec::new(), Vec::new());
    for &a in &order {
        if used[a] {
            continue;
        }
        used[a] = true;
        let partner = (0..r)
            .filter(|&b| !used[b] && compat[a * r + b].is_some())
            .min_by_key(|&b| (degree[b], b));
        match partner {
            Some(b) => {
                used[b] = true;
                let flip = compat[a * r + b] == Some(true);
                let (x, y) = (idx[a].min(idx[b]), idx[a].max(idx[b]));
                pairs.push((x, y, flip));
            }
            None => single.push(idx[a]),
        }
    }
    pairs.sort_unstable();
    single.sort_unstable();
    (pairs, single)
}

/// A safe activation ordering for the int8 weights `w` (any packing; codes are decoded), or `None` when it would
/// need more than `max_len` positions.
pub fn plan_pairs(w: &PackedWeights, max_len: usize) -> Option<PairPlan> {
    let k = w.cols;
    let chunks = k.div_ceil(CHUNK);
    if k.div_ceil(4) * 4 > max_len {
        return None;
    }
    let parts = Parts::new(w);
    let mut src: Vec<u32> = Vec::with_capacity(chunks * CHUNK);
    let mut flipped: Vec<bool> = Vec::with_capacity(chunks * CHUNK);
    let mut extra: Vec<u32> = Vec::new();
    for c in 0..chunks {
        let c0 = c * CHUNK;
        let real: Vec<usize> = (c0..k.min(c0 + CHUNK)).collect();
        // The natural order when every natural pair is safe as is keeps identity plans a plain copy.
        let natural = real
            .chunks(2)
            .all(|p| p.len() == 1 || parts.safe(p[0], p[1], false));
        let (pairs, mut single) = if natural {
            let pairs = real.chunks_exact(2).map(|p| (p[0], p[1], false)).collect();
            (pairs, real.chunks_exact(2).remainder().to_vec())
        } else {
            match_chunk(&parts, &real)
        };
        for (x, y, flip) in pairs {
            // Flip the second index unless only the first can be flipped.
            let (fx, fy) = match (flip, parts.flippable[y]) {
                (false, _) => (false, false),
                (true, true) => (false, true),
                (true, false) => (true, false),
            };
            src.extend([x as u32, y as u32]);
            flipped.extend([fx, fy]);
        }
        // Free slots of the chunk (its padding past k, or the slots singles leave) hold singles next to a zero.
        let keep = single.len().min((CHUNK - (src.len() - c0)) / 2);
        for &i in single.iter().take(keep) {
            src.extend([i as u32, ZERO]);
            flipped.extend([false, false]);
        }
        single.drain(..keep);
        // Unmatched indices leave dead (zero) slots and move to the end.
        extra.extend(single.iter().map(|&i| i as u32));
        src.resize(c0 + CHUNK, ZERO);
        flipped.resize(c0 + CHUNK, false);
    }
    // Without appended indices the zero positions after the last real one are dropped (the natural order keeps
    // its length); appended ones start after the last chunk.
    let main = if extra.is_empty() {
        src.iter().rposition(|&s| s != ZERO).map_or(0, |t| t + 1)
    } else {
        chunks * CHUNK
    };
    src.truncate(main);
    flipped.truncate(main);
    let len = (main + 2 * extra.len()).div_ceil(4) * 4;
    if len > max_len {
        return None;
    }
    for &i in &extra {
        src.extend([i, ZERO]);
        flipped.extend([false, false]);
    }
    src.resize(len, ZERO);
    flipped.resize(len, false);
    let (mut shuffle, mut xor) = (
        vec![0x80u8; (chunks + 1) * CHUNK],
        vec![0u8; (chunks + 1) * CHUNK],
    );
    for t in 0..main.min(chunks * CHUNK) {
        shuffle[t] = match src[t] {
            ZERO => 0x80,
            s => (s as usize % CHUNK) as u8,
        };
        xor[t] = if flipped[t] { 0xff } else { 0 };
    }
    Some(PairPlan {
        k,
        src,
        flipped,
        shuffle,
        xor,
        extra,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn weights(n: usize, k: usize, codes: &[i8]) -> PackedWeights {
        PackedWeights::pack(8, n, k, codes).unwrap()
    }

    /// Every index appears exactly once, every chunk position draws from its own chunk, and no pair of
    /// effective weights can saturate.
    fn assert_valid(plan: &PairPlan, w: &PackedWeights) {
        let k = w.cols;
        assert_eq!(plan.len() % 4, 0);
        let mut seen = vec![0; k];
        for (t, &s) in plan.src().iter().enumerate() {
            if s != ZERO {
                seen[s as usize] += 1;
                if t < plan.chunks() * CHUNK {
                    assert_eq!(
                        s as usize / CHUNK,
                        t / CHUNK,
                        "position {t} leaves its chunk"
                    );
                }
            }
        }
        assert!(
            seen.iter().all(|&c| c == 1),
            "every index exactly once: {seen:?}"
        );
        let mut row = vec![0i8; k];
        for j in 0..w.rows {
            w.unpack_row(j, &mut row);
            for t in (0..plan.len()).step_by(2) {
                let (x, y) = (
                    plan.code_at(&row, t) as i32,
                    plan.code_at(&row, t + 1) as i32,
                );
                assert!(255 * (x.max(0) + y.max(0)) <= 32767, "{t}: {x} {y}");
                assert!(255 * (x.min(0) + y.min(0)) >= -32768, "{t}: {x} {y}");
            }
        }
    }

    /// `sum a * w` through the plan (gathered activations, effective weights, bias fix) equals the plain sum.
    fn assert_sums_preserved(plan: &PairPlan, w: &PackedWeights, a: &[u8]) {
        let mut g = vec![0u8; plan.len()];
        plan.gather_row(a, &mut g);
        let fix = plan.bias_fix(w);
        let mut row = vec![0i8; w.cols];
        for (j, &fj) in fix.iter().enumerate() {
            w.unpack_row(j, &mut row);
            let want: i32 = a.iter().zip(&row).map(|(&x, &c)| x as i32 * c as i32).sum();
            let got: i32 = (0..plan.len())
                .map(|t| g[t] as i32 * plan.code_at(&row, t) as i32)
                .sum::<i32>()
                + fj;
            assert_eq!(got, want, "row {j}");
        }
    }

    #[test]
    fn codes_within_64_keep_the_natural_order() {
        let codes: Vec<i8> = (0..3 * 10)
            .map(|t| if t % 3 == 0 { 64 } else { -64 })
            .collect();
        let w = weights(3, 10, &codes);
        let plan = plan_pairs(&w, 100).unwrap();
        assert!(plan.is_identity());
        assert_eq!(plan.len(), 12);
        assert_valid(&plan, &w);
    }

    #[test]
    fn a_same_sign_pair_is_flipped_and_the_sum_survives() {
        // Column 0: 127 and 127 cannot share a pair as is; flipped, they are (127, -127).
        let w = weights(1, 2, &[127, 127]);
        let plan = plan_pairs(&w, 100).unwrap();
        assert!(!plan.is_identity());
        assert!(plan.flipped().iter().any(|&f| f));
        assert!(plan.extra().is_empty());
        assert_valid(&plan, &w);
        assert_sums_preserved(&plan, &w, &[255, 255]);
        assert_sums_preserved(&plan, &w, &[0, 200]);
    }

    #[test]
    fn indices_that_no_flip_can_pair_sit_next_to_a_zero() {
        // Column 0 wants 0 and 1 apart as is, column 1 wants them apart when one is flipped.
        let codes: Vec<i8> = vec![127, 127, 127, -127];
        let w = weights(2, 2, &codes);
        let plan = plan_pairs(&w, 100).unwrap();
        assert_valid(&plan, &w);
        assert_sums_preserved(&plan, &w, &[255, 255]);
        // Only one chunk, whose padding slots partner both indices for free: (0, zero), (1, zero).
        assert!(plan.extra().is_empty());
        assert_eq!(plan.src(), &[0, ZERO, 1, ZERO]);
    }

    #[test]
    fn a_full_chunk_of_extreme_codes_appends_its_indices_or_is_refused() {
        // Row 0 forbids every pair as is; rows 1..=4 give each index the sign pattern of its 4 bits, so any two
        // indices differ in some row, where flipping one makes them the same sign.
        let codes: Vec<i8> = (0..5 * 16)
            .map(|t| {
                let (row, i) = (t / 16, t % 16);
                if row == 0 || (i >> (row - 1)) & 1 == 1 {
                    127
                } else {
                    -127
                }
            })
            .collect();
        let w = weights(5, 16, &codes);
        assert_eq!(plan_pairs(&w, 20), None);
        let plan = plan_pairs(&w, 64).unwrap();
        // Eight stay in the chunk next to a zero, eight move to the end.
        assert_eq!(plan.extra().len(), 8);
        assert_eq!(plan.len(), 32);
        assert_valid(&plan, &w);
        let a: Vec<u8> = (0..16).map(|i| 200 + i as u8).collect();
        assert_sums_preserved(&plan, &w, &a);
    }

    #[test]
    fn bell_shaped_codes_pair_with_few_appended_indices_and_keep_every_sum() {
        let (n, k) = (64usize, 300usize);
        let mut x = 12345u64;
        let codes: Vec<i8> = (0..n * k)
            .map(|_| {
                let u: i64 = (0..4)
                    .map(|_| {
                        x = x
                            .wrapping_mul(6364136223846793005)
                            .wrapping_add(1442695040888963407);
                        ((x >> 33) & 0xFFFF) as i64
                    })
                    .sum();
                ((u - 2 * 65536) * 62 / 65536) as i8
            })
            .collect();
        let w = weights(n, k, &codes);
        let plan = plan_pairs(&w, 1000).unwrap();
        assert_valid(&plan, &w);
        assert!(plan.len() <= 304 + 2 * 16, "{} positions", plan.len());
        for seed in 0..3u32 {
            let a: Vec<u8> = (0..k as u32)
                .map(|i| ((i * 7 + seed * 91) % 256) as u8)
                .collect();
            assert_sums_preserved(&plan, &w, &a);
        }
        let full = vec![255u8; k];
        assert_sums_preserved(&plan, &w, &full);
    }

    #[test]
    fn gather_complements_flipped_positions_and_zero_fills() {
        let codes: Vec<i8> = vec![127, 127, 1];
        let w = weights(1, 3, &codes);
        let plan = plan_pairs(&w, 100).unwrap();
        let a = [10u8, 20, 30];
        let mut dst = [9u8; 16];
        plan.gather_row(&a, &mut dst);
        for (t, (&s, &f)) in plan.src().iter().zip(plan.flipped()).enumerate() {
            let want = match s {
                ZERO => 0,
                s if f => 255 - a[s as usize],
                s => a[s as usize],
            };
            assert_eq!(dst[t], want, "position {t}");
        }
    }
}
