//! K orderings that make `vpmaddubsw` exact for a given int8 weight matrix.
//!
//! `vpmaddubsw` multiplies u8 activations by i8 weights and adds adjacent products in pairs, saturating the i16
//! sum. With activations in `0..=255` the pair `(w0, w1)` of one output column can saturate only if
//! `255 * (max(w0, 0) + max(w1, 0)) > 32767` or `255 * (min(w0, 0) + min(w1, 0)) < -32768`, that is if its
//! positive part exceeds 128 or its negative part is below -128. A pair of K indices is *safe* when no output
//! column saturates for any activation. Codes of at most 7 bits are always safe; trained int8 weights usually are
//! not in their natural order (a W8A8 MLP on Fashion-MNIST: 976 of its 25,088 adjacent pairs), but K can be
//! re-paired: the activations are gathered in the new order, which costs one byte copy per activation, against
//! `n` multiply-accumulates saved at half cost. [`plan_pairs`] matches indices greedily within blocks of
//! [`BLOCK`] (fewest compatible partners first) and pairs what is left with a zero activation; the gather then
//! runs as a short program of byte shuffles ([`PairPlan::program`]).

use crate::pack::PackedWeights;

/// Source index meaning "a zero activation" (padding partner or padding to a multiple of 4).
pub const ZERO: u32 = u32::MAX;

/// A K ordering for pair-wise u8 x i8 products: activation `src[t]` (or 0 for [`ZERO`]) sits at position `t`;
/// `src.len()` is a multiple of 4 and every adjacent pair `(src[2i], src[2i + 1])` is safe for the weights.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PairPlan {
    /// Source K index per position.
    pub src: Vec<u32>,
    /// Whether `src` is `0..k` followed by zero padding (no gather needed, a plain copy).
    pub identity: bool,
    /// Number of activations per row (`k`).
    k: usize,
    /// `src` with [`ZERO`] replaced by 0, so the gather has no branch; `zeros` are cleared afterwards.
    idx: Vec<u32>,
    /// Positions whose source is [`ZERO`].
    zeros: Vec<u32>,
    /// The gather as byte shuffles: output vector `v` (positions `32v..32v + 32`) is the OR of
    /// `shuffle(chunk, mask)` over `program[starts[v]..starts[v + 1]]`. Empty for identity plans.
    program: Vec<Shuffle>,
    starts: Vec<u32>,
}

/// One step of [`PairPlan::program`]: the 16 source bytes at `16 * chunk` (both 128-bit lanes), shuffled by
/// `mask` (`pshufb` semantics: byte `i` takes source byte `mask[i]`, or 0 when its top bit is set).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shuffle {
    /// 16-byte source chunk.
    pub chunk: u32,
    /// Per output byte of the 32: the source byte within the chunk, or `0x80` for none.
    pub mask: [u8; 32],
}

/// Compiles the gather of `src` into byte shuffles of 16-byte source chunks, 32 output positions at a time.
fn compile(src: &[u32]) -> (Vec<Shuffle>, Vec<u32>) {
    let mut program: Vec<Shuffle> = Vec::new();
    let mut starts = vec![0u32];
    for out in src.chunks(32) {
        let first = program.len();
        for (i, &s) in out.iter().enumerate() {
            if s == ZERO {
                continue;
            }
            let chunk = s / 16;
            let step = match program[first..].iter().position(|sh| sh.chunk == chunk) {
                Some(at) => first + at,
                None => {
                    program.push(Shuffle {
                        chunk,
                        mask: [0x80; 32],
                    });
                    program.len() - 1
                }
            };
            program[step].mask[i] = (s % 16) as u8;
        }
        starts.push(program.len() as u32);
    }
    (program, starts)
}

impl PairPlan {
    fn new(k: usize, src: Vec<u32>, identity: bool) -> Self {
        let idx = src.iter().map(|&s| if s == ZERO { 0 } else { s }).collect();
        let zeros = (0..src.len() as u32)
            .filter(|&t| src[t as usize] == ZERO)
            .collect();
        let (program, starts) = if identity {
            (Vec::new(), Vec::new())
        } else {
            compile(&src)
        };
        PairPlan {
            src,
            identity,
            k,
            idx,
            zeros,
            program,
            starts,
        }
    }

