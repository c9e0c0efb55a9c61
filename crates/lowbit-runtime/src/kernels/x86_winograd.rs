//! AVX2 kernel of [`super::winograd`] (scheme and exactness argument there). Single-threaded; scratch (the
//! padded channel-pair planes, the transformed tiles, per-channel requantization constants, tile positions) is
//! thread-local and only grown.
// Kernel names follow STYLE.md: `<op>__<isa>`.
#![allow(non_snake_case)]
use super::conv_planes::Residual;
use super::winograd::{WinogradConv, POSITIONS};
use super::x86::{pack_codes8, OutputStage8, RequantConsts8};
use super::x86_conv_planes::{interleave_row__avx2, AddStage8};
use super::OutputParams;
use std::arch::x86_64::*;
use std::cell::RefCell;

/// Where a tile's outputs go: `pos` is output `(2 ty, 2 tx)`'s index in a channel, `right` / `below` whether its
/// second column / row exist (odd edges drop them).
#[derive(Debug, Clone, Copy, Default)]
struct TileOut {
    pos: usize,
    right: bool,
    below: bool,
}

#[derive(Default)]
struct Scratch {
    planes: Vec<u32>,
    v: Vec<u32>,
    requant: Vec<RequantConsts8>,
    tiles: Vec<TileOut>,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

/// The padded planes of one sample: `rows x row` elements per channel pair, every position the input tiles of
/// 8-tile vectors read (rows `0..2 th + 2`, columns `0..16 ceil(tw / 8) + 2`), outside the input `pad_code`.
#[derive(Debug, Clone, Copy)]
struct Layout {
    rows: usize,
    row: usize,
    /// Elements per `[position][pair]` row of the transformed tiles: every tile, rounded up to a vector, and one
    /// more vector for the last tile row's discarded lanes.
    tile_stride: usize,
}

impl Layout {
    fn new(conv: &WinogradConv) -> Self {
        let t = conv.tiles;
        Self {
            rows: 2 * t.th + 2,
            row: 16 * t.tw.div_ceil(8) + 2,
            tile_stride: t.len().div_ceil(8) * 8 + 8,
        }
    }
}

/// Dispatch target of `winograd::winograd_conv_requant` on the AVX2 tiers (lengths and parameters checked there).
pub(crate) fn winograd_conv_requant(
    conv: &WinogradConv,
    x: &[u8],
    pad_code: u8,
    bias: &[i32],
    p: &OutputParams,
    residual: Option<Residual<'_>>,
    out: &mut [u8],
) {
    let mut run = |s: &mut Scratch| {
        let g = conv.geometry();
        assert!(
            x.len() == g.c_in * g.h * g.w
                && bias.len() == g.c_out
                && out.len() == g.c_out * g.oh() * g.ow()
                && residual.is_none_or(|r| r.codes.len() == out.len())
        );
        let l = Layout::new(conv);
        let pairs = conv.pairs;
        fit(&mut s.planes, pairs * l.rows * l.row);
        fit(&mut s.v, POSITIONS * pairs * l.tile_stride);
        // SAFETY: AVX2 detected (dispatch); `x` holds the sample (asserted), `planes` and `v` the layout's sizes.
        unsafe {
            build_planes__avx2(conv, &l, x, pad_code, &mut s.planes);
            transform_input__avx2(conv, &l, &s.planes, &mut s.v);
        }
        let (oh, ow) = (g.oh(), g.ow());
        s.tiles.clear();
        for ty in 0..conv.tiles.th {
            for tx in 0..conv.tiles.tw {
                s.tiles.push(TileOut {
                    pos: 2 * ty * ow + 2 * tx,
                    right: 2 * tx + 1 < ow,
                    below: 2 * ty + 1 < oh,
                });
            }
        }
        s.requant.clear();
        for c in 0..g.c_out {
            // SAFETY: AVX2 detected (dispatch); register arithmetic only.
            s.requant
                .push(unsafe { RequantConsts8::broadcast(p.requant_for(c)) });
        }
        // SAFETY: AVX2 detected; `v` holds the transformed tiles in `l`'s layout, `tiles` one entry per tile,
        // `requant` and `bias` one per channel, `out` and the residual `c_out * oh * ow` codes (asserted).
        unsafe { run_blocks__avx2(conv, &l, &s.v, &s.tiles, &s.requant, bias, p, residual, out) };
    };
    SCRATCH.with(|cell| match cell.try_borrow_mut() {
        Ok(mut s) => run(&mut s),
        Err(_) => run(&mut Scratch::default()),
    })
}

fn fit(v: &mut Vec<u32>, n: usize) {
    if v.len() < n {
        v.resize(n, 0);
    }
}

/// Writes `x` into `dst` as `l`'s padded planes: channel pairs `x[2i] | x[2i + 1] << 16` (the odd last channel
/// alone, its partner 0), every other position `pad_code` in both halves.
///
/// # Safety
/// AVX2 must be available; `x` holds `c_in * h * w` codes and `dst` at least `pairs * rows * row` elements.
#[target_feature(enable = "avx2")]
unsafe fn build_planes__avx2(
    conv: &WinogradConv,
    l: &Layout,
    x: &[u8],
    pad_code: u8,
    dst: &mut [u32],
) {
    let g = conv.geometry();
    let (ph, pw) = g.padding;
    let plane_in = g.h * g.w;
    for i in 0..conv.pairs {
        let a = &x[2 * i * plane_in..(2 * i + 1) * plane_in];
        let b = x.get((2 * i + 1) * plane_in..(2 * i + 2) * plane_in);
        let pad = u32::from(pad_code)
            | if b.is_some() {
                u32::from(pad_code) << 16
            } else {
                0
            };
        let plane = &mut dst[i * l.rows * l.row..(i + 1) * l.rows * l.row];
        for (y, row) in plane.chunks_exact_mut(l.row).enumerate() {
            let Some(iy) = y.checked_sub(ph).filter(|&iy| iy < g.h) else {
                row.fill(pad);
                continue;
            };
            row[..pw].fill(pad);
            let ra = &a[iy * g.w..(iy + 1) * g.w];
            let rb = b.map(|b| &b[iy * g.w..(iy + 1) * g.w]);
            // SAFETY: AVX2 available (this function's contract); `row[pw..pw + w]` exists (`row >= w + 2 pw`, the
            // layout's columns cover the padded input).
            unsafe { interleave_row__avx2(ra, rb, &mut row[pw..pw + g.w]) };
            row[pw + g.w..].fill(pad);
        }
    }
}

/// Elements `p[0], p[2], .., p[14]` and `p[1], p[3], .., p[15]` of the 16 u32 at `p`.
///
/// # Safety
/// AVX2 must be available; `p` readable for 16 u32.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn even_odd(p: *const u32) -> (__m256i, __m256i) {
    // SAFETY: reads `p[0..16]` (contract).
    let (a, b) = unsafe {
        (
            _mm256_castsi256_ps(_mm256_loadu_si256(p as *const __m256i)),
            _mm256_castsi256_ps(_mm256_loadu_si256(p.add(8) as *const __m256i)),
        )
    };
    // Per 128-bit lane: [a0 a2 b0 b2] and [a1 a3 b1 b3]; then the 64-bit quarters in order 0, 2, 1, 3.
    let e = _mm256_castps_si256(_mm256_shuffle_ps::<0b10_00_10_00>(a, b));
    let o = _mm256_castps_si256(_mm256_shuffle_ps::<0b11_01_11_01>(a, b));
    (
        _mm256_permute4x64_epi64::<0b11_01_10_00>(e),
        _mm256_permute4x64_epi64::<0b11_01_10_00>(o),
    )
}

