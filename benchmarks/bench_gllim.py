"""Speed and memory benchmarks of :class:`gllim_sk.GLLiMRegressor`.

Prints numbers; asserts nothing. Three parts, chosen with ``--part``:

a
    Fit with n=2000, D=100, L=3, K=10, diagonal noise, exactly 100 EM
    iterations (``tol=0``), then predict 1000 points. Best of ``--repeat``
    runs (the fit's median is printed too: on a shared virtual machine the
    speed of the second core varies over minutes). Targets on the 2-core
    development machine: fit < 120 ms, predict < 3 ms. With ``--xllim``, the
    C++ ``xllim`` package (PyPI) is timed on the same data and settings in the
    same run, if it is installed. The time of the four matrix products of 100
    iterations alone (no other work) is printed too: xllim's fit time over it is the
    largest speed ratio any exact implementation of this EM can reach on the machine.
b
    Time per EM iteration at the HOG-IR scale (n=12000, D=1888, L=3, K=50,
    diagonal noise), next to the time of one float64 matmul
    (n x D) @ (D x 200) measured in the same run, and peak memory
    (``tracemalloc`` peak of numpy allocations during a fit, on top of the
    inputs, and the process's ``ru_maxrss``). Targets: one iteration under 2
    matmuls, peak under 2 GB. The products of one iteration alone (no other work)
    are timed too, in the same units: an iteration cannot take less.
c
    Part b's iteration time with ``n_latent=5`` against ``n_latent=0``
    (target ratio: within 2).
x
    Array API dispatch (``sklearn.set_config(array_api_dispatch=True)``) on
    ``--namespace`` (torch or cupy) arrays on ``--device`` (cpu, cuda, ...), at
    part b's scale with diagonal noise, ``n_latent`` 0 and 5: one EM iteration,
    a whole fit (``--fit-iterations`` EM iterations from the same initial
    responsibilities) and predicting 4000 rows, in float32 and float64, next
    to numpy (float64, CPU) in the same run, with the largest difference of
    the predictions from numpy's. Meant to finish in under 3 minutes on one
    GPU. Set ``SCIPY_ARRAY_API=1`` (the script does it when it is unset).

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

GLLiM on a GPU through torch, next to numpy on the CPU::

    python benchmarks/bench_gllim.py --part x --device cuda
"""

import os

os.environ.setdefault("SCIPY_ARRAY_API", "1")  # scikit-learn's Array API dispatch needs it

import argparse  # noqa: E402
import gc  # noqa: E402
import importlib.metadata  # noqa: E402
import resource  # noqa: E402
import time  # noqa: E402
import tracemalloc  # noqa: E402
import warnings  # noqa: E402

import numpy as np  # noqa: E402
import sklearn  # noqa: E402
from sklearn.cluster import KMeans  # noqa: E402
from sklearn.exceptions import ConvergenceWarning  # noqa: E402

from gllim_sk import GLLiMRegressor  # noqa: E402

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
    # One starting partition, as xllim's one "experience" below: the 100 iterations are
    # what is timed. The default's best of several short starts is timed on the next line.
    model = GLLiMRegressor(K, covariance_type="diag", max_iter=100, tol=0, random_state=0,
                           init_candidates=1)
    fit_time, fit_median, _ = best_time(lambda: model.fit(X_train, y_train), repeat, True)
    predict_time, pred = best_time(lambda: model.predict(X_test), max(repeat, 20))
    rmse = np.sqrt(np.mean((pred - y_test) ** 2))
    print(f"    gllim_sk  fit {fit_time * 1e3:8.1f} ms (target < 120; median of {repeat}: "
          f"{fit_median * 1e3:.1f} ms)   predict {predict_time * 1e3:6.2f} ms (target < 3)   "
          f"test RMSE {rmse:.4f}   n_iter_={model.n_iter_}")
    default = GLLiMRegressor(K, covariance_type="diag", max_iter=100, tol=0, random_state=0)
    default_time, default_median, _ = best_time(lambda: default.fit(X_train, y_train), repeat,
                                                True)
    print(f"    gllim_sk  fit {default_time * 1e3:8.1f} ms with the default init_candidates="
          f"{default.init_candidates} starts (median {default_median * 1e3:.1f} ms)   test "
          f"RMSE {np.sqrt(np.mean((default.predict(X_test) - y_test) ** 2)):.4f}")
    products = products_alone(X_train, K, L, repeat)
    print(f"    products alone (the four matrix products of 100 EM iterations, no other work): "
          f"{products * 1e3:.1f} ms")
    if use_xllim:
        xllim_time = part_a_xllim(X_train, y_train, X_test, y_test, K, repeat)
        if xllim_time is not None:
            print(f"    ratios: xllim fit / gllim_sk fit = {xllim_time / fit_time:.1f}; "
                  f"xllim fit / products alone = {xllim_time / products:.1f} (the largest "
                  f"ratio any exact implementation of this EM can reach with this BLAS)")


