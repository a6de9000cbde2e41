"""GLLiM beyond one machine: exact EM over a dask cluster, and online EM.

Prints numbers; asserts nothing.

Part ``dask``: samples drawn from known GLLiM parameters (diagonal noise) are generated
on the workers of a ``distributed.LocalCluster`` of worker processes, never on the
client, and ``GLLiMRegressor.fit`` runs on the dask arrays. Printed: the time of one EM
iteration (median over the iterations, from the ``verbose=2`` timings), the peak
resident memory of the client process and of each worker. Then, in the same run, the
same samples (``--numpy-samples`` of them: at most 1,000,000 by default, as the
in-memory fit of 4,000,000 needs about 13 GB at its peak) are fitted with numpy in
memory, and by dask again when that is fewer samples, for the ratio of the iteration
times. All fits start from random responsibilities (an iteration's cost does not depend
on how EM starts).

Part ``online``: ``partial_fit`` on one pass over a stream of batches, against ``fit``
(batch EM) on all the samples. L0 is the held-out mean log-likelihood after the first
``partial_fit`` call, L1 after the pass, Lb that of ``fit``; printed are the curve of
the held-out log-likelihood against the number of samples seen, the fraction
(L1 - L0) / (Lb - L0) and the times, over several seeds.

Examples
--------
The issue's sizes (4,000,000 samples, D=64, L=3, K=20 on 2 worker processes; the
online part with 200,000 samples in batches of 2,000)::

    python benchmarks/bench_scale.py

Quick versions::

    python benchmarks/bench_scale.py --part dask --n-samples 400000
    python benchmarks/bench_scale.py --part online --online-samples 50000 --seeds 0

A short stream, 40 batches of 1,000 (``--learning-offset 10`` for the earlier default)::

    python benchmarks/bench_scale.py --part online --online-samples 40000 \
        --batch-size 1000 --held-out 5000 --seeds 0 1 2 3 4 5 6 7 8
"""

import argparse
import contextlib
import io
import re
import resource
import time
import warnings

import numpy as np
from sklearn.exceptions import ConvergenceWarning

from gllim_sk import GLLiMRegressor


# ---------------------------------------------------------------------------- data
def true_parameters(n_components, n_features, n_targets, seed):
    """Well-separated random GLLiM parameters with diagonal noise."""
    rng = np.random.default_rng(seed)
    K, D, L = n_components, n_features, n_targets
    Q = rng.normal(scale=0.4, size=(K, L, L))
    return {
        "pi": rng.dirichlet(np.full(K, 10.0)),
        "c": rng.normal(scale=3.0, size=(K, L)),
        "gamma_chol": np.linalg.cholesky(Q @ Q.transpose(0, 2, 1) + 0.5 * np.eye(L)),
        "A": rng.normal(size=(K, D, L)),
        "b": rng.normal(scale=2.0, size=(K, D)),
        "noise_std": np.sqrt(rng.uniform(0.05, 0.3, size=(K, D))),
    }


def generate(params, n_samples, seed):
    """(n, D + L) samples [x, y] of the GLLiM with ``params``, from ``seed``."""
    rng = np.random.default_rng(seed)
    K, D, L = params["A"].shape
    z = rng.choice(K, size=n_samples, p=params["pi"])
    out = np.empty((n_samples, D + L))
    for k in range(K):
        rows = np.flatnonzero(z == k)
        y = params["c"][k] + rng.standard_normal((rows.size, L)) @ params["gamma_chol"][k].T
        x = y @ params["A"][k].T + params["b"][k]
        x += rng.standard_normal((rows.size, D)) * params["noise_std"][k]
        out[rows, :D] = x
        out[rows, D:] = y
    return out


def block_seeds(n_samples, block_rows, seed):
    sizes = [min(block_rows, n_samples - start) for start in range(0, n_samples, block_rows)]
    return sizes, [seed * 100_003 + i for i in range(len(sizes))]


def peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def current_rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def timed_fit(model, X, y):
    """Fit with verbose=2 timings: (median seconds per EM iteration, seconds to the first
    reported iteration, total seconds)."""
    out = io.StringIO()
    start = time.perf_counter()
    with contextlib.redirect_stdout(out), warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(X, y)
    total = time.perf_counter() - start
    lapses = [float(t) for t in re.findall(r"time lapse ([0-9.]+)s\s+ll change", out.getvalue())]
    return float(np.median(np.diff(lapses))), lapses[0], total


# ---------------------------------------------------------------------------- dask part
def dask_fit(args, n, params, seed):
    """The dask fit of ``n`` generated samples on a fresh LocalCluster: (per-iteration
    time, time to the first reported iteration, total time, worker peaks in MB)."""
    import dask.array as da
    from dask import delayed
    from distributed import Client, LocalCluster

    D, L = args.n_features, args.n_targets
    sizes, seeds = block_seeds(n, args.block_rows, seed)
    with LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True,
                      dashboard_address=":0", silence_logs=40,
                      memory_limit=f"{args.worker_memory_gb}GB") as cluster, \
            Client(cluster) as client:
        # Each block is generated on a worker; X and y are lazy views of the blocks.
        blocks = [da.from_delayed(delayed(generate, pure=True)(params, size, block_seed),
                                  shape=(size, D + L), dtype=np.float64)
                  for size, block_seed in zip(sizes, seeds, strict=True)]
        Z = da.concatenate(blocks)
        timing = timed_fit(GLLiMRegressor(**model_settings(args)), Z[:, :D], Z[:, D:])
        worker_peaks = sorted(client.run(peak_rss_mb).values())
    return (*timing, worker_peaks, len(sizes))


def numpy_fit(args, n, params, seed):
    sizes, seeds = block_seeds(n, args.block_rows, seed)
    Z = np.concatenate([generate(params, size, block_seed)
                        for size, block_seed in zip(sizes, seeds, strict=True)])
    D = args.n_features
    return timed_fit(GLLiMRegressor(**model_settings(args)), Z[:, :D], Z[:, D:])


def model_settings(args):
    return dict(n_components=args.n_components, covariance_type="diag", init_params="random",
                max_iter=args.iterations, tol=0, random_state=args.seed, verbose=2,
                verbose_interval=1)


def part_dask(args):
    D, L, K, n = args.n_features, args.n_targets, args.n_components, args.n_samples
    params = true_parameters(K, D, L, args.seed)
    print(f"== dask: {n:,} samples, D={D}, L={L}, K={K}, diag noise: "
          f"{n * D * 8 / 2**30:.2f} GiB of float64 features in blocks of "
          f"{args.block_rows:,} rows, generated on the workers")
    print(f"   LocalCluster of {args.workers} worker processes x 1 thread; EM of "
          f"{args.iterations} iterations from random responsibilities (seed {args.seed})")
    rss_start = current_rss_mb()
    per_iter, first, total, workers, n_blocks = dask_fit(args, n, params, args.seed)
    client_peak = peak_rss_mb()
    print(f"   dask, {n:,} samples ({n_blocks} blocks): {per_iter:.2f} s per EM iteration "
          f"(median of {args.iterations - 2}); {total:.1f} s in all (generation, means, "
          f"variances, blocks, init, {args.iterations} iterations)")
    print(f"   peak memory: client process {client_peak:.0f} MB ({rss_start:.0f} MB before "
          f"the cluster started: Python, numpy, scikit-learn, dask); workers "
          + ", ".join(f"{w:.0f} MB" for w in workers))
    # The in-memory comparison, where memory allows, in the same run; when it is run on
    # fewer samples, the dask fit is timed again on that many for a like-for-like ratio.
    n_numpy = min(n, args.numpy_samples)
    if n_numpy < n:
        per_iter, _, _, _, n_blocks = dask_fit(args, n_numpy, params, args.seed)
        print(f"   dask, {n_numpy:,} samples ({n_blocks} blocks): {per_iter:.2f} s per EM "
              "iteration (median)")
    per_iter_numpy, _, total_numpy = numpy_fit(args, n_numpy, params, args.seed)
    print(f"   numpy, {n_numpy:,} samples in memory (the in-memory fit's threaded chunks): "
          f"{per_iter_numpy:.2f} s per EM iteration (median); {total_numpy:.1f} s in all")
    print(f"   ratio dask / numpy per iteration at {n_numpy:,} samples: "
          f"{per_iter / per_iter_numpy:.2f}")


