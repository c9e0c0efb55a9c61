"""Summarizes lowbit demo reports over seeds (markdown), or the training-time comparison (--timing)."""
import json
import sys


def summarize(paths):
    demos = [json.load(open(p)) for p in paths]
    base = [d["baseline_accuracy"] for d in demos]
    print(f"| recipe | " + " | ".join(f"seed {d['seed']}" for d in demos) + " | mean | mean drop vs f32 | ratio |")
    print("|---|" + "---|" * (len(demos) + 3))
    print("| f32 | " + " | ".join(f"{b*100:.2f}%" for b in base) + f" | {sum(base)/len(base)*100:.2f}% | - | 1.000 |")
    for i, run in enumerate(demos[0]["runs"]):
        accs = [d["runs"][i]["test_accuracy"] for d in demos]
        drops = [(b - a) * 100 for a, b in zip(accs, base)]
        mism = sum(d["runs"][i]["engine_simulation_mismatches"] or 0 for d in demos)
        print(f"| {run['run']} | " + " | ".join(f"{a*100:.2f}%" for a in accs)
              + f" | {sum(accs)/len(accs)*100:.2f}% | {sum(drops)/len(drops):.2f} pp | {run['compression_ratio']:.3f} |"
              + ("" if mism == 0 else f" engine/simulation mismatches: {mism}"))


def timing(f32_path, qat_path, torch_path):
    f32 = json.load(open(f32_path))
    qat = json.load(open(qat_path))
    pt = json.load(open(torch_path))
    t_f32 = sum(e["seconds"] for e in f32["epochs"])
    t_qat = sum(e["seconds"] for e in qat["epochs"])
    t_pt = sum(pt["runs"][0]["epoch_seconds"])
    print(f"| | 5 epochs (s) | s/epoch | test accuracy |")
    print("|---|---|---|---|")
    print(f"| lowbit f32 | {t_f32:.2f} | {t_f32/5:.3f} | {f32['test_accuracy']*100:.2f}% |")
    print(f"| lowbit QAT W4A8 | {t_qat:.2f} | {t_qat/5:.3f} | {qat['test_accuracy']*100:.2f}% |")
    print(f"| PyTorch {pt['torch']} f32, {pt['threads']} threads | {t_pt:.2f} | {t_pt/5:.3f} | {pt['runs'][0]['test_accuracy']*100:.2f}% |")
    print(f"\nlowbit f32 / PyTorch = {t_f32/t_pt:.3f} (target <= 0.333); QAT / lowbit f32 = {t_qat/t_f32:.2f} (target <= 1.5)")


if __name__ == "__main__":
    if sys.argv[1] == "--timing":
        timing(*sys.argv[2:5])
    else:
        summarize(sys.argv[1:])
