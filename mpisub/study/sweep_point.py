"""One point of a study: a run folder and the options that train it (`Point`), and `Point.run`,
which reuses the finished run in the folder only when it is this point's run (identity.py: the
resolved config, the data files' contents and the code), continues it when it stopped or has fewer
rounds than asked, and otherwise trains the point, after moving whatever was in the folder aside
to `.stale/` beside it (nothing is deleted). One line per point says which, and why."""
import datetime
import os
import time
from dataclasses import dataclass, field

from mpisub import config
from mpisub._util.errors import EXIT_INTERRUPTED, UserError
from mpisub.analysis.runs import Run, open_run
from mpisub.io.run_folder import CHECKPOINT, FILENAME, FolderLock
from mpisub.study import identity
from mpisub.study.launch import set_args, train

STALE = ".stale"


class RunFailed(RuntimeError):
    """mpisub-train ended with an error; the message holds its stderr."""


class RunStopped(RunFailed):
    """mpisub-train stopped on a signal (exit 3), with a checkpoint when it had trained."""


@dataclass(frozen=True)
class Point:
    folder: str
    settings: dict = field(default_factory=dict)   # {"section.key": value}, as --set gives them
    ranks: int = 2
    preset: str | None = None
    base_file: str | None = None
    minutes: float = 10.0                          # the most it takes, for a cluster sweep (cluster.py)

    def given(self) -> config.Config:
        """The point's config as given (defaults < preset < base file < settings), checked."""
        return config.build(self.preset, self.base_file, set_args(self.settings)[1::2])

    def options(self) -> list[str]:
        """mpisub-train's options for a new run of the point."""
        return ((["--preset", self.preset] if self.preset else []) +
                (["--config", self.base_file] if self.base_file else []) +
                set_args({**self.settings, "output.dir": self.folder}))

    def run(self, tag: str = "") -> Run:
        """The point's run: reused, continued or trained (see the module's docstring); a failed
        mpisub-train is RunFailed."""
        t0 = time.perf_counter()
        action, args, why = self.decide()
        if action == "reused":
            run = open_run(self.folder)
            print(f"{tag}{self.folder}: reused ({outcome(run)})", flush=True)
            return run
        code, err = train(args, self.ranks)
        if code == EXIT_INTERRUPTED:
            raise RunStopped(f"{tag}{self.folder}: stopped by a signal; the sweep continues it when run again")
        if code:
            raise RunFailed(f"{tag}{self.folder}: mpisub-train failed (exit {code}):\n{err.strip()}")
        run = open_run(self.folder)
        print(f"{tag}{self.folder}: {action} in {time.perf_counter() - t0:.1f} s ({outcome(run)}){why}", flush=True)
        return run

    def decide(self) -> tuple[str, list[str], str]:
        """(what to do: reused, resumed, trained or trained again; mpisub-train's options; why, for the
        line)."""
        if not os.path.exists(os.path.join(self.folder, FILENAME)):
            if os.path.isdir(self.folder) and os.listdir(self.folder):
                return "trained again", self.options(), self.aside("the folder held no run file")
            return "trained", self.options(), ""
        try:
            run = open_run(self.folder)
        except UserError as e:
            return "trained again", self.options(), self.aside(f"its run file could not be read ({e})")
        changed = identity.of_point(self.given(), self.ranks).differences(identity.of_run(run))
        if changed:
            why = f"the run there was not this point's ({'; '.join(changed)})"
            return "trained again", self.options(), self.aside(why)
        given = self.given()
        key = "train.budget" if given.train.budget > 0 else "train.rounds"     # how long: identity.LENGTH
        want, had = given.flat()[key], config.flatten(run.config)[key]
        if run.status == "completed" and want == had:
            return "reused", [], ""
        if run.status != "failed" and want >= had and os.path.exists(os.path.join(self.folder, CHECKPOINT)):  # type: ignore[operator]
            more = set_args({key: want}) if want != had else []
            return "resumed", ["--resume", self.folder, *more], f" from round {len(run.metrics['round'])}"
        why = "the run there had failed" if run.status == "failed" else f"the run there had {key} = {had}, not {want}"
        return "trained again", self.options(), self.aside(why)

    def aside(self, why: str) -> str:
        """Moves the folder to <parent>/.stale/<name>-<time> (refused while a job writes in it);
        the words for the point's line."""
        parent, name = os.path.split(os.path.normpath(self.folder))
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        target = os.path.join(parent, STALE, f"{name}-{stamp}")
        lock = FolderLock(self.folder)          # a UserError while another job writes there
        try:
            os.makedirs(os.path.dirname(target), exist_ok=True)
            n = 1
            while os.path.exists(target):
                n, target = n + 1, os.path.join(parent, STALE, f"{name}-{stamp}-{n}")
            os.rename(self.folder, target)
        finally:
            lock.release()
        return f", as {why}; the old run is in {target}"


def outcome(run: Run) -> str:
    return f"{len(run.metrics['round'])} rounds, final loss {run.eval['loss'][-1]:.3e}"


def launch(folder: str, settings: dict, ranks: int = 2, tag: str = "", base_file: str | None = None,
           preset: str | None = None) -> Run:
    """Train into `folder` with `settings` ({"section.key": value}, over the preset and the config
    file `base_file`) on `ranks` ranks, unless its finished run is already there (Point.run)."""
    return Point(folder, settings, ranks, preset, base_file).run(tag)
