"""A run's start and end, on every rank of mpisub-train: the config as given and the checkpoint it
resumes, the data (once per node), the settled config and the sizes it needs, the run folder and
its loggers, the banner and the closing report. A check that can fail on some ranks runs through
comm.collective_check, so that every rank stops the same way (docs/design.md, section 3)."""
from __future__ import annotations

import datetime
import os
import resource
import socket
import sys
from typing import TYPE_CHECKING

from mpisub import config
from mpisub._util.errors import UserError, env_number
from mpisub._util.provenance import __version__, code_hash
from mpisub.io import data, parent, readback
from mpisub.io.loggers import Loggers
from mpisub.io.run_folder import FILENAME, FolderLock, check_disk, check_output_dir, new_run_dir
from mpisub.io.store import Header, RunFile
from mpisub.nn import theory
from mpisub.parallel import resources
from mpisub.parallel.layout import Layout
from mpisub.train.loop import Interrupted, Start
from mpisub.train.resolve import settle

if TYPE_CHECKING:  # types only: never imported at run time
    from collections.abc import Callable
    from typing import Any

    from mpisub.config import Config
    from mpisub.io.data import Sets
    from mpisub.parallel.comm import Comm


def say(comm: Comm) -> Callable[[str], None]:
    """Rank 0's printer (the others print nothing)."""
    return lambda text: print(text, flush=True) if comm.rank == 0 else None


def lock_wait() -> float:
    """Seconds to wait for another job's lock on the run folder (MPISUB_LOCK_WAIT, default 10): a
    requeued job's previous attempt may still be writing its last checkpoint."""
    return env_number("MPISUB_LOCK_WAIT", 10.0)


def lock_for_resume(comm: Comm, folder: str, held: list) -> None:
    """Rank 0 locks the folder of the run to resume before any rank reads its checkpoint: a job
    still writing it is waited for, or refused. The lock goes to `held`."""
    def take():
        if os.path.isdir(folder):
            held.append(FolderLock(folder, lock_wait(), say(comm)))
    comm.collective_check(take, who="root")


