"""The `kdkit` command line: user errors are one line naming the flag (exit 2), checked before any model loads;
`kdkit run` and `kdkit demo` run recipes, stream progress lines, and keep earlier results when a run fails."""
import json
import nbformat, pytest, yaml
from kdkit.cli import main
from test_recipes import TINY

def cli(capsys, *argv):
    "(exit code, stdout, stderr) of `kdkit ARGV...`."
    rc = main([str(a) for a in argv])
    out = capsys.readouterr()
    return rc, out.out, out.err

@pytest.fixture
def no_models(monkeypatch):
    "Loading a model or tokenizer fails the test: flag checks must come first."
    import kdkit.models
    def boom(*a, **k): raise AssertionError('a model was loaded before the flags were checked')
    monkeypatch.setattr(kdkit.models, 'load_model', boom)
    monkeypatch.setattr(kdkit.models, 'load_tokenizer', boom)

CACHE = ['cache', '--teacher', 'demo', '--data', 'demo']
BAD_FLAGS = [  # argv, what the one line must say
    (CACHE + ['--out', 'c.h5', '--k', '0'], 'argument --k: 0: use an integer >= 1'),
    (CACHE + ['--out', 'c.h5', '--k', 'many'], "argument --k: 'many': use an integer >= 1"),
    (CACHE + ['--out', 'c.h5', '--codec', 'xyz'], '--codec xyz: use one of gzip, lzf, zstd, none'),
    (CACHE + ['--out', 'c.h5', '--value-bits', '5'], '--value-bits 5: use one of 6, 7, 8'),
    (CACHE + ['--out', 'c.h5', '--temperatures', '-1'], 'argument --temperatures: -1: use a number > 0'),
    (CACHE + ['--out', 'c.h5', '--temperatures', 'inf'], 'argument --temperatures: inf: use a number > 0'),
    (CACHE + ['--out', 'c.h5', '--mode', 'sample', '--temperatures', '1', '2'], '--temperatures: --mode sample draws at one capture temperature'),
    (CACHE + ['--out', 'c.h5', '--mode', 'dense'], "argument --mode: invalid choice: 'dense'"),
    (CACHE + ['--out', 'c.h5', '--n-samples', '70000'], 'argument --n-samples: 70000: use an integer >= 1 and <= 65535'),
    (CACHE + ['--out', 'no/such/folder/c.h5'], '--out no/such/folder/c.h5: the folder no/such/folder does not exist'),
    (['cache', '--teacher', './no_teacher', '--data', 'demo', '--out', 'c.h5'], '--teacher ./no_teacher: no such file or folder'),
    (['cache', '--teacher', 'demo', '--data', 'missing.txt', '--out', 'c.h5'], '--data missing.txt: no such file or folder'),
    (['cache', '--teacher', 'demo', '--out', 'c.h5'], 'the following arguments are required: --data'),
    (['run', 'nope', '--out', 'x'], "RECIPE recipe 'nope': not a packaged recipe (r01_distill, r02_sweep, r03_heal)"),
    (['run', 'missing.ipynb', '--out', 'x'], "RECIPE recipe 'missing.ipynb': no such notebook"),
    (['run', 'distill', '--out', 'x', '-p', 'alpah', '0.5'], '-p/-f: unknown parameter(s) alpah; r01_distill declares: teacher, student'),
    (['run', 'distill', '--out', 'x', '-f', 'missing.yaml'], '-f/--parameters-file: parameter file missing.yaml: no such file'),
    (['run', 'distill', '--out', 'x', '-p', 'seed', '[1'], '-p seed [1: the value is not valid YAML'),
    (['run', 'distill'], '--out DIR is required'),
    (['demo', '--seed', 'x'], "argument --seed: 'x': use an integer"),
    (['inspect', 'missing.h5'], 'PATH missing.h5: no such cache file'),
    (['frobnicate'], "argument COMMAND: invalid choice: 'frobnicate'"),
]

