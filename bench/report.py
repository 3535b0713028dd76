"""The README's performance table, generated from bench/results/*.json (each benchmark writes one file).

A result file holds {"benchmark": ..., "machine": ..., "figures": [{"name", "value", "unit", "target", "command"}, ...]};
`performance_table()` renders every figure of every file as one markdown table, in file-name order.
"""
import json
from pathlib import Path

RESULTS = Path(__file__).resolve().parent/'results'

def load_results(results_dir=RESULTS) -> list:
    "Every benchmark result file, parsed, in file-name order (files without 'figures' are skipped)."
    out = []
    for p in sorted(Path(results_dir).glob('*.json')):
        d = json.loads(p.read_text())
        if 'figures' in d: out.append(dict(d, file=p.name))
    return out

def _fmt(v):
    if isinstance(v, bool) or v is None: return str(v)
    if isinstance(v, (int, float)): return f'{v:.4g}' if abs(v) < 1e5 else f'{v:,.0f}'
    return str(v)

def performance_rows(results_dir=RESULTS) -> list:
    "One row per figure: (benchmark, figure, value, unit, target, machine, command)."
    rows = []
    for d in load_results(results_dir):
        machine = d.get('machine', '')
        if isinstance(machine, dict): machine = ', '.join(f'{v}' for v in machine.values())
        for f in d['figures']:
            rows.append((d.get('benchmark', d['file']), f['name'], _fmt(f['value']), f.get('unit', ''),
                         _fmt(f.get('target')) if f.get('target') is not None else '', machine, f.get('command', d.get('command', ''))))
    return rows

def performance_table(results_dir=RESULTS) -> str:
    "The markdown table of every benchmark figure with its target, machine and command."
    lines = ['| benchmark | figure | value | unit | target | machine | command |', '|---|---|---|---|---|---|---|']
    lines += ['| ' + ' | '.join(str(c).replace('|', '\\|') if i != 6 else f'`{c}`' for i, c in enumerate(r)) + ' |'
              for r in performance_rows(results_dir)]
    return '\n'.join(lines)

def real_teacher_table(results_dir=RESULTS) -> str:
    "The real-teacher run's held-out comparison (bench/results/real_teacher.json) as markdown, with its command."
    p = Path(results_dir)/'real_teacher.json'
    if not p.exists(): return '_The real-teacher run has not been recorded: run `python bench/bench_real_teacher.py`._'
    d = json.loads(p.read_text())
    names = {'teacher': 'teacher', 'student_before': 'pruned student', 'student_kd': 'student after KD', 'student_ce_only': 'CE-only baseline'}
    lines = ['| model | held-out CE | KL to teacher | top-1 agreement |', '|---|---|---|---|']
    lines += [f"| {names.get(k, k)} | {r['ce']:.4f} | {r['kl']:.4f} | {r['top1_agreement']:.4f} |" for k, r in d['results'].items()]
    return '\n'.join(lines) + f"\n\n{d.get('note', '')}\nCommand: `{d['command']}` ({d.get('machine', '')}, {d.get('seconds', '?')} s)."
