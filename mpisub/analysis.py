"""Reading finished (or running) runs: a summary per run file. No MPI, no numba."""
import json
import os

from .store import read_run


def summary(path: str) -> dict:
    """The facts a user checks first about a run, as plain values."""
    run = read_run(path, arrays=False)  # a summary needs no weights or masks
    attrs, m = run["attrs"], run["metrics"]
    cfg = json.loads(attrs["config"])
    loss = m["loss"]
    return {
        "path": path,
        "status": attrs["status"],
        "ranks": int(attrs["ranks"]),
        "mpi_library": attrs["mpi_library"],
        "mpisub_version": attrs["mpisub_version"],
        "created": attrs["created"],
        "masks": cfg["masks"],
        "model": cfg["model"],
        "data": {k: cfg["data"][k] for k in ("source", "n", "d", "outputs", "noise")},
        "train": cfg["train"],
        "rounds_done": int(len(loss)),
        "loss_init": float(m["loss_init"]) if "loss_init" in m else None,
        "loss_final": float(loss[-1]) if len(loss) else None,
        "loss_best": float(loss.min()) if len(loss) else None,
        "sub_loss_final": float(m["sub_loss"][-1]) if len(loss) else None,
        "seconds": {k: float(m[f"seconds_{k}"].sum()) for k in ("compute", "comm", "wall")},
        "bytes_comm": int(m["bytes_comm"].sum()),
    }


def format_summary(s: dict) -> str:
    mk, tr = s["masks"], s["train"]
    lines = [
        f"{s['path']}: {s['status']}, {s['rounds_done']}/{tr['rounds']} rounds, {s['ranks']} rank(s), mpisub {s['mpisub_version']}, {s['created']}",
        f"  masks {mk['kind']}  p={mk['subnets']}  keep={mk['keep']:g}   tau={tr['local_steps']}  lr={tr['lr']:g}  "
        f"batch={tr['batch_size'] or 'full'}   m={s['model']['width']}  {s['model']['dtype']}   "
        f"data {s['data']['source']} n={s['data']['n']} d={s['data']['d']} c={s['data']['outputs']}",
    ]
    if s["loss_final"] is not None:
        init = f"{s['loss_init']:.4e} -> " if s["loss_init"] is not None else ""
        lines.append(f"  loss {init}{s['loss_final']:.4e} (best {s['loss_best']:.4e}); "
                     f"subnetwork loss {s['sub_loss_final']:.4e}")
    sec = s["seconds"]
    lines.append(f"  time {sec['wall']:.2f} s (compute {sec['compute']:.2f} s, comm {sec['comm']:.2f} s); "
                 f"rank 0 sent {s['bytes_comm'] / 1e6:.2f} MB")
    return "\n".join(lines)


def inspect_main(argv=None) -> None:
    import argparse
    import sys

    p = argparse.ArgumentParser(prog="mpisub-inspect", description="Summarise mpisub run files (a run folder or its run.h5).")
    p.add_argument("runs", nargs="+", metavar="RUN")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    args = p.parse_args(argv)
    out = []
    for path in args.runs:
        if not os.path.exists(path):
            print(f"mpisub-inspect: error: {path!r} does not exist; give a run folder or its run.h5", file=sys.stderr)
            sys.exit(2)
        try:
            out.append(summary(path))
        except (OSError, KeyError) as e:
            print(f"mpisub-inspect: error: {path!r} is not a readable mpisub run file ({e})", file=sys.stderr)
            sys.exit(2)
    if args.json:
        print(json.dumps(out if len(out) > 1 else out[0], indent=1))
    else:
        print("\n".join(format_summary(s) for s in out))
