"""PyTorch peer for the reference MLP: 784-64-10, Adam 1e-3 (eps 1e-7, as Keras), batch 32, 2 threads.

Prints one JSON line: seconds per epoch and test accuracy per seed. Used by bench/run_mlp_peers.sh, which times
lowbit in the same run.
"""
import argparse
import json
import time

import numpy as np
import torch

from common import DEFAULT_DIR, load


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=DEFAULT_DIR)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--seeds", default="1")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    xtr, ytr, xte, yte = load(args.data)
    xtr = torch.from_numpy(xtr.reshape(len(xtr), -1).astype(np.float32) / 255.0)
    xte = torch.from_numpy(xte.reshape(len(xte), -1).astype(np.float32) / 255.0)
    ytr = torch.from_numpy(ytr.astype(np.int64))
    yte = torch.from_numpy(yte.astype(np.int64))
    results = []
    for seed in [int(s) for s in args.seeds.split(",")]:
        torch.manual_seed(seed)
        model = torch.nn.Sequential(torch.nn.Linear(784, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10))
        for m in model:
            if isinstance(m, torch.nn.Linear):
                torch.nn.init.xavier_uniform_(m.weight)
                torch.nn.init.zeros_(m.bias)
        opt = torch.optim.Adam(model.parameters(), lr=1e-3, eps=1e-7)
        loss_fn = torch.nn.CrossEntropyLoss()
        epoch_seconds = []
        n = len(xtr)
        for _ in range(args.epochs):
            t0 = time.perf_counter()
            perm = torch.randperm(n)
            for i in range(0, n, args.batch_size):
                idx = perm[i:i + args.batch_size]
                opt.zero_grad(set_to_none=True)
                loss = loss_fn(model(xtr[idx]), ytr[idx])
                loss.backward()
                opt.step()
            epoch_seconds.append(time.perf_counter() - t0)
        with torch.no_grad():
            acc = (model(xte).argmax(1) == yte).float().mean().item()
        results.append({"seed": seed, "test_accuracy": acc, "epoch_seconds": epoch_seconds})
    print(json.dumps({"peer": "pytorch", "torch": torch.__version__, "threads": args.threads,
                      "batch_size": args.batch_size, "epochs": args.epochs, "runs": results}))


if __name__ == "__main__":
    main()
