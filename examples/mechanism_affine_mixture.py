"""
The joint EM on a problem with a known answer
=============================================

Images are generated from their targets through a known mixture of affine maps and a
fixed nonlinearity (:func:`gllim_sk.datasets.make_affine_mixture_images`): the GLLiM
model holds exactly for hidden features that a small network can recover from the
pixels. Over several seeds, this script compares, on the same two-layer perceptron
and the same number of epochs:

- the initial model of Algorithm 1 (PCA of the random network's features, GLLiM on
  them; no fine-tuning);
- the joint EM (:class:`~gllim_sk.deep.DeepGLLiMRegressor`);
- L2 fine-tuning (:class:`~gllim_sk.deep.DeepRegressor`);
- an oracle GLLiM fitted on the hidden features themselves.

It reports the test error, how close the learnt features are to one affine map of the
targets per true component (R^2), and whether the mixture's partition is the true one
(adjusted Rand index). Run from the repository root::

    python examples/mechanism_affine_mixture.py --seeds 0 1 2 3 4
"""

import argparse

import numpy as np
import torch
from sklearn.metrics import adjusted_rand_score
from torch import nn

from gllim_sk import GLLiMRegressor
from gllim_sk.datasets import make_affine_mixture_images
from gllim_sk.deep import DeepGLLiMRegressor, DeepRegressor


class PixelMLP(nn.Module):
    """A two-hidden-layer perceptron on the pixels, in the VGG layout (fc6, fc7)."""

    def __init__(self, n_pixels=3072, width=32, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.features = nn.Sequential(nn.Identity())
        self.avgpool = nn.Identity()
        self.classifier = nn.Sequential(nn.Linear(n_pixels, width), nn.ReLU(),
                                        nn.Linear(width, width), nn.ReLU(),
                                        nn.Linear(width, 10))


def affine_r2(features, y, component):
    """Share of the feature variance explained by one affine map of y per component."""
    scores = []
    for k in np.unique(component):
        rows = component == k
        design = np.c_[y[rows], np.ones(rows.sum())]
        coef, *_ = np.linalg.lstsq(design, features[rows], rcond=None)
        residual = features[rows] - design @ coef
        scores.append(1 - residual.var(axis=0).sum() / features[rows].var(axis=0).sum())
    return float(np.mean(scores))


def run(seed, args):
    data = make_affine_mixture_images(args.n_train + args.n_test, random_state=seed)
    train, test = np.arange(args.n_train), np.arange(args.n_train, len(data.target))
    common = {"input_size": 32, "batch_size": 32, "validation_fraction": 0.0,
              "device": "cpu", "random_state": seed}
    mae = lambda model, X: float(np.abs(model.predict(X) - data.target[test]).mean())  # noqa: E731
    out = {}
    for name, n_alternations in (("initial (no fine-tuning)", 0), ("joint EM", args.alternations)):
        reg = DeepGLLiMRegressor(model=PixelMLP(seed=seed), embedding_dim=4,
                                 trainable_layers=2, n_alternations=n_alternations,
                                 n_epochs=args.epochs, learning_rate=args.learning_rate,
                                 **common).fit(data.images[train], data.target[train])
        features = reg.transform(data.images[train])
        found = reg.gllim_.component_posterior(features, data.target[train]).argmax(axis=1)
        out[name] = {"mae": mae(reg, data.images[test]),
                     "r2": affine_r2(features, data.target[train], data.component[train]),
                     "ari": adjusted_rand_score(data.component[train], found),
                     "steps lowering eq. (9)": sum(h["loss"] < h["loss_before"]
                                                   for h in reg.history_[1:])}
    l2 = DeepRegressor(PixelMLP(seed=seed), phases=((2, 0), (args.alternations * args.epochs, 2)),
                       learning_rate=args.learning_rate, **common)
    l2.fit(data.images[train], data.target[train])
    out["L2 fine-tuning"] = {"mae": mae(l2, data.images[test])}
    oracle = GLLiMRegressor(2, covariance_type="tied_spherical", random_state=seed)
    oracle.fit(data.latent[train], data.target[train])
    out["oracle GLLiM on z"] = {
        "mae": float(np.abs(oracle.predict(data.latent[test]) - data.target[test]).mean())}
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--n-train", type=int, default=600)
    parser.add_argument("--n-test", type=int, default=400)
    parser.add_argument("--alternations", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    results = [run(seed, args) for seed in args.seeds]
    print(f"{len(args.seeds)} seeds {args.seeds}; {args.n_train} training and {args.n_test} "
          f"test images; {args.alternations} alternations x {args.epochs} epochs, lr "
          f"{args.learning_rate} (L2: the same epochs after 2 head-only ones)")
    for name in results[0]:
        cells = []
        for key in results[0][name]:
            values = np.array([r[name][key] for r in results], dtype=float)
            cells.append(f"{key} {values.mean():.4f} +- {values.std():.4f}")
        print(f"  {name:26s} " + "; ".join(cells))


if __name__ == "__main__":
    main()

# sphinx_gallery_thumbnail_path = "_static/thumbnails/mechanism_affine_mixture.png"
