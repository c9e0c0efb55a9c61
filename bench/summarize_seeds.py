"""Seed-averaged tables of bench/run_calibration.sh, bench/run_adaround.sh and bench/run_mixed.sh (standard
library only).

Usage: python3 bench/summarize_seeds.py calibration|calibration-compact|adaround|mixed [RESULTS_DIR] [--seed S]
[--prefix NAME] (default bench/results/calibration, .../adaround or .../mixed; --seed: that seed's reports only,
as the drivers print after each run; --prefix: run_mixed.sh's NAME, e.g. resnet20)

Reads every report the drivers wrote (`MODEL-wBa8-...-seedS.json`) and prints one markdown table: per row the mean
engine accuracy over the seeds found, the mean drop vs each seed's own f32 model (pp; negative: the quantized model
scored higher) and the smallest and largest drop, plus whether the engine and the integer simulation agreed on
every test image of every run.
"""
import glob
import json
import os
import re
import sys
from statistics import mean


def cell(runs):
    drops = [(r["baseline_accuracy"] - r["test_accuracy"]) * 100 for r in runs]
    acc = mean(r["test_accuracy"] for r in runs) * 100
    if len(runs) == 1:
        return f"{acc:.2f}% ({drops[0]:+.2f} pp)"
    return f"{acc:.2f}% ({mean(drops):+.2f} pp, {min(drops):+.2f}..{max(drops):+.2f})"


def load(out, only=None):
    """{row key without the seed: [report, ...]} and the seeds found (`only`: that seed alone)."""
    rows, seeds = {}, set()
    for path in sorted(glob.glob(os.path.join(out, "*-seed*.json"))):
        m = re.match(r"(.+)-seed(\d+)\.json$", os.path.basename(path))
        if not m or (only is not None and int(m[2]) != only):
            continue
        seeds.add(int(m[2]))
        with open(path) as f:
            rows.setdefault(m[1], []).append(json.load(f))
    return rows, sorted(seeds)


def f32_line(rows, seeds):
    parts = []
    for model in ("mlp", "lenet5"):
        base = {}
        for key, runs in rows.items():
            if key.startswith(model + "-"):
                for r in runs:
                    base.setdefault(round(r["baseline_accuracy"] * 100, 2), None)
        parts.append(f"{model} {', '.join(f'{b:.2f}%' for b in base)}")
    return f"Seeds {', '.join(map(str, seeds))}; f32 of the float models: " + "; ".join(parts)


def agreement(rows):
    runs = [r for rs in rows.values() for r in rs]
    bad = sum(1 for r in runs if r["engine_simulation_mismatches"] != 0)
    return f"engine = simulation on every test image in {len(runs) - bad} of {len(runs)} runs"


def calibration(rows):
    calibs = ["minmax", "percentile:99.9", "percentile:99.99", "mse", "entropy"]
    print("| model | weights | activation calibrator | weight scales | bias correction | engine accuracy (mean drop, range) |")
    print("|---|---|---|---|---|---|")
    for model in ("mlp", "lenet5"):
        for bits in (8, 4):
            for calib in calibs:
                for wcal in ("minmax", "mse"):
                    for bc in ("", "-bc") if bits == 4 else ("",):
                        runs = rows.get(f"{model}-w{bits}a8-{calib}-w{wcal}{bc}")
                        if runs:
                            print(f"| {model} | W{bits}A8 | {calib} | {wcal} | {'yes' if bc else 'no'} | {cell(runs)} |")


def calibration_compact(rows):
    """One row per activation calibrator, one column per setting: the mean drop over the seeds (pp)."""
    cols = [(m, b, w, bc) for m in ("mlp", "lenet5") for (b, w, bc) in
            ((8, "minmax", ""), (8, "mse", ""), (4, "minmax", ""), (4, "minmax", "-bc"), (4, "mse", ""),
             (4, "mse", "-bc"))]
    head = [f"{'MLP' if m == 'mlp' else 'LeNet'} W{b}A8{', mse weights' if w == 'mse' else ''}{' + bias corr.' if bc else ''}"
            for (m, b, w, bc) in cols]
    print("| activation calibrator | " + " | ".join(head) + " |")
    print("|---|" + "---|" * len(cols))
    for calib in ["minmax", "percentile:99.9", "percentile:99.99", "mse", "entropy"]:
        cells = []
        for (m, b, w, bc) in cols:
            runs = rows.get(f"{m}-w{b}a8-{calib}-w{w}{bc}", [])
            cells.append(f"{mean((r['baseline_accuracy'] - r['test_accuracy']) * 100 for r in runs):+.2f}"
                         if runs else "-")
        print(f"| `{calib}` | " + " | ".join(cells) + " |")


def adaround(rows):
    names = {"minmax": "nearest, min-max scales", "mse": "nearest, MSE scales",
             "bc": "nearest, MSE scales + bias correction", "adaround-only": "AdaRound, MSE scales",
             "adaround": "AdaRound, MSE scales + bias correction"}
    ternary = {"minmax": "nearest, ternary (TWN threshold)", "bc": "nearest, ternary + bias correction",
               "adaround-only": "AdaRound on the ternary grid",
               "adaround": "AdaRound on the ternary grid + bias correction"}
    print("| model | weights | rounding | engine accuracy (mean drop, range) |")
    print("|---|---|---|---|")
    for model in ("mlp", "lenet5"):
        for bits in (4, 3, 2):
            for rule in names:
                runs = rows.get(f"{model}-w{bits}a8-{rule}")
                if runs:
                    name = ternary[rule] if bits == 2 else names[rule]
                    print(f"| {model} | W{bits}A8 | {name} | {cell(runs)} |")


