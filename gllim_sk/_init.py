"""The initialisation of GLLiM's EM, once for every fitting path.

The in-memory fit, the dask fit, :meth:`~gllim_sk.GLLiMRegressor.partial_fit`'s first
call and the deep GLLiM layer's initial mixture all start here, with the constants below:

* a *starting partition* of the samples: k-means on the targets refined by a Gaussian
  mixture of the targets (the paper's initialisation), k-means on the standardised joint
  ``[y, x]``, random or given responsibilities;
* the *selection* among several starting partitions: each is refined by a few EM
  iterations (``CANDIDATE_MAX_ITER``) and the one of highest likelihood continues to
  convergence. A single k-means partition of ``y`` lands in a poor local optimum whenever
  two components overlap in ``y`` but not in ``x``; a few short runs from different
  partitions find the basin of the optimum far more often than one, for a fraction of
  the cost of as many full fits (``n_init``).

This module knows nothing of threads or clusters: the executors of
:mod:`gllim_sk._engine` run the steps, and :mod:`gllim_sk._dask` makes the same partitions
block by block.
"""

import warnings

import numpy as np
from sklearn.cluster import KMeans
from sklearn.exceptions import ConvergenceWarning

from . import _engine
from . import _gllim_math as gm
from ._compat import array_namespace

# EM iterations of the Gaussian mixture on y that refines k-means: the GLLiM EM that
# follows refines the responsibilities anyway.
GMM_INIT_MAX_ITER = 20
GMM_INIT_TOL = 1e-3
# Smallest relative variance floor of that mixture (whatever reg_covar, even 0): a
# k-means cluster of identical targets must not make it singular.
GMM_INIT_MIN_REG = 1e-6
# EM iterations of each short run from a starting partition (``init_candidates`` of
# them) before the best, by likelihood, continues on all samples.
CANDIDATE_MAX_ITER = 10
# The short runs use a random subset of the samples: 1/init_candidates of them (so that
# all short runs together cost about one run on all samples), but at least this many per
# component and at most CANDIDATE_MAX_ROWS.
CANDIDATE_MIN_ROWS_PER_COMPONENT = 100
CANDIDATE_MAX_ROWS = 100_000
# The joint partition clusters [y, x] standardised, with x's D columns replaced, when
# D is larger, by this many random directions (scaled to keep the distances): the
# clusters barely change, k-means is cheap at any D, and a dask fit gathers no features.
JOINT_PROJECTION_DIM = 16
# k-means of a dask fit: on all target rows up to this many, above that on a uniform
# random sample of this many rows (the labels of all rows then come from the centres).
KMEANS_MAX_SAMPLES = 100_000


# ---------------------------------------------------------------------------- scales
def variance_scale(values):
    """Mean column variance of ``values``, the unit of the relative ``reg_covar`` (1 when
    every column is constant)."""
    xp = array_namespace(values)
    scale = float(xp.mean(xp.var(values, axis=0))) if values.shape[0] * values.shape[1] else 0.0
    return _unit_scale(scale)


def scale_of_variances(variances):
    """:func:`variance_scale` from the column variances (numpy)."""
    return _unit_scale(float(np.mean(variances)) if variances.size else 0.0)


def _unit_scale(scale):
    return scale if np.isfinite(scale) and scale > 0 else 1.0


def target_mixture_reg(reg_covar, y_scale):
    """The absolute variance floor of the Gaussian mixture of y."""
    return max(reg_covar, GMM_INIT_MIN_REG) * y_scale


# ---------------------------------------------------------------------------- partitions
def kmeans_responsibilities(points, n_clusters, random_state):
    """One-hot (n_clusters, n) responsibilities from one k-means run on ``points``."""
    labels = fitted_kmeans(points, n_clusters, random_state).labels_
    resp = np.zeros((n_clusters, len(points)))
    resp[labels, np.arange(len(points))] = 1.0
    return resp


def fitted_kmeans(points, n_clusters, random_state):
    """One k-means run (k-means++ seeding) on ``points``."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return KMeans(n_clusters=n_clusters, n_init=1, random_state=random_state).fit(points)


def standardised(points):
    """``points`` divided by their columns' standard deviations (constant columns kept)."""
    scale = points.std(axis=0)
    return points / np.where(scale > 0, scale, 1.0)


def joint_projection(n_features, random_state):
    """Random orthonormal directions (D, q) scaled by sqrt(D / q), or ``None`` when
    ``n_features <= JOINT_PROJECTION_DIM``."""
    if n_features <= JOINT_PROJECTION_DIM:
        return None
    q = JOINT_PROJECTION_DIM
    directions = np.linalg.qr(random_state.standard_normal((n_features, q)))[0]
    return directions * np.sqrt(n_features / q)


def joint_points(points, n_targets, projection):
    """Standardised joint points ``[y, x]`` with x projected on ``projection``."""
    if projection is None:
        return points
    return np.hstack([points[:, :n_targets], points[:, n_targets:] @ projection])


