"""`mpisub-train`: the command line, the exit codes, the stop signals, and the one boundary that
turns any failure on any rank into an abort of all of them, never a hang (after mpi4py.run).
It runs under mpirun (or alone, as one rank).

Errors a user can cause end every rank with one line on rank 0 and exit code 2; any other exception
on any rank aborts the whole job (MPI_Abort) instead of leaving the other ranks hung in a collective.
Nothing at import time loads numpy: its BLAS reads the thread variables (threads.set_threads) once,
when it loads.
"""
from __future__ import annotations

import argparse
import json
import signal
import sys
import time
import traceback

from mpisub._util.errors import (  # noqa: F401
    EXIT_ABORTED,
    EXIT_CTRL_C,
    EXIT_HUNG,
    EXIT_INTERRUPTED,
    EXIT_USER,
    UserError,
    env_number,
    env_problem,
)
from mpisub._util.provenance import __version__

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class _Parser(argparse.ArgumentParser):
    """Prints on rank 0 only, and reports a bad command line as a UserError (exit 2 on every rank)."""
    rank = 0

    def _print_message(self, message, file=None):
        if self.rank == 0:
            super()._print_message(message, file)

    def error(self, message):
        raise UserError(f"{message} (see mpisub-train --help)")


def train_parser() -> _Parser:
    # lazy: numpy (and its BLAS) loads only after set_threads has set the thread variables (module docstring)
    from mpisub import config

    p = _Parser(prog="mpisub-train", description=(
        "Train a one-hidden-layer ReLU network by masked subnetworks (IST, dropout, multi-sample "
        "dropout, or plain GD) over MPI. Run as: mpirun -n K mpisub-train [options]. With no "
        "options: IST on built-in synthetic data."))
    p.add_argument("--config", metavar="FILE", help="TOML file with [data] [model] [masks] [train] [output] sections")
    p.add_argument("--set", metavar="SECTION.KEY=VALUE", action="append", default=[], dest="overrides",
                   help="override one config value (repeatable), e.g. --set train.lr=2.0")
    p.add_argument("--preset", choices=list(config.PRESETS), help="start from a preset (default: the ist defaults)")
    p.add_argument("--init-from", metavar="RUN", dest="overrides", action="append",
                   type=lambda run: f"model.init_from = {json.dumps(run)}",
                   help="start from a finished run's W and a (same width, inputs and outputs; any other key may "
                        "differ, e.g. a smaller train.lr): --set model.init_from=RUN")
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


class _Exit(SystemExit):
    """An exit every rank takes together (help, a user error, a stop after a checkpoint). Any other
    SystemExit, e.g. a stray sys.exit on one rank, aborts the job: the others would wait forever."""


def _train(argv, comm, cores: int, stop: list, dog) -> None:
    # lazy: numpy (and its BLAS) loads only after set_threads has set the thread variables (module docstring)
    from mpisub.train import start

    parser = train_parser()
    parser.rank = comm.rank
    try:
        args = parser.parse_args(argv)  # --help, --version: the same on every rank
    except SystemExit as e:
        raise _Exit(e.code) from None
    held: list = []  # rank 0's lock on the run folder, released however the job ends (the OS drops it on a kill)
    try:
        if args.resume and not args.print_config:
            start.lock_for_resume(comm, args.resume, held)
        _train_locked(args, comm, cores, (stop, dog), held)
    finally:
        for lock in held:
            lock.release()


