"""Edit notebooks as plain text: `nbtext.py dump NB.ipynb TXT` and `nbtext.py load TXT NB.ipynb`.

The text form is a sequence of cells, each opened by a marker line:
    ##%% md [id=abc]           a markdown cell
    ##%% code [id=abc] [tags=parameters,foo]   a code cell
Everything up to the next marker is the cell's source. Cell ids and tags survive a round trip.
"""
import re, sys
from pathlib import Path
import nbformat
from nbformat import v4

MARK = re.compile(r'^##%% (md|code)((?: \w+=\S+)*)\s*$')

def dump(nb_path, txt_path):
    "Write notebook `nb_path` as marked text to `txt_path`."
    nb = nbformat.read(nb_path, as_version=4)
    out = []
    for c in nb.cells:
        kind = 'md' if c.cell_type == 'markdown' else 'code'
        extra = f' id={c.get("id")}' if c.get('id') else ''
        tags = c.get('metadata', {}).get('tags')
        if tags: extra += ' tags=' + ','.join(tags)
        out.append(f'##%% {kind}{extra}\n{c.source}\n')
    Path(txt_path).write_text(''.join(out))

def load(txt_path, nb_path):
    "Build notebook `nb_path` from marked text `txt_path` (outputs are cleared)."
    cells, cur = [], None
    for line in Path(txt_path).read_text().splitlines(keepends=True):
        m = MARK.match(line.rstrip('\n'))
        if m:
            cur = dict(kind=m.group(1), opts=dict(o.split('=', 1) for o in m.group(2).split()), lines=[])
            cells.append(cur)
        elif cur is not None: cur['lines'].append(line)
    nb = v4.new_notebook()
    nb.metadata = {'kernelspec': {'display_name': 'python3', 'language': 'python', 'name': 'python3'}}
    for c in cells:
        src = ''.join(c['lines']).strip('\n')
        cell = v4.new_markdown_cell(src) if c['kind'] == 'md' else v4.new_code_cell(src)
        if 'id' in c['opts']: cell['id'] = c['opts']['id']
        if 'tags' in c['opts']: cell.metadata['tags'] = c['opts']['tags'].split(',')
        nb.cells.append(cell)
    nbformat.validate(nb)
    nbformat.write(nb, nb_path)

if __name__ == '__main__':
    cmd, a, b = sys.argv[1:4]
    {'dump': dump, 'load': load}[cmd](a, b)
