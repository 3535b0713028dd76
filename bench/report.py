"""The README's result tables and bench/README.md, generated from bench/results/*.json (each benchmark writes one file).

A result file holds {"benchmark": ..., "machine": ..., "figures": [{"name", "value", "unit", "target", "command"}, ...]}.
`headline_table()` is the README's short performance table (the figures in `HEADLINES`, with the anchor each is
measured against); `bench_readme()` is bench/README.md, every figure of every file with its command.
"""
import json, re
from pathlib import Path

RESULTS = Path(__file__).resolve().parent/'results'
MODEL_NAMES = {'teacher': 'teacher', 'student_before': 'pruned student', 'student_kd': 'student after KD',
               'student_ce_only': 'CE-only baseline'}

# (result file, figure, readable name, anchor figure or None, what the anchor is)
HEADLINES = [
    ('cache', 'smollm2 B/entry default (gzip+shuffle, 7-bit values; generator output)',
     'Teacher cache size, SmolLM2 top-64 (default encoding)', 'smollm2 B/entry context: fp16 log-probs + uint16 ids, gzip+shuffle',
     'fp16 log-probs + uint16 ids'),
    ('cache', 'smollm2 B/entry zstd, 6-bit = best option', 'Teacher cache size, smallest option (zstd, 6-bit)',
     'smollm2 B/entry context: fp16 log-probs + uint16 ids, gzip+shuffle', 'fp16 log-probs + uint16 ids'),
    ('cache', 'fidelity layer-pruned student, default 7-bit (cache file): signed mean diff',
     'KD loss from the cache vs exact, pruned student', 'fidelity layer-pruned student: exact mean KD', 'exact mean KD'),
    ('writer', 'writer real teacher, generate / bare forwards, SmolLM2, 1 thread(s) (median of 3 pairs)',
     'Teacher caching time / bare SmolLM2 forwards, 1 thread', 'writer real teacher, bare forward throughput, 1 thread(s)', 'bare forwards'),
    ('writer', 'writer real teacher, generate / bare forwards, SmolLM2, 2 thread(s) (median of 3 pairs)',
     'Teacher caching time / bare SmolLM2 forwards, 2 threads', 'writer real teacher, bare forward throughput, 2 thread(s)', 'bare forwards'),
    ('writer', 'writer SmolLM2 B/token, sample mode, 50 draws (gzip)', 'Teacher cache size, SmolLM2 sample mode, 50 draws (B/token)', None, ''),
    ('writer', 'writer ceiling, instant teacher (V=49152, k=64, gzip, 2 workers; median of 3)',
     'Cache writer ceiling, instant teacher, V = 49,152, k = 64 (tok/s)', None, ''),
    ('writer', 'writer overlap, total / teacher time (teacher at 50,000 tok/s; median of 3)',
     'Cache writing time / teacher time, teacher at 50,000 tok/s', None, ''),
    ('cache', 'reader / training throughput (median of 3 paired runs)', 'Cache reading speed / training speed',
     'demo student training tokens/s (batch 16 x 128, 2 threads; median of 3)', 'training'),
    ('loss', 'fused_over_baseline_peak_rss_v128256', 'Fused KD loss peak memory / dense logits, V = 128,256',
     'baseline_peak_rss_v128256', 'dense logits'),
    ('loss', 'fused_over_sparse_time_v128256', 'Fused KD loss time / unfused sparse loss, V = 128,256',
     'sparse_time_v128256', 'unfused sparse loss'),
    ('peers', 'kdkit_over_liger_loss_time_v128256', 'KD loss time / Liger-Kernel fused KL (uncompiled, CPU), V = 128,256',
     'liger_loss_time_v128256', 'Liger-Kernel'),
    ('peers', 'kdkit_cached_over_trl_gkd_step_cpu', 'Cached-teacher KD step / TRL GKDTrainer step', 'trl_gkd_step_cpu', 'TRL GKD step'),
    ('peers', 'ce_over_trl_gkd_step_cpu', 'Plain CE step (the floor of a cached step) / TRL GKDTrainer step', 'trl_gkd_step_cpu', 'TRL GKD step'),
    ('peers', 'kdkit_online_over_trl_gkd_step_cpu', 'Online-teacher KD step (exact, all V ids) / TRL GKDTrainer step', 'trl_gkd_step_cpu', 'TRL GKD step'),
    ('trainer', 'cached_kd_over_ce_cpu', 'Cached-teacher KD step / plain CE Trainer step', 'ce_trainer_step_cpu', 'CE step'),
]