@pytest.mark.parametrize('argv,says', BAD_FLAGS, ids=[' '.join(a[len(CACHE):] if a[:1] == ['cache'] else a) for a, _ in BAD_FLAGS])
def test_user_errors_are_one_line_exit_2(argv, says, capsys, no_models, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rc, out, err = cli(capsys, *argv)
    assert rc == 2, (rc, out, err)
    assert err.count('\n') == 1 and err.startswith(f'kdkit {argv[0]}' if argv[0] != 'frobnicate' else 'kdkit:'), err
    assert says in err, err
    assert 'Traceback' not in err and not list(tmp_path.iterdir())  # nothing written

def test_debug_shows_the_traceback(capsys, no_models):
    rc, out, err = cli(capsys, *CACHE, '--out', 'c.h5', '--codec', 'xyz', '--debug')
    assert rc == 2 and 'Traceback' in err and err.strip().splitlines()[-1] == 'kdkit cache: --codec xyz: use one of gzip, lzf, zstd, none'

def test_out_folder_of_other_files_is_refused(capsys, tmp_path):
    (tmp_path/'notes.txt').write_text('mine')
    rc, out, err = cli(capsys, 'run', 'distill', '--out', tmp_path, '-p', 'seed', '1')
    assert rc == 2 and 'holds files that are not a kdkit run' in err and (tmp_path/'notes.txt').read_text() == 'mine'

def test_help_lists_commands(capsys):
    rc, out, err = cli(capsys, '--help')
    assert rc == 0 and all(c in out for c in ('demo', 'run', 'cache', 'inspect', '--debug'))
    rc, out, err = cli(capsys, 'run', '--help')
    assert rc == 0 and 'r01_distill, r02_sweep' in out

# ---------------------------------------------------------------- recipes from the command line
TOY = {'cells': [{'cell_type': 'code', 'metadata': {'tags': ['parameters']}, 'execution_count': None, 'outputs': [], 'id': 'p',
                  'source': 'fail: bool = False  # raise instead of writing\nout_dir: str = "."  # results folder'},
                 {'cell_type': 'code', 'metadata': {}, 'execution_count': None, 'outputs': [], 'id': 'w',
                  'source': 'from pathlib import Path\nassert not fail, "asked to fail"\nPath(out_dir, "result.txt").write_text("ok")'}],
       'metadata': {'kernelspec': {'name': 'python3', 'display_name': 'python3', 'language': 'python'}}, 'nbformat': 4, 'nbformat_minor': 5}

def test_failed_run_keeps_earlier_results(capsys, tmp_path):
    nb = tmp_path/'toy.ipynb'; nb.write_text(json.dumps(TOY))
    out = tmp_path/'results'
    rc, text, err = cli(capsys, 'run', nb, '--out', out)
    assert rc == 0 and (out/'result.txt').read_text() == 'ok'
    (out/'teacher_cache.h5').write_bytes(b'cache')  # an earlier cache: shared with the next run, not copied
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    rc, text, err = cli(capsys, 'run', nb, '--out', out, '-p', 'fail', 'true')
    assert rc == 1 and err.count('\n') == 1 and 'toy failed in cell' in err and 'AssertionError: asked to fail' in err, err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # the earlier run is intact, its notebook included
    failed = nbformat.read(tmp_path/'results.failed'/'toy.ipynb', as_version=4)
    assert any(o.get('ename') == 'AssertionError' for c in failed.cells for o in c.get('outputs', []))
    assert sorted(p.name for p in tmp_path.iterdir()) == ['results', 'results.failed', 'toy.ipynb']  # no temporary folder left
    rc, text, err = cli(capsys, 'run', nb, '--out', out)  # a later success replaces the folder, reusing the cache
    assert rc == 0 and (out/'teacher_cache.h5').read_bytes() == b'cache'

def test_kdkit_run_tiny(capsys, tmp_path):
    cfg = tmp_path/'tiny.yaml'; cfg.write_text(yaml.safe_dump({**TINY, 'run_baseline': False, 'eval_steps': 0}))
    rc, out, err = cli(capsys, 'run', 'distill', '--out', tmp_path/'o', '-f', cfg, '-p', 'seed', '3')
    m = json.loads((tmp_path/'o'/'metrics.json').read_text())
    assert rc == 0 and m['params']['seed'] == 3 and 'student_ce_only' not in m['results']
    assert 'executed notebook:' in out

def _writer_prints_text_progress() -> bool:
    import inspect, kdkit.cache_writer
    return 'progress_bar' in inspect.getsource(kdkit.cache_writer)

@pytest.mark.xfail(not _writer_prints_text_progress(), strict=True,
                   reason='the cache writer still draws a tqdm.auto bar (a widget in the papermill kernel); it needs kdkit.progress.progress_bar')
def test_kdkit_demo_prints_progress_lines(capsys, tmp_path):
    "Caching progress lines with tokens/s come before training's lines; the executed notebook keeps text lines, no widget."
    small = {k: v for k, v in TINY.items() if k != 'stages'}
    argv = ['demo', '--out', tmp_path/'demo'] + [x for k, v in small.items() for x in ('-p', k, json.dumps(v))]
    argv += ['-p', 'stages', json.dumps([{**s, 'max_steps': 2} for s in TINY['stages']])]
    rc, out, err = cli(capsys, *argv)
    assert rc == 0, err
    lines = out.splitlines()
    caching = [i for i, l in enumerate(lines) if l.startswith('caching') and 'tok/s' in l]
    training = [i for i, l in enumerate(lines) if l.startswith('[bridge] step')]
    assert caching and training and caching[0] < training[0], out
    assert any(l.startswith('caching') and '100%' in l for l in lines), out
    assert 'student after KD' in out and 'CE-only baseline' in out  # the results table
    m = json.loads((tmp_path/'demo'/'metrics.json').read_text())
    assert (tmp_path/'demo'/m['figures']['eval_comparison']).exists()
    nb = nbformat.read(tmp_path/'demo'/'r01_distill.ipynb', as_version=4)
    outputs = [o for c in nb.cells if c.cell_type == 'code' for o in c.get('outputs', [])]
    assert not [o for o in outputs if 'application/vnd.jupyter.widget-view+json' in o.get('data', {})]
    text = ''.join(o.get('text', '') for o in outputs if o.get('output_type') == 'stream')
    assert 'done in' in text and '\r' not in text and ' 0%|' not in text
