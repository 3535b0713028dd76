"""The README's two quick-start commands: written from the one torch pin in pyproject.toml (`[tool.kdkit] torch`),
and read back from README.md so that CI runs exactly what the README shows.

`python tools/readme_commands.py demo|test` prints a command as README.md has it; `... torch` prints the pin."""
import re, sys, tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VENV = 'python3 -m venv .venv && . .venv/bin/activate'
INSTALLS = {'demo': 'pip install -e . && kdkit demo --out runs/demo',
            'test': 'pip install -e ".[dev]" && python -m pytest -m "not slow and not cuda" -q'}

def torch_pin() -> str:
    "The torch version every install of this repository uses (a CPU wheel here), from pyproject.toml."
    return tomllib.loads((ROOT/'pyproject.toml').read_text())['tool']['kdkit']['torch']

def quick_start(kind:str) -> str:
    "The `demo` or `test` command as the README should show it."
    return f'{VENV} && pip install torch=={torch_pin()} && {INSTALLS[kind]}'

def readme_commands(text=None):
    "The two commands of the README's quick start, as {'demo': ..., 'test': ...}."
    text = text or (ROOT/'README.md').read_text()
    blocks = re.findall(r'```(?:bash|sh)\n(.*?)\n```', text, re.S)
    cmds = [b.strip() for b in blocks if 'pip install' in b]
    demo = [c for c in cmds if 'kdkit demo' in c]
    test = [c for c in cmds if 'pytest' in c]
    if len(demo) != 1 or len(test) != 1: sys.exit('README.md must hold exactly one demo and one test command block')
    return {'demo': demo[0], 'test': test[0]}

if __name__ == '__main__':
    print(torch_pin() if sys.argv[1] == 'torch' else readme_commands()[sys.argv[1]])
