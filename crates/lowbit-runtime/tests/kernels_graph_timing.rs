//! Speed of the graph-op kernels, each AVX2 variant against its scalar reference on one thread (ignored by
//! default): `cargo test --release -p lowbit-runtime --test kernels_graph_timing -- --ignored --nocapture`.
//! Times are the thread's CPU time per call (`CLOCK_THREAD_CPUTIME_ID`, best of 7 windows of 30 ms), which a shared
//! machine's other jobs inflate far less than wall time (caches and the sibling thread still interfere); compare
//! the ratios, which come from one run.
use lowbit_runtime::kernels::depthwise::{grouped_conv_acc, GroupedConv, GroupedConvGeometry};
use lowbit_runtime::kernels::eltwise::{
    add_u8_with, lut_u8_with, rescale_u8_with, AddQuant, RescaleQuant,
};
use lowbit_runtime::kernels::pool::{
    global_avg_pool_u8_with, max_pool_u8_with, AvgPoolQuant, PoolGeometry,
};
use lowbit_runtime::kernels::Isa;
use lowbit_runtime::qparams::{AddParams, QParams, Rescale};
use lowbit_runtime::testutil::Rng;
use std::hint::black_box;

/// CPU seconds of the calling thread (`CLOCK_THREAD_CPUTIME_ID`): on a shared machine a descheduled thread does
/// not accumulate them, where wall time keeps running. Wall time elsewhere.
#[cfg(target_os = "linux")]
fn thread_cpu_secs() -> f64 {
    #[repr(C)]
    struct Timespec {
        sec: i64,
        nsec: i64,
    }
    extern "C" {
        fn clock_gettime(clock: i32, ts: *mut Timespec) -> i32;
    }
    const CLOCK_THREAD_CPUTIME_ID: i32 = 3;
    let mut ts = Timespec { sec: 0, nsec: 0 };
    // SAFETY: `ts` is a valid, writable timespec (two 64-bit fields on 64-bit Linux); the call only writes it.
    let rc = unsafe { clock_gettime(CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID)");
    ts.sec as f64 + ts.nsec as f64 * 1e-9
}

#[cfg(not(target_os = "linux"))]
fn thread_cpu_secs() -> f64 {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    START
        .get_or_init(std::time::Instant::now)
        .elapsed()
        .as_secs_f64()
}

/// Best over 7 windows of at least 30 ms of this thread's CPU time of the mean CPU seconds per call.
fn time(mut f: impl FnMut()) -> f64 {
    f();
    let mut best = f64::INFINITY;
    for _ in 0..7 {
        let t0 = thread_cpu_secs();
        let mut iters = 0u32;
        while thread_cpu_secs() - t0 < 0.03 || iters == 0 {
            f();
            iters += 1;
        }
        best = best.min((thread_cpu_secs() - t0) / f64::from(iters));
    }
    best
}

/// Prints the reference and AVX2 times of `f(isa)` and their ratio; `unit` names what `count` counts.
fn compare(name: &str, count: f64, unit: &str, mut f: impl FnMut(Isa)) {
    let reference = time(|| f(Isa::Reference));
    let avx2 = time(|| f(Isa::Avx2));
    println!(
        "{name:<44} reference {:>9.2} us ({:>7.3} ns/{unit})   avx2 {:>8.2} us ({:>7.3} ns/{unit})   {:>5.1}x",
        reference * 1e6,
        reference * 1e9 / count,
        avx2 * 1e6,
        avx2 * 1e9 / count,
        reference / avx2
    );
}

#[test]
#[ignore]
fn report_graph_kernel_speed() {
    if !Isa::Avx2.is_available() {
        println!("AVX2 is not available on this CPU: nothing to compare");
        return;
    }
    let mut rng = Rng(1);
    // One ResNet-20 stage-1 activation of a batch of 4: 4 x 16 x 32 x 32 codes.
    let n = 65536;
    let (a, b) = (rng.bytes(n), rng.bytes(n));
    let mut out = vec![0u8; n];
    let add = AddQuant {
        params: AddParams::from_scales(0.03, 0.05, 0.06).expect("valid"),
        zero_point_a: 0,
        zero_point_b: 0,
        zero_point_out: 0,
        qmin: 0,
        qmax: 255,
    };
    compare("add 64 KiB codes", n as f64, "code", |isa| {
        add_u8_with(isa, black_box(&a), &b, &add, &mut out).expect("valid");
    });
    let rescale = RescaleQuant {
        params: Rescale::from_scales(0.03, 0.05).expect("valid"),
        zero_point_in: 3,
        zero_point_out: 0,
        qmin: 0,
        qmax: 255,
    };
    compare("rescale 64 KiB codes", n as f64, "code", |isa| {
        rescale_u8_with(isa, black_box(&a), &rescale, &mut out).expect("valid");
    });
    let mut table = [0u8; 256];
    table.copy_from_slice(&rng.bytes(256));
    compare("lut 64 KiB codes", n as f64, "code", |isa| {
        lut_u8_with(isa, black_box(&a), &table, &mut out).expect("valid");
    });
    // Depthwise 3x3 layers of a CIFAR MobileNet (one sample), plus a channel multiplier and a 5x5 kernel.
    for (c, hw, k, stride, mult) in [
        (32, 32, 3, 1, 1),
        (64, 32, 3, 2, 1),
        (128, 16, 3, 1, 1),
        (128, 16, 3, 2, 1),
        (256, 8, 3, 1, 1),
        (32, 32, 3, 1, 2),
        (64, 16, 5, 1, 1),
    ] {
        let mut g = GroupedConvGeometry::depthwise(c, hw, hw, k, stride, k / 2);
        g.c_out = c * mult;
        let x = rng.bytes(c * hw * hw);
        let w: Vec<i8> = (0..g.c_out * k * k)
            .map(|_| rng.range(-127, 127) as i8)
            .collect();
        let bias = vec![7i32; g.c_out];
        let mut acc = vec![0i32; g.c_out * g.oh() * g.ow()];
        let convs =
            [Isa::Reference, Isa::Avx2].map(|isa| GroupedConv::new(isa, g, &w).expect("valid"));
        let macs = (g.c_out * g.oh() * g.ow() * k * k) as f64;
        let name = format!("depthwise {c}x{hw}x{hw} k{k} s{stride} m{mult}");
        compare(&name, macs, "MAC", |isa| {
            let conv = &convs[usize::from(isa == Isa::Avx2)];
            grouped_conv_acc(conv, black_box(&x), 5, &bias, &mut acc).expect("valid");
        });
    }
    // Network heads: global average pool of 64 channels over 8x8 and 7x7, a batch of 64.
    for hw in [8, 7] {
        let (planes, elems) = (64 * 64, hw * hw);
        let x = rng.bytes(planes * elems);
        let qp = QParams::new(0.05, 0).expect("valid");
        let q = AvgPoolQuant::new(qp, QParams::new(0.03, 0).expect("valid"), elems, 255)
            .expect("valid");
        let mut pooled = vec![0u8; planes];
        compare(
            &format!("global avg pool 64 x 64 x {hw}x{hw}"),
            (planes * elems) as f64,
            "code",
            |isa| {
                global_avg_pool_u8_with(isa, black_box(&x), planes, elems, &q, &mut pooled)
                    .expect("valid");
            },
        );
    }
    // A ResNet stem max pool: 3x3, stride 2, padding 1 on 64 planes of 32x32; and 2x2 stride 2.
    for (k, stride, pad) in [(3, 2, 1), (2, 2, 0), (3, 1, 1)] {
        let g = PoolGeometry {
            h: 32,
            w: 32,
            kh: k,
            kw: k,
            stride: (stride, stride),
            padding: (pad, pad),
        };
        let x = rng.bytes(64 * 32 * 32);
        let mut pooled = vec![0u8; 64 * g.oh() * g.ow()];
        compare(
            &format!("max pool 64 x 32x32 k{k} s{stride} p{pad}"),
            pooled.len() as f64,
            "output",
            |isa| {
                max_pool_u8_with(isa, black_box(&x), 64, &g, &mut pooled).expect("valid");
            },
        );
    }
}