/// `B^T v` of one column (or row) of 4 vectors, in i16 lanes (exact: `|result| <= 2 * 510`).
///
/// # Safety
/// AVX2 must be available (register arithmetic only).
#[inline]
#[target_feature(enable = "avx2")]
fn bt4(v: [__m256i; 4]) -> [__m256i; 4] {
    [
        _mm256_sub_epi16(v[0], v[2]),
        _mm256_add_epi16(v[1], v[2]),
        _mm256_sub_epi16(v[2], v[1]),
        _mm256_sub_epi16(v[1], v[3]),
    ]
}

/// `V = B^T d B` of every tile and channel pair into `v` (`[position][pair][tile]`, rows `tile_stride` apart), 8
/// tiles of one tile row per step in i16 pair lanes. Each step stores 8 lanes; the lanes past a tile row's end are
/// overwritten by the next row's step (tiles run in increasing order) or land in the row's last vector of slack.
///
/// # Safety
/// AVX2 must be available; `planes` holds `pairs * rows * row` elements built by [`build_planes__avx2`] and `v`
/// at least `16 * pairs * tile_stride`.
#[target_feature(enable = "avx2")]
unsafe fn transform_input__avx2(conv: &WinogradConv, l: &Layout, planes: &[u32], v: &mut [u32]) {
    let (pairs, t) = (conv.pairs, conv.tiles);
    assert!(planes.len() >= pairs * l.rows * l.row && v.len() >= POSITIONS * pairs * l.tile_stride);
    let (src, dst) = (planes.as_ptr(), v.as_mut_ptr());
    for i in 0..pairs {
        for ty in 0..t.th {
            for tx in (0..t.tw).step_by(8) {
                // SAFETY: rows `2 ty..2 ty + 4 <= rows` and columns `2 tx..2 tx + 18 <= row` (the layout covers
                // the last vector of every tile row); stores at `ty * tw + tx + 8 <= tile_stride` within each
                // `[position][pair]` row.
                unsafe {
                    let mut d = [[_mm256_setzero_si256(); 4]; 4];
                    for (r, dr) in d.iter_mut().enumerate() {
                        let p = src.add((i * l.rows + 2 * ty + r) * l.row + 2 * tx);
                        let (e0, o0) = even_odd(p);
                        let (e2, o2) = even_odd(p.add(2));
                        *dr = [e0, o0, e2, o2];
                    }
                    // B^T d: each column of d; then each row of the result times B.
                    let mut cols = [[_mm256_setzero_si256(); 4]; 4];
                    for c in 0..4 {
                        let tc = bt4([d[0][c], d[1][c], d[2][c], d[3][c]]);
                        for r in 0..4 {
                            cols[r][c] = tc[r];
                        }
                    }
                    let at = ty * t.tw + tx;
                    for (r, row) in cols.iter().enumerate() {
                        for (c, &e) in bt4(*row).iter().enumerate() {
                            let k = r * 4 + c;
                            let q = dst.add((k * pairs + i) * l.tile_stride + at);
                            _mm256_storeu_si256(q as *mut __m256i, e);
                        }
                    }
                }
            }
        }
    }
}

