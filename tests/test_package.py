"""The package imports lightly, and the console script answers."""
import pkgutil, subprocess, sys
import kdkit

def test_import_does_not_pull_plotting():
    mods = [f'kdkit.{m.name}' for m in pkgutil.iter_modules(kdkit.__path__) if m.name not in ('plots', '_modidx')]
    code = (f"import importlib, sys\nfor m in {mods!r}: importlib.import_module(m)\n"
            "bad = [m for m in ('matplotlib', 'ipywidgets') if m in sys.modules]\nassert not bad, bad")
    subprocess.run([sys.executable, '-c', code], check=True)

KDKIT = [sys.executable, '-c', 'import sys; from kdkit.cli import main; sys.exit(main())']  # what the console script runs

def test_kdkit_help():
    out = subprocess.run(KDKIT + ['--help'], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert 'usage: kdkit' in out.stdout

def test_kdkit_user_error_exit_code():
    out = subprocess.run(KDKIT + ['cache', '--teacher', 'demo', '--data', 'demo', '--out', 'x.h5', '--k', '0'], capture_output=True, text=True)
    assert out.returncode == 2 and out.stderr.strip() == 'kdkit cache: argument --k: 0: use an integer >= 1 (see kdkit cache --help)', out.stderr
