"""Importance-sampling correction of GLLiM's posterior, against the exact posterior.

Prints numbers; asserts nothing. The problem is the gallery's ambiguous toy
(``examples/plot_posterior_analysis.py``): y uniform on [-1, 1], x = F(y) + N(0, 0.03^2 I)
with F(y) = (y^2, cos(2.5 y), 2 max(y - 0.5, 0)). A deliberately coarse GLLiM (K=3 by
default) is the proposal; the exact posterior mean of each test observation comes from a
grid of 40001 points. For each seed of the importance sampler it prints the mean absolute
error of the corrected posterior mean (plain importance sampling and IMIS) and the median
and minimum effective sample size, then the mean and standard deviation over seeds.

Examples
--------
::

    python benchmarks/bench_posterior.py
    python benchmarks/bench_posterior.py --components 8 --draws 500 --imis-steps 8
"""

import argparse
import time

import numpy as np

from gllim_sk import GLLiMRegressor
from gllim_sk.posterior import importance_sampling

NOISE = 0.03


def forward(Y):
    y = Y[:, 0]
    return np.column_stack([y**2, np.cos(2.5 * y), 2.0 * np.maximum(y - 0.5, 0.0)])


def log_prior(Y):
    return np.where(np.abs(Y[:, 0]) <= 1.0, 0.0, -np.inf)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--components", type=int, default=3)
    parser.add_argument("--n-train", type=int, default=1500)
    parser.add_argument("--n-test", type=int, default=40)
    parser.add_argument("--draws", type=int, default=2000)
    parser.add_argument("--imis-steps", type=int, default=4)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--data-seed", type=int, default=0)
    args = parser.parse_args()

    rng = np.random.default_rng(args.data_seed)
    y_train = rng.uniform(-1, 1, (args.n_train, 1))
    X_train = forward(y_train) + rng.normal(scale=NOISE, size=(args.n_train, 3))
    model = GLLiMRegressor(args.components, random_state=0).fit(X_train, y_train)
    y_test = rng.uniform(-1, 1, (args.n_test, 1))
    X_test = forward(y_test) + rng.normal(scale=NOISE, size=(args.n_test, 3))
    grid = np.linspace(-1, 1, 40001)[:, None]
    log_post = -0.5 * ((forward(grid)[None] - X_test[:, None]) ** 2).sum(axis=2) / NOISE**2
    post = np.exp(log_post - log_post.max(axis=1, keepdims=True))
    exact = (post @ grid[:, 0]) / post.sum(axis=1)
    gllim_error = np.abs(model.predict(X_test)[:, 0] - exact).mean()
    print(f"K={args.components}, {args.n_train} training pairs, {args.n_test} test observations "
          f"(data seed {args.data_seed}); {args.draws} draws, IMIS: {args.imis_steps} steps of "
          f"{max(args.draws // 10, 4)} draws")
    print(f"GLLiM posterior mean: mean |error| {gllim_error:.4f}\n")
    print(f"{'method':8s} {'seed':>4s} {'mean |error|':>13s} {'median ESS':>11s} "
          f"{'min ESS':>8s} {'time':>7s}")
    for name, steps in (("IS", 0), ("IMIS", args.imis_steps)):
        errors, medians = [], []
        for seed in args.seeds:
            start = time.perf_counter()
            res = importance_sampling(model, X_test, forward, log_prior,
                                      noise_covariance=NOISE**2, n_draws=args.draws,
                                      n_imis_steps=steps, random_state=seed)
            elapsed = time.perf_counter() - start
            errors.append(np.abs(res.mean[:, 0] - exact).mean())
            medians.append(np.median(res.effective_sample_size))
            print(f"{name:8s} {seed:4d} {errors[-1]:13.4f} {medians[-1]:11.0f} "
                  f"{res.effective_sample_size.min():8.0f} {elapsed:6.2f}s")
        print(f"{name:8s} {'all':>4s} {np.mean(errors):8.4f} ± {np.std(errors):.4f} "
              f"{np.mean(medians):6.0f} ± {np.std(medians):.0f}\n")


if __name__ == "__main__":
    main()