/// Every tile of `conv`'s blocks, channel-major like the planes kernel: 16 tiles (2 vectors) per micro-tile, a
/// final single vector.
///
/// # Safety
/// AVX2 must be available; as [`winograd_conv_requant`]'s call: `v` holds the transformed tiles in `l`'s layout,
/// `tiles` one entry per tile, `requant` and `bias` one per output channel, `out` (and the residual's codes)
/// `c_out * oh * ow` codes.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx2")]
unsafe fn run_blocks__avx2(
    conv: &WinogradConv,
    l: &Layout,
    v: &[u32],
    tiles: &[TileOut],
    requant: &[RequantConsts8],
    bias: &[i32],
    p: &OutputParams,
    residual: Option<Residual<'_>>,
    out: &mut [u8],
) {
    let g = conv.geometry();
    let cx = TileCx {
        v: v.as_ptr(),
        stride: l.tile_stride,
        pairs: conv.pairs,
        positions: g.oh() * g.ow(),
        ow: g.ow(),
        // SAFETY: AVX2 available (contract); register arithmetic only.
        stage: unsafe { OutputStage8::new(p) },
        // SAFETY: as above; the Add's parameters were validated by the entry point.
        add: residual.map(|r| (unsafe { AddStage8::new(r.quant) }, r.codes)),
        requant,
        bias,
        tiles,
    };
    let vectors = tiles.len().div_ceil(8);
    for b in &conv.blocks {
        let w = conv.weights[b.at..].as_ptr();
        let mut t0 = 0;
        while t0 + 16 <= vectors * 8 {
            // SAFETY: this function's contract covers every block, tile and channel used by the micro-tile.
            unsafe {
                match b.len {
                    6 => cx.tile::<6, 2>(b.first, w, t0, out),
                    5 => cx.tile::<5, 2>(b.first, w, t0, out),
                    4 => cx.tile::<4, 2>(b.first, w, t0, out),
                    3 => cx.tile::<3, 2>(b.first, w, t0, out),
                    2 => cx.tile::<2, 2>(b.first, w, t0, out),
                    _ => cx.tile::<1, 2>(b.first, w, t0, out),
                }
            }
            t0 += 16;
        }
        if t0 < vectors * 8 {
            // SAFETY: as above.
            unsafe {
                match b.len {
                    6 => cx.tile::<6, 1>(b.first, w, t0, out),
                    5 => cx.tile::<5, 1>(b.first, w, t0, out),
                    4 => cx.tile::<4, 1>(b.first, w, t0, out),
                    3 => cx.tile::<3, 1>(b.first, w, t0, out),
                    2 => cx.tile::<2, 1>(b.first, w, t0, out),
                    _ => cx.tile::<1, 1>(b.first, w, t0, out),
                }
            }
        }
    }
}

