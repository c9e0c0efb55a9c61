"""Builds the Keras ONNX import fixture keras_cnn of crates/lowbit/tests/fixtures/onnx/ with tf2onnx.

Usage:
    python3 bench/peers/make_keras_fixture.py [--venv TF_VENV] [--out DIR]

The venv (the argument, else $TF_VENV, else the running interpreter) needs tensorflow-cpu, tf2onnx, onnxruntime
and numpy as requirements-tf.txt pins them (TensorFlow's own venv: tf2onnx pins protobuf and numpy versions the
torch venv does not share); the script re-runs itself under that venv's python. It writes, like
make_onnx_fixtures.py:
    keras_cnn.onnx        an ordinary channels-last Keras CNN on 28x28x1 (Conv2D, BatchNormalization, ReLU,
                          MaxPooling2D, Conv2D, ReLU, Flatten, Dense), converted by tf2onnx.convert.from_keras
    keras_cnn.input.f32   an input batch [4, 28, 28, 1] (NHWC, values in [0, 1]), little-endian f32
    keras_cnn.output.f32  ONNX Runtime's logits for that batch, [4, 10]
    keras_cnn.json        shapes, opset, ops, layout "nhwc", the converter's versions
What tf2onnx makes of it is the point: the NHWC input becomes NCHW by a Reshape (a transpose that moves only the
size-1 channel axis), the batch norm is folded into the first convolution, and Flatten transposes back to NHWC
before its Reshape, so the Dense weight rows are in NHWC order. Weights, biases and batch-norm statistics are
random (seeded), so every parameter shows in the logits.
"""
import argparse
import json
import os
import re
import sys

NAME = "keras_cnn"
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


def build():
    keras.utils.set_random_seed(12)
    inp = keras.Input((28, 28, 1), name="input")
    x = keras.layers.Conv2D(6, 3, padding="same")(inp)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.MaxPooling2D(2)(x)
    x = keras.layers.Conv2D(8, 3, strides=2)(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.Flatten()(x)
    out = keras.layers.Dense(10)(x)
    model = keras.Model(inp, out)
    # Keras initialises biases and batch-norm statistics to 0 and 1, which tf2onnx would drop: randomise them.
    rng = np.random.default_rng(12)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            c = layer.gamma.shape[0]
            layer.set_weights([rng.uniform(0.5, 1.5, c), rng.normal(0, 0.2, c), rng.normal(0, 0.2, c),
                               rng.uniform(0.5, 1.5, c)])
        elif isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense)):
            w, b = layer.get_weights()
            layer.set_weights([w, rng.normal(0, 0.1, b.shape).astype(np.float32)])
    return model


def stable_constant_names(graph):
    """Renames the constants tf2onnx creates (NAME__N, whose counter and whose merging of equal constants vary from
    run to run) after their first reader, so the same model gives the same bytes."""
    renamed = {}
    for n in graph.node:
        for k, i in enumerate(n.input):
            if re.search(r"__\d+(:0)?$", i) and i not in renamed and any(t.name == i for t in graph.initializer):
                renamed[i] = f"{n.name}/input{k}"
    for t in graph.initializer:
        t.name = renamed.get(t.name, t.name)
    for n in graph.node:
        n.input[:] = [renamed.get(i, i) for i in n.input]
    graph.initializer.sort(key=lambda t: t.name)


def main():
    os.makedirs(ARGS.out, exist_ok=True)
    model = build()
    spec = (tf.TensorSpec((None, 28, 28, 1), tf.float32, name="input"),)
    proto, _ = tf2onnx.convert.from_keras(model, input_signature=spec, opset=OPSET)
    # One output named "output", as the other fixtures (and the bench scripts) have it.
    old = proto.graph.output[0].name
    for n in proto.graph.node:
        n.output[:] = ["output" if o == old else o for o in n.output]
    proto.graph.output[0].name = "output"
    stable_constant_names(proto.graph)
    onnx.checker.check_model(proto)
    path = os.path.join(ARGS.out, NAME + ".onnx")
    onnx.save(proto, path)
    x = np.random.default_rng(sum(map(ord, NAME))).random((4, 28, 28, 1), dtype=np.float32)
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    y = sess.run(None, {"input": x})[0]
    keras_y = model(x, training=False).numpy()
    assert np.abs(keras_y - y).max() <= 1e-4 * np.abs(y).max(), "tf2onnx's model differs from Keras"
    x.astype("<f4").tofile(os.path.join(ARGS.out, NAME + ".input.f32"))
    y.astype("<f4").tofile(os.path.join(ARGS.out, NAME + ".output.f32"))
    ops = sorted({n.op_type for n in proto.graph.node})
    meta = {"input_shape": list(x.shape), "output_shape": list(y.shape), "opset": OPSET, "output": "logits",
            "batchnorm_folded": "BatchNormalization" not in ops, "ops": ops, "layout": "nhwc",
            "producer": f"tf2onnx {tf2onnx.__version__}, tensorflow {tf.__version__}, keras {keras.__version__}"}
    with open(os.path.join(ARGS.out, NAME + ".json"), "w") as f:
        json.dump(meta, f, indent=1)
        f.write("\n")
    print(f"{NAME}: opset {OPSET}, {os.path.getsize(path)} bytes, ops {' '.join(ops)}")


if __name__ == "__main__":
    main()
