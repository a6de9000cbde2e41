"""Speed and memory benchmarks of :class:`gllim_sk.GLLiMRegressor`.

Prints numbers; asserts nothing. Three parts, chosen with ``--part``:

a
    Fit with n=2000, D=100, L=3, K=10, diagonal noise, exactly 100 EM
    iterations (``tol=0``), then predict 1000 points. Best of ``--repeat``
    runs (the fit's median is printed too: on a shared virtual machine the
    speed of the second core varies over minutes). Targets on the 2-core
    development machine: fit < 120 ms, predict < 3 ms. With ``--xllim``, the
    C++ ``xllim`` package (PyPI) is timed on the same data and settings in the
    same run, if it is installed.
b
    Time per EM iteration at the HOG-IR scale (n=12000, D=1888, L=3, K=50,
    diagonal noise), next to the time of one float64 matmul
    (n x D) @ (D x 200) measured in the same run, and peak memory
    (``tracemalloc`` peak of numpy allocations during a fit, on top of the
    inputs, and the process's ``ru_maxrss``). Targets: one iteration within 4
    matmuls, peak under 2 GB.
c
    Part b's iteration time with ``n_latent=5`` against ``n_latent=0``
    (target ratio: within 2).

The time per iteration is measured on warm-started fits,
(t(max_iter=1 + m) - t(max_iter=1)) / m, so that the initialisation (reported
separately, as the time of a cold one-iteration fit) is not in it. Fits start
from the same initial responsibilities (one-hot k-means labels of y, computed
once, untimed).

Examples
--------
Run everything (takes a few minutes on 2 cores)::

    python benchmarks/bench_gllim.py

Only part a, compared with xllim::

    python benchmarks/bench_gllim.py --part a --xllim
"""

import argparse
import gc
import importlib.metadata
import resource
import time
import tracemalloc
import warnings

import numpy as np
from sklearn.cluster import KMeans
from sklearn.exceptions import ConvergenceWarning

from gllim_sk import GLLiMRegressor

warnings.filterwarnings("ignore", category=ConvergenceWarning)


def make_data(n_samples, n_features, n_targets, seed=0, dtype=np.float64):
    """Smooth nonlinear y -> x data with a low-rank structure and noise."""
    rng = np.random.default_rng(seed)
    y = rng.uniform(-1.0, 1.0, size=(n_samples, n_targets))
    hidden = np.tanh(y @ rng.normal(scale=2.0, size=(n_targets, 40)))
    X = hidden @ rng.normal(size=(40, n_features))
    X += 0.1 * rng.standard_normal(size=X.shape)
    return X.astype(dtype, copy=False), y.astype(dtype, copy=False)


def best_time(func, repeat, with_median=False):
    """Minimum wall time of ``repeat`` calls (and the median), and the last result."""
    times, result = [], None
    for _ in range(repeat):
        gc.collect()
        start = time.perf_counter()
        result = func()
        times.append(time.perf_counter() - start)
    if with_median:
        return min(times), float(np.median(times)), result
    return min(times), result


def kmeans_resp(y, n_components, seed=0):
    labels = KMeans(n_components, n_init=1, random_state=seed).fit_predict(y)
    return np.eye(n_components)[labels]


def max_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


def part_a(repeat, use_xllim, dtype):
    n, D, L, K, n_test = 2000, 100, 3, 10, 1000
    X, y = make_data(n + n_test, D, L, seed=1, dtype=dtype)
    X_train, y_train, X_test, y_test = X[:n], y[:n], X[n:], y[n:]
    print(f"(a) n={n}, D={D}, L={L}, K={K}, diag, 100 iterations (tol=0), {np.dtype(dtype)}")
    model = GLLiMRegressor(K, covariance_type="diag", max_iter=100, tol=0, random_state=0)
    fit_time, fit_median, _ = best_time(lambda: model.fit(X_train, y_train), repeat, True)
    predict_time, pred = best_time(lambda: model.predict(X_test), max(repeat, 20))
    rmse = np.sqrt(np.mean((pred - y_test) ** 2))
    print(f"    gllim_sk  fit {fit_time * 1e3:8.1f} ms (target < 120; median of {repeat}: "
          f"{fit_median * 1e3:.1f} ms)   predict {predict_time * 1e3:6.2f} ms (target < 3)   "
          f"test RMSE {rmse:.4f}   n_iter_={model.n_iter_}")
    if use_xllim:
        part_a_xllim(X_train, y_train, X_test, y_test, K, repeat)


