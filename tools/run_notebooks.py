"""Re-execute library notebooks and keep their outputs (they are the documentation).

`python tools/run_notebooks.py` runs every `nbs/NN_*.ipynb`; `python tools/run_notebooks.py nbs/01_models.ipynb ...`
runs the ones named. Cells flagged `slow`/`cuda`/`notest` are skipped, as in the tests. Afterwards progress-bar
noise is dropped from the outputs and `nbdev-clean` strips metadata, so reruns of seeded cells give the same page.
"""
import os, re, subprocess, sys
from pathlib import Path
import nbformat

ROOT = Path(__file__).resolve().parents[1]
QUIET = dict(HF_HUB_OFFLINE='1', TOKENIZERS_PARALLELISM='false', MPLBACKEND='Agg', HF_DATASETS_DISABLE_PROGRESS_BARS='1',
             HF_HUB_DISABLE_PROGRESS_BARS='1', TRANSFORMERS_VERBOSITY='error', TQDM_DISABLE='1', PYTHONWARNINGS='ignore')
BAR = re.compile(r'\r|\d+%\|')  # tqdm-style progress output

def library_notebooks() -> list:
    "Every numbered library notebook in nbs/."
    return sorted((ROOT/'nbs').glob('[0-9][0-9]_*.ipynb'))

def drop_progress_noise(path:Path):
    "Remove stderr stream outputs that are progress bars (they differ on every run)."
    nb = nbformat.read(path, as_version=4)
    for c in nb.cells:
        if c.cell_type == 'code':
            c.outputs = [o for o in c.outputs if not (o.output_type == 'stream' and o.name == 'stderr' and BAR.search(o.text))]
    nbformat.write(nb, path)

def run(path:Path) -> bool:
    "Execute one notebook in place with nbdev-test --save; True on success."
    env = {**os.environ, **QUIET}
    r = subprocess.run(['nbdev-test', path.name, '--save'], cwd=path.parent, env=env)
    if r.returncode == 0: drop_progress_noise(path)
    return r.returncode == 0

if __name__ == '__main__':
    paths = [Path(p).resolve() for p in sys.argv[1:]] or library_notebooks()
    failed = [p.name for p in paths if not run(p)]
    subprocess.run(['nbdev-clean'], cwd=ROOT, check=True)
    if failed: sys.exit(f'failed: {failed}')
    print(f'executed {len(paths)} notebook(s) with their outputs')
