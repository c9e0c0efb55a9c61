//! `--data` beyond IDX from the command line: a colour image folder trained end to end (normalised, quantized,
//! evaluated and predicted from the files), and one-line errors naming the file for broken NumPy, CIFAR and
//! image-folder data. Every data file is made here.
use image::{Rgb, RgbImage};
use std::path::Path;
use tempfile::TempDir;

mod common;
use common::{run_err, run_ok};

const CLASSES: [&str; 3] = ["blue", "green", "red"];

/// A 17x13 image whose dominant channel is `dominant` (0 red, 1 green, 2 blue), with seeded noise.
fn picture(dominant: usize, seed: u32) -> RgbImage {
    RgbImage::from_fn(17, 13, |x, y| {
        let mut px = [0u8; 3];
        for (c, v) in px.iter_mut().enumerate() {
            let noise =
                (x * 31 + y * 17 + seed * 101 + c as u32 * 7).wrapping_mul(2_654_435_761) >> 26;
            *v = if c == dominant { 150 } else { 50 } + noise as u8;
        }
        Rgb(px)
    })
}

/// `DIR/{train,test}/{blue,green,red}/*.{png,jpg}`.
fn colour_folder(dir: &Path) {
    for (split, n) in [("train", 24), ("test", 6)] {
        for class in CLASSES {
            let d = dir.join(split).join(class);
            std::fs::create_dir_all(&d).unwrap();
            let dominant = match class {
                "red" => 0,
                "green" => 1,
                _ => 2,
            };
            for i in 0..n {
                let ext = if i % 2 == 0 { "png" } else { "jpg" };
                picture(dominant, i)
                    .save(d.join(format!("{i}.{ext}")))
                    .unwrap();
            }
        }
    }
}

#[test]
fn a_small_cnn_trains_on_a_colour_image_folder_and_its_model_files_apply_the_normalisation() {
    let t = TempDir::new().unwrap();
    colour_folder(&t.path().join("pics"));
    let out = run_ok(
        t.path(),
        &[
            "train",
            "--data",
            "pics",
            "--image-size",
            "12x16",
            "--model",
            "cnn:c8-p-c16-p-3",
            "--mean",
            "0.5,0.4,0.3",
            "--std",
            "0.25,0.2,0.3",
            "--epochs",
            "4",
            "--lr",
            "0.01",
            "--weight-bits",
            "8",
            "--method",
            "ptq",
            "--no-baseline",
            "--out",
            "m.lbq",
            "--report",
            "r.json",
        ],
    );
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(t.path().join("r.json")).unwrap()).unwrap();
    let acc = report["test_accuracy"].as_f64().unwrap();
    // The classes differ by their dominant colour: measured 100%; 80% leaves room for other kernel tiers.
    assert!(acc >= 0.8, "accuracy {acc}: {out}");
    assert_eq!(report["engine_simulation_mismatches"], 0);
    assert_eq!(report["class_names"], serde_json::json!(CLASSES));
    // eval re-reads the folder with the model's normalisation and gets the same engine accuracy.
    let eval = run_ok(
        t.path(),
        &[
            "eval",
            "m.lbq",
            "--data",
            "pics",
            "--image-size",
            "12x16",
            "--report",
            "e.json",
        ],
    );
    let e: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(t.path().join("e.json")).unwrap()).unwrap();
    assert_eq!(e["test_accuracy"].as_f64(), Some(acc), "{eval}");
    let inspect = run_ok(t.path(), &["inspect", "m.lbq"]);
    assert!(
        inspect.contains("mean [0.5, 0.4, 0.3], std [0.25, 0.2, 0.3]"),
        "{inspect}"
    );
    // predict names the class from the model's own class names, resizing the 17x13 file as training did.
    let p = run_ok(t.path(), &["predict", "m.lbq", "pics/test/red/0.png"]);
    assert!(p.contains(": red (class 2)"), "{p}");
    // The float model file carries the normalisation too.
    run_ok(
        t.path(),
        &[
            "train",
            "--data",
            "pics",
            "--image-size",
            "12x16",
            "--model",
            "cnn:c8-p-c16-p-3",
            "--mean",
            "0.5",
            "--std",
            "0.25",
            "--epochs",
            "1",
            "--out",
            "f.f32",
        ],
    );
    let p = run_ok(t.path(), &["predict", "f.f32", "pics/test/green/1.jpg"]);
    assert!(p.contains("pics/test/green/1.jpg: "), "{p}");
    run_err(
        t.path(),
        &[
            "train",
            "--data",
            "pics",
            "--image-size",
            "12x16",
            "--init",
            "f.f32",
            "--mean",
            "0.1",
            "--std",
            "0.2",
        ],
        &["--mean/--std", "--init"],
    );
}

