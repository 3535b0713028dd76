"""The package imports lightly, and the console script answers."""
import pkgutil, subprocess, sys
import kdkit

def test_import_does_not_pull_plotting():
    mods = [f'kdkit.{m.name}' for m in pkgutil.iter_modules(kdkit.__path__) if m.name not in ('plots', '_modidx')]
    code = (f"import importlib, sys\nfor m in {mods!r}: importlib.import_module(m)\n"
            "bad = [m for m in ('matplotlib', 'ipywidgets') if m in sys.modules]\nassert not bad, bad")
    subprocess.run([sys.executable, '-c', code], check=True)

def test_kdkit_help():
    out = subprocess.run([sys.executable, '-c', 'from kdkit.cli import main; main()', '--help'], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert 'usage: kdkit' in out.stdout
