"""ONNX Runtime quantize_static beside lowbit's PTQ on the same ONNX float model, data and calibration images
(issues 12 and 13). Driven by bench/run_ort_compare.sh; two subcommands:

  train --model mlp|lenet5 --seed S --out DIR [--epochs E]
      PyTorch f32 training on full Fashion-MNIST (pixels x / 255, no augmentation, no normalisation), then
      torch.onnx.export (TorchScript exporter, opset 17, dynamic batch) to DIR/MODEL-seedS.onnx.
        mlp     Flatten; Linear 784-64; ReLU; Linear 64-10 (lowbit's mlp:784-64-10). Adam 1e-3, batch 32.
        lenet5  Conv 6 5x5 pad 2; ReLU; MaxPool 2; Conv 16 5x5; ReLU; MaxPool 2; Linear 400-120; ReLU;
                Linear 120-84; ReLU; Linear 84-10 (lowbit's lenet5). Adam 1e-3, batch 64.
      Adam eps 1e-7 (lowbit's), default epochs 5, torch.manual_seed(seed) before building the model (init and
      shuffles), --threads 2. The ResNet-20 comes from resnet_train.py, which exports the same way.

  ort --onnx F.onnx [--calibration-samples 2000] [--rows ...]
      Rows, one JSON line each, accuracy on the 10,000 test images:
        f32           the float model run by ORT's CPU provider.
        MinMax-u8 ... quantize_static(QuantFormat.QDQ, per_channel=True, weight_type=QInt8, activation_type
                      QUInt8 (u8) or QInt8 (s8), calibrate_method MinMax / Entropy / Percentile with ORT's default
                      options: Entropy 128 bins, Percentile 99.999 over 2048 bins, symmetric=False for
                      activations), then run on ORT's CPU provider with every graph optimisation on (QDQ fused
                      into QLinearConv / QGemm / MatMulInteger: ORT's integer kernels), and also with optimisations
                      off (each DequantizeLinear -> float op -> QuantizeLinear: ORT's float simulation of the same
                      QDQ model) as `accuracy_unfused`.
        Entropy2048-* quantize_static cannot set the entropy calibrator's histogram size, and with its defaults
                      (num_bins = num_quantized_bins = 128) the KL search has a single candidate, the whole range:
                      Entropy gives exactly MinMax's scales. This row runs ORT's own EntropyCalibrater
                      (onnxruntime.quantization.calibrate.create_calibrator, num_bins 2048, num_quantized_bins 128,
                      TensorRT's sizes and lowbit's) on the same images and hands its ranges to quantize_static as
                      TensorQuantOverrides rmin / rmax (MinMax calibration underneath, overridden).
        *-w4          the same with weight_type=QInt4 (ORT's 4-bit offer for static QDQ: per-channel int4 weights,
                      opset raised to 21), activations QUInt8: W4A8 with round-to-nearest weights; an error the
                      quantizer or the session raises is recorded in the row instead of an accuracy.

Calibration images: exactly the ones lowbit's PTQ uses (crates/lowbit/src/pipeline.rs, `sample_batches`): with n =
min(--calibration-samples, 60,000) samples of the training set in file order, sample i (0 <= i < n) is training
image i * 60000 // n (every 30th image for n = 2,000), as f32 x / 255, fed to ORT in batches of 100 in that order.

Example: python ort_quantize.py ort --onnx /tmp/ort/mlp-seed1.onnx --rows all
"""
import argparse
import json
import os
import shutil
import sys
import tempfile
import time

import numpy as np

from common import DEFAULT_DIR, load

ROWS = ["f32", "MinMax-u8", "Entropy-u8", "Percentile-u8", "MinMax-s8", "Entropy-s8", "Percentile-s8",
        "MinMax-w4", "Entropy-w4", "Percentile-w4", "Entropy2048-u8", "Entropy2048-w4"]


