//! Checkpoint files from the library: every component's state survives a save and a resume exactly, and each
//! way a checkpoint cannot be resumed is its own `CheckpointError` variant (matched by variant, not by text),
//! including truncation at every byte offset and random byte flips, which never load silently different state.
use lowbit::checkpoint::{Checkpointing, Loaded};
use lowbit::error::CheckpointError;
use lowbit::nn::{Dense, Layer, Model, Relu};
use lowbit::quant::{self, ActMethod, BnFold, QuantConfig, WeightMethod};
use lowbit::rng::Rng;
use lowbit::state::{StateValue, StateVisitor, Stateful};
use lowbit::train::{train_checkpointed, EpochStats, SliceSamples, TrainConfig};
use lowbit::Error;
use lowbit_runtime::testutil::{st_header, st_with_header};
use lowbit_runtime::FormatError;
use std::path::Path;
use tempfile::TempDir;

/// Every state value of `part` by name, floats as bit patterns (so `-0.0 != 0.0` and NaN compare).
fn dump(part: &mut dyn Stateful) -> Vec<(String, Vec<u64>)> {
    let mut out = Vec::new();
    let mut sink = |name: &str, value: StateValue<'_>| {
        let bits: Vec<u64> = match value {
            StateValue::F32(x) => x.iter().map(|v| u64::from(v.to_bits())).collect(),
            StateValue::F32Vec(x) => x.iter().map(|v| u64::from(v.to_bits())).collect(),
            StateValue::F64(x) => x.iter().map(|v| v.to_bits()).collect(),
            StateValue::U64(x) => x.to_vec(),
            StateValue::Indices(x) => x.iter().map(|&v| v as u64).collect(),
            StateValue::Count(c) | StateValue::Len(c) => vec![*c as u64],
            StateValue::Flag(f) => vec![u64::from(*f)],
        };
        out.push((name.to_string(), bits));
        Ok(())
    };
    part.visit_state(&mut StateVisitor::new(&mut sink)).unwrap();
    out
}

/// `n` random 1x28x28 images in [0, 1) and labels 0..10, from `seed`.
fn images(n: usize, seed: u64) -> (Vec<f32>, Vec<u8>) {
    let mut rng = Rng::new(seed);
    let x = rng.uniform_vec(n * 784, 0.0, 1.0);
    let y = (0..n).map(|i| (i % 10) as u8).collect();
    (x, y)
}

/// A QAT model holding every stateful component: ConvBn2d (LSQ weights, statistics frozen after 3 steps),
/// activation quantizers (LSQ), dropout, dense layers.
fn rich_model() -> Model {
    let mut m = Model::from_spec("cnn:c2.bn-p-f8-d0.5-10", 3).unwrap();
    let q = QuantConfig {
        weight_bits: 4,
        act_bits: 4,
        weight_quantizer: WeightMethod::Lsq,
        act_quantizer: ActMethod::Lsq,
        bn_fold: BnFold::BatchStats {
            freeze_after_steps: Some(3),
        },
        ..QuantConfig::default()
    };
    quant::prepare_qat(&mut m, &q).unwrap();
    m
}

fn cfg(epochs: usize) -> TrainConfig {
    TrainConfig {
        epochs,
        batch_size: 8,
        seed: 5,
        ..TrainConfig::default()
    }
}

fn train_with(
    model: &mut Model,
    data: &SliceSamples<'_>,
    cfg: &TrainConfig,
    ck: &Checkpointing,
) -> lowbit::Result<Vec<EpochStats>> {
    train_checkpointed(model, data, cfg, Some((ck, "f32")), &mut |_| {})
}

fn checkpointing(dir: &Path, resume: bool) -> Checkpointing {
    Checkpointing {
        settings: r#"{"run":"test"}"#.into(),
        ..Checkpointing::new(dir, Some(2), resume)
    }
}

#[test]
fn resuming_a_finished_checkpoint_restores_every_component_exactly() {
    let dir = TempDir::new().unwrap();
    let (x, y) = images(40, 1);
    let data = SliceSamples::new(&x, &y, [1, 28, 28]).unwrap();
    let mut trained = rich_model();
    let history = train_with(
        &mut trained,
        &data,
        &cfg(2),
        &checkpointing(dir.path(), false),
    )
    .unwrap();
    let mut resumed = rich_model();
    assert_ne!(
        dump(&mut resumed),
        dump(&mut trained),
        "training changed nothing"
    );
    let again = train_with(
        &mut resumed,
        &data,
        &cfg(2),
        &checkpointing(dir.path(), true),
    )
    .unwrap();
    assert_eq!(dump(&mut resumed), dump(&mut trained));
    assert_eq!(again, history);
    let names: Vec<String> = dump(&mut trained).into_iter().map(|(n, _)| n).collect();
    for expected in [
        "nodes.layers.0.conv_bn2d.bn.running_var",
        "nodes.layers.0.conv_bn2d.steps",
        "nodes.layers.0.conv_bn2d.conv.weight_quant.step",
        "nodes.layers.2.quant.act_quant.learned",
        "nodes.layers.2.quant.act_quant.initialized",
        "nodes.layers.2.quant.act_quant.range.present",
    ] {
        assert!(
            names.iter().any(|n| n == expected),
            "{expected} not in {names:?}"
        );
    }
    assert!(
        names.iter().any(|n| n.ends_with("dropout.rng")),
        "{names:?}"
    );
}