#[test]
fn broken_data_files_give_one_line_naming_the_file() {
    let t = TempDir::new().unwrap();
    // NumPy: a label file with the wrong magic.
    let npy = t.path().join("npy");
    std::fs::create_dir_all(&npy).unwrap();
    let x = lowbit::data::npy::npy_bytes("|u1", &[2, 4, 4], &[0; 32]);
    for s in ["train", "test"] {
        std::fs::write(npy.join(format!("x_{s}.npy")), &x).unwrap();
        std::fs::write(npy.join(format!("y_{s}.npy")), b"not numpy").unwrap();
    }
    run_err(
        t.path(),
        &["train", "--data", "npy"],
        &["y_train.npy", "not a NumPy .npy file"],
    );
    // CIFAR-10: a label of 10.
    let cifar = t.path().join("cifar");
    std::fs::create_dir_all(&cifar).unwrap();
    let mut record = vec![10u8];
    record.extend(std::iter::repeat_n(0u8, 3072));
    std::fs::write(cifar.join("data_batch_1.bin"), &record).unwrap();
    std::fs::write(cifar.join("test_batch.bin"), &record).unwrap();
    run_err(
        t.path(),
        &["train", "--data", "cifar"],
        &["data_batch_1.bin", "label 10"],
    );
    // Image folder: class folders that differ.
    for (s, c) in [("train", "a"), ("test", "b")] {
        let d = t.path().join("pics").join(s).join(c);
        std::fs::create_dir_all(&d).unwrap();
        picture(0, 0).save(d.join("x.png")).unwrap();
    }
    run_err(
        t.path(),
        &["train", "--data", "pics"],
        &["pics/test", "class folders differ"],
    );
    // Options that do not fit the source.
    run_err(
        t.path(),
        &["train", "--image-size", "8x8"],
        &["--image-size", "image folders"],
    );
    run_err(
        t.path(),
        &["train", "--image-size", "0x8"],
        &["--image-size"],
    );
    run_err(t.path(), &["train", "--mean", "0.5"], &["--mean/--std"]);
    run_err(
        t.path(),
        &["train", "--mean", "0.5,0.5", "--std", "1,1"],
        &["--mean/--std", "1 channels"],
    );
}

#[test]
fn a_config_files_input_section_sets_the_normalisation_and_typed_flags_win() {
    let t = TempDir::new().unwrap();
    std::fs::write(
        t.path().join("run.toml"),
        "model = \"mlp:784-16-10\"\n[training]\nepochs = 1\n[input]\ninput_scale = 255.0\nmean = [127.5]\nstd = [127.5]\n",
    )
    .unwrap();
    run_ok(
        t.path(),
        &["train", "--config", "run.toml", "--out", "file.f32"],
    );
    let i = run_ok(t.path(), &["inspect", "file.f32"]);
    assert!(i.contains("mean [0.5], std [0.5]"), "{i}");
    run_ok(
        t.path(),
        &[
            "train", "--config", "run.toml", "--std", "255", "--out", "flag.f32",
        ],
    );
    let i = run_ok(t.path(), &["inspect", "flag.f32"]);
    assert!(i.contains("mean [0.5], std [1.0]"), "{i}");
}
