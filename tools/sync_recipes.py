"""Copy the recipes and their configs from nbs/recipes into the package (kdkit/recipe_notebooks), so an installed
wheel can run them. CI fails when the copy is out of date."""
import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

def sync_recipes():
    "Mirror nbs/recipes/*.ipynb and nbs/recipes/configs/*.yaml into kdkit/recipe_notebooks/."
    src, dst = ROOT/'nbs'/'recipes', ROOT/'kdkit'/'recipe_notebooks'
    want = {p.relative_to(src): p for p in list(src.glob('*.ipynb')) + list(src.glob('configs/*.yaml'))}
    if not want: return
    for old in list(dst.glob('*.ipynb')) + list(dst.glob('configs/*.yaml')):
        if old.relative_to(dst) not in want: old.unlink()
    for rel, p in want.items():
        (dst/rel).parent.mkdir(parents=True, exist_ok=True)
        if not (dst/rel).exists() or (dst/rel).read_bytes() != p.read_bytes(): shutil.copyfile(p, dst/rel)

if __name__ == '__main__':
    sync_recipes()
