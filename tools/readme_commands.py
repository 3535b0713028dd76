"""Print one of the README's two quick-start commands: `demo` (the main job) or `test` (the suite)."""
import re, sys
from pathlib import Path

def readme_commands(text=None):
    "The two commands of the README's quick start, as {'demo': ..., 'test': ...}."
    text = text or (Path(__file__).resolve().parents[1]/'README.md').read_text()
    blocks = re.findall(r'```(?:bash|sh)\n(.*?)\n```', text, re.S)
    cmds = [b.strip() for b in blocks if 'pip install' in b]
    demo = [c for c in cmds if 'kdkit demo' in c]
    test = [c for c in cmds if 'pytest' in c]
    if len(demo) != 1 or len(test) != 1: sys.exit('README.md must hold exactly one demo and one test command block')
    return {'demo': demo[0], 'test': test[0]}

if __name__ == '__main__':
    print(readme_commands()[sys.argv[1]])
