"""Training data. Built in: points on the unit sphere, targets from a random teacher network."""
import numpy as np

from .masks import DATA, stream

TEACHER_WIDTH = 8


def synthetic(n: int, d: int, outputs: int, noise: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """X (n x d) uniform on the unit sphere (as the theory assumes ||x_i|| = 1) and Y (n x outputs):
    a small random ReLU teacher, scaled to unit RMS, plus Gaussian noise of std `noise`."""
    rng = stream(seed, DATA)
    X = rng.standard_normal((n, d))
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    V = rng.standard_normal((TEACHER_WIDTH, d))
    b = rng.standard_normal((TEACHER_WIDTH, outputs))
    Y = np.maximum(X @ V.T, 0.0) @ b
    Y /= np.sqrt(np.mean(Y**2)) + 1e-300
    Y += noise * rng.standard_normal(Y.shape)
    return X, Y


def load(cfg) -> tuple[np.ndarray, np.ndarray]:
    """X, Y for the run, in the model's dtype, C-contiguous."""
    c = cfg.data
    X, Y = synthetic(c.n, c.d, c.outputs, c.noise, c.seed)
    dtype = np.dtype(cfg.model.dtype)
    return np.ascontiguousarray(X, dtype=dtype), np.ascontiguousarray(Y, dtype=dtype)