def _train_locked(args, comm, cores: int, watch: tuple, held: list) -> None:
    """`held`: rank 0's lock on the run folder (taken here for a new run), for the caller to release;
    `watch`: the stop signals noted so far and the watchdog."""
    # lazy: numpy (and its BLAS) loads only after set_threads has set the thread variables (module docstring)
    from mpisub.nn import kernels
    from mpisub.parallel import threads
    from mpisub.train import loop, start

    # every rank checks its inputs before the first collective; then all agree on the first error,
    # so a file one node cannot read stops every rank the same way instead of hanging the others
    (stop, dog), job = watch, comm.collective_check(start.Job, args, comm, cores)
    dog.floor = job.cfg.train.watchdog_seconds
    sets = start.shared_data(job.cfg, comm)
    comm.collective_check(job.settle_with_data, sets)
    comm.collective_check(job.check_init, who="root")
    if args.print_config:  # the config as given: it reproduces the run at any K
        if comm.rank == 0:
            print(f"# mpisub {__version__}: the config of this run as given; after '#', what it resolved to "
                  f"at {comm.size} rank(s)\n" + job.given.to_toml(resolved=job.cfg, where=f"at {comm.size} rank(s)"))
        return
    workers, blas = threads.subnet_workers(job.cfg, comm.size, cores)
    resumed = comm.collective_check(job.start, comm)   # each rank's rows of the checkpoint, checked, before any write
    log = start.open_outputs(job, comm, sets, held)
    dog.folder = job.cfg.output.dir
    if comm.rank == 0:
        start.banner(job, comm, blas)
    t0, status = time.perf_counter(), "failed"
    try:
        # ranks 0 and 1 compile the kernels the run uses into numba's on-disk cache, half each,
        # while the others wait, then all load it: one compile per job, not one per rank
        if comm.rank == 0 and kernels.cache_is_cold():
            print("# compiling the kernels this run uses (numba; once after an install, then cached): a few "
                  "seconds", flush=True)
        if comm.rank < 2:
            kernels.compile_for(job.cfg.model.dtype, job.cfg.train.plan, (comm.rank, min(comm.size, 2)))
        comm.barrier()
        result = loop.run(job.cfg, comm, sets, log, resumed, lambda: bool(stop), workers, start.say(comm))
        status = "completed"
        start.record_peak_memory(comm, log)
    except loop.Interrupted as e:
        status = "interrupted"
        start.record_peak_memory(comm, log)
        if comm.rank == 0:
            start.report_stop(job, comm, signal.Signals(stop[0]).name if stop else "a signal on another rank", e)
        raise _Exit(EXIT_INTERRUPTED) from None
    except KeyboardInterrupt:
        status = "interrupted"
        raise
    finally:
        log.finalize(status)
    if comm.rank == 0:
        start.report_done(job, result, time.perf_counter() - t0)


def _the_end(comm) -> None:
    """A watched barrier before the job ends, on the ways all ranks take together (done, a user
    error, a stop): MPI_Finalize waits for every rank and is watched by nobody, so a rank stopped
    now would hang the others there. An exception on one rank is not waited for (it aborts)."""
    error = sys.exc_info()[1]
    if error is None or isinstance(error, (UserError, _Exit)):
        comm.barrier()


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
    try:
        size = env_number("MPISUB_FAKE_NODE_SIZE")
    except UserError as e:
        return world.Split_type(MPI.COMM_TYPE_SHARED), str(e)
    if size:
        return world.Split(world.Get_rank() // size, world.Get_rank()), None
    return world.Split_type(MPI.COMM_TYPE_SHARED), env_problem()


def train_main(argv: list[str] | None = None) -> None:
    stop = catch_stop_signals()  # first thing: a signal during imports or data loading is not fatal
    argv = sys.argv[1:] if argv is None else argv
    # lazy: MPI initialises here, and numpy (and its BLAS) loads only after set_threads (module docstring)
    from mpi4py import MPI

    from mpisub.parallel.threads import set_threads

    world = MPI.COMM_WORLD
    node, fake_error = _node_comm(world, MPI)
    cores = set_threads(node)

    from mpisub.parallel.comm import Comm  # lazy: these load numpy, after set_threads
    from mpisub.parallel.watchdog import Watchdog, watch_the_end

    comm = Comm(world, node)
    try:
        if fake_error:
            raise UserError(fake_error)
        with Watchdog(comm) as dog:
            try:
                _train(argv, comm, cores, stop, dog)
            finally:   # every rank gets here together, or the watchdog names the one that does not
                _the_end(comm)
                watch_the_end(dog.floor)
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
    finally:
        ignore_stop_signals()


def ignore_stop_signals() -> None:
    """Once the job has its outcome, a later SIGTERM/SIGUSR1 (a scheduler's repeated one) or
    Ctrl-C changes nothing: ignored, also while Python finalizes (it resets only the handlers it
    runs itself), so the exit code stays the outcome's (3 after a stop's checkpoint) rather than
    the launcher's report of a signal (its number: 2, 10, 15)."""
    for sig in STOP_SIGNALS + (signal.SIGINT,):
        signal.signal(sig, signal.SIG_IGN)
