"""Layer 5, studies of many runs: `mpisub-sweep` (`sweep`), one point of a sweep (`sweep_point`),
what a run's results are a function of (`identity`), starting mpirun from Python (`launch`), sweeps on
Slurm (`slurm`), the job scripts that ship with mpisub (`jobs`)."""
