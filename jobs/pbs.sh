#!/bin/bash
# mpisub-train as a PBS (PBS Pro / OpenPBS / Torque) batch job.         qsub jobs/pbs.sh
#
# Edit the lines marked EDIT. K = mpiprocs MPI ranks on the node, ncpus / mpiprocs cores each.
# At the wall-time limit PBS sends SIGTERM (then SIGKILL after its kill_delay): the script passes
# it on as USR1, every rank finishes its round, rank 0 checkpoints and mpisub-train exits 3. The
# job is rerunnable (-r y): when it is rerun or resubmitted it finds the checkpoint and resumes.
# Give the server a kill_delay longer than a round plus a checkpoint (qmgr: kill_delay = 120).
#PBS -N mpisub
#PBS -l select=1:ncpus=4:mpiprocs=4     # EDIT: cores and MPI ranks (K) per node
#PBS -l walltime=01:00:00               # EDIT
#PBS -r y
#PBS -j oe

cd "${PBS_O_WORKDIR:-.}"
RUN_DIR=${RUN_DIR:-runs/pbs-${PBS_JOBID%%.*}}   # EDIT: the run folder (the same for every attempt)
CONFIG=${CONFIG:-}                              # EDIT: a TOML config file ("" = the defaults)
EXTRA=${EXTRA:-}                                # EDIT: more options, e.g. "--set train.rounds=500"
VENV=${VENV:-.venv}                             # EDIT: the environment mpisub is installed in

[ -f "$VENV/bin/activate" ] && source "$VENV/bin/activate"
export MPISUB_LOCK_WAIT=${MPISUB_LOCK_WAIT:-120}   # a rerun may start while the last attempt still checkpoints
RANKS=$(wc -l < "${PBS_NODEFILE:-/dev/null}" 2>/dev/null || echo 0)
[ "$RANKS" -gt 0 ] || RANKS=${NPROCS:-4}
CORES=${NCPUS:-$RANKS}
THREADS=$(( CORES / RANKS > 0 ? CORES / RANKS : 1 ))
export OMP_NUM_THREADS=$THREADS OPENBLAS_NUM_THREADS=$THREADS MKL_NUM_THREADS=$THREADS NUMBA_NUM_THREADS=$THREADS

if [ -f "$RUN_DIR/checkpoint.h5" ]; then
    ARGS=(--resume "$RUN_DIR")
else
    ARGS=(--set "output.dir=\"$RUN_DIR\"")
    [ -n "$CONFIG" ] && ARGS+=(--config "$CONFIG")
fi

mpirun -n "$RANKS" mpisub-train "${ARGS[@]}" $EXTRA &
pid=$!
trap 'kill -USR1 $pid' TERM USR1
wait $pid; rc=$?
while kill -0 $pid 2>/dev/null; do wait $pid; rc=$?; done
[ $rc -eq 3 ] && echo "mpisub: checkpointed; rerun or resubmit this job to resume (qrerun $PBS_JOBID)"
exit $rc
