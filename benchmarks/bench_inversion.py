"""Inverting Hapke's model: gllim_sk side by side with xllim and sbi's NPE, and on dask.

The problem (the one of ``examples/invert_hapke.py``): the four Hapke parameters
(single-scattering albedo ``omega``, roughness ``theta_bar``, phase-function ``b`` and
``c``) seen at 10 geometries of a multi-angle orbital observation (incidence near 45
degrees, emergences swept from 70 degrees forward to 70 degrees backward, as the
targeted observations of a spectro-imager give). Learning set: a Sobol design of
``--n-train`` simulations with 1% relative noise; test set: ``--n-test`` observations
of random parameters, each with its own relative noise drawn between 1% and 4%, whose
variances are passed to the inversion (estimated from the noisy observation itself, as
a user would).

Each method runs in its own child process, so that its peak memory (``ru_maxrss``) is
its own:

- ``gllim``: :class:`gllim_sk.GLLiMRegressor` (K components, diagonal noise, full target
  covariances, k-means on the joint [parameters, observations] to start (``--gllim-init``;
  ``--gllim-candidates`` starting partitions, the estimator's ``init_candidates``),
  ``--gllim-iters`` EM iterations, default ``--iters``, fewer if ``--gllim-tol`` stops
  them), then
  :func:`gllim_sk.inversion.invert` of the whole test set with the per-observation
  variances (posterior mixture, mean, 2 merged modes, PIT coverage), timed keeping the
  whole mixture and keeping the summaries only (``keep_mixture=False``), after a first
  call whose time is printed apart (it loads numba's compiled kernels, the ``fast``
  extra, where numba is installed; the output says which code ran); importance
  sampling (1000 draws) and IMIS (500 + 5 x 100) on the first ``--n-is`` observations.
- ``xllim`` (``pip install xllim``; skipped when absent): the same simulations, same K,
  same covariance structures, ``--iters`` EM iterations, its own initialisation;
  ``inverseDensities`` with the same variances (its time includes its merging into 2
  modes). Coverage is computed from its full posterior mixture with the same code.
  xllim learns the parameters of its own ``HapkeModel`` (omega = 1 - (1 - u)^2,
  theta_bar = 30 u, b = u, c = 2 u - 1), so that its importance sampling and IMIS
  (same draws as ours) run its model; means and PITs are mapped back exactly. Its
  prior is uniform in u (not in omega), and it returns corrected means and variances
  only: its intervals are Gaussian ones.
- ``sbi`` (``pip install sbi``; skipped when absent): neural posterior estimation
  (sbi's default MAF) on the same simulations, trained for the wall-clock budget of
  ``--sbi-budget`` seconds (default: the longer of gllim_sk's and xllim's learning
  times), epoch by epoch; posterior means and coverage from ``--sbi-draws`` draws per
  observation (it cannot use the per-observation variances: it learnt the 1% noise).
- ``ratio`` (after ``gllim`` and ``xllim``): the two inversions of the test set with the
  models just learnt, alternated ``--ratio-rounds`` times in one process, so that each
  pair of timings is taken under the same load (the machine may be shared), at each
  thread count of ``--ratio-threads`` (threadpoolctl's limit for both: xllim's OpenMP
  threads; gllim_sk inverts ranges of rows in as many threads); then, with
  ``--ratio-learn-rounds``, both learnings alternated as many times (same settings), at
  each thread count too; the ratios against xllim's fastest thread count in each round
  are printed as well. The two gllim_sk inversions (mixture kept, summaries only) take
  turns right after xllim's, and the system CPU time of each call is printed: on Linux
  kernels whose transparent huge pages are made on demand (``defrag`` set to
  ``madvise``, a common default), numpy advises huge pages for its large arrays, and the
  first large allocation after another program's work can cost the kernel tenths of a
  second compacting memory (system time; the 84 MB of the kept mixture here). The kept
  mixture's arrays are therefore mapped without that advice (``_kernels.large_empty``);
  numpy's switch ``NUMPY_MADVISE_HUGEPAGE=0`` turns it off for every array.
- ``dask``: ``--dask-n`` simulations made on the workers of a 2-worker LocalCluster and
  fitted there (EM over the blocks); client peak memory and time per EM iteration.

Run::

    OMP_NUM_THREADS=1 python benchmarks/bench_inversion.py                 # everything
    python benchmarks/bench_inversion.py --n-train 20000 --n-test 2000 --parts gllim,xllim

Every number printed is from one run with ``--seed`` (default 0); the spread over seeds
is not measured by this script (run it with other seeds).
"""

