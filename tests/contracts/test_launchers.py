"""bin/ holds one launcher per console script (pyproject.toml's [project.scripts]), running the same
function from the checkout it sits in (tests/mpi/test_bin.py runs them)."""
import ast
import os

from helpers import ROOT, console_scripts


def test_every_console_script_has_a_launcher_in_bin_that_runs_the_same_function():
    assert sorted(os.listdir(os.path.join(ROOT, "bin"))) == sorted(console_scripts())
    for name, target in console_scripts().items():
        path = os.path.join(ROOT, "bin", name)
        assert os.access(path, os.X_OK), f"bin/{name} is not executable"
        with open(path) as f:
            tree = ast.parse(f.read())
        imported = [f"{n.module}:{a.name}" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) for a in n.names]
        called = [n.func.id for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)]
        assert imported == [target] and target.split(":")[1] in called, f"bin/{name} does not run {target}"
