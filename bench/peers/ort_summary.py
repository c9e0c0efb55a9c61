"""Tables of bench/run_ort_compare.sh from its JSON results (standard library only).

Usage: python3 bench/peers/ort_summary.py bench/results/ort-compare

Reads ort-MODEL-seedS.jsonl (bench/peers/ort_quantize.py ort) and lowbit-MODEL-seedS-ROW.json (lowbit's reports).
Accuracy is on the 10,000 test images; drop = the model's own f32 accuracy minus the quantized one, in percentage
points (negative: the quantized model scored higher), averaged over the seeds found; "range" is the smallest and
largest drop over those seeds. lowbit's accuracy is its integer engine's; ORT's is its CPU provider's with every
graph optimisation on (its integer QLinear kernels where it fuses the QDQ pattern).
"""
import glob
import json
import os
import re
import sys
from statistics import mean

MODELS = [("mlp", "MLP 784-64-10"), ("lenet5", "LeNet-5"), ("resnet20", "ResNet-20")]
ORT8 = [(f"{m}-{a}", f"ORT {m}, {'uint8' if a == 'u8' else 'int8'} act.") for a in ("u8", "s8")
        for m in ("MinMax", "Entropy", "Percentile")] + [("Entropy2048-u8", "ORT Entropy 2048 bins, uint8 act.")]
LOWBIT8 = [(f"w8a8-{c}-w{w}", f"lowbit {c}, {w} weights") for c in ("minmax", "percentile:99.99", "mse", "entropy")
           for w in ("minmax", "mse")]
ORT4 = [(f"{m}-w4", f"ORT {m}, int4 weights (nearest)") for m in ("MinMax", "Entropy", "Percentile", "Entropy2048")]
LOWBIT4 = [("w4a8-nearest", "lowbit W4A8 nearest, min-max weights", 4),
           ("w4a8-adaround", "lowbit W4A8 AdaRound, MSE weights", 4),
           ("w4a8-adaround-bc", "lowbit W4A8 AdaRound + bias corr., MSE weights", 4),
           ("w4a8-adaround10k", "lowbit W4A8 AdaRound 10,000 iterations per layer, MSE weights", 4),
           ("w3a8-adaround-bc", "lowbit W3A8 AdaRound + bias corr., MSE weights", 3),
           ("w2a8-adaround-bc", "lowbit W2A8 AdaRound + bias corr., ternary", 2),
           ("lsq-w4a4", "lowbit LSQ W4A4 QAT fine-tuning (imported model)", 4)]


def load(out):
    """{(model, seed): {"ort": {row: dict}, "lowbit": {row: dict}}}"""
    runs = {}
    for path in glob.glob(os.path.join(out, "ort-*.jsonl")):
        m = re.match(r"ort-(\w+)-seed(\d+)\.jsonl$", os.path.basename(path))
        if not m:
            continue
        with open(path) as f:
            rows = {r["row"]: r for r in (json.loads(line) for line in f if line.startswith("{"))}
        runs.setdefault((m[1], int(m[2])), {"ort": {}, "lowbit": {}})["ort"] = rows
    for path in glob.glob(os.path.join(out, "lowbit-*.json")):
        m = re.match(r"lowbit-(\w+)-seed(\d+)-(.+)\.json$", os.path.basename(path))
        if not m:
            continue
        with open(path) as f:
            runs.setdefault((m[1], int(m[2])), {"ort": {}, "lowbit": {}})["lowbit"][m[3]] = json.load(f)
    return runs


def seeds_of(runs, model):
    return sorted(s for (m, s) in runs if m == model)


def lowbit_f32(run):
    for r in run["lowbit"].values():
        if "baseline_accuracy" in r:
            return r["baseline_accuracy"]
    return None