    /// Activations per row (`k`).
    pub fn k(&self) -> usize {
        self.k
    }

    /// The gather as byte shuffles (see [`Shuffle`]): per output vector of 32 positions, its range of steps.
    /// Empty for identity plans.
    pub fn program(&self) -> (&[Shuffle], &[u32]) {
        (&self.program, &self.starts)
    }

    /// Writes row `a` (the `k` activations of one sample) in plan order into `dst[..self.len()]`.
    ///
    /// # Panics
    /// If `a.len() != k` or `dst` is shorter than the plan.
    pub fn gather_row(&self, a: &[u8], dst: &mut [u8]) {
        assert!(a.len() == self.k && dst.len() >= self.src.len());
        let dst = &mut dst[..self.src.len()];
        if self.identity {
            dst[..self.k].copy_from_slice(a);
            dst[self.k..].fill(0);
            return;
        }
        if self.k == 0 {
            dst.fill(0);
            return;
        }
        for (d, &i) in dst.iter_mut().zip(&self.idx) {
            // SAFETY: every idx entry is a K index (< k = a.len()) or 0 < k, by construction in `new`.
            *d = unsafe { *a.get_unchecked(i as usize) };
        }
        for &z in &self.zeros {
            dst[z as usize] = 0;
        }
    }

    /// Positions per activation row (a multiple of 4).
    pub fn len(&self) -> usize {
        self.src.len()
    }

    /// Whether the plan has no positions (`k == 0`).
    pub fn is_empty(&self) -> bool {
        self.src.is_empty()
    }
}

/// Per K index, the positive and the negative part of its code in every output column (`k x n` each), laid out
/// so that checking a pair is two branch-free reductions the compiler vectorizes.
struct Parts {
    /// Row stride: `n` rounded up to 16, zero padded (a zero part never makes a pair unsafe).
    n: usize,
    pos: Vec<i16>,
    neg: Vec<i16>,
}

impl Parts {
    fn new(w: &PackedWeights) -> Parts {
        let (n, k) = (w.rows.div_ceil(16) * 16, w.cols);
        let (mut pos, mut neg) = (vec![0i16; k * n], vec![0i16; k * n]);
        let mut row = vec![0i8; k];
        for j in 0..w.rows {
            w.unpack_row(j, &mut row);
            for (t, &q) in row.iter().enumerate() {
                pos[t * n + j] = q.max(0) as i16;
                neg[t * n + j] = q.min(0) as i16;
            }
        }
        Parts { n, pos, neg }
    }

    /// Whether K indices `i` and `j` form a safe pair (no output column can saturate).
    fn safe(&self, i: usize, j: usize) -> bool {
        let n = self.n;
        let (pi, pj) = (&self.pos[i * n..(i + 1) * n], &self.pos[j * n..(j + 1) * n]);
        let (ni, nj) = (&self.neg[i * n..(i + 1) * n], &self.neg[j * n..(j + 1) * n]);
        let (mut hi, mut lo) = ([0i16; 16], [0i16; 16]);
        let chunks = pi.chunks_exact(16).zip(pj.chunks_exact(16));
        for ((a, b), (c, d)) in chunks.zip(ni.chunks_exact(16).zip(nj.chunks_exact(16))) {
            for t in 0..16 {
                hi[t] = hi[t].max(a[t] + b[t]);
                lo[t] = lo[t].min(c[t] + d[t]);
            }
        }
        hi.iter().all(|&h| h <= 128) && lo.iter().all(|&l| l >= -128)
    }
}

/// Source indices matched within blocks of this many: every output position then draws from at most four 16-byte
/// source chunks, so the gather is a few byte shuffles per 32 positions ([`PairPlan::program`]). Measured on a
/// W8A8 Fashion-MNIST MLP (784 inputs): blocks of 64 need 806 positions, global matching 784, blocks of 16 956.
pub const BLOCK: usize = 64;