/// `history` with wall times zeroed.
fn timeless(mut history: Vec<EpochStats>) -> Vec<EpochStats> {
    history.iter_mut().for_each(|e| e.seconds = 0.0);
    history
}

#[test]
fn a_run_that_crashes_mid_epoch_resumes_to_the_uninterrupted_model() {
    // 40 samples in batches of 8: 5 steps per epoch, a checkpoint every 2. The run crashes (a panic) in step 3
    // of epoch 2, before that step's checkpoint: the last one is mid-epoch, after step 1 of epoch 2.
    let (x, y) = images(40, 2);
    let data = SliceSamples::new(&x, &y, [1, 28, 28]).unwrap();
    let mut straight = rich_model();
    let expected = lowbit::train::train(&mut straight, &data, &cfg(3), &mut |_| {}).unwrap();
    let dir = TempDir::new().unwrap();
    let mut crashed = rich_model();
    let ck = checkpointing(dir.path(), false);
    let crash = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        train_checkpointed(&mut crashed, &data, &cfg(3), Some((&ck, "f32")), &mut |p| {
            assert!(!(p.epoch == 2 && p.step == 3), "simulated crash");
        })
    }));
    assert!(crash.is_err());
    let mut resumed = rich_model();
    let got = train_with(
        &mut resumed,
        &data,
        &cfg(3),
        &checkpointing(dir.path(), true),
    )
    .unwrap();
    assert_eq!(timeless(got), timeless(expected));
    assert_eq!(dump(&mut resumed), dump(&mut straight));
}

/// A 4-input model (`[1, 2, 2]` samples, 3 classes): tiny checkpoints, for the file-level tests.
fn tiny_model(hidden: Option<usize>) -> Model {
    let mut rng = Rng::new(1);
    let layers = match hidden {
        None => vec![Layer::Dense(Dense::new(4, 3, &mut rng))],
        Some(h) => vec![
            Layer::Dense(Dense::new(4, h, &mut rng)),
            Layer::Relu(Relu::new()),
            Layer::Dense(Dense::new(h, 3, &mut rng)),
        ],
    };
    Model::sequential("tiny", [1, 2, 2], 3, layers)
}

struct Tiny {
    _dir: TempDir,
    ck_dir: std::path::PathBuf,
    x: Vec<f32>,
    y: Vec<u8>,
}

impl Tiny {
    /// A finished 2-epoch run of the tiny model on 12 samples, checkpointed in `ck_dir`.
    fn new() -> Tiny {
        let dir = TempDir::new().unwrap();
        let ck_dir = dir.path().join("ck");
        let mut rng = Rng::new(9);
        let x = rng.uniform_vec(12 * 4, 0.0, 1.0);
        let y: Vec<u8> = (0..12).map(|i| (i % 3) as u8).collect();
        let t = Tiny {
            _dir: dir,
            ck_dir,
            x,
            y,
        };
        t.run(&checkpointing(&t.ck_dir, false), tiny_model(None))
            .unwrap();
        t
    }

    fn data(&self) -> SliceSamples<'_> {
        SliceSamples::new(&self.x, &self.y, [1, 2, 2]).unwrap()
    }

    fn run(&self, ck: &Checkpointing, mut model: Model) -> lowbit::Result<Vec<EpochStats>> {
        let cfg = TrainConfig {
            epochs: 2,
            batch_size: 4,
            ..TrainConfig::default()
        };
        train_with(&mut model, &self.data(), &cfg, ck)
    }

    fn path(&self) -> std::path::PathBuf {
        self.ck_dir.join("f32.ckpt")
    }

    fn bytes(&self) -> Vec<u8> {
        std::fs::read(self.path()).unwrap()
    }

    /// Checks `bytes` as a checkpoint file.
    fn read(&self, bytes: &[u8]) -> lowbit::Result<Loaded> {
        Loaded::from_bytes(bytes.to_vec(), &self.path())
    }
}

fn source(e: Error) -> CheckpointError {
    match e {
        Error::Checkpoint { source, .. } => source,
        other => panic!("not a checkpoint error: {other}"),
    }
}

fn with_metadata(bytes: &[u8], key: &str, value: &str) -> Vec<u8> {
    let (mut header, start) = st_header(bytes).unwrap();
    header["__metadata__"][key] = value.into();
    st_with_header(&header, &bytes[start..])
}

