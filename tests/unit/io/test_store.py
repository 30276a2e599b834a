"""The run folder and the files in it, in process: publish-don't-truncate, default folder names,
and the code hash a checkpoint records."""
import os
import re

import h5py

from mpisub._util import provenance
from mpisub.io import run_folder, store


def _files(folder) -> list[str]:
    return sorted(os.listdir(folder)) if os.path.isdir(folder) else []


def test_a_run_file_is_replaced_only_once_its_successor_holds_everything(tmp_path):
    """RunFile builds run.h5.tmp; a run (or resume) that ends before publish() leaves the old run.h5."""
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "run.h5").write_bytes(b"the previous run file")
    new = store.RunFile(str(folder), store.Header("{}"), overwrite=True)
    assert (folder / "run.h5.tmp").exists()
    new.finalize("failed")                                                  # e.g. the resume failed
    assert (folder / "run.h5").read_bytes() == b"the previous run file"
    assert _files(folder) == ["run.h5"]

    new = store.RunFile(str(folder), store.Header("{}"), overwrite=True)
    new.publish()
    new.finalize("completed")
    with h5py.File(folder / "run.h5", "r") as f:
        assert f.attrs["status"] == "completed"
    assert _files(folder) == ["run.h5"]


def test_default_run_folders_never_collide_and_name_the_array_task(tmp_path, monkeypatch):
    monkeypatch.delenv("SLURM_ARRAY_TASK_ID", raising=False)
    made = [run_folder.new_run_dir(str(tmp_path)) for _ in range(3)]     # within one second, most likely
    assert len(set(made)) == 3 and all(os.path.isdir(p) for p in made)
    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "4242")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "7")
    assert re.fullmatch(r"\d{8}-\d{6}-array4242_7(-\d+)?", os.path.basename(run_folder.new_run_dir(str(tmp_path))))


def test_the_code_hash_ignores_comments_and_docstrings_but_not_code():
    src = 'def f(x):\n    """Doc."""\n    return x + 1  # one\n'
    assert provenance._code(src) == provenance._code('def f(x):\n    # another comment\n    return x + 1\n')
    assert provenance._code(src) != provenance._code('def f(x):\n    return x + 2\n')
    assert re.fullmatch(r"[0-9a-f]{16}", provenance.code_hash())
