"""Builds the ONNX import fixtures of crates/lowbit/tests/fixtures/onnx/ from ordinary PyTorch code.

Usage:
    python3 bench/peers/make_onnx_fixtures.py [--venv PEERS_VENV] [--out DIR] [--only NAME,...]

The venv (the argument, else $PEERS_VENV, else the running interpreter) needs torch, onnx and onnxruntime (see
requirements.txt); the script re-runs itself under that venv's python. For each fixture NAME it writes:
    NAME.onnx        exported by torch.onnx.export (the TorchScript exporter, dynamo=False)
    NAME.input.f32   an input batch, little-endian f32, in the model's layout (NCHW; NHWC for nhwc_keras)
    NAME.output.f32  ONNX Runtime's output for that batch, little-endian f32, [B, classes]
    NAME.json        shapes, opset, what the output is (logits, or a trailing softmax/log-softmax of them)
Weights are random (seeded): the fixtures test the importer's arithmetic, not accuracy. The Keras fixture
(keras_cnn, through tf2onnx) is make_keras_fixture.py's, in a TensorFlow venv of its own. "Current opset" is the
highest opset the installed exporter accepts (probed, newest first).
"""
import argparse
import json
import os
import sys


def reexec_under_venv():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--venv", default=os.environ.get("PEERS_VENV"))
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                  "..", "..", "crates", "lowbit", "tests", "fixtures", "onnx"))
    ap.add_argument("--only", default="", help="comma-separated fixture names to (re)write; default all")
    args = ap.parse_args()
    if args.venv:
        python = os.path.join(os.path.abspath(args.venv), "bin", "python")
        if os.path.realpath(sys.prefix) != os.path.realpath(args.venv) and os.path.exists(python):
            os.execv(python, [python, os.path.abspath(__file__), "--venv", args.venv, "--out", args.out,
                              "--only", args.only])
    return args


ARGS = reexec_under_venv()

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402


class Mlp(nn.Module):
    """784-64-10 with nn.Flatten (ONNX Flatten) and nn.Linear (Gemm)."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(784, 64), nn.ReLU(), nn.Dropout(0.2), nn.Linear(64, 10))

    def forward(self, x):
        return self.net(x)


class LeNet5(nn.Module):
    """LeNet-5 on 1x28x28 (padded first conv); x.view(x.size(0), -1) exports the Shape/Gather/Unsqueeze/Concat
    chain before Reshape; ends in log_softmax (which the importer drops)."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(1, 6, 5, padding=2)
        self.c2 = nn.Conv2d(6, 16, 5)
        self.f1 = nn.Linear(400, 120)
        self.f2 = nn.Linear(120, 84)
        self.f3 = nn.Linear(84, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.c1(x)), 2)
        x = F.max_pool2d(F.relu(self.c2(x)), 2)
        x = x.view(x.size(0), -1)
        x = F.relu(self.f1(x))
        x = F.relu(self.f2(x))
        return F.log_softmax(self.f3(x), dim=1)


class Block(nn.Module):
    """CIFAR-style basic block; the shortcut of a downsampling block is option A (subsample by slicing, zero-pad
    the channels) or option B (1x1 conv + batch norm)."""

    def __init__(self, cin, cout, stride, option):
        super().__init__()
        self.c1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.b1 = nn.BatchNorm2d(cout)
        self.c2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.b2 = nn.BatchNorm2d(cout)
        self.option = option
        self.pad = (cout - cin) // 2
        self.proj = None
        if (stride != 1 or cin != cout) and option == "B":
            self.proj = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
        self.down = stride != 1 or cin != cout

    def forward(self, x):
        y = self.b2(self.c2(F.relu(self.b1(self.c1(x)))))
        if not self.down:
            s = x
        elif self.option == "A":
            s = F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))
        else:
            s = self.proj(x)
        return F.relu(y + s)