def refine_by_target_mixture(y, resp, target_covariance_type, reg_covar,
                             max_iter=GMM_INIT_MAX_ITER, tol=GMM_INIT_TOL):
    """EM on a Gaussian mixture of the targets alone, from responsibilities ``resp`` (K, n).

    The mixture of y is GLLiM without features, so the same model and engine run it.
    Stops when the mean log-likelihood gains less than ``tol``; returns the last E-step's
    (K, n) responsibilities. ``reg_covar`` is absolute (see :func:`target_mixture_reg`).
    """
    model = gm.GLLiMModel("diag", target_covariance_type, reg_covar)
    executor = _engine.SerialExecutor()
    blocks = executor.blocks(model, np.empty((y.shape[0], 0)), y - y.mean(axis=0))
    esteps = _engine.responsibilities_as_esteps(executor, blocks, resp)
    return refine_target_mixture_esteps(model, executor, blocks, esteps, resp.shape[0],
                                        max_iter, tol)[0].resp


def refine_target_mixture_esteps(model, executor, blocks, esteps, n_components,
                                 max_iter=GMM_INIT_MAX_ITER, tol=GMM_INIT_TOL):
    """:func:`refine_by_target_mixture` on any executor's blocks of targets alone, from
    per-block E-steps; returns the last E-step's per-block E-steps."""
    latent_cov = np.zeros((n_components, 0, 0))
    stats = _engine.stats_of(model, executor, blocks, esteps, latent_cov)
    previous = -np.inf
    for _ in range(max_iter):
        params = _engine.m_step(model, executor, blocks, esteps, stats, latent_cov)
        esteps, stats, current, latent_cov = _engine.e_step(model, executor, blocks, params)
        if abs(current - previous) < tol:
            break
        previous = current
    return esteps


def target_mixture_resp(y, n_components, target_covariance_type, reg_covar, random_state):
    """The paper's starting partition: k-means on the targets ``y`` (n, L), refined by a
    Gaussian mixture of y with covariances of type ``target_covariance_type``; (K, n).
    ``reg_covar`` is relative to the targets' variance, as the estimator's."""
    y = np.asarray(y, dtype=np.float64)
    if n_components == 1:
        return np.ones((1, len(y)))
    resp = kmeans_responsibilities(y, n_components, random_state)
    return refine_by_target_mixture(y, resp, target_covariance_type,
                                    target_mixture_reg(reg_covar, variance_scale(y)))


def initial_resp(init_params, Xc, y, n_components, target_covariance_type, reg_covar,
                 random_state):
    """A starting partition (K, n) of the samples, as numpy, for ``init_params``:
    "kmeans" (:func:`target_mixture_resp`), "kmeans_joint" (k-means on the standardised
    ``[y, Xc]``, see ``JOINT_PROJECTION_DIM``) or "random"."""
    n = Xc.shape[0]
    if n_components == 1:
        return np.ones((1, n))
    if init_params == "random":
        resp = random_state.uniform(size=(n_components, n))
        return resp / resp.sum(axis=0)
    if init_params == "kmeans":
        return target_mixture_resp(y, n_components, target_covariance_type, reg_covar,
                                   random_state)
    projection = joint_projection(Xc.shape[1], random_state)
    points = np.hstack([np.asarray(y, dtype=np.float64), np.asarray(Xc, dtype=np.float64)])
    points = joint_points(standardised(points), y.shape[1], projection)
    return kmeans_responsibilities(points, n_components, random_state)


# ---------------------------------------------------------------------------- selection
def candidate_kinds(init_params, n_candidates):
    """The ``init_params`` of each starting partition: with "kmeans", partitions of y
    (the paper's) alternate with partitions of the joint ``[y, x]``, whose local optima
    differ: components that overlap in y are told apart by x, and the other way round."""
    if init_params != "kmeans":
        return [init_params] * n_candidates
    return [("kmeans", "kmeans_joint")[i % 2] for i in range(n_candidates)]


def candidate_rows(n_samples, n_candidates, n_components, random_state):
    """Sorted indices of the samples the short runs use, or ``None`` for all of them."""
    n_rows = max(-(-n_samples // n_candidates), CANDIDATE_MIN_ROWS_PER_COMPONENT * n_components)
    n_rows = min(n_rows, CANDIDATE_MAX_ROWS)
    if n_rows >= n_samples:
        return None
    return np.sort(random_state.choice(n_samples, n_rows, replace=False))


def best_start(make_start, run_short, n_candidates):
    """The start that continues: the best of ``n_candidates`` short EM runs.

    ``make_start(i)`` makes the i-th starting point (drawing from the fit's random state);
    ``run_short(start)`` runs at most ``CANDIDATE_MAX_ITER`` EM iterations from it and
    returns ``(bounds, params, n_iter, converged)``. The run of highest final
    log-likelihood is returned; a non-finite one only when every run is.
    """
    best = None
    for i in range(n_candidates):
        run = run_short(make_start(i))
        bound = run[0][-1]
        if best is None or (np.isfinite(bound) and not bound <= best[0][-1]):
            best = run
    return best