#[test]
fn checkpoint_of_another_architecture_does_not_fit_the_model() {
    let t = Tiny::new();
    let e = t
        .run(&checkpointing(&t.ck_dir, true), tiny_model(Some(5)))
        .unwrap_err();
    assert!(matches!(source(e), CheckpointError::OtherModel(_)));
}

#[test]
fn checkpoint_on_other_data_is_refused() {
    let mut t = Tiny::new();
    t.x[7] += 0.5;
    let e = t
        .run(&checkpointing(&t.ck_dir, true), tiny_model(None))
        .unwrap_err();
    assert!(matches!(source(e), CheckpointError::OtherData { .. }));
}

#[test]
fn checkpoint_of_other_settings_names_the_first_difference() {
    let t = Tiny::new();
    let ck = Checkpointing {
        settings: r#"{"run":"other"}"#.into(),
        ..checkpointing(&t.ck_dir, true)
    };
    let e = t.run(&ck, tiny_model(None)).unwrap_err();
    match source(e) {
        CheckpointError::OtherSettings { setting, .. } => assert_eq!(setting, "run"),
        other => panic!("{other}"),
    }
    assert!(matches!(
        source(ck.prepare(&["f32"]).unwrap_err()),
        CheckpointError::OtherSettings { .. }
    ));
}

#[test]
fn a_new_run_refuses_a_directory_with_checkpoints_and_resume_one_without() {
    let t = Tiny::new();
    let e = checkpointing(&t.ck_dir, false)
        .prepare(&["f32", "qat"])
        .unwrap_err();
    assert!(matches!(source(e), CheckpointError::AlreadyExists { .. }));
    let empty = TempDir::new().unwrap();
    let e = checkpointing(empty.path(), true)
        .prepare(&["f32", "qat"])
        .unwrap_err();
    assert!(matches!(source(e), CheckpointError::NotFound { .. }));
    assert!(checkpointing(&t.ck_dir, true)
        .prepare(&["f32", "qat"])
        .is_ok());
}

#[test]
fn header_problems_are_told_apart() {
    let t = Tiny::new();
    let good = t.bytes();
    assert!(t.read(&good).is_ok());
    type IsExpected = fn(&CheckpointError) -> bool;
    let cases: [(Vec<u8>, IsExpected); 5] = [
        (with_metadata(&good, "lowbit_version", "0.0.1"), |e| {
            matches!(e, CheckpointError::OtherVersion { .. })
        }),
        (with_metadata(&good, "format_version", "2"), |e| {
            matches!(e, CheckpointError::UnsupportedFormat { .. })
        }),
        (with_metadata(&good, "format", "lowbit.f32"), |e| {
            matches!(e, CheckpointError::NotACheckpoint { .. })
        }),
        (with_metadata(&good, "data", "something else"), |e| {
            matches!(e, CheckpointError::ChecksumMismatch { .. })
        }),
        ([good.as_slice(), &[0]].concat(), |e| {
            matches!(e, CheckpointError::Malformed(_))
        }),
    ];
    for (i, (bytes, is_expected)) in cases.into_iter().enumerate() {
        let e = source(
            t.read(&bytes)
                .err()
                .unwrap_or_else(|| panic!("case {i} loaded")),
        );
        assert!(is_expected(&e), "case {i}: {e}");
    }
}

#[test]
fn every_truncation_of_a_checkpoint_is_reported_as_truncated() {
    let t = Tiny::new();
    let good = t.bytes();
    for keep in 0..good.len() {
        match t.read(&good[..keep]) {
            Err(e) => match source(e) {
                CheckpointError::Container(FormatError::Truncated { .. }) => {}
                other => panic!("cut at {keep} of {}: {other}", good.len()),
            },
            Ok(_) => panic!("cut at {keep} of {} loaded", good.len()),
        }
    }
}

#[test]
fn random_byte_flips_never_load_silently_different_state() {
    let t = Tiny::new();
    let good = t.bytes();
    let restored = |bytes: &[u8]| -> lowbit::Result<Vec<(String, Vec<u64>)>> {
        let mut ck = t.read(bytes)?;
        let mut m = tiny_model(None);
        ck.restore("model", &mut m)?;
        Ok(dump(&mut m))
    };
    let reference = restored(&good).unwrap();
    let seed = 23;
    let mut rng = Rng::new(seed);
    let mut refused = 0;
    for _ in 0..400 {
        let mut bytes = good.clone();
        let i = rng.below(bytes.len());
        bytes[i] ^= 1 << rng.below(8);
        match restored(&bytes) {
            Ok(state) => assert_eq!(
                state, reference,
                "seed {seed}: flip at {i} loaded other state"
            ),
            Err(Error::Checkpoint { .. }) => refused += 1,
            Err(e) => panic!("seed {seed}: flip at {i}: not a checkpoint error: {e}"),
        }
    }
    // Only flips inside the header's padding spaces or its JSON whitespace can leave the state intact.
    assert!(
        refused > 350,
        "seed {seed}: only {refused} of 400 flips refused"
    );
}
