"""A rank's cores (docs/design.md, section 3, "Threads"): its CPU affinity shared with the node's
ranks that may run on them, capped at SLURM_CPUS_PER_TASK, split between subnetwork workers and
their BLAS threads. Runs before numpy loads: its BLAS reads the thread variables once, when it
loads. No numpy here."""
from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

from mpisub._util.errors import UserError, env_number

if TYPE_CHECKING:  # types only: never imported at run time
    from typing import Any

    from mpisub.config import Config

# the variables that set the BLAS and numba thread counts: mpisub leaves them alone when a user sets any
THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")


def threads_per_rank(mine: set, on_node: list) -> int:
    """The cores this rank may run on (its CPU affinity), shared evenly between the ranks of the
    node that may run on them too: unbound ranks split the node (or the job's cgroup), ranks bound
    to their own cores use all of them."""
    sharing = sum(1 for cores in on_node if cores & mine)
    return max(1, len(mine) // max(1, sharing))


def set_threads(node_comm: Any) -> int:
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
    try:
        allotted = env_number("SLURM_CPUS_PER_TASK")   # Slurm's share per rank, also when mpirun started us
    except UserError:
        allotted = None   # reported in one line (errors.env_problem) once every rank can stop together
    if allotted:
        cores = min(cores, allotted)
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


def subnet_workers(cfg: Config, ranks: int, cores: int) -> tuple[int, str]:
    """Threads that train this rank's subnetworks side by side, and the threads line of the banner.
    More than one only while the kernels' BLAS has not loaded: it reads its thread count once."""
    workers, blas = split_cores(cores, cfg.masks.subnets // ranks) if cores else (1, 0)
    if workers > 1 and "scipy.linalg" not in sys.modules:
        _set_thread_vars(blas)  # read by the kernels' BLAS (scipy's OpenBLAS) when it first loads
        return workers, f"{blas} x {workers} subnetwork workers"
    return 1, str(cores or "set by the environment")
