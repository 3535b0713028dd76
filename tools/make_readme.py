"""Generate README.md from nbs/index.ipynb (without quarto) and bench/README.md from bench/results/*.json.

`--check` writes nothing and fails when either file is stale, printing a unified diff of the stale lines.
Cells of the notebook run in order (so generated tables are current); then nbconvert's markdown exporter writes
the page. Cells with `#| hide` are dropped, `#| echo: false` keeps only the output, and nbdev directives are stripped.
"""
import difflib, re, sys
from pathlib import Path
import nbformat
from nbconvert import MarkdownExporter
from nbconvert.preprocessors import ExecutePreprocessor

ROOT = Path(__file__).resolve().parents[1]
DIRECTIVE = re.compile(r'^#\|\s*(.*)$', re.M)

def render() -> str:
    "README text rendered from nbs/index.ipynb."
    nb = nbformat.read(ROOT/'nbs'/'index.ipynb', as_version=4)
    ExecutePreprocessor(timeout=120, kernel_name='python3').preprocess(nb, {'metadata': {'path': str(ROOT/'nbs')}})
    cells = []
    for c in nb.cells:
        ds = DIRECTIVE.findall(c.source) if c.cell_type == 'code' else []
        if any(d.strip() == 'hide' for d in ds): continue
        if c.cell_type == 'code':
            c.source = DIRECTIVE.sub('', c.source).strip()
            if any(d.replace(' ', '') == 'echo:false' for d in ds): c.source = ''
        cells.append(c)
    nb.cells = cells
    body, _ = MarkdownExporter(exclude_input_prompt=True, exclude_output_prompt=True).from_notebook_node(nb)
    body = re.sub(r'```python\n\s*```\n', '', body)  # empty inputs of echo:false cells
    head = '<!-- generated from nbs/index.ipynb by tools/make_readme.py: edit the notebook, not this file -->\n\n'
    return head + re.sub(r'\n{3,}', '\n\n', body).strip() + '\n'

def render_bench() -> str:
    "bench/README.md rendered from bench/results/*.json."
    sys.path.insert(0, str(ROOT))
    from bench.report import bench_readme
    return bench_readme()

def stale_diff(path:Path, new:str, limit:int=40) -> str:
    "Why `path` is stale: a unified diff (current -> generated) of at most `limit` lines, or a note that it is missing."
    if not path.exists(): return f'{path.relative_to(ROOT)} does not exist.'
    d = list(difflib.unified_diff(path.read_text().splitlines(), new.splitlines(), f'{path.relative_to(ROOT)} (current)',
                                  f'{path.relative_to(ROOT)} (generated)', n=1, lineterm=''))
    more = f'\n... {len(d) - limit} more diff lines' if len(d) > limit else ''
    return '\n'.join(d[:limit]) + more

def main(argv):
    files = {ROOT/'README.md': render(), ROOT/'bench'/'README.md': render_bench()}
    if '--check' in argv:
        stale = [(p, t) for p, t in files.items() if not p.exists() or p.read_text() != t]
        for p, t in stale: print(stale_diff(p, t), end='\n\n')
        if stale: sys.exit(f"stale: {', '.join(str(p.relative_to(ROOT)) for p, _ in stale)}: "
                           "run `python tools/make_readme.py` and commit the result.")
        print('README.md and bench/README.md are current.')
    else:
        for p, t in files.items(): p.write_text(t)
        print('wrote README.md and bench/README.md')

if __name__ == '__main__': main(sys.argv[1:])
