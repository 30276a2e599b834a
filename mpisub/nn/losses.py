"""The losses a run can train (after scikit-learn's `LOSS_FUNCTIONS`): one declaration each, read
by the config's checks, the kernels, the evaluation and the plots. Plain Python: no numpy.

Both losses' gradients are the backward pass of a residual (f - y, or softmax(f) - y), so the
kernels share everything but `kernels._residual_row`, which branches on `code`
(docs/design.md, section 8).
"""
from dataclasses import dataclass


@dataclass(frozen=True)
class Loss:
    name: str
    code: int               # the kernels' branch of the residual (kernels._residual_row)
    classification: bool    # needs one-hot class targets (data.task = "classification")
    formula: str            # what L is: the plots' y label and the docs


LOSSES = {loss.name: loss for loss in (
    Loss("squared", 0, False, "L(W) = ||f - y||^2 / 2n"),
    Loss("cross_entropy", 1, True, "L(W) = (1/n) sum_i (logsumexp(f_i) - <y_i, f_i>)"),
)}
