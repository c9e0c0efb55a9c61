//! Configuration files (TOML / JSON): the documented example, round trips, and errors naming file and key.
use lowbit::config_file::{load, FileConfig};
use lowbit::optim::{OptimizerKind, Schedule};
use lowbit::quant::{ActMethod, LayerSelector, Method, WeightMethod};
use lowbit::Error;
use std::path::{Path, PathBuf};

fn example() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/examples/lenet5-mixed.toml")
}

#[test]
fn the_documented_example_loads_with_every_setting() {
    let f = load(example()).unwrap();
    assert_eq!(f.model.as_deref(), Some("lenet5"));
    assert_eq!(f.data.as_deref(), Some("builtin"));
    let t = f.train_config().unwrap();
    assert_eq!((t.epochs, t.batch_size, t.lr, t.seed), (10, 64, 2e-3, 0));
    assert_eq!(t.optimizer, OptimizerKind::adam());
    assert_eq!(t.schedule, Schedule::Cosine { min_lr: 1e-5 });
    assert_eq!((t.warmup_steps, t.clip_grad_norm), (100, Some(5.0)));
    let q = f.quant_config().unwrap().unwrap();
    assert_eq!((q.weight_bits, q.act_bits, q.method), (4, 4, Method::Qat));
    assert_eq!(q.weight_quantizer, WeightMethod::Lsq);
    assert_eq!(q.act_quantizer, ActMethod::Lsq);
    let sel: Vec<_> = q.layers.iter().map(|l| l.layer.clone()).collect();
    assert_eq!(
        sel,
        vec![
            LayerSelector::Name("first".into()),
            LayerSelector::Index(-2),
            LayerSelector::Name("last".into())
        ]
    );
    assert_eq!(q.layers[0].weight_bits, Some(8));
    assert_eq!(q.layers[1].weight_bits, None);
}

#[test]
fn toml_and_json_round_trips_are_identical() {
    let f = load(example()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let t = dir.path().join("c.toml");
    std::fs::write(&t, toml::to_string(&f).unwrap()).unwrap();
    assert_eq!(load(&t).unwrap(), f);
    let j = dir.path().join("c.JSON");
    std::fs::write(&j, serde_json::to_string_pretty(&f).unwrap()).unwrap();
    assert_eq!(load(&j).unwrap(), f);
    // An empty file is a valid, all-defaults f32 run.
    let e = dir.path().join("empty.toml");
    std::fs::write(&e, "").unwrap();
    let f = load(&e).unwrap();
    assert_eq!(f, FileConfig::default());
    assert_eq!(f.quant_config().unwrap(), None);
}

/// Loads `text` as `name` and returns the `Error::Data` reason, checking the error names the file.
fn data_error(name: &str, text: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join(name);
    std::fs::write(&p, text).unwrap();
    match load(&p) {
        Err(Error::Data { path, reason }) => {
            assert_eq!(path, p);
            reason
        }
        other => panic!("{name}: expected Error::Data, got {other:?}"),
    }
}

#[test]
fn errors_name_the_file_and_the_key() {
    let cases = [
        ("a.toml", "[training]\nlr = -1.0\n", "training.lr"),
        ("b.toml", "[training]\nepochs = 0\n", "training.epochs"),
        (
            "c.toml",
            "[training]\nclip_grad_norm = 0.0\n",
            "training.clip_grad_norm",
        ),
        (
            "d.toml",
            "[training]\nschedule = { kind = \"step\", every_epochs = 0, gamma = 0.5 }\n",
            "training.schedule.every_epochs",
        ),
        (
            "e.toml",
            "[quantization]\nweight_bits = 9\n",
            "quantization.weight_bits",
        ),
        (
            "f.toml",
            "[quantization]\nweight_quantizer = \"lsq\"\nweight_bits = 1\n",
            "quantization.weight_bits",
        ),
        (
            "g.toml",
            "[quantization]\n[[quantization.layers]]\nlayer = \"middle\"\n",
            "quantization.layers[0].layer",
        ),
        (
            "h.toml",
            "[quantization]\n[[quantization.layers]]\nlayer = 0\nact_bits = 12\n",
            "quantization.layers[0].act_bits",
        ),
        (
            "i.toml",
            "[quantization]\nact_quantizer = \"pact\"\npact_alpha = -2.0\n",
            "quantization.pact_alpha",
        ),
        (
            "i2.toml",
            "[quantization]\nlsq_init = \"mse\"\n",
            "quantization.lsq_init",
        ),
        (
            "j.json",
            "{\"training\": {\"batch_size\": 0}}",
            "training.batch_size",
        ),
    ];
    for (name, text, key) in cases {
        let reason = data_error(name, text);
        assert!(
            reason.contains(key),
            "{name}: {reason:?} does not name {key}"
        );
    }
    // Parse errors come from the parser, which names the unknown key or the bad value.
    assert!(data_error("k.toml", "[training]\nlearning_rate = 1\n").contains("learning_rate"));
    assert!(data_error("l.toml", "[quantization]\nact_quantizer = \"fancy\"\n").contains("fancy"));
    assert!(data_error("m.json", "{\"modle\": \"lenet5\"}").contains("modle"));
    assert!(data_error("n.yaml", "model: lenet5").contains(".toml or .json"));
}

#[test]
fn a_missing_file_is_an_io_error_naming_it() {
    let p = Path::new("/nonexistent/lowbit/config.toml");
    match load(p) {
        Err(Error::Io { path, .. }) => assert_eq!(path, p),
        other => panic!("expected Error::Io, got {other:?}"),
    }
}

#[test]
fn lsq_init_is_read_from_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("c.toml");
    std::fs::write(
        &p,
        "[quantization]\nweight_bits = 4\nweight_quantizer = \"lsq\"\nlsq_init = \"mse\"\n",
    )
    .unwrap();
    let q = load(&p).unwrap().quant_config().unwrap().unwrap();
    assert_eq!(q.lsq_init, lowbit::quant::LsqInit::Mse);
}
