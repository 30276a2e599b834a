"""docs/design.md is the contract: its config-key table is the code's keys and defaults, and its
run-file table names what a real run file holds."""
import os
import re

import h5py
from conftest import mpirun, sets

from mpisub import config, schema
from mpisub.config import tomllib

DESIGN = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "design.md")


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


def test_the_run_file_table_names_what_a_run_file_holds(tmp_path):
    r = mpirun(1, *sets(output__dir="out", train__rounds=2, model__width=64, data__n=32,
                        output__record_masks=True), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    section = _section("### The run file")
    with h5py.File(tmp_path / "out" / "run.h5", "r") as f:
        for attr in f.attrs:
            assert f"`{attr}`" in section, f"root attr {attr} is not in docs/design.md"
        names = []
        f.visit(names.append)
        for name in names:
            leaf = name.split("/")[-1]
            assert f"/{name}`" in section or f"`{leaf}`" in section or f"/{name}/" in section, name
        assert sorted(f["metrics"]) == sorted(schema.METRICS)
    for metric in schema.METRICS:
        assert f"`{metric}`" in section
