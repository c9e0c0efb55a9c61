//! `Engine::run` splits large batches into rayon tasks that each run every layer; the result must equal the
//! serial path (`run_traced` never splits) and per-sample runs bit for bit, for every weight bit width.
use lowbit_runtime::engine::Engine;
use lowbit_runtime::testutil::{reference_mlp, LayerOpts, Rng};

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
        let e = Engine::new(&lowbit_runtime::testutil::random_cnn(seed, o)).unwrap();
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
