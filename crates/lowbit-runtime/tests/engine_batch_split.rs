//! `Engine::run` splits large batches into rayon tasks that each run every layer; the result must equal the
//! serial path (`run_traced` never splits) and per-sample runs bit for bit, for every weight bit width, also when
//! many threads share one engine.
use lowbit_runtime::engine::{Engine, EngineOptions};
use lowbit_runtime::testutil::{random_cnn, reference_mlp, LayerOpts, Rng};
use std::sync::Arc;

fn bits_of(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

#[test]
fn split_batches_equal_the_serial_path_and_single_sample_runs() {
    for (bits, seed) in [(8u32, 1u64), (4, 2), (2, 3), (1, 4)] {
        let e = Engine::new(&reference_mlp(seed, bits)).unwrap();
        let f = e.input_features();
        // 101: a ragged last task; 24 and 25: exactly one task and one row past it.
        for batch in [101usize, 24, 25] {
            let x = Rng(seed * 1000 + batch as u64).bytes(batch * f);
            let split = e.run(&x, batch).unwrap();
            let serial = e.run_traced(&x, batch).unwrap().logits;
            // The split handed whole to the pool gives the same logits as the caller-participating one.
            assert_eq!(
                bits_of(&e.run_pooled(&x, batch).unwrap()),
                bits_of(&split),
                "{bits}-bit batch {batch} pooled, seed {seed}"
            );
            assert_eq!(
                bits_of(&split),
                bits_of(&serial),
                "{bits}-bit batch {batch}, seed {seed}"
            );
            for s in [0, batch / 2, batch - 1] {
                let one = e.run(&x[s * f..(s + 1) * f], 1).unwrap();
                assert_eq!(
                    bits_of(&one),
                    bits_of(&split[s * 10..(s + 1) * 10]),
                    "{bits}-bit batch {batch}, sample {s}, seed {seed}"
                );
            }
        }
    }
}

#[test]
fn split_run_rejects_input_of_the_wrong_length() {
    let e = Engine::new(&reference_mlp(9, 8)).unwrap();
    let f = e.input_features();
    let x = vec![0u8; 100 * f - 1];
    assert!(e.run(&x, 100).is_err());
}

#[test]
fn split_cnn_batches_equal_the_serial_path() {
    // ~2.3K MACs per sample, so a task is a few hundred samples and 1000 samples make a ragged split; inside a
    // task the GEMM-path convolutions run all the task's samples as one matrix.
    for (bits, seed) in [(8u32, 5u64), (4, 6), (2, 7)] {
        let o = LayerOpts {
            weight_bits: bits,
            act_bits: 8,
            per_channel: true,
        };
        let e = Engine::new(&random_cnn(seed, o)).unwrap();
        let f = e.input_features();
        let batch = 1000;
        let x = Rng(seed * 77).bytes(batch * f);
        let split = e.run(&x, batch).unwrap();
        let serial = e.run_traced(&x, batch).unwrap().logits;
        assert_eq!(
            bits_of(&split),
            bits_of(&serial),
            "{bits}-bit cnn, seed {seed}"
        );
    }
}

/// One call of a thread: batch, input, the single-threaded logits.
type Job = (usize, Vec<u8>, Vec<f32>);

/// Logits computed on one thread: inside a one-thread rayon pool the engine splits neither the batch over its
/// helpers nor a layer over rayon.
fn single_threaded(e: &Engine, x: &[u8], batch: usize) -> Vec<f32> {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap();
    pool.install(|| e.run(x, batch)).unwrap()
}

#[test]
fn eight_threads_sharing_one_engine_get_exactly_the_single_threaded_logits() {
    const THREADS: u64 = 8;
    let cnn = LayerOpts {
        weight_bits: 4,
        act_bits: 8,
        per_channel: true,
    };
    // Batches below and above the split threshold (24 samples for the MLP, a few hundred for the small CNN), so
    // concurrent callers contend for the helpers, run alone, or run a single task.
    let cases: [(&str, lowbit_runtime::QuantModel, &[usize]); 3] = [
        ("int8 mlp", reference_mlp(11, 8), &[1, 25, 256]),
        ("int2 mlp", reference_mlp(12, 2), &[3, 100]),
        ("int4 cnn", random_cnn(13, cnn), &[1, 1000]),
    ];
    for (name, model, batches) in cases {
        for allow_spinning in [false, true] {
            let e = Arc::new(
                Engine::with_options(
                    &model,
                    EngineOptions {
                        allow_spinning,
                        ..EngineOptions::default()
                    },
                )
                .unwrap(),
            );
            let f = e.input_features();
            // Different inputs per thread and batch, with their single-threaded logits.
            let work: Vec<Vec<Job>> = (0..THREADS)
                .map(|t| {
                    batches
                        .iter()
                        .map(|&b| {
                            let x = Rng(t * 1000 + b as u64).bytes(b * f);
                            let want = single_threaded(&e, &x, b);
                            (b, x, want)
                        })
                        .collect()
                })
                .collect();
            let handles: Vec<_> = work
                .into_iter()
                .enumerate()
                .map(|(t, jobs)| {
                    let e = Arc::clone(&e);
                    std::thread::spawn(move || {
                        for round in 0..5 {
                            for (b, x, want) in &jobs {
                                let got = e.run(x, *b).unwrap();
                                assert_eq!(
                                    bits_of(&got),
                                    bits_of(want),
                                    "{name}, thread {t}, round {round}, batch {b}, spinning {allow_spinning}"
                                );
                            }
                        }
                    })
                })
                .collect();
            for h in handles {
                h.join()
                    .expect("a thread's logits differed (see its panic above)");
            }
        }
    }
}
