"""PyTorch f32 peer for issue 11: trains resnet20 (shortcut option A or B) or the small MobileNet of graph_models.py
on an MNIST-format directory (full Fashion-MNIST: 60,000 / 10,000 images, 1x28x28 used as is, pixels x / 255, no
augmentation, no normalisation).

Recipe: Adam (betas 0.9 / 0.999, eps 1e-7 as lowbit's Adam, no weight decay), batch 128 (the last, partial batch of
an epoch kept: 469 steps per epoch), a fresh torch.randperm shuffle per epoch, cross-entropy, and a per-step
learning-rate schedule:
  onecycle (default): torch.optim.lr_scheduler.OneCycleLR(max_lr=--lr 2e-3, total_steps=epochs * steps_per_epoch,
    pct_start=--pct-start 0.3, anneal_strategy="cos", div_factor=25, final_div_factor=1e4, three_phase=False,
    cycle_momentum=False (Adam's beta1 stays 0.9)). Step k (0-based) of T uses, with w = 0.3 * T - 1,
      k <= w: lr = c(k / w, 2e-3 / 25, 2e-3),  else: lr = c((k - w) / (T - 1 - w), 2e-3, 2e-3 / 25 / 1e4),
      c(p, a, b) = b + (a - b) * (1 + cos(pi * p)) / 2.
  warmup-cosine: lowbit's --warmup-steps + --schedule cosine: lr = 2e-3 * (k + 1) / W for k < W (W = --pct-start
    * T rounded), then 2e-3 * (1 + cos(pi * (k - W) / (T - W - 1))) / 2 down to 0 at the last step.
Seeds: torch.manual_seed(seed) before building the model (initialisation and shuffles both come from it);
torch.set_num_threads(--threads, default 2). Test accuracy uses batch-norm running statistics (eval mode).

Prints one JSON line per (model, seed) on stdout (epoch_seconds = training time per epoch without the evaluation;
test_accuracy_per_epoch after each epoch), and a table on stderr. With --out DIR, saves DIR/MODEL-seedS.pt (the
state_dict) and DIR/MODEL-seedS.onnx (opset 17, dynamic batch) for resnet_quant.py and resnet_speed.py.

Example (the issue-11 accuracy rows):
  python resnet_train.py --model resnet20 --seeds 1,2,3 --epochs 8 --out /tmp/resnet-peers
"""
import argparse
import json
import math
import os
import sys
import time

import numpy as np
import torch
from torch import nn

from common import DEFAULT_DIR, load
from graph_models import count_macs, make_model, param_count


def tensors(directory, limit=0):
    """(x_train, y_train, x_test, y_test) as float [N, 1, 28, 28] in [0, 1] and int64 labels."""
    xtr, ytr, xte, yte = load(directory)
    if limit:
        xtr, ytr = xtr[:limit], ytr[:limit]
    f = lambda x: torch.from_numpy(x.astype(np.float32)[:, None] / 255.0)  # noqa: E731
    return f(xtr), torch.from_numpy(ytr.astype(np.int64)), f(xte), torch.from_numpy(yte.astype(np.int64))


def accuracy(model, x, y, chunk=1000):
    model.eval()
    with torch.no_grad():
        hits = sum(int((model(x[i:i + chunk]).argmax(1) == y[i:i + chunk]).sum()) for i in range(0, len(x), chunk))
    return hits / len(x)


def make_schedule(opt, schedule, lr, pct_start, total_steps):
    """Per-step schedule of the module docstring; "warmup-cosine" with pct_start 0 is a plain cosine from lr to 0."""
    if schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=lr, total_steps=total_steps, pct_start=pct_start, anneal_strategy="cos",
            div_factor=25.0, final_div_factor=1e4, three_phase=False, cycle_momentum=False)
    warm = round(pct_start * total_steps)
    span = max(total_steps - warm - 1, 1)

    def factor(k):
        if k < warm:
            return (k + 1) / warm
        return max(0.5 * (1.0 + math.cos(math.pi * min((k - warm) / span, 1.0))), 1e-12)

    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


def train(model, data, batch_size, epochs, schedule, lr, pct_start, on_epoch=None):
    """Trains in place with the recipe of the module docstring; returns seconds per epoch. `on_epoch(e, model)`
    runs after each epoch outside the timed part."""
    xtr, ytr = data[0], data[1]
    opt = torch.optim.Adam(model.parameters(), lr=lr, eps=1e-7)
    steps_per_epoch = (len(xtr) + batch_size - 1) // batch_size
    sched = make_schedule(opt, schedule, lr, pct_start, epochs * steps_per_epoch)
    loss_fn = nn.CrossEntropyLoss()
    seconds = []
    for e in range(epochs):
        model.train()
        t0 = time.perf_counter()
        perm = torch.randperm(len(xtr))
        for i in range(0, len(xtr), batch_size):
            idx = perm[i:i + batch_size]
            opt.zero_grad(set_to_none=True)
            loss_fn(model(xtr[idx]), ytr[idx]).backward()
            opt.step()
            sched.step()
        seconds.append(time.perf_counter() - t0)
        if on_epoch is not None:
            on_epoch(e, model)
    model.eval()
    return seconds


