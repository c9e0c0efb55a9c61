"""Quantization peers for issue 11, from an f32 model trained by resnet_train.py (its MODEL-seedS.pt).

Rows (--rows, comma-separated; every accuracy on the 10,000 Fashion-MNIST test images):
  ptq-x86     PyTorch post-training static quantization, FX graph mode (prepare_fx / convert_fx) with
              get_default_qconfig_mapping("x86"): per-channel symmetric int8 weights (PerChannelMinMaxObserver),
              uint8 activations from a HistogramObserver with reduce_range=True (codes 0..127: the x86 default,
              which keeps FBGEMM's vpmaddubsw pairs from saturating). Conv+BN(+ReLU) fused, the residual add and
              its ReLU become quantized add_relu. Calibration: the first --calib (2,000) training images. Run on
              the x86 (FBGEMM) integer kernels; the accuracy is theirs.
  ptq-x86-u8  The same with full-range uint8 activations (HistogramObserver, reduce_range=False): W8A8 proper.
  ptq-ort     ONNX Runtime quantize_static on the exported ONNX model after quant_pre_process (QuantFormat.QDQ,
              per_channel=True, int8 weights, uint8 activations, MinMax calibration on the same images), run by
              ORT's CPU provider.
  w4a4        Brevitas QAT fine-tuned from the f32 weights for --w4a4-epochs (3): every convolution and the fully
              connected layer with 4-bit per-channel weights, every activation feeding a convolution or the
              fully connected layer at 4 bits.
  w2a2        Brevitas QAT for --w2a2-epochs (5): 2-bit weights and activations, except the first convolution
              (8-bit weights; its input, the image, is exact 8-bit data) and the last layer (8-bit weights and an
              8-bit input, the pooled features).

Brevitas layers (the quantized twin of graph_models.py, same attribute names, f32 state_dict loaded into it):
  weights      QuantConv2d / QuantLinear, weight_quant = Int8WeightPerChannelFloat with
               scaling_impl_type = PARAMETER_FROM_STATS: a learned per-output-channel scale (symmetric,
               narrow range: codes -(2^(b-1)-1)..2^(b-1)-1, ternary at 2 bits, as lowbit's LSQ), initialised as
               LSQ does (step = 2 mean|w| / sqrt(Qp), Esser et al. 2020; --weight-init max: Brevitas' max|w|/Qp).
               Biases (fully connected layer only) stay float. The gradient of the scale is Brevitas' STE one,
               without LSQ's gradient scale g (Adam's per-parameter normalisation makes a constant g nearly moot).
  activations  after ReLU: QuantReLU(act_quant=Uint8ActPerTensorFloat, bit_width=b), unsigned per-tensor learned
               scale, initialised from the 99.999th percentile over the first 300 training steps, then learned
               (Brevitas' PARAMETER_FROM_STATS: LSQ-like). After ReLU6 (mobilenet): ReLU6 then
               QuantIdentity(act_quant=Uint8ActPerTensorFloat). Pooled features before the fully connected layer:
               QuantIdentity(Uint8ActPerTensorFloat).
  residual add the two operands are quantized separately, the conv+BN branch (and option B's 1x1 conv+BN shortcut)
               by QuantIdentity(act_quant=Int8ActPerTensorFloat, bit_width=--add-bits 8, signed); the identity /
               option-A shortcut is the block input, already on its ReLU quantizer's grid (zero padding keeps it
               there). They do not share a scale: an integer engine requantizes both operands to the output scale.
               The ReLU after the add is the block output's QuantReLU (act bits).
  batch norm   float, after the quantized convolution, batch statistics while fine-tuning; with per-channel weight
               scales, folding it into the convolution keeps the weights on a per-channel grid.
  accuracy     Brevitas fake-quantized forward in eval mode (simulation, not an integer engine).
Fine-tuning: Adam (eps 1e-7), batch 128, per-step cosine from --qat-lr (5e-4) to 0, torch.manual_seed(seed) before
it (shuffles), 2 threads. Prints one JSON line per row and a table on stderr.

Example: python resnet_quant.py --model resnet20 --weights /tmp/resnet-peers/resnet20-seed1.pt --seed 1
"""
import argparse
import copy
import json
import logging
import math
import os
import sys
import tempfile
import time
import warnings

import torch
from torch import nn

from graph_models import FloatLayers, make_model
from resnet_train import accuracy, common_args, export_onnx, tensors, train


def quiet():
    # torch.ao.quantization, the TorchScript ONNX exporter and Brevitas warn about deprecations on every call.
    for cat in (DeprecationWarning, FutureWarning, UserWarning):
        warnings.filterwarnings("ignore", category=cat)
    logging.getLogger().setLevel(logging.ERROR)


