"""docs/design.md is the contract: its tables are the code's config keys and defaults, resume keys,
exit codes and environment variables; its run-file and checkpoint sections name what real files
hold; every `module.name` it (or the README) cites exists."""
import glob
import importlib
import inspect
import os
import pkgutil
import re

import h5py
import pytest

import mpisub
from mpisub import cli, config, schema
from mpisub.config import tomllib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DESIGN = os.path.join(ROOT, "docs", "design.md")
JOBS = os.path.join(ROOT, "mpisub", "jobs")


def _section(title: str) -> str:
    with open(DESIGN) as f:
        text = f.read()
    start = text.index(title)
    end = text.find("\n#", start + len(title))
    return text[start:end if end > 0 else None]


def _default(text: str):
    return tomllib.loads(f"v = {text.strip('`')}")["v"]   # the table writes defaults as TOML values


def test_the_config_key_table_is_the_code():
    rows = re.findall(r"^\| `([a-z_]+\.[a-z_A-Z]+)` \| ([^|]+) \|", _section("### Config keys"), re.M)
    table = {key: _default(value.strip()) for key, value in rows}
    code = {f"{s}.{k}": v for s, values in config.Config().to_dict().items() for k, v in values.items()}
    assert table == code


JOB = dict(train__rounds=2, model__width=64, data__n=32, output__record_masks=True)


@pytest.mark.slow
def test_the_run_file_table_names_what_a_run_file_holds(trained):
    section = _section("### The run file")
    with h5py.File(trained(1, **JOB) / "run.h5", "r") as f:
        for attr in f.attrs:
            assert f"`{attr}`" in section, f"root attr {attr} is not in docs/design.md"
        names = []
        f.visit(names.append)
        for name in names:
            leaf = name.split("/")[-1]
            assert f"/{name}`" in section or f"`{leaf}`" in section or f"/{name}/" in section, name
        assert sorted(f["metrics"]) == sorted(schema.METRICS) and sorted(f["eval"]) == sorted(schema.EVAL)
    for column in schema.COLUMNS:
        assert f"`{column.name}`" in section


@pytest.mark.slow
def test_the_checkpoint_section_names_what_a_checkpoint_holds(trained):
    section = _section("### The checkpoint")
    assert f"(format {schema.CHECKPOINT_FORMAT})" in section
    with h5py.File(trained(1, **JOB) / "checkpoint.h5", "r") as f:
        assert set(f.attrs) == set(re.findall(r"`([a-z_0-9]+)`", section.split(";")[0]))
        names = []
        f.visit(lambda name: names.append(name) if isinstance(f[name], h5py.Dataset) else None)
    cited = {"W", "W_sha256"} | {f"{table}/{name}" for table in schema.TABLES for name in schema.columns(table)}
    assert set(names) == cited and "`W_sha256`" in section
    assert all(f"`{table}/<name>`" in section for table in schema.TABLES)


def test_the_resume_keys_are_the_code():
    text = _section("### Commands")
    listed = re.search(r"only the resume keys \(`config.RESUME_KEYS`\): (.*?) \(and may", text, re.S).group(1)
    assert re.findall(r"`([a-z_]+\.[a-z_]+)`", listed) == list(config.RESUME_KEYS)


def test_the_exit_codes_are_the_code():
    table = dict(re.findall(r"^\| (\d+) \| (.+) \|$", _section("### Exit codes"), re.M))
    codes = {0, cli.EXIT_ABORTED, cli.EXIT_USER, cli.EXIT_INTERRUPTED, cli.EXIT_HUNG, cli.EXIT_CTRL_C}
    assert sorted(map(int, table)) == sorted(codes)


def test_every_environment_variable_the_code_reads_is_in_the_table():
    read = set()
    for path in glob.glob(os.path.join(ROOT, "mpisub", "*.py")) + glob.glob(os.path.join(JOBS, "*")) + \
            glob.glob(os.path.join(ROOT, "tests", "*.py")):
        with open(path) as f:
            read |= set(re.findall(r"\bMPISUB_[A-Z_]+[A-Z]\b", f.read()))
    table = set(re.findall(r"`(MPISUB_[A-Z_]+)(?:=1)?`", _section("### Environment variables")))
    assert read and read == table


def _has(module, attr: str) -> bool:
    return hasattr(module, attr) or any(hasattr(c, attr) for _, c in inspect.getmembers(module, inspect.isclass)
                                        if c.__module__ == module.__name__)


def test_every_module_name_the_docs_cite_exists():
    """`module.name` in docs/design.md and the README: a module of mpisub and one of its names (or
    a method of one of its classes), unless it is a config key. Drift shows up here."""
    modules = {m.name for m in pkgutil.iter_modules(mpisub.__path__)}
    keys = set(config.Config().flat())
    stale = []
    for doc in (DESIGN, os.path.join(ROOT, "README.md")):
        with open(doc) as f:
            for mod, name in re.findall(r"`(?:mpisub\.)?([a-z_]+)\.([A-Za-z_][A-Za-z_0-9]*)(?:\(\))?`", f.read()):
                if mod in modules and f"{mod}.{name}" not in keys and name != "py" and \
                        not _has(importlib.import_module(f"mpisub.{mod}"), name):
                    stale.append(f"{os.path.basename(doc)}: {mod}.{name}")
    assert not stale


def test_the_architecture_table_names_every_module():
    section = _section("## 5. Architecture")
    for m in pkgutil.iter_modules(mpisub.__path__):
        if m.name != "__main__":
            assert f"`{m.name}`" in section, m.name


def test_every_section_the_code_cites_exists():
    """A title of docs/design.md that the code, the tests or the job scripts cite (the file's name,
    a comma, the title in quotes): a heading, a bold paragraph or a list item of that title there."""
    with open(DESIGN) as f:
        text = f.read()
    titles = set(re.findall(r"^#+ (?:\d+\. )?(.+)$", text, re.M)) | set(re.findall(r"\*\*([^*]+?)\.?\*\*", text)) | \
        set(re.findall(r"^- ([A-Z][a-z ]+):", text, re.M))
    missing = []
    for path in glob.glob(os.path.join(ROOT, "mpisub", "*.py")) + glob.glob(os.path.join(ROOT, "tests", "*.py")) + \
            glob.glob(os.path.join(JOBS, "*")):
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