import argparse
import json
import multiprocessing as mp
import os
import pickle
import resource
import sys
import tempfile
import time

import numpy as np

INCIDENCE = np.full(10, 45.0)
EMERGENCE = np.array([70.0, 55.0, 40.0, 25.0, 10.0, 5.0, 20.0, 35.0, 50.0, 65.0])
# First five on the forward side of the sun (azimuth 180), last five backward (0).
AZIMUTH = np.array([180.0] * 5 + [0.0] * 5)
LEVELS = (0.5, 0.9, 0.95)
TRAIN_NOISE = 0.01


def hapke():
    from gllim_sk.physics import HapkeModel

    return HapkeModel(INCIDENCE, EMERGENCE, azimuth=AZIMUTH, variant="1993",
                      bounds={"b": (0.0, 0.95)})


def make_data(path, n_train, n_test, seed):
    from gllim_sk.physics import simulate

    F = hapke()
    Y, X = simulate(F, n_train, method="sobol", noise_std=TRAIN_NOISE, relative_noise=True,
                    random_state=seed)
    rng = np.random.default_rng(seed + 1)
    Yt, _ = simulate(F, n_test, method="random", random_state=seed + 1)
    clean = F(Yt)
    rel = rng.uniform(0.01, 0.04, size=(n_test, 1))
    Xt = clean * (1 + rel * rng.standard_normal(clean.shape))
    # The user knows the relative noise level of each observation, not the clean value.
    var_obs = (rel * np.abs(Xt)) ** 2
    np.savez(path, Y=Y, X=X, Yt=Yt, Xt=Xt, var_obs=var_obs)


def peak_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def rmse(pred, truth):
    return np.sqrt(np.mean((pred - truth) ** 2, axis=0)).tolist()


def mixture_pit(weights, means, covs, y):
    from scipy.special import ndtr

    sd = np.sqrt(np.diagonal(covs, axis1=-2, axis2=-1))
    if sd.ndim == 2:
        sd = sd[None]
    return np.einsum("nk,nkl->nl", weights, ndtr((y[:, None] - means) / sd))


def coverage_of(pit):
    dev = np.abs(pit - 0.5)
    return [(dev <= a / 2).mean(axis=0).tolist() for a in LEVELS]


# --------------------------------------------------------------------- methods
def fit_gllim(d, K, iters, init, seed, candidates=None, tol=0.0):
    """gllim_sk's model of the bench (``iters`` EM iterations, fewer once the gain per
    iteration is below ``tol``, 0: exactly ``iters``) and its time."""
    from gllim_sk import GLLiMRegressor

    model = GLLiMRegressor(n_components=K, covariance_type="diag", max_iter=iters, tol=tol,
                           init_params=init, random_state=seed)
    if candidates:
        model.set_params(init_candidates=candidates)
    t = time.perf_counter()
    model.fit(d["X"], d["Y"])
    return model, time.perf_counter() - t


