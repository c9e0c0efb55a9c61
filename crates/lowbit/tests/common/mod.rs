//! Helpers shared by integration tests (each test binary includes this module with `mod common;`, and uses only
//! some of it).
#![allow(dead_code)]

pub mod grad;
use lowbit::data::Dataset;
use lowbit::quant::simulate;
use lowbit::runtime::engine::{argmax_rows, Engine};
use lowbit::runtime::QuantModel;
use lowbit::tensor::Tensor;

/// Images `start..start + n` of `data` as an f32 batch `[n, C, H, W]`, pixels / 255.
pub fn batch(data: &Dataset, start: usize, n: usize) -> Tensor {
    let per = data.image_len();
    let x = data.images[start * per..(start + n) * per]
        .iter()
        .map(|&p| f32::from(p) / 255.0)
        .collect();
    Tensor::new(x, vec![n, data.channels, data.rows, data.cols])
}

/// Runs the integer engine and the library's independent simulation on all of `test` (batches of 250) and
/// asserts identical codes at every layer, identical final accumulators and identical predictions. Returns the
/// engine's predictions.
pub fn engine_equals_simulation(qm: &QuantModel, test: &Dataset) -> Vec<usize> {
    let engine = Engine::new(qm).expect("the converted model validates");
    let per = test.image_len();
    let mut preds = Vec::with_capacity(test.len());
    for start in (0..test.len()).step_by(250) {
        let b = 250.min(test.len() - start);
        let input = &test.images[start * per..(start + b) * per];
        let trace = engine.run_traced(input, b).expect("engine runs");
        let sim = simulate(qm, input, b).expect("simulation runs");
        assert_eq!(trace.codes.len(), sim.codes.len(), "layers with codes");
        for (li, (e, s)) in trace.codes.iter().zip(&sim.codes).enumerate() {
            if let Some(i) = e.iter().zip(s).position(|(a, b)| a != b) {
                panic!(
                    "node {li} ({}) batch at {start}: first difference at {i}: engine {} simulation {} (len {})",
                    qm.nodes[li].name,
                    e[i],
                    s[i],
                    e.len()
                );
            }
            assert_eq!(e.len(), s.len(), "layer {li} length");
        }
        assert_eq!(
            trace.accumulators, sim.final_acc,
            "final accumulators at batch {start}"
        );
        let ep = argmax_rows(&trace.logits, qm.classes);
        assert_eq!(
            ep,
            argmax_rows(&sim.logits, qm.classes),
            "predictions at batch {start}"
        );
        preds.extend(ep);
    }
    preds
}

/// Fraction of `preds` equal to `data`'s labels.
pub fn accuracy(preds: &[usize], data: &Dataset) -> f64 {
    let ok = preds
        .iter()
        .zip(&data.labels)
        .filter(|(p, &l)| **p == usize::from(l))
        .count();
    ok as f64 / data.len().max(1) as f64
}