/// What every micro-tile of one sample shares.
struct TileCx<'a> {
    v: *const u32,
    stride: usize,
    pairs: usize,
    positions: usize,
    ow: usize,
    stage: OutputStage8,
    add: Option<(AddStage8, &'a [u8])>,
    requant: &'a [RequantConsts8],
    bias: &'a [i32],
    tiles: &'a [TileOut],
}

impl TileCx<'_> {
    /// Channels `first..first + OB` at the `8 V` tiles from `t0`: the 16 products `M` (see [`accumulate__avx2`]),
    /// then per channel and vector `A^T M A`, the exact division by 4, the bias and the output stage, and the
    /// codes of the tiles that exist stored at their (existing) positions.
    ///
    /// # Safety
    /// AVX2 must be available; `w` points at the block's `16 * pairs * OB` weight pairs; the tiles' transformed
    /// inputs `v + (k * pairs + i) * stride + t0 + 0..8 V` lie in the buffer; channels `first..first + OB` exist
    /// in `requant`, `bias` and `out`.
    #[allow(clippy::needless_range_loop)]
    #[target_feature(enable = "avx2")]
    unsafe fn tile<const OB: usize, const V: usize>(
        &self,
        first: usize,
        w: *const u32,
        t0: usize,
        out: &mut [u8],
    ) {
        let mut m = [[[_mm256_setzero_si256(); V]; OB]; POSITIONS];
        // SAFETY: the reads stay within the bounds this function's contract lists.
        unsafe { accumulate__avx2::<OB, V>(self.v, self.stride, self.pairs, t0, w, &mut m) };
        for o in 0..OB {
            let c = first + o;
            let rq = &self.requant[c];
            let bias = _mm256_set1_epi32(self.bias[c]);
            for vi in 0..V {
                let at = |r: usize, s: usize| m[r * 4 + s][o][vi];
                // A^T M (2 x 4), then times A: Y[r][0] = T[r][0] + T[r][1] + T[r][2], Y[r][1] = T[r][1] - T[r][2]
                // - T[r][3]; wrapping i32 (module doc).
                let mut t = [[_mm256_setzero_si256(); 4]; 2];
                for s in 0..4 {
                    t[0][s] = _mm256_add_epi32(_mm256_add_epi32(at(0, s), at(1, s)), at(2, s));
                    t[1][s] = _mm256_sub_epi32(_mm256_sub_epi32(at(1, s), at(2, s)), at(3, s));
                }
                for (r, tr) in t.iter().enumerate() {
                    let y = [
                        _mm256_add_epi32(_mm256_add_epi32(tr[0], tr[1]), tr[2]),
                        _mm256_sub_epi32(_mm256_sub_epi32(tr[1], tr[2]), tr[3]),
                    ];
                    for (s, &ys) in y.iter().enumerate() {
                        let acc = _mm256_add_epi32(_mm256_srai_epi32::<2>(ys), bias);
                        // SAFETY: AVX2 available (contract); register arithmetic and the bounds-checked store.
                        unsafe { self.store(acc, rq, c, t0 + 8 * vi, r, s, out) };
                    }
                }
            }
        }
    }

    /// The output stage of the accumulators `acc` of output `(r, s)` of the 8 tiles from `t`, channel `c`, and
    /// the codes of the existing ones stored.
    ///
    /// # Safety
    /// AVX2 must be available.
    #[allow(clippy::too_many_arguments)]
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn store(
        &self,
        acc: __m256i,
        rq: &RequantConsts8,
        c: usize,
        t: usize,
        r: usize,
        s: usize,
        out: &mut [u8],
    ) {
        let tiles = self.tiles.get(t..).unwrap_or(&[]);
        let tiles = &tiles[..tiles.len().min(8)];
        let base = c * self.positions + r * self.ow + s;
        let exists = |o: &TileOut| (r == 0 || o.below) && (s == 0 || o.right);
        // SAFETY: AVX2 available (contract); register arithmetic only.
        let mut q = unsafe { self.stage.codes_i32(acc, rq) };
        if let Some((add, codes)) = &self.add {
            let mut other = [0u8; 8];
            for (k, o) in tiles.iter().enumerate() {
                if exists(o) {
                    other[k] = codes[base + o.pos];
                }
            }
            // SAFETY: AVX2 available (contract); `other` holds 8 bytes.
            q = unsafe { add.apply(q, other.as_ptr()) };
        }
        // SAFETY: AVX2 available (contract); register arithmetic only.
        let bytes = unsafe { pack_codes8(q) }.to_le_bytes();
        for (o, &code) in tiles.iter().zip(&bytes) {
            if exists(o) {
                out[base + o.pos] = code;
            }
        }
    }
}