def run_gllim(path, K, iters, n_is, seed, init="kmeans_joint", candidates=None, tol=0.0):
    from gllim_sk.inversion import invert

    d = np.load(path)
    F = hapke()
    model, learn = fit_gllim(d, K, iters, init, seed, candidates, tol)
    with open(os.path.join(os.path.dirname(path), "gllim.pkl"), "wb") as fh:
        pickle.dump(model, fh)  # for the interleaved timing ("ratio")
    # The first call in a process also loads (or first compiles) the compiled kernels.
    t = time.perf_counter()
    invert(model, d["Xt"], feature_noise_var=d["var_obs"], n_modes=2)
    first = time.perf_counter() - t
    t = time.perf_counter()
    res = invert(model, d["Xt"], feature_noise_var=d["var_obs"], n_modes=2)
    inv = time.perf_counter() - t
    # The summaries only (moments, modes), without keeping the n x K x L x L mixture.
    t = time.perf_counter()
    invert(model, d["Xt"], feature_noise_var=d["var_obs"], n_modes=2, keep_mixture=False)
    inv_summaries = time.perf_counter() - t
    full = invert(model, d["Xt"], feature_noise_var=d["var_obs"], n_modes=2, y_true=d["Yt"])
    out = {"learn_s": learn, "invert_s": inv, "invert_summaries_s": inv_summaries,
           "invert_first_s": first, "kernels": kernels_in_use(),
           "rmse_mean": rmse(res.mean, d["Yt"]),
           "coverage": full.coverage(LEVELS)["mixture"].tolist(),
           "share_multimodal": res.share_multimodal, "n_iter": model.n_iter_}
    if n_is:
        sl = slice(0, n_is)
        t = time.perf_counter()
        r = invert(model, d["Xt"][sl], feature_noise_var=d["var_obs"][sl], n_modes=2,
                   forward_model=F, importance="full", n_draws=1000, y_true=d["Yt"][sl],
                   random_state=seed)
        out |= {"is_s": time.perf_counter() - t, "n_is": n_is,
                "rmse_mean_is_subset": rmse(r.mean, d["Yt"][sl]),
                "rmse_is_mean": rmse(r.is_mean, d["Yt"][sl]),
                "is_coverage": r.coverage(LEVELS)["importance"].tolist(),
                "ess_median": float(np.median(r.effective_sample_size))}
        t = time.perf_counter()
        r = invert(model, d["Xt"][sl], feature_noise_var=d["var_obs"][sl], n_modes=2,
                   forward_model=F, importance="full", n_draws=500, n_imis_steps=5,
                   imis_batch=100, y_true=d["Yt"][sl], random_state=seed)
        out |= {"imis_s": time.perf_counter() - t, "rmse_imis_mean": rmse(r.is_mean,
                                                                           d["Yt"][sl]),
                "imis_coverage": r.coverage(LEVELS)["importance"].tolist(),
                "imis_ess_median": float(np.median(r.effective_sample_size))}
    out["peak_mib"] = peak_mib()
    return out


# xllim's HapkeModel works on parameters u in [0, 1]^4: omega = 1 - (1 - u)^2,
# theta_bar = 30 u, b = u and its c = u, which is (1 + c) / 2 of ours.
def to_xllim(Y):
    return np.column_stack([1 - np.sqrt(1 - Y[:, 0]), Y[:, 1] / 30, Y[:, 2],
                            (Y[:, 3] + 1) / 2])


def mean_from_xllim(m, v):
    """Posterior means of our parameters from means m and variances v of xllim's u (the
    means of the affine ones; E[omega] = 1 - (1 - m)^2 - v exactly)."""
    return np.column_stack([1 - (1 - m[:, 0]) ** 2 - v[:, 0], 30 * m[:, 1], m[:, 2],
                            2 * m[:, 3] - 1])


def fit_xllim(d, K, iters, seed):
    """xllim's model (its own initialisation: 10 GLLiM iterations, then ``iters``) and its
    time."""
    import xllim

    low = np.ascontiguousarray(to_xllim(d["Y"]).T)
    high = np.ascontiguousarray(d["X"].T)
    D, L = high.shape[0], low.shape[0]
    t = time.perf_counter()
    model = xllim.GLLiM(K, D, L, "full", "diag")
    # initialize(x, y, gllim_em_iterations, gllim_floor, kmeans_iterations,
    #            gmm_em_iterations, gmm_floor, n_experiences, seed, verbose)
    model.initialize(low, high, 10, 1e-6, 10, 10, 1e-6, 1, seed, 0)
    # train(x, y, max_iterations, ll_ratio (0: run them all), floor, verbose)
    model.train(low, high, iters, 0.0, 1e-6, 0)
    return model, time.perf_counter() - t


