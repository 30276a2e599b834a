"""A sweep point's identity (identity.py) against a run's, in process: auto values compare as the
run resolves them, the keys that change how a run goes are not compared, data files by their
contents, and train.plan / output.eval_every as given when the point leaves them auto."""
import json
from types import SimpleNamespace

import pytest

from mpisub import config
from mpisub._util.provenance import code_hash
from mpisub.study import identity
from mpisub.train import resolve


def _run(given: config.Config, ranks: int, data: str = "", code: str | None = None, **resolved):
    """A stand-in for an analysis.Run trained from `given` on `ranks` ranks (resolved values
    replaced by `resolved`, {"section.key": value})."""
    cfg = resolve.settle(given, ranks)[0].replace(resolved)
    return SimpleNamespace(config=cfg.to_dict(), data_sha256=data,
                           attrs={"config_given": given.to_json(), "code_hash": code_hash() if code is None else code})


def _diff(point: config.Config, run, ranks: int = 2) -> list[str]:
    return identity.of_point(point, ranks).differences(identity.of_run(run))


def test_auto_values_compare_as_resolved_and_how_keys_not_at_all():
    auto = config.build("ist")                                    # masks.subnets = 0, masks.keep = 0: auto
    assert _diff(auto, _run(auto, 2)) == []
    explicit = config.build("ist", overrides=["masks.subnets=2", "masks.keep=0.5"])
    assert _diff(explicit, _run(auto, 2)) == []                   # what auto resolves to on 2 ranks
    assert _diff(auto, _run(auto, 4), ranks=2) == ["masks.keep 0.25 -> 0.5", "masks.subnets 4 -> 2"]
    how = config.build("ist", overrides=["output.checkpoint_every=3", "train.watchdog_seconds=9", "output.dir=x"])
    assert _diff(how, _run(auto, 2)) == []
    assert _diff(config.build("ist", overrides=["train.rounds=99"]), _run(auto, 2)) == []   # the caller's
    assert _diff(config.build("ist", overrides=["train.lr=1.5"]), _run(auto, 2)) == ["train.lr 4.0 -> 1.5"]


def test_the_plan_and_the_evaluations_compare_as_given_when_left_auto():
    auto = config.build("ist")
    ran_outputs = _run(auto, 2, **{"train.plan": "outputs", "output.eval_every": 7})   # what the machine chose
    assert _diff(auto, ran_outputs) == []
    rows = config.build("ist", overrides=["train.plan=rows", "output.eval_every=7"])
    assert _diff(rows, ran_outputs) == ['train.plan "outputs" -> "rows"']


def test_data_files_compare_by_their_contents_and_the_code_by_its_hash(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("x1,x2,y\n" + "".join(f"{i},{i % 3},{i % 2}\n" for i in range(20)))
    given = config.build("gd", overrides=[f"data.source={json.dumps(str(path))}"])
    first = identity.of_point(given, 1)
    run = _run(given, 1, data=first.data, **{"data.n": 20, "data.d": 2, "data.source": "elsewhere/d.csv"})
    assert _diff(given, run, 1) == []                              # the file's n and d and its path: not compared
    path.write_text(path.read_text() + "5,5,1\n")
    assert _diff(given, run, 1) == ["the data files' contents (sha256) changed"]
    assert _diff(given, _run(given, 1, data=identity.of_point(given, 1).data, code="0ld"), 1) == \
        [f"the code changed (code hash 0ld -> {code_hash()})"]


def test_a_missing_data_file_is_one_line_naming_its_key(tmp_path):
    given = config.build("gd", overrides=[f"data.source={json.dumps(str(tmp_path / 'nope.csv'))}"])
    with pytest.raises(Exception, match=r"^data.source .*nope.csv'?: not found"):
        identity.of_point(given, 1)