def calibration_indices(n_train, n):
    """lowbit's pipeline::sample_batches pick: sample i of n is image i * N / n (integer division)."""
    n = min(n, n_train)
    return [i * n_train // n for i in range(n)]


def pixels(x):
    """uint8 [N, 28, 28] -> f32 [N, 1, 28, 28] in [0, 1], as lowbit's f32::from(p) / 255.0 (one rounding)."""
    return (x.astype(np.float32) / np.float32(255.0))[:, None]


def train_cmd(args):
    import torch
    from torch import nn

    torch.set_num_threads(args.threads)
    xtr, ytr, xte, yte = load(args.data)
    xtr_t, ytr_t = torch.from_numpy(pixels(xtr)), torch.from_numpy(ytr.astype(np.int64))
    xte_t, yte_t = torch.from_numpy(pixels(xte)), torch.from_numpy(yte.astype(np.int64))
    torch.manual_seed(args.seed)
    if args.model == "mlp":
        model = nn.Sequential(nn.Flatten(), nn.Linear(784, 64), nn.ReLU(), nn.Linear(64, 10))
        batch = args.batch_size or 32
    elif args.model == "lenet5":
        model = nn.Sequential(nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(6, 16, 5),
                              nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(400, 120), nn.ReLU(),
                              nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, 10))
        batch = args.batch_size or 64
    else:
        sys.exit(f"ort_quantize.py train: unknown model {args.model!r} (mlp or lenet5; resnet20: resnet_train.py)")
    opt = torch.optim.Adam(model.parameters(), lr=args.lr, eps=1e-7)
    loss_fn = nn.CrossEntropyLoss()
    t0 = time.perf_counter()
    for _ in range(args.epochs):
        model.train()
        perm = torch.randperm(len(xtr_t))
        for i in range(0, len(perm), batch):
            idx = perm[i:i + batch]
            opt.zero_grad(set_to_none=True)
            loss_fn(model(xtr_t[idx]), ytr_t[idx]).backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        acc = float((model(xte_t).argmax(1) == yte_t).float().mean())
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, f"{args.model}-seed{args.seed}.onnx")
    tmp = path + ".tmp"
    torch.onnx.export(model, torch.zeros(1, 1, 28, 28), tmp, input_names=["x"], output_names=["logits"],
                      dynamic_axes={"x": {0: "batch"}, "logits": {0: "batch"}}, opset_version=17, dynamo=False)
    os.replace(tmp, path)
    print(json.dumps({"peer": "pytorch", "torch": torch.__version__, "model": args.model, "seed": args.seed,
                      "epochs": args.epochs, "batch_size": batch, "lr": args.lr, "test_accuracy": acc,
                      "seconds": round(time.perf_counter() - t0, 1), "onnx": os.path.basename(path)}), flush=True)


def session(path, threads, optimize=True):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    so.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize
                                   else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def predictions(sess, x, chunk=1000):
    name = sess.get_inputs()[0].name
    return np.concatenate([sess.run(None, {name: x[i:i + chunk]})[0].argmax(1) for i in range(0, len(x), chunk)])


def weight_types(path):
    """Element types of the quantized model's multi-dimensional integer initializers (the weights), counted: shows
    whether ORT really stored 4-bit weights or left a layer at 8 bits or in float."""
    import onnx

    counts = {}
    for t in onnx.load(path).graph.initializer:
        if len(t.dims) >= 2:
            name = onnx.TensorProto.DataType.Name(t.data_type)
            counts[name] = counts.get(name, 0) + 1
    return counts