def run_xllim(path, K, iters, n_is, seed):
    import xllim
    from scipy.special import ndtr

    d = np.load(path)
    # xllim's letters are swapped: its x is the low-dimensional parameter, its y the
    # observations; arrays are (dimension, n_samples). It learns its HapkeModel's
    # parameters u (as its genData gives them), so that its importance sampling can run
    # that model on the posterior's draws; the results are mapped back exactly (means
    # by the moments of u, PITs through the increasing maps).
    truth_u = to_xllim(d["Yt"])
    model, learn = fit_xllim(d, K, iters, seed)
    params = model.getParams()
    np.savez(os.path.join(os.path.dirname(path), "xllim.npz"),
             **{name: np.asarray(getattr(params, name)) for name in XLLIM_PARAMS})
    obs = np.ascontiguousarray(d["Xt"].T)
    err = np.ascontiguousarray(np.sqrt(d["var_obs"]).T)
    t = time.perf_counter()
    res = model.inverseDensities(obs, err, 2, 1e-10, 0)
    inv = time.perf_counter() - t

    def physical_mean(gmm):
        w = np.asarray(gmm.weights)
        # xllim 2.0's layouts: weights (n, K), means (L, n, K), shared covariances
        # (L, L, K).
        means = np.transpose(np.asarray(gmm.means), (1, 2, 0))
        covs = np.transpose(np.asarray(gmm.covs), (2, 0, 1))
        m = np.asarray(gmm.mean).T
        second = np.einsum("nk,nk->n", w, means[..., 0] ** 2) + w @ covs[:, 0, 0]
        return mean_from_xllim(m, np.column_stack([second - m[:, 0] ** 2, np.zeros_like(
            m[:, 1:])])), w, means, covs

    mean, w, means, covs = physical_mean(res.fullGMM)
    pit = mixture_pit(w, means, covs, truth_u)
    out = {"learn_s": learn, "invert_s": inv, "rmse_mean": rmse(mean, d["Yt"]),
           "coverage": coverage_of(pit), "peak_mib": peak_mib(),
           "note": "xllim's uncertainty argument given as standard deviations"}
    if n_is:
        # xllim's own importance sampling of its full posterior mixture, with its
        # HapkeModel (the reflectances of ours: tests/test_physics.py) and the same
        # per-observation noise. Its prior is uniform on u, not on our parameters (for
        # omega, and b reaches 1 where ours stops at 0.95).
        F = xllim.HapkeModel(np.column_stack([INCIDENCE, EMERGENCE, AZIMUTH]), "2002",
                             "four", 30.0, 0.0, 0.0)
        sub = (np.ascontiguousarray(obs[:, :n_is]), np.ascontiguousarray(err[:, :n_is]))
        truth = d["Yt"][:n_is]
        gmm = model.inverseDensities(*sub, 2, 1e-10, 0).fullGMM
        out["rmse_mean_is_subset"] = rmse(physical_mean(gmm)[0], truth)
        for key, draws, batch, steps in (("is", 1000, 0, 0), ("imis", 500, 100, 5)):
            t = time.perf_counter()
            r = F.importanceSampling(gmm, *sub, draws, batch, steps, np.zeros(len(INCIDENCE)),
                                     -1, 0, seed)
            out[f"{key}_s"] = time.perf_counter() - t
            m = np.asarray(r.predictions).T
            v = np.asarray(r.predictions_variance).T
            out[f"rmse_{key}_mean"] = rmse(mean_from_xllim(m, v), truth)
            # Only the corrected mean and variance come back: Gaussian intervals (in u).
            with np.errstate(divide="ignore", invalid="ignore"):
                out[f"{key}_coverage"] = coverage_of(ndtr((truth_u[:n_is] - m) / np.sqrt(v)))
            out[f"{key}_ess_median"] = float(np.median(r.effective_sample_size))
        out["n_is"] = n_is
    return out


XLLIM_PARAMS = ("A", "B", "C", "Gamma", "Pi", "Sigma")


