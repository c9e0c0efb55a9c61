"""Shared helpers for the peer scripts: load an MNIST-format directory (IDX, raw or .gz) with numpy only."""
import gzip
import os
import struct
import time

import numpy as np

# Debian's dataset-fashion-mnist, or the directory lowbit itself is pointed at.
DEFAULT_DIR = os.environ.get("LOWBIT_FASHION_MNIST_DIR", "/usr/share/datasets/fashion-mnist")


def _read_idx(path):
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    magic, = struct.unpack(">I", data[:4])
    ndim = magic & 0xFF
    dims = struct.unpack(">" + "I" * ndim, data[4:4 + 4 * ndim])
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def _find(directory, stem):
    for name in (stem, stem + ".gz"):
        p = os.path.join(directory, name)
        if os.path.exists(p):
            return p
    raise FileNotFoundError(f"{directory}: missing {stem}[.gz]")


def load(directory=DEFAULT_DIR):
    """Returns (x_train u8 [N,28,28], y_train, x_test, y_test)."""
    return (
        _read_idx(_find(directory, "train-images-idx3-ubyte")),
        _read_idx(_find(directory, "train-labels-idx1-ubyte")),
        _read_idx(_find(directory, "t10k-images-idx3-ubyte")),
        _read_idx(_find(directory, "t10k-labels-idx1-ubyte")),
    )


def best_time(fn, budget_s, repeats):
    """Best seconds per call of `fn` over `repeats` repeats of at least `budget_s` each, after one warm-up call (the
    machine is shared: the best repeat is the closest estimate of what the code can do)."""
    return time_windows(fn, budget_s, repeats)[0]


def time_windows(fn, budget_s, repeats):
    """(best, mean) seconds per call of `fn`: best_time's estimator, and the mean over every call of every window."""
    fn()
    best, calls, total = float("inf"), 0, 0.0
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
        calls += iters
        total += el
    return best, total / calls
