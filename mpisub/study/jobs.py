"""The batch job scripts that ship with mpisub: `mpisub-jobs NAME` prints one, to copy and edit
(`mpisub-jobs slurm > job.sbatch`); `path(NAME)` is where it is, which `mpisub-sweep --slurm`
submits. Each script's header says what it does and what to edit.

Their one source is the checkout's top-level jobs/; a wheel carries them as mpisub/jobs/
(pyproject.toml maps the package mpisub.jobs to jobs/). FOLDER is the installed copy where there
is one, else the checkout's (an editable install, or bin/ run from a checkout)."""
from __future__ import annotations

import os
import sys

from mpisub._util.errors import Parser, UserError, command

PACKAGE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FOLDER = next((f for f in (os.path.join(PACKAGE, "jobs"), os.path.join(os.path.dirname(PACKAGE), "jobs"))
               if os.path.isdir(f)), os.path.join(PACKAGE, "jobs"))
SCRIPTS = {"slurm": "slurm.sbatch", "slurm-sweep": "slurm-sweep.sbatch", "pbs": "pbs.sh"}


def path(name: str) -> str:
    """The installed job script `name` (SCRIPTS)."""
    if name not in SCRIPTS:
        raise UserError(f"no job script {name!r}; there are {', '.join(SCRIPTS)}")
    found = os.path.join(FOLDER, SCRIPTS[name])
    if not os.path.isfile(found):
        raise UserError(f"the job script {found!r} is missing from this install; reinstall mpisub")
    return found


@command("mpisub-jobs")
def jobs_main(argv: list[str] | None = None) -> None:
    p = Parser(prog="mpisub-jobs", description="Print a batch job script that ships with mpisub, to save and edit: "
               "mpisub-jobs slurm > job.sbatch (slurm: one run, checkpointed and requeued before its time "
               "limit; pbs: the same for PBS Pro/OpenPBS; slurm-sweep: what mpisub-sweep --slurm submits).")
    p.add_argument("name", choices=list(SCRIPTS), help="which script")
    p.add_argument("--path", action="store_true", help="print where it is installed instead")
    args = p.parse_args(argv)
    if args.path:
        print(path(args.name))
        return
    with open(path(args.name)) as f:
        sys.stdout.write(f.read())


if __name__ == "__main__":
    jobs_main()
