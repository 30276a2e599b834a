"""The linter is part of the suite (docs/design.md, section 9: the rule set and its reasons)."""
import os
import subprocess
import sys

from helpers import ROOT


def test_ruff_check_is_clean():
    ruff = os.path.join(os.path.dirname(sys.executable), "ruff")
    assert os.path.exists(ruff), "ruff is in the test extra: pip install -e '.[test]'"
    r = subprocess.run([ruff, "check", "--no-cache", ROOT], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
