//! The `[input]` section of configuration files: image size, NumPy layout and preprocessing, read, validated
//! with errors naming the key, and written back.
use lowbit::config_file::{parse, FileConfig, InputSection};
use lowbit::data::NpyLayout;
use lowbit::error::Error;
use std::path::Path;

const TOML: &str = r#"
data = "pictures"
[input]
image_size = "24x32"
layout = "nhwc"
input_scale = 255.0
mean = [123.5, 116.0, 103.5]
std = [58.0, 57.0, 57.5]
"#;

#[test]
fn input_keys_are_read_and_give_the_data_options_and_normalisation() {
    let c = parse(TOML, Path::new("run.toml")).unwrap();
    assert_eq!(c.input.image_size().unwrap(), Some((24, 32)));
    assert_eq!(c.input.layout().unwrap(), Some(NpyLayout::Nhwc));
    let n = c.input.preprocessing().normalization().unwrap().unwrap();
    // Stored on [0, 1] pixels: mean / 255 and std / 255.
    assert!((n.mean[0] - 123.5 / 255.0).abs() < 1e-7, "{n:?}");
    assert!((n.std[2] - 57.5 / 255.0).abs() < 1e-7, "{n:?}");
}

#[test]
fn input_keys_round_trip_through_toml_and_json_and_are_omitted_when_unset() {
    let c = parse(TOML, Path::new("run.toml")).unwrap();
    let back = parse(&c.to_toml().unwrap(), Path::new("back.toml")).unwrap();
    assert_eq!(back, c);
    let json = serde_json::to_string(&c).unwrap();
    assert_eq!(parse(&json, Path::new("back.json")).unwrap(), c);
    let empty = FileConfig::default();
    assert!(!empty.to_toml().unwrap().contains("[input]"));
    assert_eq!(empty.input, InputSection::default());
}

#[test]
fn bad_input_keys_are_errors_naming_the_file_and_the_key() {
    for (text, key) in [
        ("[input]\nimage_size = \"24by32\"\n", "input.image_size"),
        ("[input]\nimage_size = \"0x8\"\n", "input.image_size"),
        ("[input]\nlayout = \"hwcn\"\n", "input.layout"),
        ("[input]\nmean = [0.5]\n", "input.input_scale"),
        ("[input]\nmean = [0.5]\nstd = [-1.0]\n", "mean"),
        ("[input]\ninput_scale = 0.0\n", "input.input_scale"),
        ("[input]\nresize = \"24x32\"\n", "resize"),
    ] {
        match parse(text, Path::new("bad.toml")) {
            Err(Error::Data { path, reason }) => {
                assert_eq!(path, Path::new("bad.toml"));
                assert!(
                    reason.contains(key),
                    "{text:?}: {reason:?} does not name {key}"
                );
            }
            other => panic!("{text:?}: expected Error::Data, got {other:?}"),
        }
    }
}