def export_onnx(model, path, shape):
    """ONNX (opset 17, TorchScript exporter, dynamic batch axis) of `model` in eval mode, written atomically."""
    model.eval()
    tmp = path + ".tmp"
    torch.onnx.export(model, torch.zeros(1, *shape), tmp, input_names=["x"], output_names=["logits"],
                      dynamic_axes={"x": {0: "batch"}, "logits": {0: "batch"}}, opset_version=17, dynamo=False)
    os.replace(tmp, path)


def save_state(model, path):
    tmp = path + ".tmp"
    torch.save(model.state_dict(), tmp)
    os.replace(tmp, path)


def common_args(ap):
    ap.add_argument("--data", default=DEFAULT_DIR,
                    help="MNIST-format directory (default: $LOWBIT_FASHION_MNIST_DIR or %(default)s)")
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default %(default)s)")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--limit", type=int, default=0, help="first N training images only (smoke test)")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    common_args(ap)
    ap.add_argument("--lr", type=float, default=2e-3, help="peak learning rate (default %(default)s)")
    ap.add_argument("--schedule", choices=["onecycle", "warmup-cosine"], default="onecycle")
    ap.add_argument("--pct-start", type=float, default=0.3,
                    help="share of the steps rising to the peak (default %(default)s)")
    ap.add_argument("--model", default="resnet20",
                    help="comma-separated: resnet20 (option A), resnet20b (option B), resnetN[b], mobilenet")
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--seeds", default="1", help="comma-separated (default %(default)s)")
    ap.add_argument("--init", choices=["pytorch", "glorot"], default="pytorch",
                    help="pytorch: layer defaults; glorot: lowbit's convention (default %(default)s)")
    ap.add_argument("--out", help="directory for MODEL-seedS.pt and .onnx (created)")
    ap.add_argument("--no-epoch-eval", action="store_true", help="test accuracy only at the end")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    data = tensors(args.data, args.limit)
    shape = tuple(data[0].shape[1:])
    if args.out:
        os.makedirs(args.out, exist_ok=True)
    rows = []
    for name in args.model.split(","):
        for seed in [int(s) for s in args.seeds.split(",")]:
            torch.manual_seed(seed)
            model = make_model(name, shape[0], args.init)
            per_epoch = []

            def on_epoch(e, m):
                if not args.no_epoch_eval or e == args.epochs - 1:
                    per_epoch.append(accuracy(m, data[2], data[3]))
                    print(f"{name} seed {seed} epoch {e + 1}: test {per_epoch[-1]:.2%}", file=sys.stderr, flush=True)

            seconds = train(model, data, args.batch_size, args.epochs, args.schedule, args.lr, args.pct_start,
                            on_epoch)
            acc = per_epoch[-1] if per_epoch else accuracy(model, data[2], data[3])
            row = {"peer": "pytorch", "torch": torch.__version__, "model": name, "input": list(shape),
                   "params": param_count(model), "macs": count_macs(model, shape), "init": args.init, "seed": seed,
                   "epochs": args.epochs, "batch_size": args.batch_size, "optimizer": "adam eps 1e-7",
                   "schedule": args.schedule, "peak_lr": args.lr, "pct_start": args.pct_start,
                   "threads": args.threads, "train_samples": len(data[0]), "test_accuracy": acc,
                   "test_accuracy_per_epoch": per_epoch, "epoch_seconds": [round(s, 2) for s in seconds]}
            if args.out:
                stem = os.path.join(args.out, f"{name}-seed{seed}")
                save_state(model, stem + ".pt")
                export_onnx(model, stem + ".onnx", shape)
                row["saved"] = stem + ".{pt,onnx}"
            print(json.dumps(row), flush=True)
            rows.append(row)
    print(f"\n{'model':<11} {'seed':>4} {'epochs':>6} {'s/epoch':>8} {'test acc':>9}", file=sys.stderr)
    for r in rows:
        print(f"{r['model']:<11} {r['seed']:>4} {r['epochs']:>6} {np.mean(r['epoch_seconds']):>8.1f} "
              f"{r['test_accuracy']:>9.2%}", file=sys.stderr)


if __name__ == "__main__":
    main()