class Job:
    """One launch of a run: the command line, the config as given (a resumed run's first one), the
    config before and after it is settled, why its plan, and the checkpoint it resumes (or None)."""

    def __init__(self, args: Any, comm: Comm, cores: int):
        """The checks of the config and the checkpoint to resume from, local to this rank (no
        collective: run it through comm.collective_check)."""
        step_tasks = env_number("SLURM_STEP_NUM_TASKS", 1)
        if comm.size == 1 and step_tasks > 1:
            raise UserError(f"srun started {step_tasks} tasks but MPI sees 1 rank in each: every task would "
                            f"train alone. Give srun the MPI plugin of your MPI library (srun --mpi=pmi2 for "
                            f"MPICH, --mpi=pmix for Open MPI; srun --mpi=list shows them) or use mpirun")
        self.args, self.ranks, self.checkpoint = args, comm.size, None
        self.init: dict = {}
        self.node = resources.Node(comm.ranks_per_node, cores)
        if args.resume:
            ck = self.checkpoint = readback.read_checkpoint(args.resume, args.allow_version_change)
            self.base = config.for_resume(ck["config"], args.overrides, ck["config_given"], args.preset, args.config)
            self.base.output.dir = args.resume
            self.given = config.from_dict(ck["config_given"]) if ck["config_given"] else self.base
        else:
            self.base = self.given = config.build(args.preset, args.config, args.overrides)
        self.cfg, self.why = settle(self.base, comm.size, resuming=self.resuming, node=self.node)
        if self.cfg.output.tensorboard:
            from mpisub.io import tensorboard  # lazy: optional (mpisub[tensorboard])
            tensorboard.check_available()
        if self.cfg.data.source == "synthetic":  # before drawing it: n and d are the config's
            resources.check_memory(self.cfg, self.ranks, self.node, self.resuming)

    @property
    def resuming(self) -> bool:
        return self.checkpoint is not None

    def settle_with_data(self, sets: Sets) -> None:
        """The checks that need the data (local, like __init__): the config settled with the data's
        shape (a data file decides n, d and c), the plan, the memory, the resumed data's hash."""
        shape = (sets.X.shape[0], sets.X.shape[1], sets.Y.shape[1])
        self.cfg, self.why = settle(self.base, self.ranks, shape, resuming=self.resuming, node=self.node)
        resources.check_memory(self.cfg, self.ranks, self.node, self.resuming)
        ck = self.checkpoint
        if ck is not None:
            if sets.sha256 != ck["data_sha256"]:
                raise UserError(f"--resume {self.args.resume!r}: data.source {self.cfg.data.source!r} changed since "
                                f"the run started (sha256 differs); restore the original file or start a new run")
            if ck["round"] >= self.cfg.train.rounds:
                raise UserError(f"--resume {self.args.resume!r}: the run has done all {ck['round']} rounds; "
                                f"to train longer add --set train.rounds=N with N > {ck['round']}")
            tr = self.cfg.train
            if tr.plateau_window and theory.running_plateau(ck["eval"].get("loss", []), tr.plateau_window,
                                                            tr.plateau_floor, tr.plateau_patience)[0] is not None:
                raise UserError(f"--resume {self.args.resume!r}: the run stopped at its plateau in round {ck['round']} "
                                f"(train.plateau_window = {tr.plateau_window}); it is complete: start a new run to "
                                f"train on (e.g. mpisub-train --init-from {self.args.resume})")

    def check_init(self) -> None:
        """Rank 0's check of the model.init_from run (parent.check_init); what the run file records
        of it goes to self.init."""
        self.init = parent.check_init(self.cfg) if self.cfg.model.init_from else {}

    def start(self, comm: Comm) -> Start | None:
        """The checkpoint as this rank continues from it (train.Start: its own rows of W), or None."""

        ck = self.checkpoint
        if ck is None:
            return None
        layout = Layout.of(self.cfg, comm)
        W = readback.read_checkpoint_W(ck["folder"], layout.lo, layout.hi)
        return Start(ck["round"], ck["loss_init"], W, ck["metrics"], ck["eval"], ck["shards"])

    def segment(self, comm: Comm) -> dict:
        """This launch, as a row of the run file's segments table."""
        return {"started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
                "ranks": comm.size, "nodes": comm.nodes, "host": socket.gethostname(), "mpisub_version": __version__,
                "code_hash": code_hash(), "mpi_library": comm.library(),
                "first_round": self.checkpoint["round"] if self.checkpoint else 0}


def shared_data(cfg: Config, comm: Comm) -> data.Sets:
    """One rank per node reads (or draws) the data, the others map its copy (an MPI-3 shared-memory
    window): one copy of the data per node (docs/design.md, section 3)."""
    loaded = comm.collective_check(data.load_sets, cfg, who="node")
    arrays = None if loaded is None else \
        (loaded.X, loaded.Y, loaded.X_test, loaded.Y_test, (loaded.sha256, loaded.inputs))
    *shared, (sha256, inputs) = comm.share_on_node(arrays)
    return data.Sets(*shared, sha256, inputs)  # type: ignore[call-arg]  # the four arrays, shared


def open_outputs(job: Job, comm: Comm, sets: Sets, held: list) -> Loggers:
    """Rank 0 checks the folder and the disk space the run needs, takes the folder's lock (a new
    run's goes to `held`) and opens the run file (and TensorBoard's) as the run's loggers; the
    other ranks get none. Only rank 0 touches the output folder, and its verdict is shared, so a
    bad folder stops every rank the same way. A resumed run's file is rebuilt from its checkpoint
    (rows after it are redone exactly). Sets job.cfg's output.dir to the folder."""
    loggers: list = []
    folder = comm.from_root(comm.collective_check(_open_on_root, job, comm, sets, held, loggers, who="root"))
    job.cfg = job.cfg.replace({"output.dir": folder})
    return Loggers(loggers)


