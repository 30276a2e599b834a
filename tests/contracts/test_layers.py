"""The package's layers (docs/design.md, section 5): a subpackage imports only from the layers
below it, never from one beside it or above; an import inside a function says why it is lazy."""
import ast
import pathlib

import mpisub

PACKAGE = pathlib.Path(mpisub.__file__).parent
LAYERS = {"_util": 0, "nn": 1, "config": 2, "io": 3, "parallel": 3, "train": 4, "analysis": 4, "study": 5, "bench": 6}


def _type_only(tree: ast.Module) -> set[ast.AST]:
    """The imports under `if TYPE_CHECKING:`: never run, they name the types a signature takes
    (a Config for nn's functions), so they may come from any layer."""
    blocks = [n for n in tree.body if isinstance(n, ast.If) and ast.unparse(n.test) == "TYPE_CHECKING"]
    return {i for b in blocks for i in ast.walk(b)}


def _imports(tree: ast.Module):
    """(line, the mpisub subpackage imported) for every import of mpisub the module runs."""
    skip = _type_only(tree)
    for node in ast.walk(tree):
        if node in skip:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "mpisub":
            parts = node.module.split(".")
            for sub in ([parts[1]] if len(parts) > 1 else [a.name for a in node.names]):
                yield node.lineno, sub
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("mpisub."):
                    yield node.lineno, a.name.split(".")[1]
        assert not (isinstance(node, ast.ImportFrom) and node.level), "relative import: use mpisub.<layer>"


def test_every_import_runs_down_the_layers():
    wrong = []
    for path in PACKAGE.rglob("*.py"):
        own = path.relative_to(PACKAGE).parts[0]
        if own not in LAYERS:        # mpisub/__init__.py and __main__.py stand above every layer
            continue
        for line, sub in _imports(ast.parse(path.read_text())):
            if sub != own and not (sub in LAYERS and LAYERS[sub] < LAYERS[own]):
                wrong.append(f"{path.relative_to(PACKAGE)}:{line}: {own} imports {sub}")
    assert set(LAYERS) == {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").exists()}
    assert not wrong, "\n".join(wrong)


def _says_lazy(lines: list[str], i: int) -> bool:
    """A '# lazy' comment on the import's line, or above the block of imports it stands in."""
    while i >= 0 and (lines[i].lstrip().startswith(("import ", "from ", "#")) or not lines[i].strip()):
        if "#" in lines[i] and "lazy" in lines[i].split("#", 1)[1]:
            return True
        i -= 1
    return False


def test_an_import_inside_a_function_says_why():
    unexplained = []
    for path in PACKAGE.rglob("*.py"):
        lines = path.read_text().splitlines()
        tree = ast.parse("\n".join(lines))
        for fn in ast.walk(tree):
            if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(fn):
                if isinstance(node, (ast.Import, ast.ImportFrom)) and not _says_lazy(lines, node.lineno - 1):
                    unexplained.append(f"{path.relative_to(PACKAGE)}:{node.lineno}: {lines[node.lineno - 1].strip()}")
    assert not unexplained, "\n".join(unexplained)


def test_the_layers_fail_on_an_upward_import():
    """The check above can fail: an nn module importing mpisub.train is found."""
    upward = "from mpisub.train import loop\nimport mpisub.io.store\nfrom mpisub import parallel\n"
    found = list(_imports(ast.parse(upward)))
    assert [sub for _, sub in found] == ["train", "io", "parallel"]
    assert all(LAYERS[sub] > LAYERS["nn"] for _, sub in found)
