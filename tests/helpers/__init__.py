"""What the tests share (tests/ is on pytest's path, pyproject.toml): `jobs` launches jobs,
`reference` is the plain-numpy replay of the algorithm, `simcomm` simulates K ranks in one process,
`docs` reads docs/design.md; cases_in_one_job.py and fail_on_one_rank.py are programs the tests run
under mpirun."""
import os

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))   # the checkout


def console_scripts() -> dict[str, str]:
    """pyproject.toml's [project.scripts]: command name -> "module:function"."""
    from mpisub.config.parse import tomllib
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        return tomllib.load(f)["project"]["scripts"]
