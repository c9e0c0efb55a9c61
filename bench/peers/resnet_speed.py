"""Inference and training speed peers for issue 11: resnet20 (graph_models.py) at 3x32x32 on --threads threads.

The parent process builds the model (PyTorch default initialisation from --seed, or --weights: a state_dict of
the same shape), exports ONNX f32 (opset 17), makes the ONNX Runtime int8 model with quantize_static
after ORT's quant_pre_process (QuantFormat.QDQ, per_channel=True, int8 weights, uint8 activations, MinMax
calibration on --calib uniform random images; every convolution becomes a QLinearConv) and saves the
state_dict; then it runs each runtime in a fresh child process (this script with --child), one after another,
so each peak RSS (the child's VmHWM from /proc/self/status, everything it imported included) is that runtime's
alone (resource.getrusage's ru_maxrss would not do: Linux carries it across execve, so every
child would report at least the parent's peak):
  ort-f32     onnxruntime CPU provider, f32 model, intra_op_num_threads = --threads, sequential, ORT_ENABLE_ALL
  ort-int8    the same session options on the QDQ int8 model
  torch-f32   eager PyTorch, torch.inference_mode(), torch.set_num_threads(--threads)
  torch-int8  PyTorch FX post-training static quantization for the x86 backend (get_default_qconfig_mapping("x86"),
              per-channel int8 weights, reduce_range uint8 activations), calibrated inside the child on --calib
              random images in batches of 64 (part of that child's RSS), then timed like torch-f32
  torch-train f32 training steps at the training shape 1x28x28, batch 128: Adam (eps 1e-7), forward, cross-entropy,
              backward, step, on random data; samples/s and the implied seconds per 60,000-image epoch
Timing: common.best_time, the best seconds per call over --repeats windows of at least --seconds each after one
warm-up call (the machine is shared: the best window is the closest estimate of what the code can do); the mean
over all windows is reported beside it. Input: uniform random [0, 1) images, fixed per batch size.
GOPS = 2 * MACs * samples/s, MACs of one sample counted from the model's convolutions and fully connected layer
(graph_models.count_macs; resnet20 at 3x32x32: 40,551,040).

Prints one JSON line per (runtime, batch) and a table on stderr.
Example: python resnet_speed.py --threads 2 --batches 64,1
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile

from common import time_windows

RUNTIMES = ("ort-f32", "ort-int8", "torch-f32", "torch-int8", "torch-train")


def peak_rss_mb():
    """Peak resident set of this process in MiB. Linux carries ru_maxrss across execve (the forking parent's peak
    becomes the child's floor), so the kernel's per-address-space high-water mark VmHWM is read where it exists."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # Linux: KiB


def child(args):
    """Runs one runtime on the artefacts in --workdir and prints its JSON lines."""
    import numpy as np

    shape = tuple(int(v) for v in args.shape.split(","))
    rng = np.random.default_rng(args.seed)
    inputs = {b: rng.random((b, *shape), dtype=np.float32) for b in args.batch_list}
    out = []
    rt = args.child
    if rt.startswith("ort-"):
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = args.threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        path = os.path.join(args.workdir, "f32.onnx" if rt == "ort-f32" else "int8.onnx")
        sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
        version = ort.__version__
        for b in args.batch_list:
            x = inputs[b]
            out.append((b, *time_windows(lambda: sess.run(None, {"x": x}), args.seconds, args.repeats)))
    else:
        import torch
        from torch import nn

        from graph_models import make_model

        torch.set_num_threads(args.threads)
        version = torch.__version__
        if rt == "torch-train":
            torch.manual_seed(args.seed)
            model = make_model(args.model, 1)
            model.train()
            opt = torch.optim.Adam(model.parameters(), lr=1e-3, eps=1e-7)
            x = torch.rand(args.train_batch, 1, 28, 28)
            y = torch.randint(0, 10, (args.train_batch,))
            loss_fn = nn.CrossEntropyLoss()

            def step():
                opt.zero_grad(set_to_none=True)
                loss_fn(model(x), y).backward()
                opt.step()

            out.append((args.train_batch, *time_windows(step, args.seconds, args.repeats)))
        else:
            model = make_model(args.model, shape[0])
            model.load_state_dict(torch.load(os.path.join(args.workdir, "model.pt")))
            model.eval()
            if rt == "torch-int8":
                import warnings

                from resnet_quant import ptq_fx

                warnings.filterwarnings("ignore")
                calib = torch.from_numpy(rng.random((args.calib, *shape), dtype=np.float32))
                model = ptq_fx(model, calib, chunk=64)
            with torch.inference_mode():
                for b in args.batch_list:
                    x = torch.from_numpy(inputs[b])
                    out.append((b, *time_windows(lambda: model(x), args.seconds, args.repeats)))
    rss = peak_rss_mb()
    for b, best, mean in out:
        print(json.dumps({"runtime": rt, "version": version, "model": args.model, "threads": args.threads,
                          "batch": b, "best_s": best, "mean_s": mean, "peak_rss_mb": rss}), flush=True)


def prepare(args, workdir):
    """Model, ONNX f32 and int8 QDQ files in `workdir`; returns the MACs of one sample."""
    import logging
    import warnings

    import numpy as np
    import torch

    from graph_models import count_macs, make_model
    from resnet_quant import ort_quantize
    from resnet_train import export_onnx

    warnings.filterwarnings("ignore")
    logging.getLogger().setLevel(logging.ERROR)
    shape = tuple(int(v) for v in args.shape.split(","))
    torch.manual_seed(args.seed)
    model = make_model(args.model, shape[0])
    if args.weights:
        model.load_state_dict(torch.load(args.weights, map_location="cpu"))
    model.eval()
    torch.save(model.state_dict(), os.path.join(workdir, "model.pt"))
    f32 = os.path.join(workdir, "f32.onnx")
    export_onnx(model, f32, shape)
    calib = np.random.default_rng(args.seed + 1).random((args.calib, *shape), dtype=np.float32)
    ort_quantize(f32, os.path.join(workdir, "int8.onnx"), calib)
    if args.keep:
        os.makedirs(args.keep, exist_ok=True)
        for name in ("f32.onnx", "int8.onnx", "model.pt"):
            with open(os.path.join(workdir, name), "rb") as src, open(os.path.join(args.keep, name), "wb") as dst:
                dst.write(src.read())
    return count_macs(model, shape)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--model", default="resnet20", help="resnet20 (option A), resnet20b, resnetN[b], mobilenet")
    ap.add_argument("--shape", default="3,32,32", help="C,H,W of the inference input (default %(default)s)")
    ap.add_argument("--weights", help="state_dict for --shape (default: PyTorch initialisation from --seed)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batches", default="64,1")
    ap.add_argument("--train-batch", type=int, default=128)
    ap.add_argument("--calib", type=int, default=256, help="random calibration images for the int8 models")
    ap.add_argument("--seconds", type=float, default=1.0, help="seconds per timed window (default %(default)s)")
    ap.add_argument("--repeats", type=int, default=5, help="windows per case (default %(default)s)")
    ap.add_argument("--runtimes", default=",".join(RUNTIMES))
    ap.add_argument("--keep", help="also copy the f32 / int8 ONNX files and the state_dict to this directory")
    ap.add_argument("--child", choices=RUNTIMES, help=argparse.SUPPRESS)
    ap.add_argument("--workdir", help=argparse.SUPPRESS)
    args = ap.parse_args()
    args.batch_list = [int(v) for v in args.batches.split(",")]
    if args.child:
        return child(args)
    for rt in args.runtimes.split(","):
        if rt not in RUNTIMES:
            raise SystemExit(f"--runtimes: unknown runtime {rt!r} ({', '.join(RUNTIMES)})")
    here = os.path.dirname(os.path.abspath(__file__))
    rows = []
    with tempfile.TemporaryDirectory() as workdir:
        macs = prepare(args, workdir)
        for rt in args.runtimes.split(","):
            cmd = [sys.executable, os.path.join(here, "resnet_speed.py"), "--child", rt, "--workdir", workdir]
            for flag in ("model", "shape", "seed", "threads", "batches", "train_batch", "calib", "seconds",
                         "repeats"):
                cmd += ["--" + flag.replace("_", "-"), str(getattr(args, flag))]
            res = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=here)
            if res.returncode != 0:
                tail = res.stderr.strip().splitlines()[-1:] or ["(no message)"]
                raise SystemExit(f"resnet_speed.py: runtime {rt} failed: {tail[0]}")
            for line in res.stdout.splitlines():
                r = json.loads(line)
                train = rt == "torch-train"
                r["input"] = [1, 28, 28] if train else [int(v) for v in args.shape.split(",")]
                r["samples_per_s"] = round(r["batch"] / r["best_s"], 1)
                r["samples_per_s_mean"] = round(r["batch"] / r["mean_s"], 1)
                r["latency_ms"] = round(r["best_s"] * 1e3, 3)
                if train:
                    r["epoch_seconds_60k"] = round(60000 / r["samples_per_s"], 1)
                else:
                    r["macs_per_sample"] = macs
                    r["gops"] = round(2 * macs * r["samples_per_s"] / 1e9, 1)
                print(json.dumps(r), flush=True)
                rows.append(r)
    print(f"\n{args.model} at {args.shape}, {args.threads} threads, best of {args.repeats} windows of "
          f"{args.seconds} s (MACs/sample {macs:,})", file=sys.stderr)
    print(f"{'runtime':<12} {'batch':>5} {'samples/s':>10} {'(mean)':>10} {'latency ms':>11} {'GOPS':>7} "
          f"{'peak RSS MB':>12}", file=sys.stderr)
    for r in rows:
        gops = f"{r['gops']:>7.1f}" if "gops" in r else f"{'-':>7}"
        print(f"{r['runtime']:<12} {r['batch']:>5} {r['samples_per_s']:>10.1f} {r['samples_per_s_mean']:>10.1f} "
              f"{r['latency_ms']:>11.3f} {gops} {r['peak_rss_mb']:>12.1f}", file=sys.stderr)


if __name__ == "__main__":
    main()
