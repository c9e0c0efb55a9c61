"""PyTorch x86 int8 and ONNX Runtime int8 peers for the integer engine on LeNet-5.

The network is brevitas_lenet.make_model(0, ...) (conv 6@5x5 pad 2, ReLU, maxpool 2, conv 16@5x5, ReLU, maxpool 2,
flatten, fc 120, ReLU, fc 84, ReLU, fc 10), trained in f32 for `--epochs` on an MNIST-format directory (Adam 1e-3,
eps 1e-7, batch 64) so the printed accuracies mean something; the weights need not match lowbit's. Then:
  * PyTorch post-training static int8 quantization, FX graph mode (prepare_fx / convert_fx,
    get_default_qconfig_mapping("x86"), torch.backends.quantized.engine = "x86"), min-max/histogram calibration on
    the first `--calib` training images;
  * unless --skip-ort: ONNX export, onnxruntime.quantization.quantize_static (QDQ, per-channel int8 weights, uint8
    activations, same calibration images), run on `--threads` intra-op threads.
Each model is timed at each batch size under torch.inference_mode() (PyTorch) or sess.run (ORT): a short warm-up,
then calls back to back for `--seconds`; latency is the mean per call through the Python API. Prints one JSON line
per (peer, model, batch): {"peer", "version", "model": "f32"|"int8", "threads", "batch", "samples_per_s",
"latency_us", "test_accuracy"}.
"""
import argparse
import copy
import json
import logging
import os
import tempfile
import time
import warnings

import numpy as np
import torch
from torch import nn

from brevitas_lenet import make_model
from common import DEFAULT_DIR, load


def timed(fn, seconds):
    """Mean seconds per call of `fn` over about `seconds`, after a warm-up of ~10% of that (at least 3 calls)."""
    t0 = time.perf_counter()
    warm = 0
    while warm < 3 or time.perf_counter() - t0 < 0.1 * seconds:
        fn()
        warm += 1
    iters = 0
    t0 = time.perf_counter()
    while True:
        fn()
        iters += 1
        el = time.perf_counter() - t0
        if el >= seconds and iters >= 3:
            return el / iters


def emit(peer, version, model, threads, batch, per_call, acc, **extra):
    print(json.dumps({"peer": peer, "version": version, "model": model, "threads": threads, "batch": batch,
                      "samples_per_s": round(batch / per_call, 1), "latency_us": round(per_call * 1e6, 2),
                      "test_accuracy": round(acc, 4), **extra}), flush=True)


def accuracy(predict, x, y, chunk=1000):
    hits = sum(int((predict(x[i:i + chunk]).argmax(1) == y[i:i + chunk]).sum()) for i in range(0, len(x), chunk))
    return hits / len(x)


def train(model, xtr, ytr, epochs, batch_size):
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, eps=1e-7)
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(xtr))
        for i in range(0, len(xtr), batch_size):
            idx = perm[i:i + batch_size]
            opt.zero_grad(set_to_none=True)
            loss_fn(model(xtr[idx]), ytr[idx]).backward()
            opt.step()
    model.eval()


def quantize_torch(model, calib, chunk=100):
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    torch.backends.quantized.engine = "x86"
    prepared = prepare_fx(copy.deepcopy(model).eval(), get_default_qconfig_mapping("x86"),
                          example_inputs=(calib[:1],))
    with torch.inference_mode():
        for i in range(0, len(calib), chunk):
            prepared(calib[i:i + chunk])
    return convert_fx(prepared)


def run_torch(models, xte, yte, args):
    for name, model in models:
        with torch.inference_mode():
            acc = accuracy(model, xte, yte)
            for b in args.batch_list:
                x = xte[:b].contiguous()
                t = timed(lambda: model(x), args.seconds)
                emit("pytorch", torch.__version__, name, args.threads, b, t, acc,
                     engine=torch.backends.quantized.engine if name == "int8" else "aten")


def run_ort(model, xtr, xte, yte, args):
    import onnxruntime as ort
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Calib(CalibrationDataReader):
        def __init__(self, x, name, batch=100):
            self.batches = iter([{name: x[i:i + batch]} for i in range(0, len(x), batch)])

        def get_next(self):
            return next(self.batches, None)

    xte_np = xte.numpy()
    yte_np = yte.numpy()
    with tempfile.TemporaryDirectory() as d:
        f32_path = os.path.join(d, "lenet_f32.onnx")
        int8_path = os.path.join(d, "lenet_int8.onnx")
        torch.onnx.export(model, torch.zeros(1, 1, 28, 28), f32_path, input_names=["x"], output_names=["logits"],
                          dynamic_axes={"x": {0: "batch"}, "logits": {0: "batch"}}, opset_version=17, dynamo=False)
        quantize_static(f32_path, int8_path, Calib(xtr[:args.calib].numpy(), "x"), quant_format=QuantFormat.QDQ,
                        per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
        so = ort.SessionOptions()
        so.intra_op_num_threads = args.threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        for name, path in (("f32", f32_path), ("int8", int8_path)):
            sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
            acc = accuracy(lambda x: sess.run(None, {"x": x})[0], xte_np, yte_np)
            for b in args.batch_list:
                x = np.ascontiguousarray(xte_np[:b])
                t = timed(lambda: sess.run(None, {"x": x}), args.seconds)
                emit("onnxruntime", ort.__version__, name, args.threads, b, t, acc)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=DEFAULT_DIR)
    ap.add_argument("--epochs", type=int, default=1, help="f32 training epochs before quantizing (0 = random init)")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--limit", type=int, default=0, help="use only the first N training images (smoke test)")
    ap.add_argument("--calib", type=int, default=1000, help="calibration images (first N of the training set)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batches", default="1,256")
    ap.add_argument("--seconds", type=float, default=2.0, help="timed seconds per (model, batch)")
    ap.add_argument("--skip-ort", action="store_true", help="PyTorch only")
    args = ap.parse_args()
    args.batch_list = [int(v) for v in args.batches.split(",")]
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    # torch.ao.quantization and the TorchScript ONNX exporter warn about their deprecation on every call.
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module=r"torch\.ao")
    logging.getLogger().setLevel(logging.ERROR)  # onnxruntime.quantization's "consider pre-processing" advice
    xtr, ytr, xte, yte = load(args.data)
    if args.limit:
        xtr, ytr = xtr[:args.limit], ytr[:args.limit]
    xtr = torch.from_numpy(xtr.astype(np.float32)[:, None] / 255.0)
    xte = torch.from_numpy(xte.astype(np.float32)[:, None] / 255.0)
    ytr = torch.from_numpy(ytr.astype(np.int64))
    yte = torch.from_numpy(yte.astype(np.int64))
    model = make_model(0, 8)
    train(model, xtr, ytr, args.epochs, args.batch_size)
    qmodel = quantize_torch(model, xtr[:args.calib])
    run_torch([("f32", model), ("int8", qmodel)], xte, yte, args)
    if not args.skip_ort:
        run_ort(model, xtr, xte, yte, args)


if __name__ == "__main__":
    main()
