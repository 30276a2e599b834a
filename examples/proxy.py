"""The data of the authors' figures, as a proxy that needs no download (imported by the fig2*
examples). Their experiments train on ResNet-50 features of CIFAR-10 images (post-ReLU, so
nonnegative; rows scaled to unit norm) with the network's 10 logits as regression targets divided
by max |Y| (MaskedNTK-TMLR, resnet_cifar_experiments.load_data). Those cannot be built offline, so
this draws features of the same kind: 10 class centres in R^256 with sparse nonnegative entries,
each sample relu(centre + noise) scaled to unit norm, and the targets the logits of a random
linear teacher on the features, divided by max |Y|. The claims the examples test are about the
training dynamics on such data, not about CIFAR-10 itself."""
import os

import numpy as np

D, CLASSES = 256, 10


def features(n: int, seed: int = 0):
    """(X, Y): n nonnegative unit-norm rows in R^256 from 10 classes, and 10 teacher logits / max |Y|."""
    rng = np.random.default_rng(seed)
    centres = np.abs(rng.standard_normal((CLASSES, D))) * (rng.random((CLASSES, D)) < 0.3)
    labels = rng.integers(CLASSES, size=n)
    X = np.maximum(centres[labels] + 0.5 * rng.standard_normal((n, D)), 0.0)
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    Y = X @ rng.standard_normal((D, CLASSES))
    return X, Y / np.abs(Y).max()


def write(folder: str, n: int) -> str:
    """The proxy data set of n samples as <folder>/proxy-<n>.npz (its path)."""
    os.makedirs(folder, exist_ok=True)
    path = os.path.abspath(os.path.join(folder, f"proxy-{n}.npz"))
    if not os.path.exists(path):
        X, Y = features(n)
        np.savez(path, X=X, Y=Y)
    return path


def semantics(name: str, width: int, lr: float) -> dict:
    """The config of the authors' code's run ("official": their network and lr, uncovered neurons
    zeroed) or of the same run as the paper analyses it ("analysis": the NTK form with the mapped
    kappa = 1/sqrt(c) and lr x m / c, uncovered neurons kept): the same first step, the only
    difference being what happens to a neuron no subnetwork holds."""
    if name == "official":
        return {"model.parametrization": "standard", "masks.uncovered": "zero", "train.lr": lr}
    return {"model.init_scale": 1 / np.sqrt(CLASSES), "masks.uncovered": "keep", "train.lr": lr * width / CLASSES}