def ort_cmd(args):
    import onnxruntime as ort
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)
    from onnxruntime.quantization.calibrate import create_calibrator
    from onnxruntime.quantization.shape_inference import quant_pre_process

    xtr, _, xte, yte = load(args.data)
    calib = pixels(xtr[calibration_indices(len(xtr), args.calibration_samples)])
    x, y = pixels(xte), yte.astype(np.int64)
    rows = ROWS if args.rows == "all" else args.rows.split(",")
    base = {"peer": "onnxruntime", "onnxruntime": ort.__version__, "onnx": os.path.basename(args.onnx),
            "calibration_samples": len(calib)}
    f32_pred = predictions(session(args.onnx, args.threads), x)
    f32_acc = float((f32_pred == y).mean())

    class Reader(CalibrationDataReader):
        def __init__(self, name):
            self.batches = iter([{name: calib[i:i + 100]} for i in range(0, len(calib), 100)])

        def get_next(self):
            return next(self.batches, None)

    input_name = session(args.onnx, 1).get_inputs()[0].name
    work = tempfile.mkdtemp()
    # ORT's recommended pre-processing (symbolic shape inference, ONNX shape inference, graph optimisation) before
    # quantize_static; if it fails on a model the raw export is quantized and the row says so.
    src = os.path.join(work, "pre.onnx")
    try:
        quant_pre_process(args.onnx, src)
        base["pre_processed"] = True
    except Exception as e:  # noqa: BLE001
        src, base["pre_processed"] = args.onnx, f"failed: {type(e).__name__}: {str(e)[:200]}"
    for row in rows:
        out = dict(base, row=row, f32_accuracy=f32_acc)
        if row == "f32":
            out["accuracy"] = f32_acc
            print(json.dumps(out), flush=True)
            continue
        method, act = row.split("-")
        weight_type = QuantType.QInt4 if act == "w4" else QuantType.QInt8
        act_type = QuantType.QInt8 if act == "s8" else QuantType.QUInt8
        out.update(calibrate_method=method, weight_type=weight_type.name, activation_type=act_type.name,
                   per_channel=True, quant_format="QDQ")
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory() as d:
            qpath = os.path.join(d, "q.onnx")
            try:
                extra = {}
                if method == "Entropy2048":
                    cal = create_calibrator(src, None, os.path.join(d, "augmented.onnx"), CalibrationMethod.Entropy,
                                            extra_options={"num_bins": 2048, "num_quantized_bins": 128})
                    cal.collect_data(Reader(input_name))
                    ranges = cal.compute_data()
                    extra["TensorQuantOverrides"] = {
                        name: [{"rmin": np.float32(ranges[name].range_value[0]),
                                "rmax": np.float32(ranges[name].range_value[1])}] for name in ranges.data}
                    method = "MinMax"
                quantize_static(src, qpath, Reader(input_name), quant_format=QuantFormat.QDQ,
                                per_channel=True, activation_type=act_type, weight_type=weight_type,
                                calibrate_method=getattr(CalibrationMethod, method), extra_options=extra)
                out["quantize_seconds"] = round(time.perf_counter() - t0, 1)
                out["weight_initializers"] = weight_types(qpath)
                pred = predictions(session(qpath, args.threads), x)
                out["accuracy"] = float((pred == y).mean())
                out["differ_from_f32"] = int((pred != f32_pred).sum())
                if not args.no_unfused:
                    out["accuracy_unfused"] = float(
                        (predictions(session(qpath, args.threads, False), x) == y).mean())
            except Exception as e:  # noqa: BLE001 - the row records what ORT refused and why
                out["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"
        print(json.dumps(out), flush=True)
    shutil.rmtree(work, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--data", default=DEFAULT_DIR,
                    help="MNIST-format directory (default: $LOWBIT_FASHION_MNIST_DIR or %(default)s)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch / ORT intra-op threads (default 1: on a loaded 2-core machine a second spinning "
                         "thread made PyTorch's MLP steps 60x slower)")
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train", help="train mlp or lenet5 in PyTorch and export ONNX f32")
    t.add_argument("--model", required=True)
    t.add_argument("--seed", type=int, default=1)
    t.add_argument("--epochs", type=int, default=5)
    t.add_argument("--batch-size", type=int, default=0, help="default: 32 (mlp), 64 (lenet5)")
    t.add_argument("--lr", type=float, default=1e-3)
    t.add_argument("--out", required=True, help="directory for MODEL-seedS.onnx")
    o = sub.add_parser("ort", help="ORT f32 and quantize_static rows for one ONNX model")
    o.add_argument("--onnx", required=True)
    o.add_argument("--calibration-samples", type=int, default=2000)
    o.add_argument("--rows", default="all", help=f"comma-separated of {','.join(ROWS)}, or all")
    o.add_argument("--no-unfused", action="store_true", help="skip the runs with graph optimisations off")
    args = ap.parse_args()
    train_cmd(args) if args.cmd == "train" else ort_cmd(args)


if __name__ == "__main__":
    main()
