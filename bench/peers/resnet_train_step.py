"""PyTorch twin of `cargo run --release -p lowbit --example train_step_timing`: speed of f32 training steps
(forward + cross-entropy + backward + Adam) of resnet20 (option A, graph_models.py) on random data, so that the
two can be timed in one run on a shared machine and compared as a ratio.

Same protocol as the example: 2 warm-up steps, then WINDOWS windows of STEPS steps; prints the best window's
samples/s (the least disturbed), the mean, the process CPU time per step, and the estimated 60,000-image epoch,
as a line of text and one JSON line.

  python resnet_train_step.py [--model resnet20] [--batch 128] [--windows 5] [--steps 3] [--threads 2]
"""
import argparse
import json
import time

import torch
from torch import nn

from graph_models import make_model


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="resnet20")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--windows", type=int, default=5)
    ap.add_argument("--steps", type=int, default=3, help="steps per window")
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default %(default)s)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(7)
    model = make_model(args.model, 1)
    model.train()
    x = torch.rand(args.batch, 1, 28, 28)
    y = torch.randint(0, 10, (args.batch,))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, eps=1e-7)
    loss_fn = nn.CrossEntropyLoss()

    def step():
        opt.zero_grad(set_to_none=True)
        loss_fn(model(x), y).backward()
        opt.step()

    for _ in range(2):
        step()
    cpu0, wall0 = time.process_time(), time.perf_counter()
    best = float("inf")
    for _ in range(args.windows):
        t = time.perf_counter()
        for _ in range(args.steps):
            step()
        best = min(best, (time.perf_counter() - t) / args.steps)
    n = args.windows * args.steps
    mean = (time.perf_counter() - wall0) / n
    cpu = (time.process_time() - cpu0) / n
    sps = args.batch / best
    print(
        f"{args.model} (PyTorch {torch.__version__}), batch {args.batch}, {args.threads} threads: best "
        f"{best * 1e3:.1f} ms ({sps:.1f} samples/s), mean {mean * 1e3:.1f} ms, CPU {cpu * 1e3:.1f} ms/step; "
        f"60,000-image epoch at the best rate {60000 / sps:.1f} s"
    )
    print(json.dumps({
        "model": args.model, "batch": args.batch, "threads": args.threads, "best_ms": round(best * 1e3, 3),
        "mean_ms": round(mean * 1e3, 3), "cpu_ms": round(cpu * 1e3, 3), "samples_per_s": round(sps, 1),
        "epoch_60k_s": round(60000 / sps, 1),
    }))


if __name__ == "__main__":
    main()
