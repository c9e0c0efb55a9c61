"""Every ONNX import fixture on 10,000 images: ONNX Runtime f32 against lowbit's import, image by image.

Usage:
  python check_fixtures.py --lowbit LOWBIT_BINARY [--fixtures DIR] [--data FASHION_MNIST_DIR] [--work DIR]
                           [--threads N] [--json OUT.json]

For each NAME.onnx of the fixtures directory (crates/lowbit/tests/fixtures/onnx, made by make_onnx_fixtures.py
and make_keras_fixture.py; NAME.json gives its input shape and layout) it builds 10,000 uint8 images in the
fixture's input shape and layout from the Fashion-MNIST test set:
  - 28x28 one-channel inputs: the test images as they are;
  - other sizes: each image resized to HxW (bilinear, half-pixel centres, as cv2/PIL resize), rounded to uint8;
  - more than one channel: channel 0 the image, channel 1 its negative (255 - x), channel 2 its mirror image
    (left-right), then again from channel 0 (so a channel or layout mix-up shows in the logits).
ONNX Runtime runs the fixture on pixels / 255 * S, then (x - mean) / std, with S, mean and std from the model's
lowbit.* metadata (defaults 1, 0, 1): the preprocessing lowbit reads from the same metadata. lowbit gets the
same pixels as an .npz (the --data NumPy reader, --layout the fixture's), runs `lowbit import NAME.onnx --out
NAME.f32` and `lowbit eval NAME.f32 --predictions P --logits L.npy`. A fixture whose ONNX output is a softmax or a
log-softmax of the logits (json "output") is compared after applying it to lowbit's logits (which drop it).
Reported per fixture: images, argmax agreement, the largest |lowbit - ORT| relative to the image's largest |ORT
output|, and the smallest ORT top-2 margin (the closest call), and for disagreeing images their margins.
"""
import argparse
import json
import os
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort

import common

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURES = os.path.join(HERE, "..", "..", "crates", "lowbit", "tests", "fixtures", "onnx")
IMAGES = 10_000


def resize_bilinear(x, h, w):
    """[N, H0, W0] uint8 -> [N, h, w] float32, bilinear with half-pixel centres (edges clamped)."""
    n, h0, w0 = x.shape

    def taps(out, size):
        c = (np.arange(out, dtype=np.float64) + 0.5) * size / out - 0.5
        c = np.clip(c, 0, size - 1)
        lo = np.floor(c).astype(np.int64)
        hi = np.minimum(lo + 1, size - 1)
        return lo, hi, (c - lo).astype(np.float32)

    ylo, yhi, fy = taps(h, h0)
    xlo, xhi, fx = taps(w, w0)
    x = x.astype(np.float32)
    rows = x[:, ylo, :] * (1 - fy)[None, :, None] + x[:, yhi, :] * fy[None, :, None]
    return rows[:, :, xlo] * (1 - fx)[None, None, :] + rows[:, :, xhi] * fx[None, None, :]


def images_for(x_test, shape, layout):
    """uint8 images [N, *shape] in the fixture's layout, and a sentence saying how they were made."""
    c, h, w = (shape[2], shape[0], shape[1]) if layout == "nhwc" else shape
    if (h, w) == (28, 28):
        gray = x_test.astype(np.uint8)
        how = "Fashion-MNIST test images"
    else:
        gray = np.clip(np.rint(resize_bilinear(x_test, h, w)), 0, 255).astype(np.uint8)
        how = f"Fashion-MNIST test images resized to {h}x{w} (bilinear)"
    if c > 1:
        how += f", {c} channels ({', '.join(['image', 'negative', 'mirror'][i % 3] for i in range(c))})"
    planes = [gray, 255 - gray, gray[:, :, ::-1]]
    chw = np.stack([planes[i % 3] for i in range(c)], axis=1)
    pixels = chw.transpose(0, 2, 3, 1) if layout == "nhwc" else chw
    return np.ascontiguousarray(pixels), how


def preprocessing(model_path, channels):
    meta = {p.key: p.value for p in onnx.load(model_path, load_external_data=False).metadata_props}

    def per_channel(key, default):
        v = [float(t) for t in meta.get(key, str(default)).split(",")]
        return np.array(v * channels if len(v) == 1 else v, np.float32)

    scale = float(meta.get("lowbit.input_scale", "1"))
    return scale, per_channel("lowbit.mean", 0.0), per_channel("lowbit.std", 1.0)


