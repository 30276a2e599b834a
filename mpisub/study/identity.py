"""What a run's results are a function of, so that a sweep reuses a finished run only when it is
the run the sweep asks for (docs/design.md, section 4, "Sweeps"): the fully resolved config (base
file, preset, [set], grid and case values; auto values as the run resolves them for its number of
ranks), the data files' sha256 and the code hash. Plain Python.

Not compared: the keys that change how a run goes, not what it computes (config.HOW_KEYS); the
data files' paths (their contents are); a data file's n, d and outputs (the file's own); and two
auto values whose resolution weighs the machine or the data, train.plan and output.eval_every,
which compare as given when the sweep leaves them auto. How long to train (train.rounds, or
train.budget when set) is compared by the caller: a finished run asked to train longer is continued.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING

from mpisub import config
from mpisub._util.provenance import code_hash
from mpisub.io import data
from mpisub.train import resolve

if TYPE_CHECKING:  # types only: never imported at run time
    from mpisub.analysis.runs import Run

AS_GIVEN_WHEN_AUTO = {"train.plan": "auto", "output.eval_every": 0}
LENGTH = ("train.rounds", "train.budget")    # how long to train: compared by the caller
FROM_THE_FILE = ("data.n", "data.d", "data.outputs", "data.source", "data.test_source")


@dataclass(frozen=True)
class Identity:
    config: dict        # {"section.key": value}: resolved, what_counts() of it
    given: dict         # the config as given, for the keys compared as given
    data: str           # the data files' sha256 ("" for built-in data)
    code: str           # provenance.code_hash() of the code that trained it

    def differences(self, run: "Identity") -> list[str]:
        """What `run` (a run on disk) differs in from this point, in words; [] when it is this
        point's run (train.rounds aside)."""
        out = []
        for key in sorted(set(self.config) | set(run.config)):
            mine, theirs = self.config.get(key), run.config.get(key)
            if key in AS_GIVEN_WHEN_AUTO and self.given.get(key) == AS_GIVEN_WHEN_AUTO[key]:
                mine, theirs = self.given.get(key), run.given.get(key, theirs)
            if key in LENGTH and _by_budget(self.config) == _by_budget(run.config):
                continue        # how long: the caller's (a run asked to train longer is continued)
            if mine != theirs:
                out.append(f"{key} {_show(theirs)} -> {_show(mine)}")
        if self.data != run.data:
            out.append("the data files' contents (sha256) changed")
        if self.code != run.code:
            out.append(f"the code changed (code hash {run.code or 'unknown'} -> {self.code})")
        return out


def _by_budget(flat: dict) -> bool:
    return (flat.get("train.budget") or 0) > 0


def _show(value) -> str:
    return json.dumps(value)


def what_counts(flat: dict) -> dict:
    """The keys of a flat config that decide a run's results."""
    from_file = flat.get("data.source", "synthetic") != "synthetic"
    return {k: v for k, v in flat.items()
            if k not in config.HOW_KEYS and not (k in FROM_THE_FILE and (from_file or k.endswith("source")))}


def of_point(given: config.Config, ranks: int) -> Identity:
    """The identity of a run of `given` on `ranks` ranks, as it would be trained now. A data file
    that is not there, or keys that do not fit together, are a UserError."""
    resolved, _ = resolve.settle(given, ranks)
    return Identity(what_counts(resolved.flat()), given.flat(), data.files_sha256(given), code_hash())


def of_run(run: Run) -> Identity:
    """The identity of a run on disk (an analysis.Run)."""
    given = json.loads(run.attrs.get("config_given") or run.attrs["config"])
    return Identity(what_counts(config.flatten(run.config)), config.flatten(given), run.data_sha256,
                    str(run.attrs.get("code_hash", "")))
