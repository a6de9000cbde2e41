"""The initialisation of GLLiM's EM, once for every fitting path.

The in-memory fit, the dask fit, :meth:`~gllim_sk.GLLiMRegressor.partial_fit`'s first
call and the deep GLLiM layer's initial mixture all start here, with the constants below:

* a *starting partition* of the samples: k-means on the targets refined by a Gaussian
  mixture of the targets (the paper's initialisation), k-means on the standardised joint
  ``[y, x]``, random or given responsibilities;
* the *selection* among several starting partitions (see :func:`candidate_kind`, each
  with its own k-means seeding): EM runs from each on a random subset of the samples until
  it converges, and the run whose conditional mean E[y | x] best predicts the targets
  of other samples continues on all of them. A single k-means partition of ``y`` lands
  in a poor local optimum whenever components overlap in ``y``; the best of several
  finds the optimum far more often. Three measurements (issue 19) shaped the rules:

  - *runs to convergence, not short runs*: from a partition of y, EM on badly separated
    components is slow, and after 10 iterations it is still far below the runs that are
    stuck in a poor optimum but got there fast (K = 20, badly separated, seeds 2 and 3:
    the best after 10 iterations ended at 3.7x and 3.1x the oracle's error, where 4
    and 1 of the partitions of y, continued, reached it). Convergence here means that
    of the prediction, which the choice uses: a run whose score has settled stops even
    while its likelihood still creeps (see ``CANDIDATE_CHECK_EVERY``);
  - *prediction, not likelihood*: on real features (the Table 1 p-HOG, D = 1,888),
    partitions that follow clusters of the features (people, lighting) reached a
    higher likelihood of (x, y) than partitions of the angles, and predicted them much
    worse (6.8-7.4 degrees against 5.3-5.8, seeds 0 and 1);
  - *partitions of y and of [y, x]*: the joint partitions are those clusters of the
    features on real data, where prediction leaves them out; on known models each kind
    reaches the optimum where the other fails (see :func:`candidate_kind`);
  - *subsets large enough for a component's covariance*: with latent factors or full
    noise covariances, runs on subsets of fewer than D samples per component end far
    from where the same start ends on all samples (p-HOG, see
    :func:`candidate_min_rows`); there are fewer starts, or only the single start.

  The runs stop once three of them end at the same best score, which makes easy
  problems cheap; of runs at the same score, the one of higher likelihood continues.

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
from ._compat import array_device, array_namespace, to_numpy

# EM iterations of the Gaussian mixture on y that refines k-means: the GLLiM EM that
# follows refines the responsibilities anyway.
GMM_INIT_MAX_ITER = 20
GMM_INIT_TOL = 1e-3
# Smallest relative variance floor of that mixture (whatever reg_covar, even 0): a
# k-means cluster of identical targets must not make it singular.
GMM_INIT_MIN_REG = 1e-6
# At most this many EM iterations (the fit's tol stops them earlier) of each run from a
# starting partition on a subset of the samples (init_candidates of them).
CANDIDATE_MAX_ITER = 100
# The runs use a random subset of the samples: 1/init_candidates of them (so that all
# runs together see about as many samples as one run on all samples), but at least this
# many per component (more than D with a D x D covariance per component, see
# candidate_min_rows; fewer runs when the samples are too few) and at most
# CANDIDATE_MAX_ROWS. As many other samples score them.
CANDIDATE_MIN_ROWS_PER_COMPONENT = 100
CANDIDATE_MAX_ROWS = 100_000
# The runs stop early once this many have ended at the best score, within
# CANDIDATE_SAME_SCORE (a sum of R^2; in bench_init, runs from different starts that
# ended at the same optimum agreed to 1e-4 or better).
CANDIDATE_STOP_HITS = 3
CANDIDATE_SAME_SCORE = 1e-4
# A run is scored every this many iterations while its likelihood creeps (gains less
# than CANDIDATE_CREEP per sample and iteration), and stops once its score has moved by
# at most CANDIDATE_SAME_SCORE since the last check: its prediction has settled, though
# the likelihood may still creep towards the fit's tol (a latent factor or a small
# component adjusting), which would cost many iterations per start. Runs that still
# gain more are not scored, since a check costs about an E-step.
CANDIDATE_CHECK_EVERY = 5
CANDIDATE_CREEP = 1e-2
# The score's forward mixture runs on this many rows at a time: its (K, rows) and
# (L, K, rows) work arrays then stay in the cache instead of being allocated afresh for
# every check.
SCORE_CHUNK_ROWS = 1000
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
def candidate_min_rows(n_features, covariance_type, n_latent):
    """The fewest samples per component a run on a subset gets:
    ``CANDIDATE_MIN_ROWS_PER_COMPONENT``, and more than ``n_features`` where each
    component has a D x D covariance of its own to estimate (``covariance_type="full"``
    or latent factors, found by a PCA of its residuals): below D samples that covariance
    is singular, and the subset's run ends far from where the same start ends on all
    samples. On the p-HOG features of 6,400 synthetic heads (D = 1,888, K = 20,
    ``n_latent=4``: 107 samples per component on each of 3 subsets) the best of the
    runs, continued on all samples, ended at 5.43 +- 0.05 degrees (seeds 0-4) where the
    single start ended at 5.23 +- 0.02; with this floor there is one start there."""
    if covariance_type == "full" or n_latent > 0:
        return max(CANDIDATE_MIN_ROWS_PER_COMPONENT, n_features + 1)
    return CANDIDATE_MIN_ROWS_PER_COMPONENT


def candidate_count(requested, n_samples, n_components,
                    min_rows=CANDIDATE_MIN_ROWS_PER_COMPONENT):
    """How many starts to try: ``requested``, or fewer when the samples do not give each
    short run ``min_rows`` per component (:func:`candidate_min_rows`; so that all short
    runs together still see about as many samples as one run on all of them); 1 when
    they are not enough for two."""
    floor = min_rows * n_components
    if requested * floor <= n_samples:
        return requested
    return max(1, min(requested, n_samples // floor))


def candidate_rows(n_samples, n_candidates, n_components, random_state,
                   min_rows=CANDIDATE_MIN_ROWS_PER_COMPONENT):
    """Sorted indices of the samples the short runs use, and of as many other samples
    (fewer when fewer are left) that score them; ``n_candidates`` from
    :func:`candidate_count` with the same ``min_rows``, at least 2."""
    n_rows = max(-(-n_samples // n_candidates), min_rows * n_components)
    n_rows = min(n_rows, CANDIDATE_MAX_ROWS)
    order = random_state.permutation(n_samples)
    return np.sort(order[:n_rows]), np.sort(order[n_rows:2 * n_rows])


def target_variances(executor, blocks):
    """The variance of each target over the samples of ``blocks`` (L,)."""
    def block_sums(block):
        xp = array_namespace(block.y)
        y = xp.astype(block.y, xp.float64)
        sums = [xp.sum(y, axis=0), xp.sum(y**2, axis=0)]
        return None, np.stack([np.asarray(to_numpy(part), dtype=np.float64) for part in sums])

    _, (total, squares) = executor.map_reduce(block_sums, blocks)
    n = sum(executor.sizes(blocks))
    return np.maximum(squares / n - (total / n) ** 2, 0.0)


def prediction_score(model, executor, blocks, params, target_var):
    """How well the parameters ``params`` predict the targets of ``blocks``, at most L:

    ``L - mean_n sum_l rho(e_nl^2 / target_var_l)`` with ``rho(u) = u / (1 + u)``, where
    ``e`` is the error of E[y | x] (the mean of the forward mixture). Where the errors
    are small against the targets' spread this is the sum over targets of R^2; rho
    bounds what one sample can weigh, so that a few outlying samples (corrupted
    features, which the Student model exists for) cannot decide the choice.

    This, not the likelihood, chooses among the runs: the joint likelihood of (x, y) is
    dominated by the D features, and on real features (HOG, CNN activations) a
    partition that clusters the features (people, lighting) can reach a higher
    likelihood than one that follows the targets while predicting them much worse.
    """
    fwd = model.forward(params)
    # The Student model's gating weights are those of t densities.
    student_terms = getattr(model, "student_forward_terms", None)
    # A constant target is predicted perfectly by every start.
    inv_var = np.where(target_var > 0, 1.0 / np.where(target_var > 0, target_var, 1.0), 0.0)

    def chunk_sum(block):
        xp = array_namespace(block.Xc)
        if student_terms is not None:
            log_nu, means, _ = student_terms(block.Xc, fwd, params.alpha)
        else:
            log_nu, means = model.forward_mixture(block.Xc, fwd)
        y = xp.astype(block.y, xp.float64)
        error = y - xp.sum(xp.exp(log_nu)[:, :, None] * xp.astype(means, xp.float64), axis=1)
        u = error**2 * xp.asarray(inv_var, dtype=xp.float64, device=array_device(y))
        return np.asarray(to_numpy(xp.sum(u / (1.0 + u))), dtype=np.float64)

    def block_sum(block):
        n = block.n_samples
        return None, sum(chunk_sum(block.rows(start, min(start + SCORE_CHUNK_ROWS, n)))
                         for start in range(0, n, SCORE_CHUNK_ROWS))

    _, loss = executor.map_reduce(block_sum, blocks)
    n = sum(executor.sizes(blocks))
    if not np.isfinite(loss):
        return -np.inf
    return float(len(target_var) - loss / n)


def candidate_kind(init_params, i):
    """The ``init_params`` of the i-th starting partition: with "kmeans", partitions of y
    (the paper's, even ``i``) alternate with partitions of the joint ``[y, x]`` (odd
    ``i``). Their local optima differ: a partition of y reaches the optimum more often
    when components overlap in y, a joint one when a component is small or many lie
    along one target (bench_init: 10 of 10 seeds against 8 of 10 from partitions of y
    only with a component of 2 % weight; 10 against 0 with K = 20 and L = 1)."""
    if init_params == "kmeans" and i % 2:
        return "kmeans_joint"
    return init_params


class _SettledScore:
    """Whether a run's prediction has settled; called as ``(bounds, params)`` after each
    iteration (``bounds``: one per iteration so far). Every ``CANDIDATE_CHECK_EVERY``
    iterations, when the likelihood changed by less than ``CANDIDATE_CREEP`` in the last
    one, it scores ``params`` and says yes when that score is within
    ``CANDIDATE_SAME_SCORE`` of the previous check's. Keeps the last score and the
    parameters it rated, so that a run stopped here is not scored twice."""

    def __init__(self, score):
        self.score, self.value, self.params = score, None, None

    def __call__(self, bounds, params):
        creeping = abs(bounds[-1] - bounds[-2]) < CANDIDATE_CREEP
        if len(bounds) % CANDIDATE_CHECK_EVERY or not creeping:
            return False
        previous, self.value, self.params = self.value, self.score(params), params
        return previous is not None and abs(self.value - previous) <= CANDIDATE_SAME_SCORE

    def of(self, params):
        """The score of ``params`` (the last check's when it rated those very ones)."""
        return self.value if params is self.params else self.score(params)


def best_start(make_start, run, score, n_candidates):
    """The start that continues: the best of up to ``n_candidates`` EM runs.

    ``make_start(i)`` makes the i-th starting point (drawing from the fit's random state);
    ``run(start, settled)`` runs EM from it (at most ``CANDIDATE_MAX_ITER`` iterations),
    stopping early once ``settled(bounds, params)`` (see ``CANDIDATE_CHECK_EVERY``) says
    so after an iteration, and returns ``(bounds, params, n_iter, converged)``;
    ``score(params)`` rates the parameters (:func:`prediction_score`). Returns the run of
    highest score, with its score; a run of non-finite likelihood or score only when every
    run is; of runs at the same score (within ``CANDIDATE_SAME_SCORE``), the one of
    highest likelihood. Stops early once ``CANDIDATE_STOP_HITS`` runs have ended at the
    best score: the same optimum found again and again is, most likely, the best that
    further starts would find.
    """
    best, best_score, hits = None, -np.inf, 0
    for i in range(n_candidates):
        settled = _SettledScore(score)
        result = run(make_start(i), settled)
        value = settled.of(result[1]) if np.isfinite(result[0][-1]) else -np.inf
        if best is not None and abs(value - best_score) <= CANDIDATE_SAME_SCORE:
            hits += 1
            # Of runs that predict as well, the one of higher likelihood (on the same
            # subset) continues: the other is still creeping towards it, which would cost
            # iterations on all samples.
            if result[0][-1] > best[0][-1]:
                best = result
        elif best is None or value > best_score:
            best, best_score, hits = result, value, 1
        if hits >= CANDIDATE_STOP_HITS:
            break
    return best, best_score