def run_ratio(path, K, rounds, learn_rounds=0, iters=50, gllim_iters=50,
              init="kmeans_joint", seed=0, candidates=None, tol=0.0, threads=(1,)):
    """gllim_sk's and xllim's inversions of the test set, alternated ``rounds`` times in
    one process (the models the other parts learnt), at each number of ``threads`` in
    turn (threadpoolctl's limit, for both: xllim's OpenMP threads, gllim_sk's rows in
    threads, see ``_engine.row_chunks``), then their learning alternated ``learn_rounds``
    times (the settings of the other parts), at each number of ``threads`` likewise
    (gllim_sk's EM splits the samples into chunks in threads, see
    ``_engine._em_parallelism``): each pair of timings is taken under the same load."""
    import xllim
    from threadpoolctl import threadpool_limits

    from gllim_sk.inversion import invert

    d = np.load(path)
    folder = os.path.dirname(path)
    with open(os.path.join(folder, "gllim.pkl"), "rb") as fh:
        ours = pickle.load(fh)
    saved = np.load(os.path.join(folder, "xllim.npz"))
    D, L = d["X"].shape[1], d["Y"].shape[1]
    theirs = xllim.GLLiM(K, D, L, "full", "diag")
    params = type(theirs.getParams())(K, D, L)
    for name in XLLIM_PARAMS:
        setattr(params, name, saved[name])
    theirs.setParams(params)
    obs = np.ascontiguousarray(d["Xt"].T)
    err = np.ascontiguousarray(np.sqrt(d["var_obs"]).T)
    times = {}

    def timed(key, func):
        t, cpu = time.perf_counter(), os.times()
        func()
        times.setdefault(key, []).append(time.perf_counter() - t)
        times.setdefault(f"system_{key}", []).append(os.times().system - cpu.system)

    calls = {
        "gllim": lambda: invert(ours, d["Xt"], feature_noise_var=d["var_obs"], n_modes=2),
        "gllim_summaries": lambda: invert(ours, d["Xt"], feature_noise_var=d["var_obs"],
                                          n_modes=2, keep_mixture=False),
        "xllim": lambda: theirs.inverseDensities(obs, err, 2, 1e-10, 0),
    }
    for key in ("gllim", "gllim_summaries"):
        calls[key]()  # untimed: the first call loads the compiled kernels
    for r in range(rounds):
        # The two gllim_sk calls take turns right after xllim's: the first large
        # allocation after it can cost kernel time (see the module's docstring).
        order = ["gllim", "gllim_summaries"][::1 if r % 2 == 0 else -1] + ["xllim"]
        for n_threads in threads:
            at = "" if n_threads == 1 else f"_{n_threads}threads"
            with threadpool_limits(limits=n_threads):
                for key in order:
                    timed(f"{key}{at}", calls[key])
    for _ in range(learn_rounds):
        for n_threads in threads:
            at = "" if n_threads == 1 else f"_{n_threads}threads"
            with threadpool_limits(limits=n_threads):
                times.setdefault(f"learn_xllim{at}", []).append(fit_xllim(d, K, iters, seed)[1])
                times.setdefault(f"learn_gllim{at}", []).append(
                    fit_gllim(d, K, gllim_iters, init, seed, candidates, tol)[1])
    return times


def run_sbi(path, budget, draws, seed):
    import warnings

    import torch
    from sbi.inference import NPE
    from sbi.utils import BoxUniform

    # sbi warns at every one-epoch call of the budgeted loop below.
    warnings.simplefilter("ignore", UserWarning)
    torch.manual_seed(seed)
    torch.set_num_threads(1)
    os.chdir(os.path.dirname(path))  # sbi writes its logs into the working directory
    d = np.load(path)
    F = hapke()
    prior = BoxUniform(low=torch.tensor(F.bounds[:, 0], dtype=torch.float32),
                       high=torch.tensor(F.bounds[:, 1], dtype=torch.float32))
    inference = NPE(prior=prior, show_progress_bars=False)
    inference.append_simulations(torch.tensor(d["Y"], dtype=torch.float32),
                                 torch.tensor(d["X"], dtype=torch.float32))
    t = time.perf_counter()
    epochs = 0
    estimator = None
    while time.perf_counter() - t < budget:
        estimator = inference.train(max_num_epochs=epochs + 1, resume_training=epochs > 0,
                                    show_train_summary=False)
        trained = len(inference.summary["training_loss"])
        if trained <= epochs:  # sbi's own early stopping ended the training
            break
        epochs = trained
    learn = time.perf_counter() - t
    posterior = inference.build_posterior(estimator)
    Xt = torch.tensor(d["Xt"], dtype=torch.float32)
    t = time.perf_counter()
    # With a short budget the flow leaks mass outside the prior box, and rejection
    # sampling then stalls: draw without rejection and clip to the bounds.
    # (in blocks of observations, to bound the sampler's memory).
    with torch.no_grad():  # no autograd graph kept for millions of draws
        parts = [posterior.sample_batched((draws,), x=Xt[a:a + 500], show_progress_bars=False,
                                          reject_outside_prior=False).detach()
                 for a in range(0, Xt.shape[0], 500)]
    samples = torch.clamp(torch.cat(parts, dim=1), prior.base_dist.low, prior.base_dist.high)
    inv = time.perf_counter() - t
    s = samples.numpy()  # (draws, n, L)
    mean = s.mean(axis=0)
    pit = (s <= d["Yt"][None]).mean(axis=0)
    return {"learn_s": learn, "invert_s": inv, "epochs": epochs, "rmse_mean": rmse(mean, d["Yt"]),
            "coverage": coverage_of(pit), "peak_mib": peak_mib()}