class ResNet(nn.Module):
    """A tiny CIFAR-style ResNet on 3x16x16: stem, one block per stage (8 and 16 channels), global average
    pooling, a linear head."""

    def __init__(self, option):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, 1, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.s1 = Block(8, 8, 1, option)
        self.s2 = Block(8, 16, 2, option)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        x = self.s2(self.s1(self.stem(x)))
        x = F.adaptive_avg_pool2d(x, 1)
        return self.fc(torch.flatten(x, 1))


class DepthwiseSeparable(nn.Module):
    """Depthwise-separable blocks on 3x16x16 with ReLU6 (Clip), LeakyReLU, Sigmoid, average pooling (padded,
    count_include_pad), a channel Concat, MaxPool, and a MatMul+Add head; ends in softmax."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, 1, 1)
        self.bn0 = nn.BatchNorm2d(8)
        self.dw1 = nn.Conv2d(8, 8, 3, 1, 1, groups=8)
        self.bn1 = nn.BatchNorm2d(8)
        self.pw1 = nn.Conv2d(8, 12, 1)
        self.dw2 = nn.Conv2d(12, 24, 3, 2, 1, groups=12)
        self.pw2 = nn.Conv2d(24, 8, 1)
        self.side = nn.Conv2d(12, 8, 1, 2)
        self.w = nn.Parameter(torch.randn(16 * 4 * 4, 10) * 0.05)
        self.b = nn.Parameter(torch.randn(10) * 0.1)

    def forward(self, x):
        x = F.relu6(self.bn0(self.stem(x)))
        x = F.leaky_relu(self.bn1(self.dw1(x)), 0.1)
        x = self.pw1(x)
        x = F.avg_pool2d(x, 3, 1, 1)
        y = torch.sigmoid(self.pw2(F.relu(self.dw2(x))))
        z = F.relu(self.side(x))
        x = F.max_pool2d(torch.cat([y, z], dim=1), 2)
        x = torch.flatten(x, 1)
        return torch.softmax(torch.matmul(x, self.w) + self.b, dim=1)


class KerasStyleNhwc(nn.Module):
    """A channels-last model as Keras/tf2onnx exports it: an NHWC input transposed to NCHW for the first conv, a
    transpose pair (to NHWC and back, as tf2onnx leaves around ops it keeps in NHWC), global average pooling
    and a linear head."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, 1, 1)
        self.c2 = nn.Conv2d(8, 12, 3, 2, 1)
        self.fc = nn.Linear(12, 10)

    def forward(self, x):
        x = F.relu(self.c1(x.permute(0, 3, 1, 2)))
        # The exporter fuses two consecutive permutes, so nhwc_keras() inserts the pair into the graph itself.
        x = F.relu(self.c2(x))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def nhwc_keras(out=ARGS.out):
    """KerasStyleNhwc exported like tf2onnx: NHWC input "input" [batch, 12, 12, 3], opset 13, with the
    preprocessing of a Keras model fed raw pixels in its metadata (lowbit.input_scale 255, lowbit.mean and
    lowbit.std 127.5: x = pixel / 127.5 - 1). The input batch is such normalised pixels (integers 0..255), so
    a test can feed lowbit the pixels and its stored normalisation."""
    name = "nhwc_keras"
    gen = torch.Generator().manual_seed(sum(map(ord, name)))
    torch.manual_seed(5)
    model = KerasStyleNhwc().eval()
    pixels = torch.randint(0, 256, (4, 12, 12, 3), generator=gen).float()
    x = (pixels - 127.5) / 127.5
    path = os.path.join(out, name + ".onnx")
    torch.onnx.export(model, (x,), path, dynamo=False, opset_version=13, input_names=["input"],
                      output_names=["output"], dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}})
    m = onnx.load(path)
    relu = next(n for n in m.graph.node if n.op_type == "Relu")
    pair = [onnx.helper.make_node("Transpose", [relu.output[0]], ["to_nhwc"], name="/to_nhwc", perm=[0, 2, 3, 1]),
            onnx.helper.make_node("Transpose", ["to_nhwc"], ["to_nchw"], name="/to_nchw", perm=[0, 3, 1, 2])]
    for n in m.graph.node:
        if n.op_type == "Conv" and relu.output[0] in n.input:
            n.input[list(n.input).index(relu.output[0])] = "to_nchw"
    at = list(m.graph.node).index(relu) + 1
    for i, n in enumerate(pair):
        m.graph.node.insert(at + i, n)
    for k, v in [("lowbit.input_scale", "255"), ("lowbit.mean", "127.5"), ("lowbit.std", "127.5")]:
        m.metadata_props.add(key=k, value=v)
    onnx.checker.check_model(m)
    onnx.save(m, path)
    y = ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(None, {"input": x.numpy()})[0]
    x.numpy().astype("<f4").tofile(os.path.join(out, name + ".input.f32"))
    y.astype("<f4").tofile(os.path.join(out, name + ".output.f32"))
    ops = sorted({n.op_type for n in m.graph.node})
    meta = {"input_shape": list(x.shape), "output_shape": list(y.shape), "opset": 13, "output": "logits",
            "batchnorm_folded": True, "ops": ops, "layout": "nhwc"}
    with open(os.path.join(out, name + ".json"), "w") as f:
        json.dump(meta, f, indent=1)
        f.write("\n")
    print(f"{name}: opset 13, {os.path.getsize(path)} bytes, ops {' '.join(ops)}")