def load_results(results_dir=RESULTS) -> list:
    "Every benchmark result file, parsed, in file-name order (files without 'figures' are skipped)."
    out = []
    for p in sorted(Path(results_dir).glob('*.json')):
        d = json.loads(p.read_text())
        if 'figures' in d: out.append(dict(d, file=p.name))
    return out

def _fmt(v):
    if isinstance(v, bool) or v is None: return str(v)
    if isinstance(v, (int, float)): return f'{v:.4g}' if abs(v) < 1e4 else f'{v:,.0f}'
    return str(v)

def _machine(d) -> str:
    m = d.get('machine', '')
    return ', '.join(f'{v}' for v in m.values()) if isinstance(m, dict) else str(m)

def _cell(s) -> str: return str(s).replace('|', '\\|')

def performance_rows(results_dir=RESULTS) -> list:
    "One row per figure: (benchmark, figure, value, unit, target, machine, command)."
    rows = []
    for d in load_results(results_dir):
        for f in d['figures']:
            rows.append((d.get('benchmark', d['file']), f['name'], _fmt(f['value']), f.get('unit', ''),
                         _fmt(f.get('target')) if f.get('target') is not None else '', _machine(d),
                         f.get('command', d.get('command', ''))))
    return rows

def _figures(results_dir=RESULTS) -> dict:
    "{(file stem, figure name): figure dict}."
    return {(d['file'][:-5], f['name']): f for d in load_results(results_dir) for f in d['figures']}

def _with_unit(f) -> str:
    u = f.get('unit', '')
    return f"{_fmt(f['value'])}{'' if u in ('', 'x', 'ratio') else ' '}{'x' if u == 'ratio' else u}"

def _target(f) -> str:
    t = f.get('target')
    if t is None: return ''
    return _cell(t if isinstance(t, str) else f"<= {_fmt(t)}")

def headline_rows(results_dir=RESULTS) -> list:
    "The README's headline figures: (name, kdkit, target, anchor); a missing figure is an error naming it."
    figs, rows = _figures(results_dir), []
    for file, name, title, anchor, what in HEADLINES:
        for key in [(file, name)] + ([(file, anchor)] if anchor else []):
            if key not in figs: raise KeyError(f'bench/results/{key[0]}.json has no figure {key[1]!r} (rename it in bench/report.py HEADLINES)')
        a = f'{_with_unit(figs[file, anchor])} ({what})' if anchor else ''
        rows.append((title, _with_unit(figs[file, name]), _target(figs[file, name]), a))
    return rows

def headline_table(results_dir=RESULTS) -> str:
    "The README's performance table: at most 16 headline figures, each with its target and anchor."
    lines = ['| figure | kdkit | target | anchor |', '|---|---|---|---|']
    lines += ['| ' + ' | '.join(_cell(c) for c in r) + ' |' for r in headline_rows(results_dir)]
    return '\n'.join(lines)

def readable(name:str) -> str:
    "A figure name for people: underscores to spaces, `v128256` to `V = 128256`, `rss` to `RSS`, `_cpu` to `(CPU)`."
    s = re.sub(r'_v(\d+)$', r' (V = \1)', name)
    s = re.sub(r'_(cpu|wall)$', r' (\1)', s).replace('_over_', ' / ').replace('_', ' ')
    return re.sub(r'\brss\b', 'RSS', re.sub(r'\bkd\b', 'KD', re.sub(r'\bce\b', 'CE', s)))

def bench_readme(results_dir=RESULTS) -> str:
    "bench/README.md: every figure of every result file, grouped by benchmark and command."
    out = ['<!-- generated from bench/results/*.json by tools/make_readme.py: rerun a benchmark, then that -->', '',
           '# Benchmarks', '',
           'Every figure the benchmarks under `bench/` wrote into `bench/results/`, with the command that produced it. Each',
           'benchmark measures kdkit and its reference in the same run and states the machine; the headline figures are',
           "in the project's README.", '']
    for d in load_results(results_dir):
        groups = {}
        for f in d['figures']: groups.setdefault(f.get('command', d.get('command', '')), []).append(f)
        out += [f"## {d.get('benchmark', d['file'])} (`bench/results/{d['file']}`)", '', f'Machine: {_machine(d)}.', '']
        if d.get('config'): out += ['Config: ' + ', '.join(f'{k} {v}' for k, v in d['config'].items() if not isinstance(v, dict)) + '.', '']
        for cmd, figs in groups.items():
            out += [f'Command: `{cmd}`', '', '| figure | value | unit | target |', '|---|---|---|---|']
            out += [f"| {_cell(readable(f['name']))} | {_fmt(f['value'])} | {_cell(f.get('unit', ''))} | {_target(f)} |" for f in figs]
            out.append('')
    return '\n'.join(out).rstrip() + '\n'

