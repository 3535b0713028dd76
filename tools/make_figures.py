"""Draw the README's figures from committed data: the demo's KD vs CE-only curves and the real-teacher results.

`python tools/make_figures.py --demo-run runs/demo` first copies a finished `kdkit demo` run's history files and
results (without its machine paths) into docs/demo/; without it the figures are redrawn from what docs/ holds, so
anyone can check them. Figures: docs/demo/eval.png and docs/real_teacher.png.
"""
import argparse, json, shutil, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT/'docs'/'demo'
DPI = 100

def copy_demo_run(run_dir:Path):
    "Copy a demo run's histories and its results and parameters (no machine paths) into docs/demo/."
    run_dir = Path(run_dir)
    for name in ('history.jsonl', 'history_ce_only.jsonl', 'metrics.json'):
        if not (run_dir/name).is_file(): sys.exit(f'{run_dir/name}: missing (is {run_dir} a finished `kdkit demo --out` folder?)')
    DEMO.mkdir(parents=True, exist_ok=True)
    for name in ('history.jsonl', 'history_ce_only.jsonl'): shutil.copyfile(run_dir/name, DEMO/name)
    m = json.loads((run_dir/'metrics.json').read_text())
    keep = {k: m[k] for k in ('results', 'seconds', 'params') if k in m}
    (DEMO/'results.json').write_text(json.dumps(keep, indent=1) + '\n')

def demo_figure():
    "The demo's held-out CE and KL of the KD student and the CE-only baseline, the teacher's CE as a line."
    from kdkit.plots import load_history, plot_eval_comparison
    res = json.loads((DEMO/'results.json').read_text())['results']
    runs = {'KD (alpha 0.5)': load_history(DEMO/'history.jsonl'), 'CE only': load_history(DEMO/'history_ce_only.jsonl')}
    # both runs start from the same pruned student: its scores are their step 0
    return plot_eval_comparison(runs, teacher_ce=res['teacher']['ce'], start=res['student_before'])

def real_teacher_figure():
    "The real-teacher run's held-out CE, KL and top-1 agreement per model, from bench/results/real_teacher.json."
    from kdkit.plots import plot_heldout_results
    sys.path.insert(0, str(ROOT))
    from bench.report import MODEL_NAMES
    d = json.loads((ROOT/'bench'/'results'/'real_teacher.json').read_text())
    return plot_heldout_results(d['results'], names=MODEL_NAMES)

if __name__ == '__main__':
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--demo-run', type=Path, help='a finished `kdkit demo --out` folder to copy into docs/demo/ first')
    a = ap.parse_args()
    if a.demo_run: copy_demo_run(a.demo_run)
    demo_figure().savefig(DEMO/'eval.png', dpi=DPI)
    real_teacher_figure().savefig(ROOT/'docs'/'real_teacher.png', dpi=DPI)
    print('wrote docs/demo/eval.png and docs/real_teacher.png')
