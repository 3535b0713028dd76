"""Run every library notebook as nbdev-test does (flags from pyproject, `eval: false` honoured),
so that `pytest` alone is the whole suite. Run with `--kdkit-flags "slow"` to include slow cells."""
import os
from pathlib import Path
import pytest
from nbdev.config import get_config
from nbdev.test import test_nb as run_notebook  # renamed so pytest does not collect it

ROOT = Path(__file__).resolve().parents[1]
NBS = sorted(p for p in (ROOT/'nbs').glob('*.ipynb') if not p.name.startswith('_'))

@pytest.mark.parametrize('nb', NBS, ids=[p.stem for p in NBS])
def test_notebook(nb, monkeypatch):
    skip = get_config(ROOT).tst_flags.split()
    force = os.environ.get('KDKIT_NB_FLAGS', '').split()
    monkeypatch.chdir(nb.parent)
    ok, secs = run_notebook(nb, skip_flags=[f for f in skip if f not in force], force_flags=force, basepath=str(ROOT))
    assert ok, f'{nb.name} failed'
