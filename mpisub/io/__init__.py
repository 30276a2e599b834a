"""Layer 3, files (HDF5 only here): users' data (`data`), the run file's tables (`schema`), the run
folder and its lock (`run_folder`), the checkpoint's checksums (`integrity`), the writers (`store`,
`loggers`, `tensorboard`) and the one checked reader of what mpisub wrote (`readback`).
Independent of `mpisub.parallel`."""
