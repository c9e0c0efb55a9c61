"""GEMM peers at 1024^3 on `--threads` threads: torch._int_mm (int8 x int8 -> int32, oneDNN on x86) and numpy f32
matmul (OpenBLAS). Prints one JSON line per peer with GOPS (ops = 2 * m * n * k), best of several repeats.
"""
import argparse
import json
import os
import time


def best_time(fn, budget_s, repeats):
    fn()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        iters = 0
        while True:
            fn()
            iters += 1
            el = time.perf_counter() - t0
            if el >= budget_s:
                break
        best = min(best, el / iters)
    return best


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--seconds", type=float, default=0.5, help="per timed repeat")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    # OpenBLAS reads its thread count at import time.
    os.environ["OPENBLAS_NUM_THREADS"] = str(args.threads)
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    n = args.size
    ops = 2.0 * n * n * n
    g = torch.Generator().manual_seed(0)
    a8 = torch.randint(-127, 128, (n, n), dtype=torch.int8, generator=g)
    b8 = torch.randint(-127, 128, (n, n), dtype=torch.int8, generator=g)
    t = best_time(lambda: torch._int_mm(a8, b8), args.seconds, args.repeats)
    print(json.dumps({"peer": "torch._int_mm", "version": torch.__version__, "threads": args.threads,
                      "shape": [n, n, n], "gops": round(ops / t / 1e9, 1), "ms": round(t * 1e3, 3)}), flush=True)
    rng = np.random.default_rng(0)
    af = rng.standard_normal((n, n), dtype=np.float32)
    bf = rng.standard_normal((n, n), dtype=np.float32)
    t = best_time(lambda: af @ bf, args.seconds, args.repeats)
    print(json.dumps({"peer": "numpy f32 matmul", "version": np.__version__, "threads": args.threads,
                      "shape": [n, n, n], "gops": round(ops / t / 1e9, 1), "ms": round(t * 1e3, 3)}), flush=True)


if __name__ == "__main__":
    main()
