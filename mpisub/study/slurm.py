"""A sweep on a Slurm cluster (`mpisub-sweep SWEEP.toml --slurm`, then `--task i/N` in each array
task): the points packed in order into the tasks of one job array, each task training its points
one after another in one allocation (a point alone in a task only when it takes longer than
`task_minutes`), and the sbatch command that submits them, with every path absolute, the most
ranks a point uses, the task's time and a rank's memory (docs/design.md, section 4, "Sweeps")."""
import functools
import json
import math
import os
import shlex
import sys

from mpisub import config
from mpisub._util.errors import UserError
from mpisub.io import data
from mpisub.parallel import resources
from mpisub.study import jobs
from mpisub.study.sweep_point import Point
from mpisub.train import resolve

MEMORY_MARGIN = 1.5      # over mpisub-train's own estimate of a rank's peak memory
STARTUP_MINUTES = 2      # a task's share for starting Python and MPI, and the USR1 warning


def tasks(points: list[Point], task_minutes: float) -> list[list[Point]]:
    """The points in order, packed into tasks of at most task_minutes (by their `minutes`)."""
    packed: list[list] = []
    total = 0.0
    for point in points:
        if packed and total + point.minutes <= task_minutes:
            packed[-1].append(point)
            total += point.minutes
        else:
            packed.append([point])
            total = point.minutes
    return packed


@functools.lru_cache(maxsize=16)
def _shape(data_section: str) -> tuple[int, int, int] | None:
    """(n, d, c) of a data file as a run reads it (None for the built-in data: the config's own)."""
    cfg = config.from_dict({"data": json.loads(data_section)})
    if cfg.data.source == "synthetic":
        return None
    sets = data.load_sets(cfg)
    return sets.X.shape[0], sets.X.shape[1], sets.Y.shape[1]


def memory_mb(point: Point) -> int:
    """A rank's memory for the point in MiB: mpisub-train's estimate (resources.memory_per_rank)
    with MEMORY_MARGIN, rounded up to 64 MiB."""
    given = point.given()
    cfg, _ = resolve.settle(given, point.ranks, _shape(json.dumps(given.to_dict()["data"])))
    need = sum(resources.memory_per_rank(cfg, point.ranks).values()) * MEMORY_MARGIN / 2**20
    return int(math.ceil(need / 64) * 64)


def sbatch_command(sweep_file: str, out: str, points: list[Point], task_minutes: float) -> str:
    """The sbatch command of the sweep's job array (creating `out` for its logs)."""
    packed = tasks(points, task_minutes)
    minutes = math.ceil(max(sum(p.minutes for p in task) for task in packed)) + STARTUP_MINUTES
    out = os.path.abspath(out)
    os.makedirs(out, exist_ok=True)
    return shlex.join([
        "sbatch", f"--array=0-{len(packed) - 1}", f"--ntasks={max(p.ranks for p in points)}",
        f"--time={minutes}", f"--mem-per-cpu={max(memory_mb(p) for p in points)}M", f"--chdir={os.getcwd()}",
        f"--output={os.path.join(out, 'slurm-%A_%a.out')}", f"--export=ALL,VENV={sys.prefix}",
        jobs.path("slurm-sweep"), os.path.abspath(sweep_file), str(len(packed))])


def task_points(spec: str, points: list[Point], task_minutes: float) -> list[Point]:
    """The points of array task `spec` = "i/N", as sbatch_command packed them."""
    try:
        i, n = (int(x) for x in spec.split("/"))
    except ValueError:
        raise UserError(f"--task {spec!r}: give the task's index and the number of tasks, e.g. --task 0/4") from None
    packed = tasks(points, task_minutes)
    if n != len(packed):
        raise UserError(f"--task {spec}: the sweep file now makes {len(packed)} task(s), not {n}: it changed since "
                        f"mpisub-sweep --slurm; run that again and submit the command it prints")
    if not 0 <= i < n:
        raise UserError(f"--task {spec}: the index must be 0 ... {n - 1}")
    return packed[i]