def run_dask(n, K, iters, chunk, seed):
    from dask.distributed import Client, LocalCluster

    from gllim_sk import GLLiMRegressor
    from gllim_sk.physics import simulate

    with LocalCluster(n_workers=2, threads_per_worker=1, memory_limit="4GiB",
                      dashboard_address=None) as cluster, Client(cluster) as client:
        F = hapke()
        Y, X = simulate(F, n, method="sobol", noise_std=TRAIN_NOISE, relative_noise=True,
                        chunks=chunk, random_state=seed)
        t = time.perf_counter()
        Y, X = Y.persist(), X.persist()
        X.sum().compute()
        sim = time.perf_counter() - t
        # The initialisation and first iteration, then ``iters`` more iterations from
        # there (a warm start): the time per EM iteration without the initialisation.
        model = GLLiMRegressor(n_components=K, covariance_type="diag", max_iter=1,
                               tol=0.0, random_state=seed)
        t = time.perf_counter()
        model.fit(X, Y)
        first = time.perf_counter() - t
        model.set_params(max_iter=iters, warm_start=True)
        t = time.perf_counter()
        model.fit(X, Y)
        more = time.perf_counter() - t
        worker_mem = sorted(v / 2**20 for v in client.run(
            lambda: __import__("psutil").Process().memory_info().rss).values())
    return {"n": n, "fit_s": first + more, "init_s": first, "n_iter": 1 + model.n_iter_,
            "per_iter_s": more / model.n_iter_, "simulate_s": sim,
            "client_peak_mib": peak_mib(), "worker_mib": worker_mem}


def _child(queue, func, args):
    try:
        queue.put(("ok", func(*args)))
    except Exception as exc:  # reported by the parent, which carries on
        queue.put(("error", f"{type(exc).__name__}: {exc}"))


def in_child(func, *args):
    import queue as queue_module

    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(queue, func, args))
    proc.start()
    while True:
        try:
            status, value = queue.get(timeout=5)
            break
        except queue_module.Empty:
            if not proc.is_alive():  # killed (out of memory...) without a word
                return {"error": f"the child process died (exit code {proc.exitcode})"}
    proc.join()
    if status != "ok":
        return {"error": value}
    return value


def available(module):
    import importlib.util

    return importlib.util.find_spec(module) is not None


def kernels_in_use():
    """Which code runs gllim_sk's per-observation algebra (see gllim_sk._compiled)."""
    from gllim_sk import _compiled

    if _compiled._kernels() is None:
        return "numpy (numba not installed, or GLLIM_SK_NUMBA=0)"
    import numba

    return f"compiled (numba {numba.__version__})"