/// Greedy matching of the indices `idx` (one block): fewest compatible partners first, each taking its compatible
/// partner with the fewest partners. Appends pairs and leaves the unmatched in `singles`.
fn match_block(parts: &Parts, idx: &[usize], pairs: &mut Vec<(u32, u32)>, singles: &mut Vec<u32>) {
    let r = idx.len();
    let mut compat = vec![false; r * r];
    for a in 0..r {
        for b in a + 1..r {
            let ok = parts.safe(idx[a], idx[b]);
            compat[a * r + b] = ok;
            compat[b * r + a] = ok;
        }
    }
    let degree: Vec<usize> = (0..r)
        .map(|a| compat[a * r..(a + 1) * r].iter().filter(|&&c| c).count())
        .collect();
    let mut order: Vec<usize> = (0..r).collect();
    order.sort_by_key(|&a| (degree[a], a));
    let mut used = vec![false; r];
    for &a in &order {
        if used[a] {
            continue;
        }
        used[a] = true;
        let partner = (0..r)
            .filter(|&b| !used[b] && compat[a * r + b])
            .min_by_key(|&b| (degree[b], b));
        match partner {
            Some(b) => {
                used[b] = true;
                let (x, y) = (idx[a].min(idx[b]), idx[a].max(idx[b]));
                pairs.push((x as u32, y as u32));
            }
            None => singles.push(idx[a] as u32),
        }
    }
}