def cell(accs_and_drops):
    """'88.91% (+0.05 pp, -0.02..+0.10)' over seeds, or '-'."""
    pts = [(a, d) for a, d in accs_and_drops if a is not None]
    if not pts:
        return "-"
    acc = mean(a for a, _ in pts) * 100
    drops = [d * 100 for _, d in pts]
    if len(pts) == 1:
        return f"{acc:.2f}% ({drops[0]:+.2f} pp)"
    return f"{acc:.2f}% ({mean(drops):+.2f} pp, {min(drops):+.2f}..{max(drops):+.2f})"


def ort_point(run, row, key="accuracy"):
    r = run["ort"].get(row)
    if r is None or key not in r:
        return None, None
    return r[key], r["f32_accuracy"] - r[key]


def lowbit_point(run, row):
    r = run["lowbit"].get(row)
    if r is None:
        return None, None
    # The drop against lowbit's own f32 accuracy of the imported model (equal to ORT's f32 in every run here).
    return r["test_accuracy"], r["baseline_accuracy"] - r["test_accuracy"]


def table(runs, rows, header):
    present = [(m, label) for m, label in MODELS if seeds_of(runs, m)]
    print(f"| {header} | " + " | ".join(f"{label} ({len(seeds_of(runs, m))} seed{'s' if len(seeds_of(runs, m)) > 1 else ''})"
                                        for m, label in present) + " |")
    print("|---|" + "---|" * len(present))
    for point, row, label in rows:
        cells = [cell([point(runs[(m, s)], row) for s in seeds_of(runs, m)]) for m, _ in present]
        if all(c == "-" for c in cells):
            continue
        print(f"| {label} | " + " | ".join(cells) + " |")
    print()


def errors(runs):
    seen = set()
    for (m, s), run in sorted(runs.items()):
        for row, r in run["ort"].items():
            if "error" in r and (row, r["error"]) not in seen:
                seen.add((row, r["error"]))
                print(f"- ORT {row} on {m} seed {s}: {r['error']}")


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else "bench/results/ort-compare"
    runs = load(out)
    print("f32 accuracy of each exported model: ORT f32, and lowbit f32 of the same file after `lowbit import`")
    print("| model | seed | ORT f32 | lowbit f32 | equal |")
    print("|---|---|---|---|---|")
    for (m, s), run in sorted(runs.items()):
        o = run["ort"].get("f32", {}).get("accuracy")
        lb = lowbit_f32(run)
        fmt = lambda a: "-" if a is None else f"{a * 100:.2f}%"  # noqa: E731
        print(f"| {m} | {s} | {fmt(o)} | {fmt(lb)} | {'yes' if o is not None and o == lb else 'no'} |")
    print()
    print("W8A8, per-channel weights: accuracy, mean drop vs f32 and its range over the seeds")
    table(runs, [(ort_point, r, label) for r, label in ORT8] + [(lowbit_point, r, label) for r, label in LOWBIT8],
          "W8A8 (calibration)")
    print("ORT's same QDQ models with graph optimisations off (float ops between DequantizeLinear and QuantizeLinear:"
          " its simulation, not its integer kernels)")
    table(runs, [(lambda run, row: ort_point(run, row, "accuracy_unfused"), r, label) for r, label in ORT8 + ORT4],
          "ORT unfused")
    print("4 bits and below (activations 8 bits unless stated)")
    table(runs, [(ort_point, r, label) for r, label in ORT4] + [(lowbit_point, r, label) for r, label, _ in LOWBIT4],
          "weights")
    mism = sum(r.get("engine_simulation_mismatches", 0) for run in runs.values() for r in run["lowbit"].values())
    n = sum(len(run["lowbit"]) for run in runs.values())
    print(f"lowbit engine vs its integer simulation: {mism} differing predictions over {n} runs x 10,000 images")
    weights = {}
    for run in runs.values():
        for row, r in run["ort"].items():
            if "weight_initializers" in r:
                weights.setdefault(row, set()).add(json.dumps(r["weight_initializers"], sort_keys=True))
    for row in [r for r, _ in ORT4]:
        if row in weights:
            print(f"ORT {row} weight initializers: {' / '.join(sorted(weights[row]))}")
    errors(runs)


if __name__ == "__main__":
    main()
