"""How wide the DeepGLLiMRegressor embedding should be on a small training set.

Prints numbers; no assertions. It reproduces alternation 0 of
:class:`~gllim_sk.deep.DeepGLLiMRegressor` (the embedding layer initialised from the
whitened PCA of the fc7 features, then GLLiM with K=2 and tied isotropic noise) on
synthetic heads at 64 x 64 with random VGG-16 weights (nothing downloaded), for several
embedding widths D, on person-disjoint 75/25 splits. It is the measurement behind the
default ``embedding_dim=None``: 512, or half the number of training images when that
is smaller.

Usage::

    python benchmarks/bench_embedding_dim.py                      # 300 images
    python benchmarks/bench_embedding_dim.py --n-samples 600 --dims 64,128,256,300
"""

import argparse
import time
import warnings

import numpy as np
from sklearn.decomposition import PCA
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import GroupShuffleSplit

from gllim_sk import GLLiMRegressor
from gllim_sk.datasets import make_head_poses
from gllim_sk.deep import VGGFeatures


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-samples", type=int, default=300)
    parser.add_argument("--dims", default="8,16,32,56,112,150,190,220")
    parser.add_argument("--n-splits", type=int, default=5)
    args = parser.parse_args()
    dims = [int(d) for d in args.dims.split(",")]

    data = make_head_poses(args.n_samples, image_size=64, random_state=0)
    tic = time.perf_counter()
    fc7 = VGGFeatures(weights=None, input_size=64, device="cpu",
                      random_state=0).fit_transform(data.images)
    print(f"{args.n_samples} images, fc7 features {fc7.shape} in "
          f"{time.perf_counter() - tic:.1f} s")
    errors = {d: [] for d in dims}
    for seed in range(args.n_splits):
        splitter = GroupShuffleSplit(1, test_size=0.25, random_state=seed)
        train, test = next(splitter.split(fc7, groups=data.subject))
        for d in dims:
            if d > len(train):
                continue
            pca = PCA(d, whiten=True, random_state=0).fit(fc7[train])
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                gllim = GLLiMRegressor(2, covariance_type="tied_spherical",
                                       random_state=seed)
                gllim.fit(pca.transform(fc7[train]), data.target[train])
            pred = gllim.predict(pca.transform(fc7[test]))
            errors[d].append(np.abs(pred - data.target[test]).mean())
    print(f"{len(train)} training images per split, {args.n_splits} splits "
          "(seeds 0..n-1): mean absolute error in degrees, mean +- std over splits")
    for d in dims:
        if errors[d]:
            e = np.array(errors[d])
            print(f"  D = {d:4d}: {e.mean():6.2f} +- {e.std():.2f}")


if __name__ == "__main__":
    main()
