"""GEMM peers at 1024^3 on `--threads` threads, one after another in the same run: torch._int_mm (int8 x int8 ->
int32, oneDNN on x86; falls back to a slow reference path on some CPUs), ONNX Runtime MatMulInteger (uint8 A x int8 B
-> int32, MLAS; B once as a constant initializer, which ORT prepacks like a weight, and once as a graph input) and
numpy f32 matmul (OpenBLAS). Prints one JSON line per peer with GOPS (ops = 2 * m * n * k), best of several repeats.
Integer lines carry "wrong_fraction": the share of entries in the first rows that differ from numpy's exact product
on full-range codes (A in 0..255, B in -127..127). Non-zero means the kernel saturates (e.g. MLAS' AVX2 u8s8 path
sums pairs with vpmaddubsw into i16; ORT's quantizer avoids this with reduce_range / 7-bit weights), so it is fast
but not an exact int8 GEMM.
"""
import argparse
import json
import os
import tempfile


def mismatch(a, b, c, rows=4):
    """Fraction of the first `rows` rows of the int32 product `c` that differ from numpy's exact int64 result."""
    import numpy as np

    want = a[:rows].astype(np.int64) @ b.astype(np.int64)
    return float((c[:rows].astype(np.int64) != want).mean())


def ort_matmul_integer(a, b, b_const, args):
    """Times one MatMulInteger node (no zero points, i.e. both 0) on `args.threads` intra-op threads."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from common import best_time  # imports numpy: only after main() has set the BLAS thread count

    m, k = a.shape
    n = b.shape[1]
    inputs = [helper.make_tensor_value_info("A", TensorProto.UINT8, [m, k])]
    inits = []
    if b_const:
        inits.append(numpy_helper.from_array(b, "B"))
    else:
        inputs.append(helper.make_tensor_value_info("B", TensorProto.INT8, [k, n]))
    graph = helper.make_graph([helper.make_node("MatMulInteger", ["A", "B"], ["Y"])], "matmul_integer", inputs,
                              [helper.make_tensor_value_info("Y", TensorProto.INT32, [m, n])], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    so = ort.SessionOptions()
    so.intra_op_num_threads = args.threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "matmul_integer.onnx")
        onnx.save(model, path)
        sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    feed = {"A": a} if b_const else {"A": a, "B": b}
    peer = "onnxruntime MatMulInteger u8xs8 " + ("B constant (prepacked)" if b_const else "B input")
    wrong = mismatch(a, b, sess.run(None, feed)[0])
    return peer, ort.__version__, best_time(lambda: sess.run(None, feed), args.seconds, args.repeats), wrong


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--seconds", type=float, default=0.5, help="per timed repeat")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--no-torch", action="store_true",
                    help="skip torch._int_mm (about 1 s per call on AVX2-only CPUs), for repeated rounds")
    args = ap.parse_args()
    # OpenBLAS reads its thread count at import time.
    os.environ["OPENBLAS_NUM_THREADS"] = str(args.threads)
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    import numpy as np
    import torch

    from common import best_time

    torch.set_num_threads(args.threads)
    n = args.size
    ops = 2.0 * n * n * n
    g = torch.Generator().manual_seed(0)
    a8 = torch.randint(-127, 128, (n, n), dtype=torch.int8, generator=g)
    b8 = torch.randint(-127, 128, (n, n), dtype=torch.int8, generator=g)
    if not args.no_torch:
        t = best_time(lambda: torch._int_mm(a8, b8), args.seconds, args.repeats)
        c = torch._int_mm(a8, b8)
        print(json.dumps({"peer": "torch._int_mm", "version": torch.__version__, "threads": args.threads,
                          "shape": [n, n, n], "gops": round(ops / t / 1e9, 1), "ms": round(t * 1e3, 3),
                          "wrong_fraction": mismatch(a8.numpy(), b8.numpy(), c.numpy())}), flush=True)
    rng = np.random.default_rng(0)
    au8 = rng.integers(0, 256, (n, n), dtype=np.uint8)
    bi8 = rng.integers(-127, 128, (n, n), dtype=np.int8)
    for b_const in (True, False):
        peer, version, t, wrong = ort_matmul_integer(au8, bi8, b_const, args)
        print(json.dumps({"peer": peer, "version": version, "threads": args.threads, "shape": [n, n, n],
                          "gops": round(ops / t / 1e9, 1), "ms": round(t * 1e3, 3), "wrong_fraction": wrong}),
              flush=True)
    af = rng.standard_normal((n, n), dtype=np.float32)
    bf = rng.standard_normal((n, n), dtype=np.float32)
    t = best_time(lambda: af @ bf, args.seconds, args.repeats)
    print(json.dumps({"peer": "numpy f32 matmul", "version": np.__version__, "threads": args.threads,
                      "shape": [n, n, n], "gops": round(ops / t / 1e9, 1), "ms": round(t * 1e3, 3)}), flush=True)


if __name__ == "__main__":
    main()