def randomize_bn(model, gen):
    """Non-trivial running statistics and affine parameters, so a mistake in batch-norm import shows."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            c = m.num_features
            m.running_mean.copy_(torch.randn(c, generator=gen) * 0.2)
            m.running_var.copy_(torch.rand(c, generator=gen) + 0.5)
            m.weight.data.copy_(torch.rand(c, generator=gen) + 0.5)
            m.bias.data.copy_(torch.randn(c, generator=gen) * 0.2)


def newest_opset(model, x):
    for opset in range(onnx.defs.onnx_opset_version(), 10, -1):
        try:
            torch.onnx.export(model, (x,), os.devnull, dynamo=False, opset_version=opset)
            return opset
        except Exception:  # noqa: BLE001 - the exporter raises various types for an unsupported opset
            continue
    raise RuntimeError("no opset >= 11 accepted by the exporter")


def export(name, model, shape, opset, output_kind, fold_constants=True, out=ARGS.out):
    gen = torch.Generator().manual_seed(sum(map(ord, name)))
    randomize_bn(model, gen)
    model.eval()
    x = torch.rand(4, *shape, generator=gen)
    if opset == "current":
        opset = newest_opset(model, x)
    path = os.path.join(out, name + ".onnx")
    torch.onnx.export(model, (x,), path, dynamo=False, opset_version=opset, input_names=["input"],
                      output_names=["output"], dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
                      do_constant_folding=fold_constants)
    onnx.checker.check_model(onnx.load(path))
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    y = sess.run(None, {"input": x.numpy()})[0]
    x.numpy().astype("<f4").tofile(os.path.join(out, name + ".input.f32"))
    y.astype("<f4").tofile(os.path.join(out, name + ".output.f32"))
    ops = sorted({n.op_type for n in onnx.load(path).graph.node})
    meta = {"input_shape": list(x.shape), "output_shape": list(y.shape), "opset": opset,
            "output": output_kind, "batchnorm_folded": fold_constants, "ops": ops}
    with open(os.path.join(out, name + ".json"), "w") as f:
        json.dump(meta, f, indent=1)
        f.write("\n")
    print(f"{name}: opset {opset}, {os.path.getsize(path)} bytes, ops {' '.join(ops)}")


def edge_ops(out=ARGS.out):
    """Attribute forms PyTorch's exporter does not emit, built with onnx.helper: auto_pad SAME_UPPER with a
    stride, asymmetric pads, padded average pooling, Clip bounds from initializers, Squeeze of the spatial axes,
    Gemm with transB=0, alpha, beta and a [1, N] bias."""
    from onnx import TensorProto, helper, numpy_helper
    rng = np.random.default_rng(12)

    def init(name, *shape):
        return numpy_helper.from_array((rng.standard_normal(shape) * 0.3).astype(np.float32), name)

    nodes = [
        helper.make_node("Conv", ["input", "w1", "b1"], ["c1"], name="same_upper", auto_pad="SAME_UPPER",
                         strides=[2, 2], kernel_shape=[3, 3]),
        helper.make_node("Clip", ["c1", "lo", "hi"], ["r1"], name="clip"),
        helper.make_node("Conv", ["r1", "w2"], ["c2"], name="asymmetric", pads=[0, 1, 2, 1]),
        helper.make_node("AveragePool", ["c2"], ["p1"], name="avg_padded", kernel_shape=[3, 3], pads=[1, 1, 1, 1],
                         count_include_pad=1),
        helper.make_node("GlobalAveragePool", ["p1"], ["g"], name="gap"),
        helper.make_node("Squeeze", ["g", "axes"], ["s"], name="squeeze"),
        helper.make_node("Gemm", ["s", "w3", "b3"], ["output"], name="gemm", transB=0, alpha=0.7, beta=0.3),
    ]
    inits = [init("w1", 4, 2, 3, 3), init("b1", 4), init("w2", 6, 4, 2, 2), init("w3", 6, 10), init("b3", 1, 10),
             numpy_helper.from_array(np.array(-0.5, np.float32), "lo"),
             numpy_helper.from_array(np.array(0.8, np.float32), "hi"),
             numpy_helper.from_array(np.array([2, 3], np.int64), "axes")]
    graph = helper.make_graph(nodes, "edge_ops",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 2, 7, 7])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 10])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path = os.path.join(out, "edge_ops.onnx")
    onnx.save(model, path)
    x = rng.random((4, 2, 7, 7), dtype=np.float32)
    y = ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    x.astype("<f4").tofile(os.path.join(out, "edge_ops.input.f32"))
    y.astype("<f4").tofile(os.path.join(out, "edge_ops.output.f32"))
    meta = {"input_shape": list(x.shape), "output_shape": list(y.shape), "opset": 13, "output": "logits",
            "batchnorm_folded": True, "ops": sorted({n.op_type for n in nodes})}
    with open(os.path.join(out, "edge_ops.json"), "w") as f:
        json.dump(meta, f, indent=1)
        f.write("\n")
    print(f"edge_ops: opset 13, {os.path.getsize(path)} bytes")


def main():
    os.makedirs(ARGS.out, exist_ok=True)
    only = set(filter(None, ARGS.only.split(",")))

    def wanted(name):
        return not only or name in only

    # Each fixture seeds torch itself, so writing a subset leaves the others' bytes as they were.
    for seed, name, make in [
        (0, "mlp", lambda: export("mlp", Mlp(), (1, 28, 28), 11, "logits")),
        (1, "lenet", lambda: export("lenet", LeNet5(), (1, 28, 28), "current", "log_softmax")),
        (2, "resnet_a", lambda: export("resnet_a", ResNet("A"), (3, 16, 16), 11, "logits")),
        (3, "resnet_b_unfolded", lambda: export("resnet_b_unfolded", ResNet("B"), (3, 16, 16), "current",
                                                "logits", fold_constants=False)),
        (4, "dwsep", lambda: export("dwsep", DepthwiseSeparable(), (3, 16, 16), 13, "softmax",
                                    fold_constants=False)),
    ]:
        if wanted(name):
            torch.manual_seed(seed)
            make()
    if wanted("edge_ops"):
        edge_ops()
    if wanted("nhwc_keras"):
        nhwc_keras()


if __name__ == "__main__":
    with torch.no_grad():
        main()