def heldout_table(results:dict) -> str:
    "A held-out comparison {model: {'ce', 'kl', 'top1_agreement'}} as a markdown table."
    lines = ['| model | held-out CE | KL to teacher | top-1 agreement |', '|---|---|---|---|']
    lines += [f"| {MODEL_NAMES.get(k, k)} | {r['ce']:.4f} | {r['kl']:.4f} | {r['top1_agreement']:.4f} |" for k, r in results.items()]
    return '\n'.join(lines)

def demo_table(path=Path(__file__).resolve().parents[1]/'docs'/'demo'/'results.json') -> str:
    "The demo run's held-out comparison (docs/demo/results.json, copied from a `kdkit demo` run) as markdown."
    return heldout_table(json.loads(Path(path).read_text())['results'])

def _changed(settings:dict, base:dict) -> str:
    "The settings of a variant run that differ from the main run's, as `name value` pairs."
    return ', '.join(f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}" for k, v in settings.items() if base.get(k) != v) or 'none (the run above)'

def _ce(x): return '' if x is None else f'{x:.3f}'
def _excess(x, ce_only):
    "KD's excess over CE-only's as a cell: undefined when CE-only is not above the teacher; flagged when KD is below the teacher."
    if ce_only is None: return ''
    if x is None: return 'undefined (CE-only at or below the teacher)'
    return f'{x:.2f}x' + (' (KD below the teacher)' if x < 0 else '')
def _other_table(name:str, o:dict) -> str:
    "The arms' scores on held-out text of another domain than the transfer set's, as a markdown table."
    T, rows = o['teacher_ce'], {'pruned, before healing': o['pruned'], **o['arms']}
    lines = [f"\n\nThe same arms on {o['n_tokens']:,} tokens of other text (`other_heldout: {name}`), unlike the transfer set:\n",
             '| arm | CE | x teacher | exact KL | top-1 |', '|---|---|---|---|---|', f'| teacher | {T:.3f} | 1.00x | 0 | 1 |']
    lines += [f"| {a} | {r['ce']:.3f} | {r['ce'] / T:.2f}x | {r['kl']:.3f} | {r['top1']:.3f} |" for a, r in rows.items()]
    x = o.get('bucket_excess_over_ce_only_excess')
    if 'ce_only' in o['arms']: lines.append(f"\nThere tail-bucket KD's excess CE over the teacher is {_excess(x, o['arms']['ce_only']['ce'])} CE-only's.")
    return '\n'.join(lines)
def _tokens_share(x): return 'within its tokens never' if x is None else f'at {x:.2f} of the tokens'
def _goal(ok): return 'undefined' if ok is None else 'met' if ok else 'not met'

