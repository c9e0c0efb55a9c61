"""Builds the Keras ONNX import fixtures keras_cnn and keras_color of crates/lowbit/tests/fixtures/onnx/ with
tf2onnx.

Usage:
    python3 bench/peers/make_keras_fixture.py [--venv TF_VENV] [--out DIR]

The venv (the argument, else $TF_VENV, else the running interpreter) needs tensorflow-cpu, tf2onnx, onnxruntime
and numpy as requirements-tf.txt pins them (TensorFlow's own venv: tf2onnx pins protobuf and numpy versions the
torch venv does not share); the script re-runs itself under that venv's python. For each fixture NAME it writes,
like make_onnx_fixtures.py:
    NAME.onnx        the Keras model converted by tf2onnx.convert.from_keras (opset 13)
    NAME.input.f32   an input batch of 4 (NHWC, values in [0, 1]), little-endian f32
    NAME.output.f32  ONNX Runtime's logits for that batch, [4, 10]
    NAME.json        shapes, opset, ops, layout "nhwc", the converter's versions
The models are ordinary channels-last Keras CNNs:
    keras_cnn    28x28x1: Conv2D, BatchNormalization, ReLU, MaxPooling2D, Conv2D, ReLU, Flatten, Dense
    keras_color  16x16x3: Conv2D (no bias), BatchNormalization, ReLU, DepthwiseConv2D (stride 2), ReLU(6),
                 Conv2D 1x1, ReLU, GlobalAveragePooling2D, Dense
What tf2onnx makes of them is the point. keras_cnn: the NHWC input becomes NCHW by a Reshape (a transpose that
moves only the size-1 channel axis), the batch norm is a Mul and an Add after the first convolution, and Flatten
transposes back to NHWC before its Reshape, so the Dense weight rows are in NHWC order. keras_color: a Transpose
of the input, the batch norm folded into the bias-free convolution, ReLU(6) as Clip, the pooling as
GlobalAveragePool and Squeeze. Weights, biases and batch-norm statistics are random (seeded), so every parameter
shows in the logits.
"""
import argparse
import json
import os
import re
import sys

OPSET = 13


def reexec_under_venv():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--venv", default=os.environ.get("TF_VENV"))
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                  "..", "..", "crates", "lowbit", "tests", "fixtures", "onnx"))
    args = ap.parse_args()
    python = sys.executable
    if args.venv:
        venv_python = os.path.join(os.path.abspath(args.venv), "bin", "python")
        if os.path.realpath(sys.prefix) != os.path.realpath(args.venv) and os.path.exists(venv_python):
            python = venv_python
    if python != sys.executable:
        os.execv(python, [python, os.path.abspath(__file__), "--venv", args.venv, "--out", args.out])
    return args


ARGS = reexec_under_venv()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402
import tensorflow as tf  # noqa: E402
import tf2onnx  # noqa: E402
from tensorflow import keras  # noqa: E402


def keras_cnn():
    inp = keras.Input((28, 28, 1), name="input")
    x = keras.layers.Conv2D(6, 3, padding="same")(inp)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.MaxPooling2D(2)(x)
    x = keras.layers.Conv2D(8, 3, strides=2)(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.Flatten()(x)
    return keras.Model(inp, keras.layers.Dense(10)(x))


def keras_color():
    inp = keras.Input((16, 16, 3), name="input")
    x = keras.layers.Conv2D(8, 3, padding="same", use_bias=False)(inp)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.DepthwiseConv2D(3, strides=2, padding="same")(x)
    x = keras.layers.ReLU(6.0)(x)
    x = keras.layers.Conv2D(12, 1)(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inp, keras.layers.Dense(10)(x))


def build(make):
    keras.backend.clear_session()
    keras.utils.set_random_seed(12)
    model = make()
    # Keras initialises biases and batch-norm statistics to 0 and 1, which tf2onnx would drop: randomise them.
    rng = np.random.default_rng(12)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            c = layer.gamma.shape[0]
            layer.set_weights([rng.uniform(0.5, 1.5, c), rng.normal(0, 0.2, c), rng.normal(0, 0.2, c),
                               rng.uniform(0.5, 1.5, c)])
        elif isinstance(layer, (keras.layers.Conv2D, keras.layers.DepthwiseConv2D, keras.layers.Dense)):
            w = layer.get_weights()
            if len(w) == 2:
                layer.set_weights([w[0], rng.normal(0, 0.1, w[1].shape).astype(np.float32)])
    return model


def stable_names(graph):
    """Renames what tf2onnx names NAME__N (nodes, their outputs, its constants), whose counters and merging of equal
    constants vary from run to run, by position (nodes) and first reader (constants), so the same model gives the
    same bytes."""
    counted = re.compile(r"__\d+(:\d+)?$")
    renamed = {}
    for idx, n in enumerate(graph.node):
        if counted.search(n.name):
            n.name = f"{counted.sub('', n.name)}__n{idx}"
        for k, o in enumerate(n.output):
            if counted.search(o):
                renamed[o] = f"{n.name}:{k}"
    inits = {t.name for t in graph.initializer}
    for n in graph.node:
        for k, i in enumerate(n.input):
            if i in inits and counted.search(i) and i not in renamed:
                renamed[i] = f"{n.name}/input{k}"
    for t in graph.initializer:
        t.name = renamed.get(t.name, t.name)
    for n in graph.node:
        n.input[:] = [renamed.get(i, i) for i in n.input]
        n.output[:] = [renamed.get(o, o) for o in n.output]
    graph.initializer.sort(key=lambda t: t.name)


def main():
    os.makedirs(ARGS.out, exist_ok=True)
    for name, make in [("keras_cnn", keras_cnn), ("keras_color", keras_color)]:
        fixture(name, build(make))


def fixture(name, model):
    shape = tuple(model.inputs[0].shape[1:])
    spec = (tf.TensorSpec((None, *shape), tf.float32, name="input"),)
    proto, _ = tf2onnx.convert.from_keras(model, input_signature=spec, opset=OPSET)
    # One output named "output", as the other fixtures (and the bench scripts) have it.
    old = proto.graph.output[0].name
    for n in proto.graph.node:
        n.output[:] = ["output" if o == old else o for o in n.output]
    proto.graph.output[0].name = "output"
    stable_names(proto.graph)
    onnx.checker.check_model(proto)
    path = os.path.join(ARGS.out, name + ".onnx")
    onnx.save(proto, path)
    x = np.random.default_rng(sum(map(ord, name))).random((4, *shape), dtype=np.float32)
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    y = sess.run(None, {"input": x})[0]
    keras_y = model(x, training=False).numpy()
    assert np.abs(keras_y - y).max() <= 1e-4 * np.abs(y).max(), "tf2onnx's model differs from Keras"
    x.astype("<f4").tofile(os.path.join(ARGS.out, name + ".input.f32"))
    y.astype("<f4").tofile(os.path.join(ARGS.out, name + ".output.f32"))
    ops = sorted({n.op_type for n in proto.graph.node})
    meta = {"input_shape": list(x.shape), "output_shape": list(y.shape), "opset": OPSET, "output": "logits",
            "batchnorm_folded": "BatchNormalization" not in ops, "ops": ops, "layout": "nhwc",
            "producer": f"tf2onnx {tf2onnx.__version__}, tensorflow {tf.__version__}, keras {keras.__version__}"}
    with open(os.path.join(ARGS.out, name + ".json"), "w") as f:
        json.dump(meta, f, indent=1)
        f.write("\n")
    print(f"{name}: opset {OPSET}, {os.path.getsize(path)} bytes, ops {' '.join(ops)}")


if __name__ == "__main__":
    main()