def products_alone(X, K, L, repeat, n_iterations=100, n_latent=0):
    """Seconds of the four matrix products of ``n_iterations`` EM iterations on ``X``.

    One iteration with diagonal noise needs, over all n samples: the E-step's
    [x^2, y1 pairs] (n, D + P) @ (D + P, K) and x (n, D) @ (D, (L + 1 + Lw) K), and the
    statistics' responsibilities (K, n) @ (n, D + P) and r [y1, w] ((L + 1 + Lw) K, n) @
    (n, D). Whatever the implementation, exact EM does this much arithmetic per
    iteration. The time is the best of three ways to run them: on all samples with BLAS's
    own threads, on all samples with one BLAS thread, and on two halves of the samples in
    two Python threads with one BLAS thread each (as the engine runs large problems).
    """
    from concurrent.futures import ThreadPoolExecutor

    from threadpoolctl import threadpool_limits

    rng = np.random.default_rng(0)
    n, D = X.shape
    n_pairs = (L + 1) * (L + 2) // 2
    width = (L + 1 + n_latent) * K
    quad = rng.standard_normal((n, D + n_pairs))
    quad_weights = rng.standard_normal((D + n_pairs, K))
    cross = rng.standard_normal((D, width))
    resp = rng.random((K, n))
    resp_z = rng.random((width, n))
    Xc = np.ascontiguousarray(X, dtype=np.float64)

    def products(rows):
        quad[rows] @ quad_weights
        Xc[rows] @ cross
        resp[:, rows] @ quad[rows]
        resp_z[:, rows] @ Xc[rows]

    halves = (slice(0, n // 2), slice(n // 2, n))

    def iterations(pool=None):
        for _ in range(n_iterations):
            if pool is None:
                products(slice(None))
            else:
                other = pool.submit(products, halves[1])
                products(halves[0])
                other.result()

    times = []
    for limit in (None, 1):
        with threadpool_limits(limit):
            times.append(best_time(iterations, repeat)[0])
    with threadpool_limits(1), ThreadPoolExecutor(1) as pool:
        times.append(best_time(lambda: iterations(pool), repeat)[0])
    return min(times)


def part_a_xllim(X_train, y_train, X_test, y_test, K, repeat):
    try:
        import xllim
    except ImportError as exc:
        print(f"    xllim     skipped: cannot import it ({exc}); `pip install xllim` to compare")
        return None
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
    return fit_time


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
        # The products over samples of one iteration, in units of that matmul's flops:
        # E-step [X^2, y pairs] @ (K) and X @ (K (L + 1 + Lw)), M-step the same two
        # shapes transposed.
        gemm_units = 2 * K * (1 + y.shape[1] + 1 + n_latent) / 200
        products = products_alone(X, K, y.shape[1], repeat, n_iterations=1,
                                  n_latent=n_latent)
        print(f"    n_latent={n_latent}: {seconds * 1e3:7.0f} ms per EM iteration "
              f"= {seconds / matmul:.2f} matmuls (target for n_latent=0: < 2); its "
              f"products alone: {gemm_units:.2f} matmuls of flops, timed {products * 1e3:.0f} "
              f"ms = {products / matmul:.2f} matmuls; cold fit with max_iter=1 "
              f"(initialisation, first M-step, bound) {t_cold * 1e3:.0f} ms; tracemalloc "
              f"peak during fit {peak:.0f} MB (target < 2048)")
    print(f"    process ru_maxrss so far: {max_rss_mb():.0f} MB")
    if "c" in parts:
        print(f"(c) n_latent=5 / n_latent=0 time per iteration: {per_iter[5] / per_iter[0]:.2f} "
              f"(target <= 2)")


def _array_module(namespace, device):
    """(module, to_array(numpy_array, dtype_name), synchronise()) for ``namespace``."""
    if namespace == "torch":
        import torch

        dev = torch.device(device)

        def synchronise():
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)

        return (lambda a, dtype: torch.asarray(a, dtype=getattr(torch, dtype), device=dev),
                synchronise)
    import cupy

    def synchronise():
        cupy.cuda.Device().synchronize()

    return (lambda a, dtype: cupy.asarray(a, dtype=dtype)), synchronise


def part_x(namespace, device, repeat, n_more, fit_iterations):
    to_array, synchronise = _array_module(namespace, device)
    n, n_test, D, L, K = 12000, 4000, 1888, 3, 50
    X, y = make_data(n + n_test, D, L, seed=2)
    X_test = X[n:]
    X, y = X[:n], y[:n]
    resp = kmeans_resp(y, K)
    print(f"(x) n={n}, D={D}, L={L}, K={K}, diag; {namespace} on {device} next to numpy "
          f"(float64, CPU); fit = {fit_iterations} EM iterations from the same "
          f"responsibilities; predict {n_test} rows; best of {repeat}")

    def measure(X_fit, y_fit, X_new, n_latent, sync):
        def timed(func):
            def run():
                result = func()
                sync()
                return result
            return best_time(run, repeat)

        seconds, _ = iteration_time(X_fit, y_fit, resp, n_latent, n_more, 1)
        model = GLLiMRegressor(K, covariance_type="diag", n_latent=n_latent, resp_init=resp,
                               max_iter=fit_iterations, tol=0)
        fit_time, _ = timed(lambda: model.fit(X_fit, y_fit))
        predict_time, pred = timed(lambda: model.predict(X_new))
        return seconds, fit_time, predict_time, pred

    for n_latent in (0, 5):
        it_np, fit_np, pred_np_time, pred_np = measure(X, y, X_test, n_latent, lambda: None)
        print(f"  n_latent={n_latent}  numpy   float64: iteration {it_np * 1e3:8.1f} ms   "
              f"fit {fit_np:7.2f} s   predict {pred_np_time * 1e3:8.1f} ms")
        for dtype in ("float32", "float64"):
            X_d, y_d, X_new = to_array(X, dtype), to_array(y, dtype), to_array(X_test, dtype)
            synchronise()
            with sklearn.config_context(array_api_dispatch=True):
                it, fit, pred_time, pred = measure(X_d, y_d, X_new, n_latent, synchronise)
            pred = np.asarray(pred.get() if hasattr(pred, "get") else pred.cpu())
            error = np.abs(pred - pred_np).max() / np.abs(pred_np).max()
            print(f"  n_latent={n_latent}  {namespace:7s} {dtype}: iteration {it * 1e3:8.1f} "
                  f"ms   fit {fit:7.2f} s   predict {pred_time * 1e3:8.1f} ms   "
                  f"(x{it_np / it:.1f}, x{fit_np / fit:.1f}, x{pred_np_time / pred_time:.1f} "
                  f"numpy's speed; predictions within {error:.1e} of numpy's, relative)")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--part", nargs="+", choices=["a", "b", "c", "x"],
                        default=["a", "b", "c"],
                        help="which benchmarks to run (default: a b c)")
    parser.add_argument("--repeat", type=int, default=3,
                        help="timed repetitions; the best is reported (default: 3)")
    parser.add_argument("--iterations", type=int, default=3,
                        help="extra EM iterations timed per HOG-scale fit (default: 3)")
    parser.add_argument("--xllim", action="store_true",
                        help="also time the xllim package on part a, if installed")
    parser.add_argument("--float32", action="store_true", help="run on float32 data")
    parser.add_argument("--namespace", choices=["torch", "cupy"], default="torch",
                        help="array library of part x (default: torch)")
    parser.add_argument("--device", default="cpu",
                        help="device of part x's arrays, e.g. cpu or cuda (default: cpu)")
    parser.add_argument("--fit-iterations", type=int, default=20,
                        help="EM iterations of part x's whole fit (default: 20)")
    args = parser.parse_args(argv)
    dtype = np.float32 if args.float32 else np.float64
    print(f"numpy {np.__version__}; ru_maxrss at start {max_rss_mb():.0f} MB")
    if "a" in args.part:
        part_a(args.repeat, args.xllim, dtype)
    if "b" in args.part or "c" in args.part:
        part_bc(set(args.part), args.repeat, args.iterations, dtype)
    if "x" in args.part:
        part_x(args.namespace, args.device, args.repeat, args.iterations, args.fit_iterations)


if __name__ == "__main__":
    main()
