"""Partially-latent GLLiM on p-HOG features of synthetic heads, against HOG-SVR.

Prints numbers; asserts nothing. The p-HOG features of synthetic "biwi" heads are computed
once; the test people never appear in training (a person-disjoint split). HOG-SVR is compared
with HOG-IR (:class:`gllim_sk.GLLiMRegressor` on the features) for several numbers of
components K and latent dimensions Lw, with the mean absolute angle errors, the mean
log-likelihood of the test pairs under the predictive mixture (a calibration measure: a model
that is confidently wrong scores low) and the fit time. Then the time of one EM iteration at
the HOG-IR scale of the benchmarks with Lw=5 against Lw=0 is in ``bench_gllim.py --part c``.

Examples
--------
The default comparison (a few minutes on 2 cores)::

    python benchmarks/bench_latent.py

A larger one::

    python benchmarks/bench_latent.py --n-samples 4000 --components 1 10 20 --latent 0 2 5 10
"""

import argparse
import time
import warnings

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import GroupShuffleSplit

from gllim_sk import GLLiMRegressor
from gllim_sk.datasets import make_head_poses
from gllim_sk.features import HOGPyramid
from gllim_sk.metrics import angle_errors, format_results_table
from gllim_sk.pipelines import make_hog_svr


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n-samples", type=int, default=3000)
    parser.add_argument("--n-subjects", type=int, default=20)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--components", type=int, nargs="+", default=[1, 10])
    parser.add_argument("--latent", type=int, nargs="+", default=[0, 2, 5, 10])
    parser.add_argument("--random-state", type=int, default=0)
    args = parser.parse_args()

    data = make_head_poses(args.n_samples, image_size=args.image_size,
                           n_subjects=args.n_subjects, random_state=args.random_state)
    train, test = next(GroupShuffleSplit(n_splits=1, test_size=0.25,
                                         random_state=args.random_state)
                       .split(data.images, groups=data.subject))
    start = time.perf_counter()
    features = HOGPyramid(n_jobs=-1).fit_transform(data.images).astype(np.float64)
    print(f"{args.n_samples} synthetic 'biwi' heads at {args.image_size} px: "
          f"{len(train)} training images of {len(set(data.subject[train]))} people, "
          f"{len(test)} test images of {len(set(data.subject[test]))} others; "
          f"p-HOG ({features.shape[1]} values) in {time.perf_counter() - start:.1f} s\n")
    X_train, X_test = features[train], features[test]
    y_train, y_test = data.target[train], data.target[test]

    results, extra = {"(0, 0, 0)": angle_errors(y_test, np.zeros_like(y_test))}, []
    start = time.perf_counter()
    svr = make_hog_svr().fit(data.images[train], y_train)
    results["HOG-SVR"] = angle_errors(y_test, svr.predict(data.images[test]))
    extra.append(("HOG-SVR", float("nan"), time.perf_counter() - start))
    for K in args.components:
        for Lw in args.latent:
            name = f"HOG-IR K={K} Lw={Lw}"
            model = GLLiMRegressor(K, n_latent=Lw, random_state=args.random_state)
            start = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                model.fit(X_train, y_train)
            elapsed = time.perf_counter() - start
            results[name] = angle_errors(y_test, model.predict(X_test))
            loglik = float(model.conditional_log_density(X_test, y_test).mean())
            extra.append((name, loglik, elapsed))
    print(format_results_table(results, fmt="text"))
    print("\nmethod                 test log p(y|x)   fit time (s)")
    for name, loglik, elapsed in extra:
        print(f"{name:22s} {loglik:15.2f} {elapsed:14.1f}")


if __name__ == "__main__":
    main()