def heal_table(results_dir=RESULTS) -> str:
    "The heal run's arms (bench/results/heal.json): final held-out CE, KL and top-1 per arm, the headline figures, goals."
    p = Path(results_dir)/'heal.json'
    if not p.exists(): return '_The heal run has not been recorded: run `python bench/bench_heal.py`._'
    d = json.loads(p.read_text()); h, T = d['headline'], d['teacher_ce']
    lines = ['| arm | held-out CE | x teacher | exact KL | top-1 |', '|---|---|---|---|---|', f'| teacher | {T:.3f} | 1.00x | 0 | 1 |',
             f"| pruned, before healing | {d['start']['ce']:.3f} | {d['start']['ce'] / T:.2f}x | {d['start']['kl']:.3f} | {d['start']['top1']:.3f} |"]
    lines += [f"| {a} | {r['ce']:.3f} | {r['ce'] / T:.2f}x | {r['kl']:.3f} | {r['top1']:.3f} |" for a, r in d['results'].items()]
    goals = '; '.join(f"{d['goal_text'][g]}: {_goal(ok)}" for g, ok in d['goals'].items())
    sweep = ''.join(f"\n| {_changed(r['settings'], d['params'])} | {r['tokens_per_arm']:,} | {_ce(r['ce_only'])} | {r['kd_bucket']:.3f} | "
                    f"{_excess(r['bucket_excess_over_ce_only_excess'], r['ce_only'])} | {_ce(r.get('ce_only_kl'))} | {_ce(r.get('kd_bucket_kl'))} |"
                    for r in sorted(d.get('variants', []), key=lambda r: (r['tokens_per_arm'], r['settings'] != d['params'])))
    runs = ' '.join(dict.fromkeys(r['run'] for r in d.get('variants', [])))
    if sweep: sweep = ("\n\nCE-only and tail-bucket KD at other settings, the rest as above (each run: `kdkit run r03_heal -f "
                       "nbs/recipes/configs/heal_smollm2.yaml -p NAME VALUE ... -p arms '[ce_only, kd_bucket]' --out DIR`; "
                       f"collected with `python bench/bench_heal.py --variants {runs}`):\n\n"
                       "| changed from the run above | tokens per arm | CE-only CE | tail-bucket KD CE | KD's excess / CE-only's | CE-only KL | KD KL |\n"
                       "|---|---|---|---|---|---|---|" + sweep)
    if any(r['kd_bucket'] <= r['teacher_ce'] for r in d.get('variants', []) if r.get('teacher_ce')):
        sweep += ("\n\nA student below the teacher's CE fits the held-out blocks' domain (the transfer set's) better than the "
                  "teacher does: there the excess ratio stops measuring healing, and KL to the teacher is the measure.")
    other = ''.join(_other_table(name, o) for name, o in d.get('other_heldout', {}).items())
    return '\n'.join(lines) + (f"\n\n{h['tokens_per_arm']:,} training tokens per arm. Best arm ({h['best_kd_arm']}) at "
        f"{h['best_ce_over_teacher']:.2f}x the teacher's held-out CE; tail-bucket KD's excess CE over the teacher "
        f"{_excess(h['bucket_excess_over_ce_only_excess'], d['results'].get('ce_only', {}).get('ce'))} CE-only's; the best KD arm reaches CE-only's final CE "
        f"{_tokens_share(h.get('best_kd_tokens_to_ce_only_final_ratio'))}. Goals: {goals}.\n"
        f"Command: `{d['command']}` ({d['machine']}).") + other + sweep

def hidden_table(results_dir=RESULTS) -> str:
    "KD + hidden states against KD alone at equal steps (bench/results/hidden.json), per model, as markdown."
    p = Path(results_dir)/'hidden.json'
    if not p.exists(): return '_The hidden-state comparison has not been recorded: run `python bench/bench_hidden.py`._'
    out = []
    for name, d in json.loads(p.read_text()).items():
        rows = [('pruned student', d['student_before']), ('KD alone', d['kd']['held_out']),
                (f"KD + hidden states (weight {d['kd_hs']['hidden_weight']:g}, pairs {d['kd_hs']['pairs']})", d['kd_hs']['held_out'])]
        lines = [f"**{name}** (drop `{d['drop']}`, {d['steps']} steps of {d['batch']} x {d['seq_len']} tokens; teacher CE "
                 f"{d['teacher_held_out']['ce']:.4f})", '', '| student | held-out CE | KL to teacher | top-1 agreement |', '|---|---|---|---|']
        lines += [f"| {n} | {r['ce']:.4f} | {r['kl']:.4f} | {r['top1_agreement']:.4f} |" for n, r in rows]
        out.append('\n'.join(lines) + f"\n\nCommand: `{d['command']}` ({d['machine']}).")
    return '\n\n'.join(out)

def real_teacher_table(results_dir=RESULTS) -> str:
    "The real-teacher run's held-out comparison (bench/results/real_teacher.json) as markdown, with its command."
    p = Path(results_dir)/'real_teacher.json'
    if not p.exists(): return '_The real-teacher run has not been recorded: run `python bench/bench_real_teacher.py`._'
    d = json.loads(p.read_text())
    return heldout_table(d['results']) + f"\n\n{d.get('note', '')}\nCommand: `{d['command']}` ({d.get('machine', '')}, {d.get('seconds', '?')} s)."
