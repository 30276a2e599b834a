"""Which code computed a run: mpisub's version and the hash a checkpoint records, so that a resume
knows whether it continues bit for bit (docs/design.md, section 4, Commands)."""
import ast
import functools
import hashlib
import os

__version__ = "0.6.0"   # the one place it is written (pyproject.toml and mpisub.__version__ read it); CHANGELOG.md

# the modules whose code decides a run's numbers (paths under mpisub/): a checkpoint written by other
# code of these may not continue bit for bit, even under the same version number
RESULT_MODULES = ("config/__init__.py", "train/resolve.py", "io/data.py", "nn/masks.py", "nn/model.py",
                  "nn/losses.py", "parallel/layout.py", "nn/kernels.py", "parallel/exchange.py", "parallel/plans.py",
                  "nn/theory.py", "train/evaluate.py", "parallel/comm.py", "train/loop.py", "train/init.py")
PACKAGE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _code(source: str) -> str:
    """A module's code without its comments and docstrings (ast.unparse drops the comments)."""
    tree = ast.parse(source)
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr) and \
                isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str):
            node.body = body[1:] or [ast.Pass()]  # type: ignore[attr-defined]  # a node with a body
    return ast.unparse(tree)


@functools.cache
def code_hash() -> str:
    """What changes with the code that computes a run: sha256 of RESULT_MODULES' code, comments and
    docstrings left out (fixing a comment does not block a resume)."""
    h = hashlib.sha256()
    for name in RESULT_MODULES:
        with open(os.path.join(PACKAGE, name), encoding="utf-8") as f:
            h.update(_code(f.read()).encode())
    return h.hexdigest()[:16]