/// The 16 per-position GEMMs of [`TileCx::tile`]: `m[k][o][v] = sum_i vpmaddwd(V[k][i][t0 + 8 v..], (U[k][o][2i],
/// U[k][o][2i + 1]))`, one position at a time with its `OB x V` accumulators in registers.
///
/// # Safety
/// AVX2 must be available; `w` points at `16 * pairs * OB` weight pairs; every read `v + (k * pairs + i) * stride
/// + t0 + 0..8 V` is in bounds.
#[inline(never)]
#[target_feature(enable = "avx2")]
unsafe fn accumulate__avx2<const OB: usize, const V: usize>(
    v: *const u32,
    stride: usize,
    pairs: usize,
    t0: usize,
    w: *const u32,
    m: &mut [[[__m256i; V]; OB]; POSITIONS],
) {
    // SAFETY: the reads stay within the bounds this function's contract lists.
    unsafe {
        let mut wp = w;
        for (k, mk) in m.iter_mut().enumerate() {
            let mut acc = [[_mm256_setzero_si256(); V]; OB];
            let mut a = v.add(k * pairs * stride + t0);
            for _ in 0..pairs {
                let mut av = [_mm256_setzero_si256(); V];
                for (j, x) in av.iter_mut().enumerate() {
                    *x = _mm256_loadu_si256(a.add(8 * j) as *const __m256i);
                }
                a = a.add(stride);
                for row in acc.iter_mut() {
                    let wb = _mm256_set1_epi32(std::ptr::read_unaligned(wp as *const i32));
                    wp = wp.add(1);
                    for j in 0..V {
                        row[j] = _mm256_add_epi32(row[j], _mm256_madd_epi16(av[j], wb));
                    }
                }
            }
            *mk = acc;
        }
    }
}
