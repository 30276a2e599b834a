"""W_init and a as a run starts on a rank: drawn from the seed's streams (nn.model), or, with
model.init_from, a finished run's (its rows read from its run file by io.readback, checked)."""
import numpy as np

from mpisub import config
from mpisub.io.parent import read_init
from mpisub.nn import model


def initial_rows(cfg: config.Config, lo: int, hi: int) -> np.ndarray:
    """Rows lo:hi of W_init, in the model's dtype.

    Args:
        cfg: the settled config.
        lo, hi: the neurons, a rank's own (layout.Layout) or a chunk of them.

    Returns:
        A (hi - lo) x d array: model.init_rows's draw, or model.init_from's W rows.
    """
    if cfg.model.init_from:
        return read_init(cfg.model.init_from, "model/W", lo, hi).astype(cfg.model.dtype)
    return model.init_rows(cfg, lo, hi)


def output_weights(cfg: config.Config) -> np.ndarray:
    """a (m x c) as int8 signs: model.output_weights's draw, or model.init_from's a.

    Args:
        cfg: the settled config.

    Returns:
        The m x c array of +-1 every rank keeps.
    """
    if not cfg.model.init_from:
        return model.output_weights(cfg)
    m = cfg.model.width
    return np.concatenate([read_init(cfg.model.init_from, "model/a", lo, lo + 2**16).astype(np.int8)
                           for lo in range(0, m, 2**16)])
