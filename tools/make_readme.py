"""Generate README.md from nbs/index.ipynb without quarto; `--check` fails when README.md is stale.

Cells run in order (so generated tables, e.g. the performance table, are current); then nbconvert's
markdown exporter writes the page. Cells with `#| hide` are dropped, `#| echo: false` keeps only the
output, and nbdev directives are stripped.
"""
import re, sys
from pathlib import Path
import nbformat
from nbconvert import MarkdownExporter
from nbconvert.preprocessors import ExecutePreprocessor

ROOT = Path(__file__).resolve().parents[1]
DIRECTIVE = re.compile(r'^#\|\s*(.*)$', re.M)

def render():
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

if __name__ == '__main__':
    txt, readme = render(), ROOT/'README.md'
    if '--check' in sys.argv:
        if not readme.exists() or readme.read_text() != txt:
            sys.exit('README.md is stale: run `python tools/make_readme.py` and commit it.')
        print('README.md is current.')
    else:
        readme.write_text(txt); print('wrote README.md')
