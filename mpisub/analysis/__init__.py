"""Layer 4, reading finished (or running) runs: the notebook API (`runs`), `mpisub-inspect`
(`report`), `mpisub-plot` (`plot`), `mpisub-predict` and `mpisub-export` (`export`). No MPI, no numba."""
