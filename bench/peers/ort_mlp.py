"""ONNX Runtime peer for the integer engine: the 784-64-10 MLP in f32 and statically quantized int8 (QDQ).

Builds the MLP in torch (briefly trained on Fashion-MNIST so activation ranges are realistic; weights need not match
lowbit's), exports ONNX, quantizes it with onnxruntime.quantization.quantize_static (QuantFormat.QDQ, per-channel
int8 weights, uint8 activations, min-max calibration on the first 1000 training images), and times both models
with onnxruntime on `--threads` intra-op threads at batch 1 and 256. Prints one JSON line per (model, batch):
{"peer": "onnxruntime", "model": "f32"|"int8", "batch", "samples_per_s", "latency_us", "test_accuracy"}.
Timing is the best of several repeats (the machine is shared); latency is per call, through the Python API.
"""
import argparse
import json
import os
import tempfile

import numpy as np
import onnxruntime as ort
import torch
from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType,
                                      quantize_static)

from common import DEFAULT_DIR, best_time, load


class Calib(CalibrationDataReader):
    def __init__(self, x, name, batch=100):
        self.batches = iter([{name: x[i:i + batch]} for i in range(0, len(x), batch)])

    def get_next(self):
        return next(self.batches, None)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=DEFAULT_DIR)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batches", default="1,256")
    ap.add_argument("--train-steps", type=int, default=400)
    ap.add_argument("--seconds", type=float, default=0.3, help="per timed repeat")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    xtr, ytr, xte, yte = load(args.data)
    xtr = xtr.reshape(len(xtr), -1).astype(np.float32) / 255.0
    xte = xte.reshape(len(xte), -1).astype(np.float32) / 255.0
    model = torch.nn.Sequential(torch.nn.Linear(784, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    xt, yt = torch.from_numpy(xtr), torch.from_numpy(ytr.astype(np.int64))
    for step in range(args.train_steps):
        idx = torch.randint(0, len(xt), (64,))
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(xt[idx]), yt[idx]).backward()
        opt.step()
    model.eval()
    with tempfile.TemporaryDirectory() as d:
        f32_path = os.path.join(d, "mlp_f32.onnx")
        int8_path = os.path.join(d, "mlp_int8.onnx")
        torch.onnx.export(model, torch.zeros(1, 784), f32_path, input_names=["x"], output_names=["logits"],
                          dynamic_axes={"x": {0: "batch"}, "logits": {0: "batch"}}, opset_version=17,
                          dynamo=False)
        quantize_static(f32_path, int8_path, Calib(xtr[:1000], "x"), quant_format=QuantFormat.QDQ,
                        per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
        so = ort.SessionOptions()
        so.intra_op_num_threads = args.threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        for name, path in (("f32", f32_path), ("int8", int8_path)):
            sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
            logits = sess.run(None, {"x": xte})[0]
            acc = float((logits.argmax(1) == yte).mean())
            for b in [int(v) for v in args.batches.split(",")]:
                x = np.ascontiguousarray(xte[:b])
                t = best_time(lambda: sess.run(None, {"x": x}), args.seconds, args.repeats)
                print(json.dumps({"peer": "onnxruntime", "version": ort.__version__, "model": name,
                                  "threads": args.threads, "batch": b, "samples_per_s": round(b / t, 1),
                                  "latency_us": round(t * 1e6, 2), "test_accuracy": round(acc, 4)}),
                      flush=True)


if __name__ == "__main__":
    main()