def part_a_xllim(X_train, y_train, X_test, y_test, K, repeat):
    try:
        import xllim
    except ImportError as exc:
        print(f"    xllim     skipped: cannot import it ({exc}); `pip install xllim` to compare")
        return
    # xllim's letters are swapped: its x is our (low-dimensional) y, its y our X;
    # arrays are (dimension, n_samples). Its Gamma is our target covariance.
    D, L = X_train.shape[1], y_train.shape[1]
    low, high = np.ascontiguousarray(y_train.T, float), np.ascontiguousarray(X_train.T, float)

    def fit():
        model = xllim.GLLiM(K, D, L, "full", "diag")
        # initialize(x, y, gllim_em_iterations, gllim_floor, kmeans_iterations,
        #            gmm_em_iterations, gmm_floor, n_experiences, seed, verbose)
        model.initialize(low, high, 10, 1e-6, 10, 10, 1e-6, 1, 0, 0)
        # train(x, y, max_iterations, ll_ratio (0: run them all), floor, verbose)
        model.train(low, high, 100, 0.0, 1e-6, 0)
        return model

    fit_time, model = best_time(fit, repeat)
    X_obs = np.ascontiguousarray(X_test.T, float)
    predict_time, result = best_time(lambda: model.inverseDensities(X_obs), max(repeat, 20))
    pred = np.asarray(result.fullGMM.mean).T
    rmse = np.sqrt(np.mean((pred - y_test) ** 2))
    print(f"    xllim     fit {fit_time * 1e3:8.1f} ms                predict "
          f"{predict_time * 1e3:6.2f} ms                test RMSE {rmse:.4f}   "
          f"(xllim {importlib.metadata.version('xllim')}, its own initialisation)")


def hog_scale_data(dtype):
    n, D, L, K = 12000, 1888, 3, 50
    X, y = make_data(n, D, L, seed=2, dtype=dtype)
    return X, y, K


def iteration_time(X, y, resp, n_latent, n_more, repeat):
    """Seconds per EM iteration (M-step + E-step), and seconds of a cold 1-iteration fit.

    A warm-started ``fit`` continues from the current parameters: with
    ``max_iter=m`` it runs one E-step and then m - 1 (M-step, E-step) pairs, so
    t(max_iter=1 + m) - t(max_iter=1) is the time of m EM iterations with no
    initialisation in it.
    """
    K = resp.shape[1]
    model = GLLiMRegressor(K, covariance_type="diag", n_latent=n_latent, resp_init=resp,
                           max_iter=1, tol=0)
    start = time.perf_counter()
    model.fit(X, y)
    t_cold = time.perf_counter() - start
    model.set_params(warm_start=True)

    def warm_fit(max_iter):
        return model.set_params(max_iter=max_iter).fit(X, y)

    t_one, _ = best_time(lambda: warm_fit(1), repeat)
    t_more, _ = best_time(lambda: warm_fit(1 + n_more), repeat)
    return (t_more - t_one) / n_more, t_cold


def peak_memory_mb(X, y, resp, n_latent):
    gc.collect()
    tracemalloc.start()
    GLLiMRegressor(resp.shape[1], covariance_type="diag", n_latent=n_latent, resp_init=resp,
                   max_iter=3, tol=0).fit(X, y)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return peak / 2**20


def part_bc(parts, repeat, n_more, dtype):
    X, y, K = hog_scale_data(dtype)
    n, D = X.shape
    resp = kmeans_resp(y, K)
    print(f"(b) n={n}, D={D}, L={y.shape[1]}, K={K}, diag, {np.dtype(dtype)}; "
          f"input X {X.nbytes / 2**20:.0f} MB")
    B = np.random.default_rng(0).standard_normal((D, 200)).astype(dtype)
    matmul, _ = best_time(lambda: X @ B, 5)
    flops = 2 * n * D * 200 / matmul / 1e9
    print(f"    one matmul (n x D) @ (D x 200): {matmul * 1e3:.0f} ms ({flops:.1f} GFLOP/s)")
    per_iter = {}
    for n_latent in (0, 5) if "c" in parts else (0,):
        seconds, t_cold = iteration_time(X, y, resp, n_latent, n_more, repeat)
        per_iter[n_latent] = seconds
        peak = peak_memory_mb(X, y, resp, n_latent)
        print(f"    n_latent={n_latent}: {seconds * 1e3:7.0f} ms per EM iteration "
              f"= {seconds / matmul:.2f} matmuls (target <= 4); cold fit with max_iter=1 "
              f"(initialisation, first M-step, bound) {t_cold * 1e3:.0f} ms; tracemalloc "
              f"peak during fit {peak:.0f} MB (target < 2048)")
    print(f"    process ru_maxrss so far: {max_rss_mb():.0f} MB")
    if "c" in parts:
        print(f"(c) n_latent=5 / n_latent=0 time per iteration: {per_iter[5] / per_iter[0]:.2f} "
              f"(target <= 2)")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--part", nargs="+", choices=["a", "b", "c"], default=["a", "b", "c"],
                        help="which benchmarks to run (default: all)")
    parser.add_argument("--repeat", type=int, default=3,
                        help="timed repetitions; the best is reported (default: 3)")
    parser.add_argument("--iterations", type=int, default=3,
                        help="extra EM iterations timed per HOG-scale fit (default: 3)")
    parser.add_argument("--xllim", action="store_true",
                        help="also time the xllim package on part a, if installed")
    parser.add_argument("--float32", action="store_true", help="run on float32 data")
    args = parser.parse_args(argv)
    dtype = np.float32 if args.float32 else np.float64
    print(f"numpy {np.__version__}; ru_maxrss at start {max_rss_mb():.0f} MB")
    if "a" in args.part:
        part_a(args.repeat, args.xllim, dtype)
    if "b" in args.part or "c" in args.part:
        part_bc(set(args.part), args.repeat, args.iterations, dtype)


if __name__ == "__main__":
    main()
