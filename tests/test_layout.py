"""The package's layout: one module per job, dependencies pointing one way, small modules, public names only in
`__all__`, and no library module importing the CLI."""
import ast, importlib, inspect
from pathlib import Path
import pytest

PKG = Path(__file__).resolve().parents[1]/'kdkit'
# Each module may import only modules of an earlier layer (or its own layer where listed together).
LAYERS = [['data', 'losses', 'param_groups', 'progress'], ['models', 'stages'], ['hidden'], ['cache_format'], ['cache_files'], ['cache_writer', 'cache_reader'],
          ['cache'], ['trainer'], ['plots'], ['recipes'], ['cli']]
RANK = {m: i for i, layer in enumerate(LAYERS) for m in layer}
MODULES = sorted(p.stem for p in PKG.glob('*.py') if not p.stem.startswith('_')) + \
          (['recipes'] if (PKG/'recipes'/'__init__.py').exists() else [])

def module_path(name):
    p = PKG/f'{name}.py'
    return p if p.exists() else PKG/name/'__init__.py'

def kdkit_imports(name) -> set:
    "The kdkit modules a module imports (absolute or relative), at any depth of its code."
    tree, out = ast.parse(module_path(name).read_text()), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            mod = node.module or ''
            if node.level: out.add(mod.split('.')[0] if mod else '')
            elif mod.startswith('kdkit.'): out.add(mod.split('.')[1])
        elif isinstance(node, ast.Import):
            out |= {a.name.split('.')[1] for a in node.names if a.name.startswith('kdkit.')}
    return out - {'', name, '_modidx'}

def test_every_module_has_a_layer():
    assert set(MODULES) <= set(RANK), f'modules without a layer in this test: {sorted(set(MODULES) - set(RANK))}'

@pytest.mark.parametrize('name', MODULES)
def test_dependencies_point_one_way(name):
    bad = sorted(m for m in kdkit_imports(name) if m in RANK and RANK[m] >= RANK[name])
    assert not bad, f'kdkit.{name} imports {bad}, which are not below it in {LAYERS}'

@pytest.mark.parametrize('name', MODULES)
def test_no_library_module_imports_the_cli(name):
    if name != 'cli': assert 'cli' not in kdkit_imports(name)

@pytest.mark.parametrize('name', MODULES)
def test_modules_are_small(name):
    n = len(module_path(name).read_text().splitlines())
    assert n <= 500, f'kdkit/{name}.py has {n} lines (at most 500)'

@pytest.mark.parametrize('name', MODULES)
def test_all_holds_public_names_only(name):
    mod = importlib.import_module(f'kdkit.{name}')
    names = getattr(mod, '__all__', [])
    assert not [n for n in names if n.startswith('_')]
    selfish = [n for n in names if inspect.isfunction(getattr(mod, n, None))
               and list(inspect.signature(getattr(mod, n)).parameters)[:1] == ['self']]
    assert not selfish, f'kdkit.{name}.__all__ exports methods as free functions: {selfish}'

def test_methods_are_not_attached_by_assignment():
    for name in MODULES:
        src = module_path(name).read_text()
        hits = [l for l in src.splitlines() if not l.startswith((' ', '#')) and '=' in l
                and any(l.split('=')[0].strip().startswith(f'{c}.') for c in ('DistillationTrainer', 'ParameterGroupManager', 'TeacherLogitsGenerator', 'CachedLogitsDataset'))]
        assert not hits, f'kdkit/{name}.py attaches methods by assignment: {hits[:3]}'