/// A safe pairing of the K indices of `w` (any packing; codes are decoded), or `None` when it would need more
/// than `max_len` positions (each index left without a safe partner in its [`BLOCK`] costs a zero partner).
/// Natural order when every adjacent pair is already safe.
pub fn plan_pairs(w: &PackedWeights, max_len: usize) -> Option<PairPlan> {
    let k = w.cols;
    let k4 = k.div_ceil(4) * 4;
    if k4 > max_len {
        return None;
    }
    let parts = Parts::new(w);
    let natural = (0..k / 2).all(|i| parts.safe(2 * i, 2 * i + 1));
    if natural {
        let src = (0..k as u32)
            .chain(std::iter::repeat(ZERO))
            .take(k4)
            .collect();
        return Some(PairPlan::new(k, src, true));
    }
    let mut src: Vec<u32> = Vec::with_capacity(k4);
    for b0 in (0..k).step_by(BLOCK) {
        let idx: Vec<usize> = (b0..k.min(b0 + BLOCK)).collect();
        let (mut pairs, mut singles) = (Vec::new(), Vec::new());
        match_block(&parts, &idx, &mut pairs, &mut singles);
        pairs.extend(singles.iter().map(|&i| (i, ZERO)));
        pairs.sort_unstable();
        src.extend(pairs.iter().flat_map(|&(x, y)| [x, y]));
        if src.len() > max_len {
            return None;
        }
    }
    let len = src.len().div_ceil(4) * 4;
    if len > max_len {
        return None;
    }
    src.resize(len, ZERO);
    Some(PairPlan::new(k, src, false))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn weights(n: usize, k: usize, codes: &[i8]) -> PackedWeights {
        PackedWeights::pack(8, n, k, codes).unwrap()
    }

    fn assert_valid(plan: &PairPlan, w: &PackedWeights) {
        let k = w.cols;
        assert_eq!(plan.len() % 4, 0);
        let mut seen = vec![0; k];
        for &s in &plan.src {
            if s != ZERO {
                seen[s as usize] += 1;
            }
        }
        assert!(
            seen.iter().all(|&c| c == 1),
            "every index exactly once: {seen:?}"
        );
        let mut rows = vec![vec![0i8; k]; w.rows];
        for (j, r) in rows.iter_mut().enumerate() {
            w.unpack_row(j, r);
        }
        for p in plan.src.chunks_exact(2) {
            for r in &rows {
                let code = |s: u32| if s == ZERO { 0 } else { r[s as usize] as i32 };
                let (x, y) = (code(p[0]), code(p[1]));
                assert!(255 * (x.max(0) + y.max(0)) <= 32767, "{p:?}: {x} {y}");
                assert!(255 * (x.min(0) + y.min(0)) >= -32768, "{p:?}: {x} {y}");
            }
        }
    }

    #[test]
    fn seven_bit_codes_keep_the_natural_order() {
        let codes: Vec<i8> = (0..3 * 10)
            .map(|t| if t % 3 == 0 { 64 } else { -64 })
            .collect();
        let w = weights(3, 10, &codes);
        let plan = plan_pairs(&w, 100).unwrap();
        assert!(plan.identity);
        assert_eq!(plan.len(), 12);
        assert_valid(&plan, &w);
    }

    #[test]
    fn large_codes_are_paired_with_small_ones_of_the_other_sign_or_with_zero() {
        // Column 0: indices 0 and 1 are both 127 (unsafe together); 2 is -127, 3 is 100, 4 is 1.
        let codes: Vec<i8> = vec![127, 127, -127, 100, 1];
        let w = weights(1, 5, &codes);
        let plan = plan_pairs(&w, 100).unwrap();
        assert!(!plan.identity);
        assert_valid(&plan, &w);
        // 0 and 1 cannot share a pair; 3 cannot pair with 0 or 1 either.
        let pair_of = |i: u32| {
            let t = plan.src.iter().position(|&s| s == i).unwrap();
            plan.src[t ^ 1]
        };
        assert_ne!(pair_of(0), 1);
        assert_ne!(pair_of(3), 0);
        assert_ne!(pair_of(3), 1);
    }

    #[test]
    fn a_matrix_of_extreme_codes_is_refused_when_zero_partners_exceed_the_budget() {
        let w = weights(2, 16, &[127; 32]);
        assert_eq!(plan_pairs(&w, 20), None);
        let plan = plan_pairs(&w, 32).unwrap();
        assert_eq!(plan.len(), 32);
        assert_valid(&plan, &w);
    }

    /// Runs the shuffle program in plain Rust: what the SIMD gather must equal.
    fn run_program(plan: &PairPlan, a: &[u8]) -> Vec<u8> {
        let (program, starts) = plan.program();
        let mut out = vec![0u8; (starts.len() - 1) * 32];
        for v in 0..starts.len() - 1 {
            for sh in &program[starts[v] as usize..starts[v + 1] as usize] {
                for (i, &m) in sh.mask.iter().enumerate() {
                    if m & 0x80 == 0 {
                        let s = sh.chunk as usize * 16 + m as usize;
                        out[v * 32 + i] |= a.get(s).copied().unwrap_or(0);
                    }
                }
            }
        }
        out
    }

    #[test]
    fn the_shuffle_program_equals_the_plain_gather_and_reads_at_most_two_blocks_of_chunks_per_vector(
    ) {
        let mut codes = Vec::new();
        let mut x = 12345u64;
        for _ in 0..7 * 300 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let r = (x >> 33) as i64;
            codes.push(if r % 10 == 0 {
                (100 + r % 28) as i8 * [-1, 1][(r as usize / 10) % 2]
            } else {
                (r % 81 - 40) as i8
            });
        }
        let w = weights(7, 300, &codes);
        let plan = plan_pairs(&w, 1000).unwrap();
        assert!(!plan.identity);
        assert_valid(&plan, &w);
        let a: Vec<u8> = (0..300).map(|i| (i * 7 % 251) as u8 + 1).collect();
        let mut want = vec![0u8; plan.len()];
        plan.gather_row(&a, &mut want);
        let got = run_program(&plan, &a);
        assert_eq!(&got[..plan.len()], &want[..]);
        assert!(got[plan.len()..].iter().all(|&b| b == 0));
        let (program, starts) = plan.program();
        assert!(
            starts
                .windows(2)
                .all(|s| s[1] - s[0] <= 2 * BLOCK as u32 / 16),
            "{:?}",
            starts
        );
        assert!(!program.is_empty());
    }

    #[test]
    fn gather_follows_the_plan_and_zero_fills() {
        let plan = PairPlan::new(3, vec![2, ZERO, 0, 1, ZERO, ZERO, ZERO, ZERO], false);
        let mut dst = [9u8; 8];
        plan.gather_row(&[10, 11, 12], &mut dst);
        assert_eq!(dst, [12, 0, 10, 11, 0, 0, 0, 0]);
    }
}
