"""Console scripts. `mpisub-train` runs under mpirun (or alone, as one rank).

Errors a user can cause end every rank with one line on rank 0 and exit code 2; any other exception
on any rank aborts the whole job (MPI_Abort) instead of leaving the other ranks hung in a collective.
"""
import argparse
import contextlib
import os
import signal
import sys
import time
import traceback

from . import __version__, config
from .errors import UserError
from .launch import THREAD_VARS

# numpy, scipy and numba are imported only inside functions, after set_threads: their BLAS reads
# the thread variables once, when it loads.


def threads_per_rank(mine: set, on_node: list) -> int:
    """The cores this rank may run on (its CPU affinity), shared evenly between the ranks of the
    node that may run on them too: unbound ranks split the node (or the job's cgroup), ranks bound
    to their own cores use all of them."""
    sharing = sum(1 for cores in on_node if cores & mine)
    return max(1, len(mine) // max(1, sharing))


def set_threads(node_comm) -> int:
    """Must run before numpy/scipy load their BLAS. Returns this rank's cores (0 when the user set
    any of the usual variables: then they decide), at most SLURM_CPUS_PER_TASK in a Slurm job."""
    try:
        mine = set(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover (not Linux)
        mine = set(range(os.cpu_count() or 1))
    on_node = node_comm.allgather(mine)  # collective: every rank calls it, whatever the environment
    if any(v in os.environ for v in THREAD_VARS):
        return 0
    cores = threads_per_rank(mine, on_node)
    allotted = os.environ.get("SLURM_CPUS_PER_TASK", "")
    if allotted.isdigit() and int(allotted) > 0:  # Slurm's share per rank, also when mpirun started us
        cores = min(cores, int(allotted))
    _set_thread_vars(cores)
    return cores


def _set_thread_vars(n: int) -> None:
    for var in THREAD_VARS:
        os.environ[var] = str(n)


def split_cores(cores: int, subnets_here: int) -> tuple[int, int]:
    """(subnetwork workers, BLAS threads each) for a rank with `cores` cores and `subnets_here`
    subnetworks: independent subnetworks in parallel threads beat one subnetwork on several BLAS
    threads (small products do not scale in BLAS, and the element-wise work runs on all cores)."""
    workers = max(1, min(cores, subnets_here))
    return workers, max(1, cores // workers)


class _Parser(argparse.ArgumentParser):
    """Prints on rank 0 only, and reports a bad command line as a UserError (exit 2 on every rank)."""
    rank = 0

    def _print_message(self, message, file=None):
        if self.rank == 0:
            super()._print_message(message, file)

    def error(self, message):
        raise UserError(f"{message} (see mpisub-train --help)")


def train_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="mpisub-train", description=(
        "Train a one-hidden-layer ReLU network by masked subnetworks (IST, dropout, multi-sample "
        "dropout, or plain GD) over MPI. Run as: mpirun -n K mpisub-train [options]. With no "
        "options: IST on built-in synthetic data."))
    p.add_argument("--config", metavar="FILE", help="TOML file with [data] [model] [masks] [train] [output] sections")
    p.add_argument("--set", metavar="SECTION.KEY=VALUE", action="append", default=[], dest="overrides",
                   help="override one config value (repeatable), e.g. --set train.lr=2.0")
    p.add_argument("--preset", choices=list(config.PRESETS), help="start from a preset (default: the ist defaults)")
    p.add_argument("--resume", metavar="DIR", help="continue the run in DIR from its last checkpoint (at any K "
                   "under plan outputs, a K dividing its subnets under plan rows); --set may change only "
                   + ", ".join(config.RESUME_KEYS))
    p.add_argument("--allow-version-change", action="store_true", help="with --resume: continue a checkpoint "
                   "written by another mpisub version or code (the run goes on, but not bit for bit as an "
                   "unbroken run would)")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.add_argument("--debug", action="store_true", help="show tracebacks for user errors too")
    p.add_argument("--version", action="version", version=f"mpisub {__version__}")
    return p


# exit codes (docs/design.md, section 4): 2 = a user error, divergence or a failed write (disk
# full), 3 = stopped by SIGTERM/SIGUSR1 (with a checkpoint written: continue with --resume; before
# training: start again), 1 = aborted after an exception, 130 = Ctrl-C (128 + SIGINT, as shells say)
EXIT_ABORTED, EXIT_USER, EXIT_INTERRUPTED, EXIT_CTRL_C = 1, 2, 3, 130
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class _Exit(SystemExit):
    """An exit every rank takes together (help, a user error, a stop after a checkpoint). Any other
    SystemExit, e.g. a stray sys.exit on one rank, aborts the job: the others would wait forever."""


def _prepare(args, comm, cores: int):
    """The checks of the config and the checkpoint to resume from, and of the memory the run needs,
    local to this rank (no collective). Returns (the config as given, as resolved, checkpoint or None);
    a resumed run's config as given is the one its run started with."""
    from . import store

    step_tasks = int(os.environ.get("SLURM_STEP_NUM_TASKS", "1") or 1)
    if comm.size == 1 and step_tasks > 1:
        raise UserError(f"srun started {step_tasks} tasks but MPI sees 1 rank in each: every task would "
                        f"train alone. Give srun the MPI plugin of your MPI library (srun --mpi=pmi2 for "
                        f"MPICH, --mpi=pmix for Open MPI; srun --mpi=list shows them) or use mpirun")
    checkpoint = None
    if args.resume:
        if args.config or args.preset:
            raise UserError("--resume continues a run with its stored config; leave out --config and --preset")
        checkpoint = store.read_checkpoint(args.resume, args.allow_version_change)
        cfg = config.for_resume(checkpoint["config"], args.overrides)
        cfg.output.dir = args.resume
        given = config.from_dict(checkpoint["config_given"]) if checkpoint["config_given"] else cfg
    else:
        cfg = given = config.build(args.preset, args.config, args.overrides)
    cfg = config.resolve(cfg, comm.size, resuming=checkpoint is not None)
    if cfg.output.tensorboard:
        from . import tboard
        tboard.check_available()
    if cfg.data.source == "synthetic":  # before drawing it: n and d are the config's
        _check_memory(cfg, comm, cores, checkpoint)
    return given, cfg, checkpoint


def _check_memory(cfg, comm, cores: int, checkpoint) -> None:
    from . import resources

    workers = split_cores(cores, cfg.masks.subnets // comm.size)[0] if cores else 1
    resources.check_memory(cfg, comm.size, comm.ranks_per_node, workers, checkpoint is not None)


def _shared_data(cfg, comm):
    """X, Y, X_test, Y_test and the data files' sha256: one rank per node reads (or draws) them, the
    others map its copy (an MPI-3 shared-memory window): one copy of the data per node
    (docs/design.md, section 3)."""
    from . import data

    loaded, error = None, None
    if comm.node.rank == 0:
        try:
            loaded = data.load_sets(cfg)
        except UserError as e:
            error = str(e)
    first = comm.first_error(error)
    if first:
        raise UserError(first)
    return comm.share_on_node(loaded)


def _check_data(args, cfg, X, Y, digest: str, checkpoint, comm, cores: int):
    """The checks that need the data (local, like _prepare). Returns the config with the data's shape
    and the plan (train.plan) resolved, and why that plan."""
    from . import resources

    cfg = config.fit_data(cfg, X.shape[0], X.shape[1], Y.shape[1])
    cfg.train.plan, why = resources.choose_plan(cfg, comm.size)  # its cost needs the data's n and d
    _check_memory(cfg, comm, cores, checkpoint)
    if checkpoint is not None:
        if digest != checkpoint["data_sha256"]:
            raise UserError(f"--resume {args.resume!r}: data.source {cfg.data.source!r} changed since the run "
                            f"started (sha256 differs); restore the original file or start a new run")
        if checkpoint["round"] >= cfg.train.rounds:
            raise UserError(f"--resume {args.resume!r}: the run has done all {checkpoint['round']} rounds; "
                            f"to train longer add --set train.rounds=N with N > {checkpoint['round']}")
    return cfg, why


def _lock_wait() -> float:
    """Seconds to wait for another job's lock on the run folder (MPISUB_LOCK_WAIT, default 10): a
    requeued job's previous attempt may still be writing its last checkpoint."""
    text = os.environ.get("MPISUB_LOCK_WAIT", "10")
    try:
        return max(0.0, float(text))
    except ValueError:
        raise UserError(f"MPISUB_LOCK_WAIT = {text!r} is not a number of seconds; unset it or give e.g. 30") from None


def _lock_for_resume(comm, folder: str, held: list) -> None:
    """Rank 0 locks the folder of the run to resume before any rank reads its checkpoint: a job
    still writing it is waited for, or refused."""
    from . import store

    error = None
    if comm.rank == 0 and os.path.isdir(folder):
        try:
            held.append(store.FolderLock(folder, _lock_wait(), _say(comm)))
        except UserError as e:
            error = str(e)
    error = comm.agree(error)
    if error:
        raise UserError(error)


def _train(argv, comm, cores: int, stop: list) -> None:
    parser = train_parser()
    parser.rank = comm.rank
    try:
        args = parser.parse_args(argv)  # --help, --version: the same on every rank
    except SystemExit as e:
        raise _Exit(e.code) from None
    held = []  # rank 0's lock on the run folder, released however the job ends (the OS drops it on a kill)
    try:
        if args.resume and not args.print_config:
            _lock_for_resume(comm, args.resume, held)
        _train_locked(args, comm, cores, stop, held)
    finally:
        for lock in held:
            lock.release()


def _say(comm):
    return lambda text: print(text, flush=True) if comm.rank == 0 else None


def _agreed(comm, check, *args):
    """check(*args) on every rank, then every rank agrees on the lowest rank's error, if any."""
    error, result = None, None
    try:
        result = check(*args)
    except UserError as e:
        error = e
    first = comm.first_error(str(error) if error else None)
    if first:
        raise UserError(first) from error
    return result


def _train_locked(args, comm, cores: int, stop: list, held: list) -> None:
    """`held`: rank 0's lock on the run folder (taken here for a new run), for the caller to release."""
    from . import kernels, train

    # every rank checks its inputs before the first collective; then all agree on the first error,
    # so a file one node cannot read stops every rank the same way instead of hanging the others
    given, cfg, checkpoint = _agreed(comm, _prepare, args, comm, cores)
    X, Y, X_test, Y_test, digest = _shared_data(cfg, comm)
    cfg, plan_reason = _agreed(comm, _check_data, args, cfg, X, Y, digest, checkpoint, comm, cores)
    if args.print_config:  # the config as given: it reproduces the run at any K
        if comm.rank == 0:
            print(f"# mpisub {__version__}: the config of this run as given; after '#', what it resolved to "
                  f"at {comm.size} rank(s)\n" + given.to_toml(resolved=cfg, where=f"at {comm.size} rank(s)"))
        return
    workers, threads = _subnet_workers(cfg, comm, cores)
    run_file = _open_run_file(cfg, comm, digest, checkpoint, held, plan_reason, given)
    if comm.rank == 0:
        _banner(cfg, comm, run_file, checkpoint, plan_reason, threads)
    t0 = time.perf_counter()
    status = "failed"
    try:
        # rank 0 compiles the kernels into numba's on-disk cache while the others wait, then they
        # load it: one compile per job instead of one per rank competing for the same cores
        if comm.rank == 0:
            kernels.compile_for(cfg.model.dtype)
        comm.barrier()
        result = train.run(cfg, comm, X, Y, run_file, log=lambda s: print(s, flush=True),
                           start=checkpoint, stop_requested=lambda: bool(stop), workers=workers,
                           test=(X_test, Y_test))
        status = "completed"
        _record_peak_memory(comm, run_file)
    except train.Interrupted as e:
        status = "interrupted"
        _record_peak_memory(comm, run_file)
        if comm.rank == 0:
            _report_stop(cfg, comm, stop, e)
        raise _Exit(EXIT_INTERRUPTED) from None
    except KeyboardInterrupt:
        status = "interrupted"
        raise
    finally:
        if run_file is not None:
            run_file.close(status)
    if comm.rank == 0:
        _report_done(cfg, result, checkpoint, run_file, time.perf_counter() - t0)


def _subnet_workers(cfg, comm, cores: int) -> tuple[int, str]:
    """Threads that train this rank's subnetworks side by side, and the threads line of the banner.
    More than one only while the kernels' BLAS has not loaded: it reads its thread count once."""
    workers, blas = split_cores(cores, cfg.masks.subnets // comm.size) if cores else (1, 0)
    if workers > 1 and "scipy.linalg" not in sys.modules:
        _set_thread_vars(blas)  # read by the kernels' BLAS (scipy's OpenBLAS) when it first loads
        return workers, f"{blas} x {workers} subnetwork workers"
    return 1, str(cores or "set by the environment")


def _banner(cfg, comm, run_file, checkpoint, plan_reason: str, threads: str) -> None:
    print("# mpisub-train: resolved config\n" + cfg.to_toml(), flush=True)
    resumed = f"; resuming after round {checkpoint['round']}" if checkpoint else ""
    if checkpoint and checkpoint["version_change"]:
        print(f"# --allow-version-change: the checkpoint was {checkpoint['version_change']}", flush=True)
    print(f"# plan {cfg.train.plan}: {plan_reason}", flush=True)
    print(f"# {comm.size} rank(s) on {comm.nodes} node(s) (one copy of the data each), "
          f"{cfg.masks.subnets} subnetwork(s) of keep {cfg.masks.keep:g}, "
          f"BLAS threads per rank: {threads}; writing {run_file.path}{resumed}", flush=True)


def _report_stop(cfg, comm, stop: list, e) -> None:
    name = signal.Signals(stop[0]).name if stop else "a signal on another rank"
    then = (f", checkpoint written; continue with: mpirun -n {comm.size} mpisub-train --resume "
            f"{cfg.output.dir}") if e.checkpointed else ""
    print(f"mpisub-train: {name}: {e}{then}", file=sys.stderr, flush=True)


def _report_done(cfg, result: dict, checkpoint, run_file, seconds: float) -> None:
    done = cfg.train.rounds - (checkpoint["round"] if checkpoint else 0)  # rounds of this launch
    m = {name: values[-done:] for name, values in result["metrics"].items()}
    first, last = result["loss_init"], result["eval"]["loss"][-1]   # the last round is always evaluated
    print(f"done: {done} rounds in {seconds:.1f} s "
          f"(compute {m['seconds_compute'].sum():.1f} s, comm {m['seconds_comm'].sum():.2f} s); "
          f"loss {first:.3e} -> {last:.3e} ({first / max(last, 1e-300):.1f}x lower)")
    print(f"run file: {run_file.path}")
    print(f"look at it: mpisub-inspect {cfg.output.dir}   (or: h5dump -A {run_file.path})")


def _record_peak_memory(comm, run_file) -> None:
    import resource

    peaks = comm.gather(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)  # Linux: KiB
    if run_file is not None:
        with contextlib.suppress(OSError, RuntimeError):  # a full disk already has its message
            run_file.write_peak_memory(peaks)


def _open_run_file(cfg, comm, digest: str, checkpoint, held: list, plan_reason: str, given):
    """Rank 0 creates the run file (None on the other ranks) under the folder's lock, after checking
    the folder and the disk space the run needs. Only rank 0 touches the output folder, and its
    verdict is shared, so a bad folder stops every rank the same way. A resumed run's file is
    rebuilt from its checkpoint (rows after it are redone exactly). A new run's lock goes to `held`."""
    from . import resources, store

    run_file, error, folder = None, None, cfg.output.dir
    if comm.rank == 0:
        try:
            if checkpoint is None:
                if folder:
                    store.check_output_dir(folder, cfg.output.overwrite)  # writes nothing
                resources.check_disk(cfg, folder or "runs")
                folder = folder or store.new_run_dir()
                held.append(store.FolderLock(folder, _lock_wait(), _say(comm)))
            else:
                resources.check_disk(cfg, folder, resuming=True)
            cfg.output.dir = folder
            run_file = store.RunFile(folder, config_json=cfg.to_json(),
                                     overwrite=cfg.output.overwrite or checkpoint is not None,
                                     subnets=cfg.masks.subnets, width=cfg.model.width,
                                     record_masks=cfg.output.record_masks, data_sha256=digest,
                                     created=checkpoint["created"] if checkpoint else "",
                                     segment=_segment(comm, checkpoint),
                                     earlier_segments=checkpoint["segments"] if checkpoint else [],
                                     events=_events(cfg, folder),
                                     attrs={"config_given": given.to_json(),
                                            "mpisub_version": __version__, "code_hash": store.code_hash(),
                                            "ranks": comm.size,
                                            "mpi_library": comm.library(), "plan_reason": plan_reason})
        except UserError as e:
            error = str(e)
    error, cfg.output.dir = comm.agree((error, folder))
    if error:
        raise UserError(error)
    return run_file


def _events(cfg, folder: str):
    if not cfg.output.tensorboard:
        return None
    from . import tboard
    return tboard.Events(folder)


def _segment(comm, checkpoint) -> dict:
    """This launch, as a row of the run file's segments table."""
    import datetime
    import socket

    from . import store
    return {"started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"), "ranks": comm.size,
            "nodes": comm.nodes, "host": socket.gethostname(), "mpisub_version": __version__,
            "code_hash": store.code_hash(), "mpi_library": comm.library(),
            "first_round": checkpoint["round"] if checkpoint else 0}


def catch_stop_signals() -> list:
    """From here on SIGTERM/SIGUSR1 (the scheduler's warning before a time limit) only note the
    request: the ranks act on it together at the next loss Allreduce, after the round (or before
    training, when it came during start-up). Returns the list the signals are noted in."""
    stop = []
    for sig in STOP_SIGNALS:
        signal.signal(sig, lambda number, frame: stop.append(number))
    return stop


def _node_comm(world, MPI):
    """The ranks sharing this rank's node (memory), or, with MPISUB_FAKE_NODE_SIZE = s (a test hook),
    fake nodes of s consecutive ranks, so that several nodes' paths run on one machine.
    Returns (node communicator, an error message for a bad hook value or None)."""
    text = os.environ.get("MPISUB_FAKE_NODE_SIZE", "")
    if text:
        if text.isdigit() and int(text) > 0:
            return world.Split(world.Get_rank() // int(text), world.Get_rank()), None
        error = f"MPISUB_FAKE_NODE_SIZE = {text!r} is not a positive number of ranks per node; unset it or give e.g. 2"
        return world.Split_type(MPI.COMM_TYPE_SHARED), error
    return world.Split_type(MPI.COMM_TYPE_SHARED), None


def train_main(argv=None) -> None:
    stop = catch_stop_signals()  # first thing: a signal during imports or data loading is not fatal
    argv = sys.argv[1:] if argv is None else argv
    from mpi4py import MPI  # initialises MPI; numpy and the BLAS are not loaded yet

    world = MPI.COMM_WORLD
    node, fake_error = _node_comm(world, MPI)
    cores = set_threads(node)

    from .comm import Comm

    comm = Comm(world, node)
    try:
        if fake_error:
            raise UserError(fake_error)
        _train(argv, comm, cores, stop)
    except UserError as e:
        if "--debug" in argv and comm.rank == 0:
            traceback.print_exc()
        if comm.rank == 0:
            print(f"mpisub-train: error: {e}", file=sys.stderr, flush=True)
        raise _Exit(EXIT_USER) from None
    except _Exit:
        raise
    except KeyboardInterrupt:
        print(f"mpisub-train: rank {comm.rank} interrupted; aborting all ranks", file=sys.stderr, flush=True)
        time.sleep(0.5)  # rank 0, if not blocked in a collective, marks the run file 'interrupted'
        comm.abort(EXIT_CTRL_C)
    except BaseException as e:
        # the other ranks may be waiting in a collective: end them all, now. The one-line cause
        # goes first: the launcher may cut this rank's output short when the abort lands.
        print(f"mpisub-train: rank {comm.rank} failed: {type(e).__name__}: {e}; aborting all ranks",
              file=sys.stderr, flush=True)
        traceback.print_exc()
        sys.stderr.flush()
        time.sleep(0.5)  # let the launcher forward this output before the abort tears it down
        comm.abort(EXIT_ABORTED)
