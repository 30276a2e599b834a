"""docs/design.md's run-file and checkpoint sections name what real files hold."""
import re

import h5py
from helpers.docs import section

from mpisub.io import schema

JOB = dict(train__rounds=2, model__width=64, data__n=32, output__record_masks=True)

def test_the_run_file_table_names_what_a_run_file_holds(trained):
    text = section("### The run file")
    with h5py.File(trained(1, **JOB) / "run.h5", "r") as f:
        for attr in f.attrs:
            assert f"`{attr}`" in text, f"root attr {attr} is not in docs/design.md"
        names = []
        f.visit(names.append)
        for name in names:
            leaf = name.split("/")[-1]
            assert f"/{name}`" in text or f"`{leaf}`" in text or f"/{name}/" in text, name
        assert sorted(f["metrics"]) == sorted(schema.METRICS) and sorted(f["eval"]) == sorted(schema.EVAL)
    for column in schema.COLUMNS:
        assert f"`{column.name}`" in text

def test_the_checkpoint_section_names_what_a_checkpoint_holds(trained):
    text = section("### The checkpoint")
    assert f"(format {schema.CHECKPOINT_FORMAT})" in text
    with h5py.File(trained(1, **JOB) / "checkpoint.h5", "r") as f:
        assert set(f.attrs) == set(re.findall(r"`([a-z_0-9]+)`", text.split(";")[0]))
        names = []
        f.visit(lambda name: names.append(name) if isinstance(f[name], h5py.Dataset) else None)
    cited = {"W", "W_sha256", "W_shards", "W_shard_names"} | \
        {f"{table}/{name}" for table in schema.TABLES for name in schema.columns(table)}
    assert set(names) == cited and all(f"`{name}`" in text for name in ("W_sha256", "W_shards", "W_shard_names"))
    assert all(f"`{table}/<name>`" in text for table in schema.TABLES)
