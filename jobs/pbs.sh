#!/bin/bash
# mpisub-train as a PBS Pro / OpenPBS batch job.      mpisub-jobs pbs > pbs.sh; qsub pbs.sh
#
# What to edit: the lines marked EDIT (project, queue, modules, ranks, cores, wall time). The
# resource syntax is PBS Pro's (-l select=...); on Torque use the commented -l nodes= line instead.
# Options for mpisub-train go in MPISUB_ARGS (qsub -v passes it: qsub -v MPISUB_ARGS="--set
# train.rounds=500" pbs.sh; no commas, which qsub -v splits on); RUN_DIR names the run folder,
# the same for every attempt; MPISUB_JOB_SCRIPT is this script's path from the submit folder
# (PBS runs a copy, so the resubmission needs it; default pbs.sh).
#
# PBS gives no warning before the wall time, so a watchdog in this script sends USR1 to the run
# MPISUB_STOP_BEFORE seconds (default 300) before it: every rank finishes its round, rank 0
# checkpoints, mpisub-train exits 3. The script then resubmits itself with qsub, passing RUN_DIR
# and the attempt number; the new job finds the checkpoint and resumes (--resume), and the run
# ends on exactly the weights of an unbroken one. It stops resubmitting after MPISUB_MAX_REQUEUES
# attempts (default 5), or when an attempt ends at the same checkpoint round as the one before.
# Choose MPISUB_STOP_BEFORE longer than a round plus a checkpoint write.
#PBS -N mpisub
#PBS -l select=1:ncpus=4:mpiprocs=4     # EDIT: cores and MPI ranks (K) per node (PBS Pro)
##PBS -l nodes=1:ppn=4                  # EDIT: Torque: use this line instead of select
#PBS -l walltime=01:00:00               # EDIT: wall time per attempt
##PBS -A PROJECT                        # EDIT: delete one '#' and name your project/account
##PBS -q QUEUE                          # EDIT: delete one '#' and name the queue
#PBS -j oe

# EDIT: your site's modules: the MPI that mpi4py was built against, and Python, e.g.
# module load openmpi/4.1 python/3.11

cd "${PBS_O_WORKDIR:-.}"
JOB=${PBS_JOBID%%.*}
RUN_DIR=${RUN_DIR:-runs/pbs-$JOB}
VENV=${VENV:-.venv}
ATTEMPT=${MPISUB_ATTEMPT:-0}
MAX_REQUEUES=${MPISUB_MAX_REQUEUES:-5}
STOP_BEFORE=${MPISUB_STOP_BEFORE:-300}
SCRIPT=${MPISUB_JOB_SCRIPT:-pbs.sh}
read -ra EXTRA <<< "${MPISUB_ARGS:-}"

set -u
say() { echo "mpisub job $JOB: $*"; }
# a TOML string of any folder name (quotes, backslashes, spaces): JSON's escapes are TOML's
toml_string() { python -c 'import json, sys; print(json.dumps(sys.argv[1]))' "$1" 2>/dev/null || printf '"%s"' "$1"; }
[ -f "$VENV/bin/activate" ] && source "$VENV/bin/activate"
export MPISUB_LOCK_WAIT=${MPISUB_LOCK_WAIT:-120}   # a new attempt may start while the last one still checkpoints
RANKS=$(wc -l < "${PBS_NODEFILE:-/dev/null}" 2>/dev/null || echo 0)
[ "$RANKS" -gt 0 ] || RANKS=${NPROCS:-4}

if [ -f "$RUN_DIR/checkpoint.h5" ]; then
    ARGS=(--resume "$RUN_DIR" "${EXTRA[@]}")
    say "resuming $RUN_DIR (attempt $ATTEMPT)"
else
    ARGS=(--set "output.dir=$(toml_string "$RUN_DIR")" "${EXTRA[@]}")
    say "starting $RUN_DIR"
fi

# the wall time this job was given, in seconds (qstat -f: Resource_List.walltime = HH:MM:SS)
walltime=$(qstat -f "$PBS_JOBID" 2>/dev/null | sed -n 's/.*Resource_List.walltime = //p' | head -1)
IFS=: read -r h m s <<< "${walltime:-0:0:0}"
limit=$(( 10#${h:-0} * 3600 + 10#${m:-0} * 60 + 10#${s:-0} ))

mpirun -n "$RANKS" mpisub-train "${ARGS[@]}" &
pid=$!
stop_run() { say "$1; asking the run to checkpoint"; kill -USR1 $pid 2>/dev/null; }
trap 'stop_run "signal"' TERM USR1
if [ "$limit" -gt 0 ]; then      # the watchdog: USR1 STOP_BEFORE seconds before the wall time
    ( sleep $(( limit > STOP_BEFORE ? limit - STOP_BEFORE : 0 )) && kill -USR1 $$ ) > /dev/null 2>&1 &
    watchdog=$!
    say "wall time ${walltime}: the run is asked to checkpoint ${STOP_BEFORE} s before it"
fi
wait $pid; rc=$?
while kill -0 $pid 2>/dev/null; do wait $pid; rc=$?; done   # wait returns early when the trap runs
[ -n "${watchdog:-}" ] && { pkill -P "$watchdog" 2>/dev/null; kill "$watchdog" 2>/dev/null; }

if [ $rc -eq 3 ]; then
    round=$(python -c "import h5py, sys; print(h5py.File(sys.argv[1], 'r').attrs['round'])" \
            "$RUN_DIR/checkpoint.h5" 2>/dev/null || echo none)
    if [ "$ATTEMPT" -ge "$MAX_REQUEUES" ]; then
        say "checkpointed at round $round; not resubmitting: $ATTEMPT resubmissions already (MPISUB_MAX_REQUEUES=$MAX_REQUEUES)"
    elif [ "$round" = "$(cat "$RUN_DIR/requeued-at-round" 2>/dev/null)" ]; then
        say "checkpointed at round $round again, as before the last resubmission: no progress; not resubmitting"
    else
        rm -f "$RUN_DIR/requeued-at-round"                     # a link is removed, never written through
        (set -C; echo "$round" > "$RUN_DIR/requeued-at-round")
        say "checkpointed at round $round; resubmitting to resume"
        qsub -v "RUN_DIR=$RUN_DIR,VENV=$VENV,MPISUB_ATTEMPT=$(( ATTEMPT + 1 )),MPISUB_MAX_REQUEUES=$MAX_REQUEUES,MPISUB_STOP_BEFORE=$STOP_BEFORE,MPISUB_JOB_SCRIPT=$SCRIPT,MPISUB_ARGS=${MPISUB_ARGS:-}" "$SCRIPT"
    fi
fi
exit $rc
