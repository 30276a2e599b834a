"""docs/design.md is the contract: its tables are the code's config keys and defaults, resume keys,
exit codes and environment variables; its run-file and checkpoint sections name what real files
hold; every `module.name` it (or the README) cites exists."""
import glob
import importlib
import importlib.util
import inspect
import os
import pkgutil
import re

from helpers import ROOT
from helpers.docs import DESIGN, section

import mpisub
from mpisub import config
from mpisub._util import errors
from mpisub.config.parse import tomllib

JOBS = os.path.join(ROOT, "jobs")
SOURCES = glob.glob(os.path.join(ROOT, "mpisub", "**", "*.py"), recursive=True)
TESTS = glob.glob(os.path.join(ROOT, "tests", "**", "*.py"), recursive=True)


def _default(text: str):
    return tomllib.loads(f"v = {text.strip('`')}")["v"]   # the table writes defaults as TOML values


def test_the_config_key_table_is_the_code():
    rows = re.findall(r"^\| `([a-z_]+\.[a-z_A-Z]+)` \| ([^|]+) \|", section("### Config keys"), re.M)
    table = {key: _default(value.strip()) for key, value in rows}
    code = {f"{s}.{k}": v for s, values in config.Config().to_dict().items() for k, v in values.items()}
    assert table == code


JOB = dict(train__rounds=2, model__width=64, data__n=32, output__record_masks=True)






def test_the_resume_keys_are_the_code():
    text = section("### Commands")
    listed = re.search(r"only the resume keys \(`config.RESUME_KEYS`\): (.*?) \(and may", text, re.S).group(1)
    assert re.findall(r"`([a-z_]+\.[a-z_]+)`", listed) == list(config.RESUME_KEYS)


def test_the_exit_codes_are_the_code():
    table = dict(re.findall(r"^\| (\d+) \| (.+) \|$", section("### Exit codes"), re.M))
    codes = {0, errors.EXIT_ABORTED, errors.EXIT_USER, errors.EXIT_INTERRUPTED, errors.EXIT_HUNG, errors.EXIT_CTRL_C}
    assert sorted(map(int, table)) == sorted(codes)


def test_every_environment_variable_the_code_reads_is_in_the_table():
    read = set()
    for path in SOURCES + glob.glob(os.path.join(JOBS, "*")) + TESTS:
        with open(path) as f:
            read |= set(re.findall(r"\bMPISUB_[A-Z_]+[A-Z]\b", f.read()))
    table = set(re.findall(r"`(MPISUB_[A-Z_]+)(?:=1)?`", section("### Environment variables")))
    assert read and read == table


def _has(module, attr: str) -> bool:
    """A name of the module, a method of one of its classes, or (a subpackage) one of its modules."""
    if hasattr(module, "__path__") and importlib.util.find_spec(f"{module.__name__}.{attr}") is not None:
        return True
    return hasattr(module, attr) or any(hasattr(c, attr) for _, c in inspect.getmembers(module, inspect.isclass)
                                        if c.__module__ == module.__name__)


def test_every_module_name_the_docs_cite_exists():
    """`module.name` in docs/design.md and the README: a module of mpisub and one of its names (or
    a method of one of its classes), unless it is a config key. Drift shows up here."""
    modules = {m.name.rsplit(".", 1)[-1]: m.name for m in pkgutil.walk_packages(mpisub.__path__, "mpisub.")}
    keys = set(config.Config().flat())
    stale = []
    for doc in (DESIGN, os.path.join(ROOT, "README.md")):
        with open(doc) as f:
            for mod, name in re.findall(r"`(?:mpisub\.)?([a-z_]+)\.([A-Za-z_][A-Za-z_0-9]*)(?:\(\))?`", f.read()):
                if mod in modules and f"{mod}.{name}" not in keys and name not in ("py", "sbatch", "sh") and \
                        not _has(importlib.import_module(modules[mod]), name):
                    stale.append(f"{os.path.basename(doc)}: {mod}.{name}")
    assert not stale


def test_the_architecture_table_names_every_module():
    text = section("## 5. Architecture")
    for m in pkgutil.walk_packages(mpisub.__path__, "mpisub."):
        if not m.name.endswith("__main__"):
            assert f"`{m.name.rsplit('.', 1)[-1]}`" in text, m.name


def test_every_section_the_code_cites_exists():
    """A title of docs/design.md that the code, the tests or the job scripts cite (the file's name,
    a comma, the title in quotes): a heading, a bold paragraph or a list item of that title there."""
    with open(DESIGN) as f:
        text = f.read()
    titles = set(re.findall(r"^#+ (?:\d+\. )?(.+)$", text, re.M)) | set(re.findall(r"\*\*([^*]+?)\.?\*\*", text)) | \
        set(re.findall(r"^- ([A-Z][a-z ]+):", text, re.M))
    missing = []
    for path in SOURCES + TESTS + glob.glob(os.path.join(JOBS, "*")):
        with open(path) as f:
            for cited in re.findall(r'design\.md,(?: section \d+,)? "([^"]+)"', f.read()):
                if not any(cited == t or t.startswith(cited) for t in titles):
                    missing.append(f"{os.path.basename(path)}: {cited}")
    assert not missing


def test_the_readme_names_every_config_key():
    with open(os.path.join(ROOT, "README.md")) as f:
        text = f.read()
    missing = [key for key in config.Config().flat() if f"`{key}`" not in text and
               not re.search(rf"`{key.split('.')[0]}\.[a-z_]+`(, `[a-z_.]+`)*, `{key}`", text)]
    assert not missing