def show(name, r):
    if "error" in r:
        print(f"{name:7s} error: {r['error']}")
        return
    names = ("omega", "theta_bar", "b", "c")

    def fmt(v):
        return " ".join(f"{n}={x:.4f}" for n, x in zip(names, v, strict=True))

    print(f"{name:7s} learn {r['learn_s']:8.2f} s   invert {r['invert_s']:8.3f} s   peak "
          f"{r['peak_mib']:7.0f} MiB")
    if "invert_summaries_s" in r:
        print(f"        invert without keeping the mixture (keep_mixture=False): "
              f"{r['invert_summaries_s']:.3f} s")
        print(f"        first call in the process: {r['invert_first_s']:.3f} s; kernels: "
              f"{r['kernels']}")
    print(f"        RMSE of the posterior mean: {fmt(r['rmse_mean'])}")
    print("        coverage 50/90/95%: " + "; ".join(
        f"{n} " + "/".join(f"{c[j]:.3f}" for c in r["coverage"]) for j, n in enumerate(names)))
    if "rmse_is_mean" in r:
        ess = r.get("ess_median", r.get("is_ess_median"))
        print(f"        IS ({r['n_is']} obs, 1000 draws, {r['is_s']:.1f} s, median ESS "
              f"{ess:.1f}): RMSE GLLiM mean {fmt(r['rmse_mean_is_subset'])}")
        print(f"            IS mean {fmt(r['rmse_is_mean'])}")
        print("            IS coverage 50/90/95%: " + "; ".join(
            f"{n} " + "/".join(f"{c[j]:.3f}" for c in r["is_coverage"])
            for j, n in enumerate(names)))
        print(f"        IMIS (500 + 5 x 100 draws, {r['imis_s']:.1f} s, median ESS "
              f"{r['imis_ess_median']:.1f}): mean {fmt(r['rmse_imis_mean'])}")
        print("            IMIS coverage 50/90/95%: " + "; ".join(
            f"{n} " + "/".join(f"{c[j]:.3f}" for c in r["imis_coverage"])
            for j, n in enumerate(names)))
    if "epochs" in r:
        print(f"        ({r['epochs']} epochs in the budget)")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n-train", type=int, default=100_000)
    p.add_argument("--n-test", type=int, default=10_000)
    p.add_argument("--K", type=int, default=50)
    p.add_argument("--iters", type=int, default=50, help="EM iterations of xllim (and of "
                   "gllim_sk unless --gllim-iters)")
    p.add_argument("--gllim-iters", type=int, default=None)
    p.add_argument("--gllim-init", default="kmeans_joint",
                   help="init_params of GLLiMRegressor (kmeans_joint: k-means on [y, X])")
    p.add_argument("--gllim-candidates", type=int, default=None,
                   help="init_candidates of GLLiMRegressor (default: the estimator's)")
    p.add_argument("--gllim-tol", type=float, default=0.0,
                   help="tol of GLLiMRegressor (0: exactly --gllim-iters iterations)")
    p.add_argument("--n-is", type=int, default=1000)
    p.add_argument("--sbi-budget", type=float, default=None)
    p.add_argument("--sbi-draws", type=int, default=500)
    p.add_argument("--dask-n", type=int, default=4_000_000)
    p.add_argument("--dask-iters", type=int, default=5)
    p.add_argument("--dask-chunk", type=int, default=250_000)
    p.add_argument("--ratio-rounds", type=int, default=3,
                   help="rounds of the interleaved inversion timing (part 'ratio', after "
                   "gllim and xllim)")
    p.add_argument("--ratio-threads", default="1",
                   help="thread counts of the interleaved inversions and learnings "
                   "(part 'ratio'), e.g. 1,2: each round times both tools at each count")
    p.add_argument("--ratio-learn-rounds", type=int, default=0,
                   help="rounds of interleaved learning (part 'ratio'): both models "
                   "learnt again, alternately, with the settings of gllim and xllim")
    p.add_argument("--parts", default="gllim,xllim,ratio,sbi,dask")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, help="also write the results to this file")
    args = p.parse_args(argv)
    parts = set(args.parts.split(","))
    results = {"args": vars(args)}
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "data.npz")
        t = time.perf_counter()
        make_data(path, args.n_train, args.n_test, args.seed)
        print(f"Hapke, 4 parameters, 10 geometries: {args.n_train} Sobol simulations "
              f"(1% noise), {args.n_test} test observations (1-4% noise), K = {args.K}, "
              f"{args.iters} EM iterations; data made in {time.perf_counter() - t:.1f} s")
        if "gllim" in parts:
            results["gllim"] = in_child(run_gllim, path, args.K,
                                        args.gllim_iters or args.iters, args.n_is, args.seed,
                                        args.gllim_init, args.gllim_candidates,
                                        args.gllim_tol)
            show("gllim", results["gllim"])
        if "xllim" in parts:
            if available("xllim"):
                results["xllim"] = in_child(run_xllim, path, args.K, args.iters, args.n_is,
                                            args.seed)
                show("xllim", results["xllim"])
                g, x = results.get("gllim", {}), results["xllim"]
                if "learn_s" in g and "learn_s" in x:
                    print(f"        speed-ups: learn x{x['learn_s'] / g['learn_s']:.1f}, "
                          f"invert x{x['invert_s'] / g['invert_s']:.1f} (mixture kept), "
                          f"x{x['invert_s'] / g['invert_summaries_s']:.1f} (summaries)")
            else:
                print("xllim   skipped: not installed (pip install xllim)")
        if "ratio" in parts and "learn_s" in results.get("gllim", {}) \
                and "learn_s" in results.get("xllim", {}):
            r = in_child(run_ratio, path, args.K, args.ratio_rounds, args.ratio_learn_rounds,
                         args.iters, args.gllim_iters or args.iters, args.gllim_init,
                         args.seed, args.gllim_candidates, args.gllim_tol,
                         [int(t) for t in args.ratio_threads.split(",")])
            results["ratio"] = r
            if "error" in r:
                print(f"ratio   error: {r['error']}")
            else:
                print("ratio   the calls alternated in one process (s): "
                      + "; ".join(f"{k} " + "/".join(f"{v:.3f}" for v in r[k]) for k in r))
                r = {k: v for k, v in r.items() if not k.startswith("system_")}
                pairs = [(k.replace("gllim_summaries", "xllim").replace("gllim", "xllim"),
                          k) for k in r if "gllim" in k]
                for x, k in pairs:
                    ratios = np.array(r[x]) / np.array(r[k])
                    print(f"        {x} / {k}: median x{np.median(ratios):.1f} "
                          f"(rounds: {', '.join(f'{q:.1f}' for q in ratios)})")
                # Each tool at its fastest thread count in the round ("on one machine").
                for kind in ("", "learn_"):
                    xllim_keys = [k for k in r if k.startswith(f"{kind}xllim")]
                    if len(xllim_keys) < 2:
                        continue
                    best = np.min([r[k] for k in xllim_keys], axis=0)
                    for k in (k for k in r if k.startswith(f"{kind}gllim")):
                        ratios = best / np.array(r[k])
                        print(f"        xllim's fastest thread count / {k}: median "
                              f"x{np.median(ratios):.1f} (rounds: "
                              f"{', '.join(f'{q:.1f}' for q in ratios)})")
        if "sbi" in parts:
            if available("sbi"):
                budget = args.sbi_budget or max(
                    [results.get(k, {}).get("learn_s", 0.0) for k in ("gllim", "xllim")]
                    + [30.0])
                print(f"sbi     NPE budget {budget:.1f} s")
                results["sbi"] = in_child(run_sbi, path, budget, args.sbi_draws, args.seed)
                show("sbi", results["sbi"])
            else:
                print("sbi     skipped: not installed (pip install sbi)")
    if "dask" in parts:
        r = in_child(run_dask, args.dask_n, args.K, args.dask_iters, args.dask_chunk,
                     args.seed)
        results["dask"] = r
        if "error" in r:
            print(f"dask    error: {r['error']}")
        else:
            print(f"dask    {r['n']} simulations on a 2-worker LocalCluster: made in "
                  f"{r['simulate_s']:.1f} s; fit {r['fit_s']:.1f} s for {r['n_iter']} EM "
                  f"iterations: initialisation and first iteration {r['init_s']:.1f} s, "
                  f"then {r['per_iter_s']:.1f} s per iteration; client peak "
                  f"{r['client_peak_mib']:.0f} MiB; workers "
                  f"{', '.join(f'{m:.0f}' for m in r['worker_mib'])} MiB RSS at the end")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=1)
    return results


if __name__ == "__main__":
    sys.exit(main() and 0)
