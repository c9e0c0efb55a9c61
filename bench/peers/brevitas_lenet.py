"""PyTorch f32 and Brevitas QAT peer for LeNet-5 on an MNIST-format directory (issue 3).

Same recipe as `lowbit train --model lenet5`: conv 6@5x5 pad 2, ReLU, maxpool 2, conv 16@5x5, ReLU, maxpool 2,
fc 120, fc 84, fc 10; Adam 1e-3 (eps 1e-7), batch 64, Glorot-uniform init, zero bias. `--weight-bits 0` trains plain
f32 PyTorch; otherwise Brevitas QuantConv2d / QuantLinear (per-channel weight scales, `weight_bit_width`) and
QuantReLU (`bit_width = --act-bits`), from scratch. Prints one JSON line per seed.
"""
import argparse
import math
import json
import time

import numpy as np
import torch
from torch import nn

from common import DEFAULT_DIR, load


def make_model(weight_bits, act_bits):
    if weight_bits == 0:
        conv, linear = nn.Conv2d, nn.Linear
        relu = lambda: nn.ReLU()  # noqa: E731
    else:
        import brevitas.nn as qnn

        if weight_bits == 1:
            # Brevitas' default integer weight quantizer is narrow-range, so at 1 bit its only level is 0 (every
            # weight vanishes and training stays at 10%). Binary weights need its binary quantizer; the scale is
            # made the per-channel mean |w| (XNOR-Net / lowbit's binary convention) instead of the constant 0.1.
            from brevitas.core.function_wrapper import TensorClamp
            from brevitas.inject.enum import ScalingImplType, ScalingPerOutputType, StatsOp
            from brevitas.quant.binary import SignedBinaryWeightPerTensorConst

            class BinaryWeightPerChannelMean(SignedBinaryWeightPerTensorConst):
                scaling_impl_type = ScalingImplType.STATS
                scaling_stats_op = StatsOp.AVE
                scaling_per_output_type = ScalingPerOutputType.CHANNEL
                tensor_clamp_impl = TensorClamp

            wq = {"weight_quant": BinaryWeightPerChannelMean}
        else:
            wq = {"weight_bit_width": weight_bits, "weight_scaling_per_output_channel": True}

        def conv(*a, **k):
            return qnn.QuantConv2d(*a, **wq, **k)

        def linear(*a, **k):
            return qnn.QuantLinear(*a, **wq, **k)

        relu = lambda: qnn.QuantReLU(bit_width=act_bits)  # noqa: E731
    model = nn.Sequential(
        conv(1, 6, 5, padding=2), relu(), nn.MaxPool2d(2),
        conv(6, 16, 5), relu(), nn.MaxPool2d(2), nn.Flatten(),
        linear(400, 120), relu(), linear(120, 84), relu(), linear(84, 10),
    )
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.xavier_uniform_(m.weight)
            nn.init.zeros_(m.bias)
    return model


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=DEFAULT_DIR)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--seeds", default="1")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--weight-bits", type=int, default=0, help="0 = plain f32 PyTorch")
    ap.add_argument("--act-bits", type=int, default=8)
    ap.add_argument("--limit", type=int, default=0, help="use only the first N training images (smoke test)")
    ap.add_argument("--schedule", choices=["constant", "cosine"], default="constant",
                    help="cosine: per-step annealing from 1e-3 to 0, the last step at 0 (lowbit's --schedule cosine)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    xtr, ytr, xte, yte = load(args.data)
    if args.limit:
        xtr, ytr = xtr[: args.limit], ytr[: args.limit]
    xtr = torch.from_numpy(xtr.astype(np.float32)[:, None] / 255.0)
    xte = torch.from_numpy(xte.astype(np.float32)[:, None] / 255.0)
    ytr = torch.from_numpy(ytr.astype(np.int64))
    yte = torch.from_numpy(yte.astype(np.int64))
    for seed in [int(s) for s in args.seeds.split(",")]:
        torch.manual_seed(seed)
        model = make_model(args.weight_bits, args.act_bits)
        opt = torch.optim.Adam(model.parameters(), lr=1e-3, eps=1e-7)
        total = args.epochs * ((len(xtr) + args.batch_size - 1) // args.batch_size)
        span = max(total - 1, 1)
        sched = None
        if args.schedule == "cosine":
            sched = torch.optim.lr_scheduler.LambdaLR(
                opt, lambda step: max(0.5 * (1.0 + math.cos(math.pi * min(step / span, 1.0))), 1e-12))
        loss_fn = nn.CrossEntropyLoss()
        epoch_seconds = []
        for _ in range(args.epochs):
            model.train()
            t0 = time.perf_counter()
            perm = torch.randperm(len(xtr))
            for i in range(0, len(xtr), args.batch_size):
                idx = perm[i:i + args.batch_size]
                opt.zero_grad(set_to_none=True)
                loss_fn(model(xtr[idx]), ytr[idx]).backward()
                opt.step()
                if sched is not None:
                    sched.step()
            epoch_seconds.append(time.perf_counter() - t0)
        model.eval()
        with torch.no_grad():
            acc = sum((model(xte[i:i + 1000]).argmax(1) == yte[i:i + 1000]).sum().item()
                      for i in range(0, len(xte), 1000)) / len(xte)
        print(json.dumps({"peer": "brevitas" if args.weight_bits else "pytorch", "torch": torch.__version__,
                          "weight_bits": args.weight_bits or 32, "act_bits": args.act_bits if args.weight_bits else 32,
                          "seed": seed, "epochs": args.epochs, "batch_size": args.batch_size,
                          "schedule": args.schedule,
                          "train_samples": len(xtr), "test_accuracy": acc, "epoch_seconds": epoch_seconds}))


if __name__ == "__main__":
    main()