# ---------------------------------------------------------------------------- online part
def part_online(args):
    D, L, K = args.online_features, args.n_targets, args.online_components
    print(f"\n== online EM: {args.online_samples:,} samples in batches of {args.batch_size:,} "
          f"(one pass), D={D}, L={L}, K={K}, diag noise; held-out set of "
          f"{args.held_out:,} samples; learning_offset={args.learning_offset}, "
          f"learning_decay={args.learning_decay}")
    fractions, ratios = [], []
    for seed in args.seeds:
        params = true_parameters(K, D, L, seed)
        data = generate(params, args.online_samples + args.held_out, seed + 1)
        X, y = data[: args.online_samples, :D], data[: args.online_samples, D:]
        X_test, y_test = data[args.online_samples :, :D], data[args.online_samples :, D:]
        model = GLLiMRegressor(K, random_state=seed, learning_offset=args.learning_offset,
                               learning_decay=args.learning_decay)
        curve = []
        online_time = 0.0
        for i, first in enumerate(range(0, len(X), args.batch_size)):
            t = time.perf_counter()
            model.partial_fit(X[first : first + args.batch_size],
                              y[first : first + args.batch_size])
            online_time += time.perf_counter() - t
            if i == 0 or (i + 1) % args.curve_every == 0 or first + args.batch_size >= len(X):
                curve.append((min(first + args.batch_size, len(X)),
                              model.joint_log_density(X_test, y_test).mean()))
        t = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            batch = GLLiMRegressor(K, random_state=seed).fit(X, y)
        batch_time = time.perf_counter() - t
        Lb = batch.joint_log_density(X_test, y_test).mean()
        L0, L1 = curve[0][1], curve[-1][1]
        fraction = (L1 - L0) / (Lb - L0)
        fractions.append(fraction)
        ratios.append(online_time / batch_time)
        print(f"-- seed {seed}: held-out mean log-likelihood against samples seen:")
        print("   " + "  ".join(f"{seen:,}: {value:.3f}" for seen, value in curve))
        print(f"   L0 = {L0:.4f}, L1 = {L1:.4f}, Lb = {Lb:.4f} (fit: {batch.n_iter_} EM "
              f"iterations); (L1 - L0) / (Lb - L0) = {fraction:.4f}")
        print(f"   time: one online pass {online_time:.2f} s, batch fit {batch_time:.2f} s "
              f"(ratio {online_time / batch_time:.2f})")
    print(f"== over seeds {args.seeds}: (L1 - L0) / (Lb - L0) min {min(fractions):.4f}, "
          f"median {np.median(fractions):.4f}, max {max(fractions):.4f}; time online / batch "
          f"median {np.median(ratios):.2f} (min {min(ratios):.2f}, max {max(ratios):.2f})")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--part", choices=["dask", "online", "all"], default="all")
    parser.add_argument("--n-samples", type=int, default=4_000_000)
    parser.add_argument("--n-features", type=int, default=64)
    parser.add_argument("--n-targets", type=int, default=3)
    parser.add_argument("--n-components", type=int, default=20)
    parser.add_argument("--block-rows", type=int, default=250_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--worker-memory-gb", type=float, default=8.0)
    parser.add_argument("--numpy-samples", type=int, default=1_000_000,
                        help="size of the in-memory comparison (at most --n-samples)")
    parser.add_argument("--iterations", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--online-samples", type=int, default=200_000)
    parser.add_argument("--online-features", type=int, default=64)
    parser.add_argument("--online-components", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=2_000)
    parser.add_argument("--held-out", type=int, default=20_000)
    parser.add_argument("--curve-every", type=int, default=10)
    parser.add_argument("--learning-offset", type=float, default=2.0)
    parser.add_argument("--learning-decay", type=float, default=0.7)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    args = parser.parse_args()
    if args.part in ("dask", "all"):
        part_dask(args)
    if args.part in ("online", "all"):
        part_online(args)


if __name__ == "__main__":
    main()