def ort_outputs(model_path, x, threads, batch=500):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(model_path, opts, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    return np.concatenate([sess.run(None, {name: x[s:s + batch]})[0] for s in range(0, len(x), batch)])


def as_exported(logits, output):
    """What the ONNX graph computes from lowbit's logits: the logits, or the trailing op the importer dropped."""
    if output == "logits":
        return logits
    z = logits - logits.max(axis=1, keepdims=True)
    if output == "softmax":
        e = np.exp(z)
        return e / e.sum(axis=1, keepdims=True)
    if output == "log_softmax":
        return z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    raise ValueError(f"unknown fixture output {output}")


def check(name, fixtures, work, lowbit, x_test, y_test, threads):
    meta = json.load(open(os.path.join(fixtures, name + ".json")))
    layout = meta.get("layout", "nchw")
    shape = meta["input_shape"][1:]
    model = os.path.join(fixtures, name + ".onnx")
    pixels, how = images_for(x_test, shape, layout)
    channels = shape[2] if layout == "nhwc" else shape[0]
    scale, mean, std = preprocessing(model, channels)
    axis = (None, None, None, slice(None)) if layout == "nhwc" else (None, slice(None), None, None)
    x = pixels.astype(np.float32) / np.float32(255.0) * np.float32(scale)
    x = np.ascontiguousarray((x - mean[axis]) / std[axis], dtype=np.float32)
    theirs = ort_outputs(model, x, threads)

    data = os.path.join(work, name + ".npz")
    # The reader wants a training split too: the first 100 images (nothing trains on it here).
    np.savez(data, x_train=pixels[:100], y_train=y_test[:100], x_test=pixels, y_test=y_test)
    f32 = os.path.join(work, name + ".f32")
    pred = os.path.join(work, name + ".pred.txt")
    logits_path = os.path.join(work, name + ".logits.npy")
    subprocess.run([lowbit, "import", model, "--out", f32], check=True, stdout=subprocess.DEVNULL)
    subprocess.run([lowbit, "eval", "-q", f32, "--data", data, "--layout", layout, "--predictions", pred,
                    "--logits", logits_path], check=True, stdout=subprocess.DEVNULL)
    ours_logits = np.load(logits_path)
    ours = np.array([int(v) for v in open(pred).read().split()])
    if ours_logits.shape != theirs.shape or len(ours) != len(theirs):
        sys.exit(f"{name}: lowbit gave {ours_logits.shape} logits, ONNX Runtime {theirs.shape}")
    if not np.array_equal(ours, ours_logits.argmax(axis=1)):
        sys.exit(f"{name}: lowbit's --predictions differ from the argmax of its --logits")
    mine = as_exported(ours_logits.astype(np.float64), meta["output"])
    rel = np.abs(mine - theirs).max(axis=1) / np.abs(theirs).max(axis=1)
    top2 = np.sort(theirs, axis=1)[:, -2:]
    margin = (top2[:, 1] - top2[:, 0]) / np.abs(theirs).max(axis=1)
    theirs_class = theirs.argmax(axis=1)
    differ = np.nonzero(theirs_class != ours)[0]
    return {"fixture": name, "input": f"{layout.upper()} {shape}", "images": int(len(ours)), "made": how,
            "agree": int(len(ours) - len(differ)), "max_rel_diff": float(rel.max()),
            "min_rel_top2_margin": float(margin.min()),
            "differ": [{"index": int(i), "lowbit": int(ours[i]), "ort": int(theirs_class[i]),
                        "rel_top2_margin": float(margin[i]), "rel_diff": float(rel[i])} for i in differ]}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lowbit", required=True, help="the lowbit binary")
    ap.add_argument("--fixtures", default=FIXTURES)
    ap.add_argument("--data", default=common.DEFAULT_DIR, help="MNIST-format Fashion-MNIST directory")
    ap.add_argument("--work", default=".", help="where the .npz data, imported models and logits go")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", help="write the results here")
    a = ap.parse_args()
    _, _, x_test, y_test = common.load(a.data)
    x_test, y_test = x_test[:IMAGES], y_test[:IMAGES].astype(np.int64)
    os.makedirs(a.work, exist_ok=True)
    names = sorted(f[:-5] for f in os.listdir(a.fixtures) if f.endswith(".onnx"))
    print(f"onnxruntime {ort.__version__}, {len(names)} fixtures, {len(x_test)} images each")
    rows = []
    for name in names:
        r = check(name, a.fixtures, a.work, a.lowbit, x_test, y_test, a.threads)
        rows.append(r)
        print(f"{name}: {r['input']}, {r['made']}")
    print(f"{'fixture':<18} {'images':>6} {'argmax agree':>12} {'max |diff| / max |out|':>22} "
          f"{'min top-2 margin / max |out|':>28}")
    for r in rows:
        print(f"{r['fixture']:<18} {r['images']:>6} {r['agree']:>12} {r['max_rel_diff']:>22.2e} "
              f"{r['min_rel_top2_margin']:>28.2e}")
        for d in r["differ"][:20]:
            print(f"    image {d['index']}: lowbit {d['lowbit']}, ORT {d['ort']}, "
                  f"ORT top-2 margin {d['rel_top2_margin']:.2e}, |diff| {d['rel_diff']:.2e} (relative)")
    total = sum(r["images"] - r["agree"] for r in rows)
    print(f"all fixtures: {'argmax agrees on every image' if total == 0 else f'{total} images differ'}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"onnxruntime": ort.__version__, "fixtures": rows}, f, indent=1)
    sys.exit(1 if total else 0)


if __name__ == "__main__":
    main()