def ptq_fx(model, calib, full_range=False, chunk=100):
    """PyTorch FX post-training static quantization for the x86 backend (see the module docstring)."""
    from torch.ao.quantization import QConfig, get_default_qconfig_mapping
    from torch.ao.quantization.observer import HistogramObserver, default_per_channel_weight_observer
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    torch.backends.quantized.engine = "x86"
    mapping = get_default_qconfig_mapping("x86")
    if full_range:
        mapping = mapping.set_global(QConfig(activation=HistogramObserver.with_args(reduce_range=False),
                                             weight=default_per_channel_weight_observer))
    prepared = prepare_fx(copy.deepcopy(model).eval(), mapping, example_inputs=(calib[:1],))
    with torch.inference_mode():
        for i in range(0, len(calib), chunk):
            prepared(calib[i:i + chunk])
    return convert_fx(prepared)


class Calib:
    """onnxruntime CalibrationDataReader over a float array, `batch` images per call."""

    def __init__(self, x, name="x", batch=100):
        self.batches = iter([{name: x[i:i + batch]} for i in range(0, len(x), batch)])

    def get_next(self):
        return next(self.batches, None)


def ort_session(path, threads):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def ort_quantize(f32_path, int8_path, calib):
    """ONNX Runtime static QDQ int8: per-channel int8 weights, uint8 activations, MinMax calibration, after ORT's
    recommended pre-processing (quant_pre_process: shape inference and graph optimisation). Without it the
    TorchScript export's Identity nodes on the weights keep 13 of resnet20's 19 convolutions from fusing into
    QLinearConv (they run as DequantizeLinear -> float Conv -> QuantizeLinear, about 3x slower overall)."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(Calib, CalibrationDataReader):
        pass

    pre = int8_path + ".pre.onnx"
    quant_pre_process(f32_path, pre)
    try:
        quantize_static(pre, int8_path, Reader(calib), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    finally:
        os.remove(pre)


def ptq_ort(model, calib, xte, yte, threads):
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as d:
        f32_path, int8_path = os.path.join(d, "f32.onnx"), os.path.join(d, "int8.onnx")
        export_onnx(model, f32_path, tuple(calib.shape[1:]))
        ort_quantize(f32_path, int8_path, calib.numpy())
        sess = ort_session(int8_path, threads)
    x, y = xte.numpy(), yte.numpy()
    hits = sum(int((sess.run(None, {"x": x[i:i + 1000]})[0].argmax(1) == y[i:i + 1000]).sum())
               for i in range(0, len(x), 1000))
    return hits / len(x), ort.__version__


class BrevitasLayers(FloatLayers):
    """Brevitas modules at the quantization points of graph_models.py (see the module docstring)."""

    def __init__(self, weight_bits, act_bits, first_last_bits=None, add_bits=8):
        import brevitas.nn as qnn
        from brevitas.inject.enum import ScalingImplType
        from brevitas.quant.scaled_int import Int8ActPerTensorFloat, Int8WeightPerChannelFloat, Uint8ActPerTensorFloat

        class LearnedWeightPerChannel(Int8WeightPerChannelFloat):
            scaling_impl_type = ScalingImplType.PARAMETER_FROM_STATS

        self.qnn, self.wq, self.uq, self.sq = qnn, LearnedWeightPerChannel, Uint8ActPerTensorFloat, Int8ActPerTensorFloat
        self.w, self.a, self.add = weight_bits, act_bits, add_bits
        self.edge = first_last_bits or None

    def conv(self, cin, cout, k, stride=1, groups=1, first=False):
        bits = self.edge if first and self.edge else self.w
        return self.qnn.QuantConv2d(cin, cout, k, stride=stride, padding=k // 2, groups=groups, bias=False,
                                    weight_quant=self.wq, weight_bit_width=bits)

    def linear(self, cin, cout, last=True):
        return self.qnn.QuantLinear(cin, cout, bias=True, weight_quant=self.wq,
                                    weight_bit_width=self.edge or self.w)

    def relu(self):
        return self.qnn.QuantReLU(act_quant=self.uq, bit_width=self.a)

    def relu6(self):
        return nn.Sequential(nn.ReLU6(), self.qnn.QuantIdentity(act_quant=self.uq, bit_width=self.a))

    def pre_add(self):
        return self.qnn.QuantIdentity(act_quant=self.sq, bit_width=self.add)

    def signed(self):
        return self.qnn.QuantIdentity(act_quant=self.sq, bit_width=self.a)

    def head(self):
        return self.qnn.QuantIdentity(act_quant=self.uq, bit_width=self.edge or self.a)


def brevitas_twin(name, state, in_channels, layers, weight_init):
    """The Brevitas model with the f32 weights loaded and the weight scales initialised."""
    import brevitas.nn as qnn

    qmodel = make_model(name, in_channels, layers=layers)
    missing, unexpected = qmodel.load_state_dict(state, strict=False)
    if unexpected or any("quant" not in k for k in missing):
        raise SystemExit(f"{name}: f32 state does not fit the Brevitas twin (missing {missing}, unexpected "
                         f"{unexpected})")
    with torch.no_grad():
        for m in qmodel.modules():
            if isinstance(m, (qnn.QuantConv2d, qnn.QuantLinear)):
                m.quant_weight()  # Brevitas initialises the learned scale from max|w| on the first call
                if weight_init == "lsq":
                    impl = m.weight_quant.tensor_quant.scaling_impl
                    qp = 2 ** (int(m.quant_weight().bit_width) - 1) - 1
                    w = m.weight.abs().flatten(1)
                    # Brevitas learns the threshold t = step * Qp; LSQ's step 2 mean|w| / sqrt(Qp).
                    impl.value.copy_((2 * w.mean(1) * math.sqrt(qp)).reshape(impl.value.shape))
    return qmodel


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    common_args(ap)
    ap.add_argument("--model", default="resnet20", help="resnet20, resnet20b, resnetN[b] or mobilenet")
    ap.add_argument("--weights", required=True, help="state_dict written by resnet_train.py --out")
    ap.add_argument("--seed", type=int, default=1, help="fine-tuning shuffles (default %(default)s)")
    ap.add_argument("--rows", default="ptq-x86,ptq-x86-u8,ptq-ort,w4a4,w2a2")
    ap.add_argument("--calib", type=int, default=2000, help="calibration images: the first N training images")
    ap.add_argument("--w4a4-epochs", type=int, default=3)
    ap.add_argument("--w2a2-epochs", type=int, default=5)
    ap.add_argument("--qat-lr", type=float, default=5e-4, help="fine-tuning rate, cosine to 0 (default %(default)s)")
    ap.add_argument("--add-bits", type=int, default=8, help="bits of the residual-add operands (default 8)")
    ap.add_argument("--weight-init", choices=["lsq", "max"], default="lsq")
    args = ap.parse_args()
    quiet()
    torch.set_num_threads(args.threads)
    data = tensors(args.data, args.limit)
    xtr, _, xte, yte = data
    shape = tuple(xtr.shape[1:])
    state = torch.load(args.weights, map_location="cpu")
    model = make_model(args.model, shape[0])
    model.load_state_dict(state)
    model.eval()
    f32 = accuracy(model, xte, yte)
    calib = xtr[:args.calib].contiguous()
    base = {"model": args.model, "weights": os.path.basename(args.weights), "seed": args.seed, "f32_accuracy": f32,
            "torch": torch.__version__, "threads": args.threads}
    rows = []

    def emit(row):
        row = {**base, **row, "drop_pp": round(100 * (f32 - row["accuracy"]), 2)}
        print(json.dumps(row), flush=True)
        rows.append(row)

    for kind in args.rows.split(","):
        t0 = time.perf_counter()
        if kind in ("ptq-x86", "ptq-x86-u8"):
            q = ptq_fx(model, calib, full_range=kind == "ptq-x86-u8")
            emit({"row": kind, "peer": "pytorch fx ptq x86", "weight_bits": 8, "act_bits": 8,
                  "act_range": "0..255" if kind == "ptq-x86-u8" else "0..127 (reduce_range)",
                  "calib": len(calib), "accuracy": accuracy(q, xte, yte),
                  "seconds": round(time.perf_counter() - t0, 1)})
        elif kind == "ptq-ort":
            acc, version = ptq_ort(model, calib, xte, yte, args.threads)
            emit({"row": kind, "peer": f"onnxruntime {version} quantize_static QDQ per-channel", "weight_bits": 8,
                  "act_bits": 8, "calib": len(calib), "accuracy": acc, "seconds": round(time.perf_counter() - t0, 1)})
        elif kind in ("w4a4", "w2a2"):
            import brevitas

            bits, epochs, edge = (4, args.w4a4_epochs, None) if kind == "w4a4" else (2, args.w2a2_epochs, 8)
            layers = BrevitasLayers(bits, bits, first_last_bits=edge, add_bits=args.add_bits)
            qmodel = brevitas_twin(args.model, state, shape[0], layers, args.weight_init)
            start = accuracy(qmodel, xte, yte)
            torch.manual_seed(args.seed)
            per_epoch = []
            seconds = train(qmodel, data, args.batch_size, epochs, "warmup-cosine", args.qat_lr, 0.0,
                            lambda e, m: per_epoch.append(accuracy(m, xte, yte)))
            emit({"row": kind, "peer": f"brevitas {brevitas.__version__} qat", "weight_bits": bits, "act_bits": bits,
                  "first_last_bits": edge or bits, "add_bits": args.add_bits, "weight_init": args.weight_init,
                  "epochs": epochs, "qat_lr": args.qat_lr, "accuracy_before_finetune": start,
                  "accuracy_per_epoch": per_epoch, "accuracy": per_epoch[-1],
                  "epoch_seconds": [round(s, 1) for s in seconds]})
        else:
            raise SystemExit(f"--rows: unknown row {kind!r} (ptq-x86, ptq-x86-u8, ptq-ort, w4a4, w2a2)")
    print(f"\n{args.model} ({base['weights']}), f32 {f32:.2%}", file=sys.stderr)
    print(f"{'row':<11} {'accuracy':>9} {'drop (pp)':>9}", file=sys.stderr)
    for r in rows:
        print(f"{r['row']:<11} {r['accuracy']:>9.2%} {r['drop_pp']:>9.2f}", file=sys.stderr)


if __name__ == "__main__":
    main()
