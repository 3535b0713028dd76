"""The README and bench/README.md: the quick-start commands, the tables generated from bench/results and docs/demo,
the figures they show, the module tour, and `make_readme.py --check` saying why it fails."""
import importlib.util, json, re
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parents[1]

def load(rel):
    "Import a script of this repository by path (bench/ and tools/ are not packages on the path)."
    spec = importlib.util.spec_from_file_location(Path(rel).stem, ROOT/rel)
    mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)
    return mod

report = load('bench/report.py')
README = (ROOT/'README.md').read_text()
FIRST_SCREEN = README[:README.index('## A tour')]

def test_two_quick_start_commands():
    rc = load('tools/readme_commands.py')
    cmds, pin = rc.readme_commands(README), rc.torch_pin()
    assert re.fullmatch(r'\d+\.\d+\.\d+', pin), pin
    for kind in 'demo', 'test': assert cmds[kind] == rc.quick_start(kind) and f'pip install torch=={pin} ' in cmds[kind]
    assert 'kdkit demo' in cmds['demo'] and 'pytest' in cmds['test']
    assert cmds['demo'] in FIRST_SCREEN and cmds['test'] in FIRST_SCREEN

def test_torch_is_pinned_in_one_place():
    "Only pyproject.toml names the torch version; everything that installs torch reads it from there."
    files = ['nbs/index.ipynb', 'tools/check_wheel.sh', '.ci/run', 'tests/test_readme.py', 'tools/readme_commands.py']
    pin = load('tools/readme_commands.py').torch_pin()
    assert [f for f in files if pin in (ROOT/f).read_text()] == []
    assert 'readme_commands.py torch' in (ROOT/'tools'/'check_wheel.sh').read_text()

def test_ci_runs_the_readme_test_command():
    ci = (ROOT/'.ci'/'run').read_text()
    assert 'readme_commands.py test' in ci and 'eval "$TEST_CMD"' in ci

def test_first_screen_shows_the_demo_result_and_its_plot():
    assert report.demo_table() in FIRST_SCREEN
    res = json.loads((ROOT/'docs'/'demo'/'results.json').read_text())['results']
    kd, ce = res['student_kd'], res['student_ce_only']
    assert kd['ce'] < ce['ce'] and kd['kl'] < ce['kl']  # what the first screen claims
    assert '](docs/demo/eval.png)' in FIRST_SCREEN and (ROOT/'docs'/'demo'/'eval.png').stat().st_size > 10_000

def test_demo_figure_draws_the_committed_histories():
    from kdkit.plots import load_history, series
    fig = load('tools/make_figures.py').demo_figure()
    ce_ax, kl_ax = fig.axes
    labels = [l.get_label() for l in ce_ax.lines if not l.get_label().startswith('_')]
    assert labels[:2] == ['KD (alpha 0.5)', 'CE only'] and labels[2].startswith('teacher')
    res = json.loads((ROOT/'docs'/'demo'/'results.json').read_text())['results']
    for ax, key, m in ((ce_ax, 'eval_ce_loss', 'ce'), (kl_ax, 'eval_kd_loss', 'kl')):
        for line, f in zip(ax.lines[:2], ('history.jsonl', 'history_ce_only.jsonl')):
            xs, ys = series(load_history(ROOT/'docs'/'demo'/f), key)
            assert list(line.get_xdata()) == [0] + xs  # step 0: the pruned student both runs start from
            assert list(line.get_ydata()) == pytest.approx([res['student_before'][m]] + ys)
    assert ce_ax.lines[2].get_ydata()[0] == pytest.approx(res['teacher']['ce'])

def test_headline_table_matches_results():
    rows = report.headline_rows()
    assert 0 < len(rows) <= 16
    assert report.headline_table() in README, 'README performance table is stale: run python tools/make_readme.py'
    for name, kdkit, target, anchor in rows:
        assert not re.search(r'_v\d|_over_|[a-z]_[a-z]', name), f'unreadable headline name {name!r}'
        assert kdkit and (target or anchor), f'{name}: a headline needs a target or an anchor'
    with pytest.raises(KeyError, match='has no figure'):
        report.HEADLINES.append(('loss', 'no such figure', 'x', None, '')); report.headline_rows()
    report.HEADLINES.pop()

def test_bench_readme_is_current_and_complete():
    text = (ROOT/'bench'/'README.md').read_text()
    assert text == report.bench_readme(), 'bench/README.md is stale: run python tools/make_readme.py'
    rows = report.performance_rows()
    assert rows, 'bench/results holds no benchmark figures'
    for bench, name, value, unit, target, machine, command in rows:  # every figure, with its command and machine
        assert command, f'figure {name} has no command'
        section = text[text.index(f'## {bench} '):]
        assert f'Machine: {machine}.' in section and f'Command: `{command}`' in section
        assert f'| {report._cell(report.readable(name))} | {value} |' in section, name
    assert '](bench/README.md)' in README

def test_heal_and_hidden_sections():
    "The heal run's arms table and figure, and the hidden-state comparison, come from bench/results."
    assert report.heal_table() in README and report.hidden_table() in README
    assert '](docs/heal/heal_ce.png)' in README and (ROOT/'docs'/'heal'/'heal_ce.png').stat().st_size > 5_000
    heal = json.loads((ROOT/'bench'/'results'/'heal.json').read_text())
    assert set(heal['results']) == {'ce_only', 'kd_bucket', 'kd_renorm', 'kd_pure', 'rs_kd', 'kd_hidden'}

def test_module_tour_lists_every_notebook():
    tour = README[README.index('## A tour'):]
    links = re.findall(r'\[(\d\d_\w+)\]\(nbs/(\d\d_\w+)\.ipynb\)', tour)
    names = [a for a, b in links if a == b]
    for nb in ['00_data', '01_models', '02_losses', '03_param_groups', '04_cache_format', '05_cache_writer', '06_cache_reader',
               '07_cache', '08_trainer', '09_plots', '10_recipes', '11_cli', '12_progress']:
        assert nb in names, f'{nb} missing from the tour'
    assert len(set(names)) == len(names)

def test_readme_speaks_for_itself():
    assert not re.search(r'\bissues?\s+#?\d|\bsession\b', README, re.I)

def test_check_says_why_it_fails(tmp_path):
    mk = load('tools/make_readme.py')
    p = mk.ROOT/'README.md'
    new = README.replace('| teacher |', '| the teacher |', 1)
    why = mk.stale_diff(p, new)
    assert 'README.md (current)' in why and '-| teacher |' in why and '+| the teacher |' in why
    assert len(why.splitlines()) < 20  # an excerpt, not the whole file
