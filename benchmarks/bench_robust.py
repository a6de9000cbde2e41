"""Robustness of the Student-t GLLiM to corrupted training rows, against the Gaussian GLLiM.

Prints numbers; asserts nothing. Data: a smooth non-linear map from L=2 targets (uniform on
[-1, 1]^2) to D features, plus Gaussian noise (``--noise`` times each feature's spread).
Two corruptions of the *training* set, each on a fraction ``--fraction`` of the rows
chosen at random, are tested separately:

- ``mismatch``: the features of a corrupted row are replaced by 5 times the features of
  another, random row (the row's target no longer matches its features);
- ``cauchy``: standard Cauchy noise, scaled by each feature's standard deviation, is added
  to the features of a corrupted row (heavy-tailed corruption).

For every seed, the Gaussian model (:class:`gllim_sk.GLLiMRegressor`) and the Student model
(:class:`gllim_sk.StudentGLLiMRegressor`) are fitted on the corrupted set, and the Gaussian
model on the clean set as the reference; all with the same settings and seed. The score is
the RMSE of the predicted targets on a clean test set. The table gives the mean and the
standard deviation over seeds, and how many seeds the Student model beat the Gaussian one.

Examples
--------
The default run (ten seeds, about 15 s on 2 cores)::

    python benchmarks/bench_robust.py

More seeds and another size::

    python benchmarks/bench_robust.py --seeds 0 1 2 --n-train 2000 --features 30 --noise 0.2
"""

import argparse
import time
import warnings

import numpy as np
from sklearn.exceptions import ConvergenceWarning

from gllim_sk import GLLiMRegressor, StudentGLLiMRegressor


def make_problem(n_train, n_test, n_features, noise, seed):
    """Targets, clean features and a feature map drawn from ``seed``."""
    rng = np.random.default_rng(seed)
    L = 2
    freq = rng.normal(scale=1.5, size=(n_features, L))
    phase = rng.uniform(0, 2 * np.pi, n_features)
    lin = rng.normal(size=(n_features, L))

    def features(y):
        return np.sin(y @ freq.T + phase) + 0.5 * y @ lin.T

    y_train = rng.uniform(-1, 1, (n_train, L))
    y_test = rng.uniform(-1, 1, (n_test, L))
    f_train = features(y_train)
    scale = f_train.std(axis=0)
    X_train = f_train + noise * scale * rng.normal(size=f_train.shape)
    X_test = features(y_test) + noise * scale * rng.normal(size=(n_test, n_features))
    return X_train, y_train, X_test, y_test, rng


def corrupt(X, kind, fraction, rng):
    """A corrupted copy of ``X`` (the original is left as it is)."""
    X = X.copy()
    n = X.shape[0]
    rows = rng.choice(n, size=int(round(fraction * n)), replace=False)
    if kind == "mismatch":
        X[rows] = 5.0 * X[rng.integers(0, n, size=rows.size)]
    else:
        X[rows] += X.std(axis=0) * rng.standard_cauchy(size=(rows.size, X.shape[1]))
    return X


def rmse(model, X, y):
    return float(np.sqrt(np.mean((model.predict(X) - y) ** 2)))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=list(range(10)))
    parser.add_argument("--n-train", type=int, default=1000)
    parser.add_argument("--n-test", type=int, default=1000)
    parser.add_argument("--features", type=int, default=20)
    parser.add_argument("--components", type=int, default=10)
    parser.add_argument("--noise", type=float, default=0.05)
    parser.add_argument("--fraction", type=float, default=0.1)
    parser.add_argument("--covariance-type", default="diag")
    args = parser.parse_args()
    settings = dict(n_components=args.components, covariance_type=args.covariance_type,
                    max_iter=200)
    print(f"n_train={args.n_train}, n_test={args.n_test}, D={args.features}, L=2, "
          f"K={args.components}, covariance_type={args.covariance_type}, "
          f"noise={args.noise}, corrupted fraction={args.fraction}, seeds={args.seeds}\n")
    header = (f"{'corruption':10s} {'Gaussian, clean':>18s} {'Gaussian, corrupted':>20s} "
              f"{'Student, corrupted':>19s} {'Student, clean':>16s} {'Student wins':>13s}")
    print(header)
    for kind in ("mismatch", "cauchy"):
        scores = {name: [] for name in ("g_clean", "g_bad", "s_bad", "s_clean")}
        start = time.perf_counter()
        for seed in args.seeds:
            X, y, X_test, y_test, rng = make_problem(args.n_train, args.n_test,
                                                     args.features, args.noise, seed)
            X_bad = corrupt(X, kind, args.fraction, rng)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                fits = {
                    "g_clean": GLLiMRegressor(random_state=seed, **settings).fit(X, y),
                    "g_bad": GLLiMRegressor(random_state=seed, **settings).fit(X_bad, y),
                    "s_bad": StudentGLLiMRegressor(random_state=seed, **settings).fit(X_bad, y),
                    "s_clean": StudentGLLiMRegressor(random_state=seed, **settings).fit(X, y),
                }
            for name, model in fits.items():
                scores[name].append(rmse(model, X_test, y_test))
        s = {name: np.array(v) for name, v in scores.items()}
        wins = int((s["s_bad"] < s["g_bad"]).sum())

        def cell(v, width):
            return f"{v.mean():.4f} ± {v.std():.4f}".rjust(width)

        print(f"{kind:10s} {cell(s['g_clean'], 18)} {cell(s['g_bad'], 20)} "
              f"{cell(s['s_bad'], 19)} {cell(s['s_clean'], 16)} "
              f"{wins:>6d} of {len(args.seeds)}   ({time.perf_counter() - start:.0f} s)")
    print("\nRMSE of the targets on the clean test set: mean ± standard deviation over seeds.")


if __name__ == "__main__":
    main()
