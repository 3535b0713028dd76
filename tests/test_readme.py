"""The README: two quick-start commands, and a performance table that agrees with bench/results."""
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.report import performance_rows, performance_table, real_teacher_table
sys.path.insert(0, str(ROOT/'tools'))
from readme_commands import readme_commands

README = (ROOT/'README.md').read_text()

def test_two_quick_start_commands():
    cmds = readme_commands(README)
    assert 'kdkit demo' in cmds['demo'] and 'pip install torch==2.13.0' in cmds['demo']
    assert 'pytest' in cmds['test'] and 'pip install torch==2.13.0' in cmds['test']
    first_screen = README[:README.index('## A tour')]
    assert cmds['demo'] in first_screen and cmds['test'] in first_screen

def test_ci_runs_the_readme_test_command():
    ci = (ROOT/'.ci'/'run').read_text()
    assert 'readme_commands.py test' in ci and 'eval "$TEST_CMD"' in ci

def test_performance_table_matches_results():
    rows = performance_rows()
    assert rows, 'bench/results holds no benchmark figures'
    assert performance_table() in README, 'README performance table is stale: run python tools/make_readme.py'
    for r in rows: assert r[6], f'figure {r[1]} has no command'

def test_real_teacher_table_matches_results():
    assert real_teacher_table() in README