def _open_on_root(job: Job, comm, sets, held: list, loggers: list) -> str:

    cfg, ck = job.cfg, job.checkpoint
    folder = cfg.output.dir
    if ck is None:
        if folder:
            check_output_dir(folder, cfg.output.overwrite)  # writes nothing
        check_disk(cfg, folder or "runs")
        folder = folder or new_run_dir()
        held.append(FolderLock(folder, lock_wait(), say(comm)))
    else:
        check_disk(cfg, folder, resuming=True)
    cfg = cfg.replace({"output.dir": folder})
    attrs = {"config_given": job.given.to_json(), "mpisub_version": __version__, "code_hash": code_hash(),
             "ranks": comm.size, "mpi_library": comm.library(), "plan_reason": job.why, **job.init}
    segments = (ck["segments"] if ck else []) + [dict(job.segment(comm), last_round=ck["round"] if ck else 0)]
    header = Header(cfg.to_json(), attrs, job.given.to_json(), sets.sha256, ck["created"] if ck else "", segments,
                    (cfg.masks.subnets, cfg.model.width) if cfg.output.record_masks else None)
    loggers.append(RunFile(folder, header, overwrite=cfg.output.overwrite or ck is not None))
    if cfg.output.tensorboard:
        from mpisub.io.tensorboard import TensorBoard  # lazy: optional (mpisub[tensorboard])
        loggers.append(TensorBoard(folder))
    return folder


def banner(job: Job, comm: Comm, threads: str) -> None:
    cfg, ck = job.cfg, job.checkpoint
    print("# mpisub-train: resolved config\n" + cfg.to_toml(), flush=True)
    resumed = f"; resuming after round {ck['round']}" if ck else ""
    if ck and ck["version_change"]:
        print(f"# --allow-version-change: the checkpoint was {ck['version_change']}", flush=True)
    print(f"# plan {cfg.train.plan}: {job.why}", flush=True)
    print(f"# {comm.size} rank(s) on {comm.nodes} node(s) (one copy of the data each), "
          f"{cfg.masks.subnets} subnetwork(s) of keep {cfg.masks.keep:g}, "
          f"BLAS threads per rank: {threads}; writing {os.path.join(cfg.output.dir, FILENAME)}{resumed}", flush=True)


def report_stop(job: Job, comm: Comm, signal_name: str, e: Interrupted) -> None:
    then = (f", checkpoint written; continue with: mpirun -n {comm.size} mpisub-train --resume "
            f"{job.cfg.output.dir}") if e.checkpointed else ""
    print(f"mpisub-train: {signal_name}: {e}{then}", file=sys.stderr, flush=True)


def report_done(job: Job, result: dict, seconds: float) -> None:
    cfg, ck = job.cfg, job.checkpoint
    done = len(result["metrics"]["round"]) - (ck["round"] if ck else 0)  # this launch's (a plateau may end it early)
    m = {name: values[-done:] for name, values in result["metrics"].items()}
    first, last = result["loss_init"], result["eval"]["loss"][-1]   # the last round is always evaluated
    path = os.path.join(cfg.output.dir, FILENAME)
    print(f"done: {done} rounds in {seconds:.1f} s "
          f"(compute {m['seconds_compute'].sum():.1f} s, comm {m['seconds_comm'].sum():.2f} s); "
          f"loss {first:.3e} -> {last:.3e} ({first / max(last, 1e-300):.1f}x lower)")
    print(f"run file: {path}")
    print(f"look at it: mpisub-inspect {cfg.output.dir}   (or: h5dump -A {path})")


def record_peak_memory(comm: Comm, log: Loggers) -> None:
    """Every rank's peak memory and bytes written, into the run file."""

    peaks = comm.gather(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)  # Linux: KiB
    written = comm.gather(_written_bytes() / 2**20)
    log.log_facts({"peak_rss_mb": peaks, "written_mb": written})


def _written_bytes() -> float:
    """Bytes this process has passed to write() so far (Linux's /proc/self/io wchar; NaN elsewhere):
    its shards, and on rank 0 the run file, the manifests and its output."""
    try:
        with open("/proc/self/io") as f:
            return float(next(line.split()[1] for line in f if line.startswith("wchar:")))
    except (OSError, StopIteration, ValueError, IndexError):
        return float("nan")
