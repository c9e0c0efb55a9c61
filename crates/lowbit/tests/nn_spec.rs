//! Model specs: parsing, shapes, parameter counts and errors.
use lowbit::nn::{Layer, Model};
use lowbit::tensor::Tensor;
use lowbit::Error;

fn option_of(r: lowbit::Result<Model>) -> String {
    match r {
        Err(Error::InvalidOption { option, .. }) => option,
        other => panic!("expected InvalidOption, got {other:?}"),
    }
}

#[test]
fn mlp_784_64_10_has_the_keras_layout_and_parameter_count() {
    let mut m = Model::from_spec("mlp:784-64-10", 1).unwrap();
    let kinds: Vec<_> = m.layers().map(Layer::kind).collect();
    assert_eq!(kinds, ["dense", "relu", "dense"]);
    assert_eq!(m.param_count(), 784 * 64 + 64 + 64 * 10 + 10);
    assert_eq!((m.input_shape, m.classes), ([1, 28, 28], 10));
    let Layer::Dense(d) = &m.nodes[0].layer else {
        panic!()
    };
    let limit = (6.0f32 / (784.0 + 64.0)).sqrt();
    assert!(d.weight.iter().all(|w| w.abs() <= limit));
    // Glorot-uniform: the sample is spread over the whole range, not a constant.
    assert!(d.weight.iter().any(|w| w.abs() > 0.9 * limit));
    assert!(d.bias.iter().all(|&b| b == 0.0));
    let logits = m.forward(&Tensor::zeros(&[3, 1, 28, 28]), false).unwrap();
    assert_eq!(logits.shape, vec![3, 10]);
}

#[test]
fn any_number_of_hidden_layers_is_accepted() {
    let m = Model::from_spec("mlp:784-10", 1).unwrap();
    assert_eq!(m.nodes.len(), 1);
    let m = Model::from_spec("mlp:784-32-16-8-10", 1).unwrap();
    assert_eq!(m.nodes.len(), 7);
    assert_eq!(m.classes, 10);
}

#[test]
fn same_seed_same_weights_different_seed_different_weights() {
    let mut a = Model::from_spec("mlp:784-64-10", 5).unwrap();
    let mut b = Model::from_spec("mlp:784-64-10", 5).unwrap();
    let mut c = Model::from_spec("mlp:784-64-10", 6).unwrap();
    assert_eq!(a.snapshot(), b.snapshot());
    assert_ne!(a.snapshot(), c.snapshot());
}

#[test]
fn rejects_bad_specs_naming_the_model_option() {
    for bad in [
        "mlp:100-10",
        "mlp:784",
        "mlp:784-0-10",
        "mlp:784-x-10",
        "mlp:",
        "resnet",
        "",
        "lenet6",
        "cnn:c8-p2",
    ] {
        assert_eq!(
            option_of(Model::from_spec(bad, 0)),
            "--model",
            "spec {bad:?}"
        );
    }
}

#[test]
fn lenet5_builds_and_maps_a_batch_to_ten_logits() {
    let mut m = Model::from_spec("lenet5", 0).unwrap();
    let y = m.forward(&Tensor::zeros(&[3, 1, 28, 28]), false).unwrap();
    assert_eq!(y.shape, vec![3, 10]);
}

#[test]
fn forward_rejects_a_wrongly_shaped_batch() {
    let mut m = Model::from_spec("mlp:784-64-10", 1).unwrap();
    assert!(matches!(
        m.forward(&Tensor::zeros(&[2, 1, 27, 28]), false),
        Err(Error::Shape(_))
    ));
}

#[test]
fn predict_returns_the_argmax_class() {
    let mut m = Model::from_spec("mlp:784-10", 1).unwrap();
    let Layer::Dense(d) = &mut m.nodes[0].layer else {
        panic!()
    };
    d.weight.fill(0.0);
    d.bias[7] = 1.0;
    assert_eq!(m.predict(&Tensor::zeros(&[2, 784])).unwrap(), vec![7, 7]);
}
