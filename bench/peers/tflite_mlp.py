"""TensorFlow Lite peer for the integer engine: the 784-64-10 MLP, full-integer int8, run by the LiteRT interpreter.

Builds the MLP in Keras (briefly trained on Fashion-MNIST so activation ranges are realistic; weights need not match
lowbit's), converts it with TFLiteConverter to full-integer int8 (per-channel int8 weights, int8 activations,
calibration on the first 1000 training images), and times it on `--threads` threads at batch 1 and 256, in two
variants: float32 input/output (QUANTIZE and DEQUANTIZE inside the model, like the ONNX Runtime QDQ peer) and uint8
input (the raw pixel, like lowbit's engine). The interpreter applies its default XNNPACK delegate; "xnnpack" in the
output says whether the delegate announced itself on stderr. Prints one JSON line per (model, batch):
{"peer": "tflite", "model", "batch", "samples_per_s", "latency_us", "invoke_samples_per_s", "invoke_latency_us",
"test_accuracy", "xnnpack"}. Timing is the best of several repeats (the machine is shared); latency is per call
through the Python API (set input, invoke, get output), and invoke_* times `invoke` alone on input already set.
Runs from a venv of its own: see requirements-tflite.txt.
"""
import argparse
import contextlib
import io
import json
import os
import tempfile

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import tensorflow as tf  # noqa: E402
from ai_edge_litert.interpreter import Interpreter  # noqa: E402

from common import DEFAULT_DIR, best_time, load  # noqa: E402


def interpreter_with_log(content, threads):
    """Creates the interpreter with native stderr captured, to see whether XNNPACK was applied."""
    with tempfile.TemporaryFile() as log:
        saved = os.dup(2)
        os.dup2(log.fileno(), 2)
        try:
            it = Interpreter(model_content=content, num_threads=threads)
            it.allocate_tensors()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        log.seek(0)
        text = log.read().decode(errors="replace")
    return it, "XNNPACK" in text


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=DEFAULT_DIR)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batches", default="1,256")
    ap.add_argument("--train-steps", type=int, default=400)
    ap.add_argument("--seconds", type=float, default=0.3, help="per timed repeat")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    tf.random.set_seed(0)
    xtr, ytr, xte, yte = load(args.data)
    xtr_u8 = xtr.reshape(len(xtr), -1)
    xte_u8 = xte.reshape(len(xte), -1)
    xtr = xtr_u8.astype(np.float32) / 255.0
    xte = xte_u8.astype(np.float32) / 255.0
    model = tf.keras.Sequential([tf.keras.Input((784,)), tf.keras.layers.Dense(64, activation="relu"),
                                 tf.keras.layers.Dense(10)])
    model.compile(optimizer=tf.keras.optimizers.Adam(1e-3),
                  loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    n = min(len(xtr), 64 * args.train_steps)
    model.fit(xtr[:n], ytr[:n].astype(np.int64), batch_size=64, epochs=1, verbose=0)

    def representative():
        for i in range(0, 1000, 100):
            yield [xtr[i:i + 100]]

    variants = {}
    for name, in_type in (("int8 float-io", None), ("int8 uint8-in", tf.uint8)):
        conv = tf.lite.TFLiteConverter.from_keras_model(model)
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        conv.representative_dataset = representative
        conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        if in_type is not None:
            conv.inference_input_type = in_type
        with contextlib.redirect_stdout(io.StringIO()):  # the converter prints its SavedModel's signature
            variants[name] = conv.convert()
    for name, content in variants.items():
        it, xnnpack = interpreter_with_log(content, args.threads)
        inp = it.get_input_details()[0]
        out = it.get_output_details()[0]
        if inp["dtype"] == np.uint8:
            scale, zp = inp["quantization"]
            # The converter derives the uint8 input's parameters from the calibration range [0, 1]: code = pixel.
            if abs(scale * 255.0 - 1.0) > 1e-3 or zp != 0:
                raise SystemExit(f"unexpected uint8 input quantization {scale}, {zp}")
            xs = xte_u8
        else:
            xs = xte

        def run(x):
            if tuple(it.get_input_details()[0]["shape"]) != x.shape:
                it.resize_tensor_input(inp["index"], list(x.shape))
                it.allocate_tensors()
            it.set_tensor(inp["index"], x)
            it.invoke()
            return it.get_tensor(out["index"])

        logits = np.concatenate([run(np.ascontiguousarray(xs[i:i + 1000])) for i in range(0, len(xs), 1000)])
        acc = float((logits.argmax(1) == yte).mean())
        for b in [int(v) for v in args.batches.split(",")]:
            x = np.ascontiguousarray(xs[:b])
            run(x)
            t = best_time(lambda: run(x), args.seconds, args.repeats)
            # The native part alone: the input already in place, only `invoke`.
            t_invoke = best_time(it.invoke, args.seconds, args.repeats)
            print(json.dumps({"peer": "tflite", "version": tf.__version__, "model": name,
                              "threads": args.threads, "batch": b, "samples_per_s": round(b / t, 1),
                              "latency_us": round(t * 1e6, 2), "invoke_samples_per_s": round(b / t_invoke, 1),
                              "invoke_latency_us": round(t_invoke * 1e6, 2), "test_accuracy": round(acc, 4),
                              "xnnpack": xnnpack}), flush=True)


if __name__ == "__main__":
    main()