def mixed(out, prefix, only, qat_gn=False):
    """run_mixed.sh's reports: per activation width, budget and method, every seed's mixed accuracy beside the
    best uniform allocation of equal or smaller size (PTQ: from the `mixed` report; QAT: the uniform QAT runs).
    qat_gn: the QAT rows are the Gauss-Newton allocations' (`QAT_COST=gn`)."""
    p = f"{prefix}-" if prefix else ""
    seeds = sorted({int(m[1]) for f in glob.glob(os.path.join(out, f"{p}mixed-a*-seed*.json"))
                    if (m := re.search(r"-seed(\d+)\.json$", f)) and (only is None or int(m[1]) == only)})
    if not seeds:
        sys.exit(f"{out}: no {p}mixed-*.json reports")

    def load_json(name):
        path = os.path.join(out, f"{p}{name}")
        if not os.path.exists(path):
            return None
        with open(path) as f:
            return json.load(f)

    def best_fit(cands, size):
        fits = [c for c in cands if c[1] <= size]
        return max(fits, key=lambda c: c[2]) if fits else None

    f32 = []
    print("| A | budget | method | per-layer bits | mixed | best uniform of equal or smaller size | mixed - uniform (pp) |")
    print("|---|---|---|---|---|---|---|")
    for a in (8, 4):
        for b in ("2.5", "3"):
            rows = {"PTQ": [], "QAT": []}
            for seed in seeds:
                m = load_json(f"mixed-a{a}-b{b}-seed{seed}.json")
                if m is None:
                    continue
                f32.append((seed, m["float_accuracy"]))
                bits = ",".join(map(str, m["allocation"]["bits"]))
                size = m["report"]["model_bytes"]
                u = best_fit([(f"W{x['bits']}", x["model_bytes"], x["accuracy"]) for x in m["uniform"]], size)
                rows["PTQ"].append((bits, m["measured_accuracy"], u))
                q = load_json(f"qat-{'gn-' if qat_gn else ''}mixed-a{a}-b{b}-seed{seed}.json")
                if q is None:
                    continue
                if qat_gn:
                    g = load_json(f"gn-mixed-a{a}-b{b}-seed{seed}.json")
                    bits = ",".join(map(str, g["allocation"]["bits"])) if g else "?"
                uq = []
                for f in glob.glob(os.path.join(out, f"{p}qat-uniform-w*a{a}-seed{seed}.json")):
                    w = re.search(r"qat-uniform-w(\d+)a", f)[1]
                    with open(f) as fh:
                        r = json.load(fh)
                    uq.append((f"W{w}", r["model_bytes"], r["test_accuracy"]))
                rows["QAT"].append((bits, q["test_accuracy"], best_fit(uq, q["model_bytes"])))
            for method, rs in rows.items():
                if not rs:
                    continue
                accs = " / ".join(f"{r[1] * 100:.2f}" for r in rs)
                us = [r[2] for r in rs]
                uniform = " / ".join(f"{u[0]} {u[2] * 100:.2f}" if u else "none" for u in us)
                diffs = " / ".join(f"{(r[1] - r[2][2]) * 100:+.2f}" if r[2] else "-" for r in rs)
                if len(rs) > 1:
                    accs += f" (mean {mean(r[1] for r in rs) * 100:.2f}%)"
                    if all(us):
                        uniform += f" (mean {mean(u[2] for u in us) * 100:.2f}%)"
                print(f"| A{a} | {b} | {method} | {' ; '.join(r[0] for r in rs)} | {accs} | {uniform} | {diffs} |")
    f32s = {s: a for s, a in f32}
    print(f"\nSeeds {', '.join(map(str, seeds))}; f32 " + ", ".join(f"{a * 100:.2f}%" for a in f32s.values()))


def main():
    args = sys.argv[1:]
    only = None
    prefix = ""
    if "--seed" in args:
        i = args.index("--seed")
        only = int(args[i + 1])
        del args[i:i + 2]
    if "--prefix" in args:
        i = args.index("--prefix")
        prefix = args[i + 1]
        del args[i:i + 2]
    qat_gn = "--qat-gn" in args
    if qat_gn:
        args.remove("--qat-gn")
    if not args or args[0] not in ("calibration", "calibration-compact", "adaround", "mixed"):
        sys.exit("usage: summarize_seeds.py calibration|calibration-compact|adaround|mixed [RESULTS_DIR] "
                 "[--seed S] [--prefix NAME] [--qat-gn]")
    kind = args[0]
    out = args[1] if len(args) > 1 else os.path.join(os.path.dirname(__file__), "results",
                                                     kind.removesuffix("-compact"))
    if kind == "mixed":
        mixed(out, prefix, only, qat_gn)
        return
    rows, seeds = load(out, only)
    if not rows:
        sys.exit(f"{out}: no reports")
    print(f32_line(rows, seeds))
    print(agreement(rows))
    print()
    if kind == "calibration":
        calibration(rows)
    elif kind == "calibration-compact":
        calibration_compact(rows)
    else:
        adaround(rows)


if __name__ == "__main__":
    main()
