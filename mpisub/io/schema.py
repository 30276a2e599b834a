"""The run's tables, declared once: the per-round metrics and the full network's evaluations. The
run file's columns, the checkpoint's datasets, the disk estimate, TensorBoard's tags, the CSV and
JSON exports and the check of docs/design.md's run-file table all read them from here. Plain
Python: no numpy, no HDF5.

A new per-round metric is one Column here and the line of the round loop that computes it
(loop.Recorder.end); mpisub-inspect, the exports, Run.to_dataframe and mpisub-plot --metric show it
(a score, with `better`, also with its best value and round) with nothing else to change, and an
older checkpoint without it resumes with NaN in its earlier rows (no format bump).
"""
from dataclasses import dataclass


@dataclass(frozen=True)
class Column:
    name: str
    table: str      # "metrics": one row per round; "eval": one row per evaluation of the full network
    dtype: str      # a numpy dtype name
    meaning: str
    better: str = ""    # "min" or "max" for a score (summaries give its best and when), "" otherwise


COLUMNS = (
    Column("round", "metrics", "int64", "rounds done"),
    Column("sub_loss", "metrics", "float64", "mean over subnetworks of the loss in their last local step's "
                                             "forward pass", "min"),
    Column("seconds_compute", "metrics", "float64", "this round's seconds outside collectives"),
    Column("seconds_comm", "metrics", "float64", "this round's seconds in collectives"),
    Column("seconds_wall", "metrics", "float64", "seconds from the previous row to this one"),
    Column("bytes_comm", "metrics", "int64", "bytes rank 0 sent to other ranks this round"),
    Column("seconds_local", "metrics", "float64", "the local steps' part of seconds_compute"),
    Column("seconds_loss", "metrics", "float64", "the evaluation's part of seconds_compute (0 without one)"),
    Column("bytes_recv", "metrics", "int64", "bytes rank 0 received from other ranks this round"),
    Column("compute", "metrics", "float64", "full-gradient equivalents trained so far: rounds x p x tau x keep x "
                                            "b / n (config.compute_per_round)"),
    Column("round", "eval", "int64", "rounds done when evaluated (0: the initial weights)"),
    Column("loss", "eval", "float64", "the full network's training loss", "min"),
    Column("test_loss", "eval", "float64", "the loss on the held-out data (NaN without)", "min"),
    Column("train_acc", "eval", "float64", "training accuracy (NaN unless classification)", "max"),
    Column("test_acc", "eval", "float64", "held-out accuracy (NaN unless classification with held-out data)",
           "max"),
    Column("dw_max", "eval", "float64", "max_r ||w_r - w_r(0)||"),
    Column("dw_rel", "eval", "float64", "||W - W0||_F / ||W0||_F"),
    Column("flips", "eval", "float64", "fraction of activation patterns 1{<w_r, x_i> > 0} unlike at W0"),
    Column("lambda_min", "eval", "float64", "lambda_min of H(W_k) (n <= theory.gram_max_n; else NaN)"),
    Column("mismatch", "eval", "float64", "mean over the next round's subnetworks of ||f_l - f||^2 / 2n, their "
           "surrogates' distance from the full network (theory.mismatch; else NaN)"),
)
TABLES = ("metrics", "eval")
# bump when the checkpoint's layout changes (2: metrics bytes_recv; 3: eval rows; 4: checksums and
# config_given; 5: W in the ranks' shards, a virtual dataset); a new column needs no bump (readback
# fills an older checkpoint's rows of it with NaN)
CHECKPOINT_FORMAT = 5
CHECKPOINT_FORMATS = (3, 4, 5)   # the formats a resume reads


def columns(table: str) -> dict[str, str]:
    """{name: dtype} of a table's columns, in their order."""
    return {c.name: c.dtype for c in COLUMNS if c.table == table}


METRICS, EVAL = columns("metrics"), columns("eval")
# the scores, {name: "min" or "max"}: a summary gives each one's final and best value and its round
SCORES = {c.name: c.better for c in COLUMNS if c.better}
