"""What the examples share: their command-line options and scikit-learn's bundled data sets.
Each example trains its points with `mpisub.study.sweep_point.launch` (one mpirun a point)."""
import argparse
import os


def example_args(description: str, semantics: str | None = None) -> argparse.Namespace:
    """The options every example takes; the authors' figures also take --semantics (default
    `semantics`): their code's run, the paper's analysis of it, or both side by side."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--out", default=os.path.join("examples", "out"),
                   help="folder for the runs and the PNG (default: examples/out)")
    p.add_argument("--ranks", type=int, default=2, help="MPI ranks per run (default 2)")
    p.add_argument("--quick", action="store_true", help="a tiny version (seconds), to check that it works")
    if semantics:
        p.add_argument("--semantics", choices=("official", "analysis", "both"), default=semantics,
                       help="official: the authors' code (standard parametrization, uncovered neurons zeroed); "
                            f"analysis: the paper's (NTK form, mapped lr and kappa, kept); default {semantics}")
    return p.parse_args()


def sklearn_data(name: str):
    """scikit-learn's bundled data set `name` (diabetes, digits: no download), for the examples;
    without scikit-learn, the example ends saying how to install it."""
    try:
        import sklearn.datasets
    except ImportError:
        raise SystemExit("this example needs scikit-learn: pip install scikit-learn") from None
    return getattr(sklearn.datasets, f"load_{name}")()
