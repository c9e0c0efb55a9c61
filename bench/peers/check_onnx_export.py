"""Runs a lowbit ONNX export in ONNX Runtime over an MNIST-format test set and compares it with lowbit, image by image.

Usage:
  python check_onnx_export.py MODEL.onnx --data DIR --predictions LOWBIT_PREDICTIONS.txt [--json OUT.json]

MODEL.onnx is what `lowbit export` wrote (QDQ or f32); LOWBIT_PREDICTIONS.txt is what `lowbit eval MODEL
--data DIR --predictions FILE` wrote (one class per line, test-set order; the integer engine's for a .lbq).
The input is fed as lowbit documents it in the file: pixels / 255, then (x - mean) / std when the metadata names a
normalisation. Prints the agreement count, ORT's accuracy against lowbit's, the differing images (index, label,
lowbit's class, ORT's class, ORT's top-2 logit margin) and, with --json, writes them.
"""
import argparse
import json
import sys

import numpy as np
import onnx
import onnxruntime as ort

import common


def metadata(model_path):
    m = onnx.load(model_path, load_external_data=False)
    return {p.key: p.value for p in m.metadata_props}, m.doc_string


def ort_logits(model_path, x, batch, threads, optimize=True):
    opts = ort.SessionOptions()
    if not optimize:
        # No QDQ fusion: every op runs as written, in float (the reference semantics of the QDQ graph).
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(model_path, opts, providers=["CPUExecutionProvider"])
    out = []
    for s in range(0, len(x), batch):
        out.append(sess.run(["logits"], {"input": x[s:s + batch]})[0])
    return np.concatenate(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("--data", default=common.DEFAULT_DIR)
    ap.add_argument("--predictions", required=True, help="lowbit eval --predictions output")
    ap.add_argument("--json", help="write the comparison here")
    ap.add_argument("--batch", type=int, default=500)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--show", type=int, default=20, help="differing images to list")
    ap.add_argument("--no-optimization", action="store_true",
                    help="run with ORT's graph optimisations off (QDQ not fused into integer kernels)")
    a = ap.parse_args()

    _, _, x_test, y_test = common.load(a.data)
    meta, _ = metadata(a.model)
    x = x_test.astype(np.float32) / np.float32(255.0)
    if x.ndim == 3:
        x = x[:, None, :, :]
    if "lowbit.input.mean" in meta:
        mean = np.array([float(v) for v in meta["lowbit.input.mean"].split(",")], np.float32)[None, :, None, None]
        std = np.array([float(v) for v in meta["lowbit.input.std"].split(",")], np.float32)[None, :, None, None]
        x = (x - mean) / std
    x = np.ascontiguousarray(x, dtype=np.float32)

    ours = np.array([int(l) for l in open(a.predictions).read().split()], dtype=np.int64)
    if len(ours) != len(y_test):
        sys.exit(f"{a.predictions}: {len(ours)} predictions for {len(y_test)} test images")
    logits = ort_logits(a.model, x, a.batch, a.threads, optimize=not a.no_optimization)
    theirs = logits.argmax(axis=1)
    differ = np.nonzero(theirs != ours)[0]
    n = len(y_test)
    acc_ort = float((theirs == y_test).mean())
    acc_ours = float((ours == y_test).mean())
    top2 = np.sort(logits, axis=1)[:, -2:]
    margin = top2[:, 1] - top2[:, 0]
    mode = "graph optimisations off" if a.no_optimization else "default session options"
    print(f"{a.model}: form {meta.get('lowbit.form', '?')}, onnxruntime {ort.__version__} ({mode}), {n} test images")
    print(f"agreement: {n - len(differ)} / {n} ({100.0 * (n - len(differ)) / n:.2f}%), {len(differ)} differ")
    print(f"accuracy: ONNX Runtime {100 * acc_ort:.2f}%, lowbit {100 * acc_ours:.2f}%"
          f" (difference {100 * (acc_ort - acc_ours):+.2f} pp)")
    rows = []
    for i in differ:
        rows.append({"index": int(i), "label": int(y_test[i]), "lowbit": int(ours[i]), "ort": int(theirs[i]),
                     "ort_top2_margin": float(margin[i]), "ort_logit_of_lowbit_class": float(logits[i, ours[i]]),
                     "ort_top_logit": float(logits[i].max())})
    if rows:
        print("differing images (index label lowbit ort ort-top2-margin):")
        for r in rows[:a.show]:
            print(f"  {r['index']:5d} {r['label']:2d} {r['lowbit']:2d} {r['ort']:2d} {r['ort_top2_margin']:.4f}")
        if len(rows) > a.show:
            print(f"  ... {len(rows) - a.show} more")
        print(f"median ORT top-2 margin on differing images {np.median([r['ort_top2_margin'] for r in rows]):.4f},"
              f" on all images {np.median(margin):.4f}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"model": a.model, "form": meta.get("lowbit.form"), "onnxruntime": ort.__version__,
                       "images": n, "agree": int(n - len(differ)), "differ": rows,
                       "accuracy_ort": acc_ort, "accuracy_lowbit": acc_ours}, f, indent=1)


if __name__ == "__main__":
    main()
