"""The seams are typed and the house is small: mypy is clean over the whole package (pyproject.toml's
[tool.mypy]); every public function and method is annotated; the communicators satisfy their
Protocols; no function runs over 60 lines or 8 parameters (numba kernels aside), no module over 400."""
import ast
import inspect
import pathlib
import subprocess
import sys

from helpers import ROOT
from helpers.simcomm import SimComm, World

import mpisub
from mpisub.bench.strong import StubComm
from mpisub.parallel.comm import Comm
from mpisub.parallel.communicator import Communicator, RowExchange

PACKAGE = pathlib.Path(mpisub.__file__).parent


def _functions():
    """(path, qualified name, node, is a numba kernel) of every function in the package."""
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text())
        stack = [(n, "") for n in tree.body]
        while stack:
            node, prefix = stack.pop()
            if isinstance(node, ast.ClassDef):
                stack += [(n, f"{prefix}{node.name}.") for n in node.body]
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                kernel = any("njit" in ast.unparse(d) for d in node.decorator_list)
                yield path.relative_to(PACKAGE), prefix + node.name, node, kernel


def test_mypy_is_clean_over_the_whole_package(tmp_path):
    # its cache in tmp_path: the suite writes nothing into the checkout (a cold run takes seconds)
    r = subprocess.run([sys.executable, "-m", "mypy", "--no-error-summary", "--cache-dir", str(tmp_path)], cwd=ROOT,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_every_public_function_is_annotated():
    bare = []
    for path, name, fn, kernel in _functions():
        if kernel or any(part.startswith("_") and part != "__init__" for part in name.split(".")):
            continue
        a = fn.args
        params = [p for p in a.posonlyargs + a.args + a.kwonlyargs + [v for v in (a.vararg, a.kwarg) if v]
                  if p.arg not in ("self", "cls")]
        if any(p.annotation is None for p in params) or (fn.returns is None and fn.name != "__init__"):
            bare.append(f"{path}: {name}")
    assert not bare, "\n".join(bare)


def _undocumented(fn) -> list[str]:
    """What a Google-style docstring of fn lacks: an Args: section naming each parameter, a Returns:
    (or Yields:) section when it returns a value."""
    doc = inspect.getdoc(fn) or ""
    params = [p for p in inspect.signature(fn).parameters if p not in ("self", "cls")]
    missing = [f"Args: {p}" for p in params if "Args:" not in doc or f"\n    {p}" not in doc.split("Args:", 1)[1]]
    returns = inspect.signature(fn).return_annotation not in ("None", None, inspect.Signature.empty)
    if returns and "Returns:" not in doc and "Yields:" not in doc:
        missing.append("Returns:")
    return missing


def test_the_public_api_and_the_protocols_have_google_style_docstrings():
    """mpisub.__all__ (the notebook API) and the communicator Protocols: what the docs site renders
    first. (The rest of the package keeps prose docstrings for now.)"""
    api = [getattr(mpisub, name) for name in mpisub.__all__ if callable(getattr(mpisub, name)) and name != "UserError"]
    functions = [f for f in api if inspect.isfunction(f)]
    functions += [m for c in api if inspect.isclass(c) for n, m in vars(c).items()
                  if inspect.isfunction(m) and not n.startswith("_")]
    functions += [m for c in (RowExchange, Communicator) for n, m in vars(c).items()
                  if inspect.isfunction(m) and not n.startswith("_")]
    lacking = {f.__qualname__: m for f in functions if (m := _undocumented(f))}
    assert len(functions) > 15 and not lacking, lacking


def test_the_docstring_check_can_fail():
    def bare(x: int) -> int:
        """Prose only."""
        return x
    assert _undocumented(bare) == ["Args: x", "Returns:"]


def test_no_long_function_no_long_module_no_long_parameter_list():
    big = [f"{path}: {name} has {fn.end_lineno - fn.lineno + 1} lines" for path, name, fn, kernel in _functions()
           if not kernel and fn.end_lineno - fn.lineno + 1 > 60]
    big += [f"{path}: {name} has {n} parameters" for path, name, fn, kernel in _functions()
            if not kernel and (n := len([p for p in fn.args.posonlyargs + fn.args.args + fn.args.kwonlyargs
                                         if p.arg not in ("self", "cls")])) > 8]
    big += [f"{p.relative_to(PACKAGE)} has {n} lines" for p in PACKAGE.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > 400]
    assert not big, "\n".join(big)


def _members(protocol: type) -> dict[str, inspect.Signature | None]:
    """The protocol's methods (their signatures) and attributes (None)."""
    own = {name for klass in protocol.__mro__ if klass.__module__ == protocol.__module__ for name in vars(klass)
           if not name.startswith("_")} | set(getattr(protocol, "__annotations__", {}))
    return {name: inspect.signature(getattr(protocol, name)) if callable(getattr(protocol, name, None)) else None
            for name in own}


def test_every_communicator_satisfies_its_protocol():
    world = World(1)
    for comm, protocol in ((SimComm(world, 0), Communicator), (StubComm(0, 2), RowExchange)):
        assert isinstance(comm, protocol)
        for name, signature in _members(protocol).items():
            assert hasattr(comm, name), f"{type(comm).__name__} lacks {name}"
            if signature is not None:
                want = [p for p in signature.parameters if p != "self"]
                got = list(inspect.signature(getattr(comm, name)).parameters)
                assert got[:len(want)] == want, f"{type(comm).__name__}.{name}{got} is not {protocol.__name__}'s {want}"
    for name in _members(Communicator):     # Comm (MPI) is checked statically by mypy too
        assert hasattr(Comm, name) or name in Comm.__init__.__code__.co_names, name
