"""Posterior analysis of inverse problems with a fitted GLLiM.

GLLiM's forward mixture ``p(y | x) = sum_k nu_k(x) N(y; m_k(x), Sigma*_k)`` is a full
posterior approximation, not just a point prediction. This module turns it into what
people who invert physical models ask for:

- :func:`merge_mixture`: each sample's K-component mixture reduced to at most M
  components by moment-preserving greedy merging with Runnalls' bound on the
  Kullback-Leibler divergence: the posterior *modes* of an ambiguous inverse problem.
  Fitted estimators expose it as ``predict_modes``.
- :func:`importance_sampling`: with the user's forward model ``F`` and noise model,
  GLLiM's predictive mixture becomes the proposal of an importance sampler (optionally
  incremental, IMIS) whose weighted samples target the exact posterior
  ``p(y | x) ∝ p(x | y) p(y)``.

The mixtures here may have Gaussian or Student-t components: ``dof`` is ``None`` for
Gaussian ones, otherwise the components' degrees of freedom, and ``scales`` are then
the t scale matrices (covariance = scale * dof / (dof - 2)). The densities and draws of
such mixtures (:func:`mixture_log_density`, :func:`sample_mixture`,
:func:`sample_mixture_rows`) are importable from here as well.
"""

import warnings
from dataclasses import dataclass

import numpy as np
from sklearn.utils import check_random_state

from . import _dask
from ._compat import to_numpy
from ._compiled import kernel as compiled_kernel
from ._mixtures import (  # noqa: F401  (the densities and draws are documented here)
    LOG_2PI,
    PredictiveMixture,
    check_noise_matrix,
    check_noise_variances,
    gaussian_or_t_log_density,
    mahalanobis_logdet,
    mixture_log_density,
    row_uniforms,
    sample_mixture,
    sample_mixture_rows,
    stream_key,
    t_covariance_factor,
)
from ._small_spd import factor_entries, logdet_entries, spd_logdet

__all__ = ["ImportanceSamplingResult", "importance_sampling", "merge_mixture"]

# Rows of the merge are processed in blocks of this many pairs of components: each entry
# of their merged covariances is one array of that size, which stays in cache.
_MERGE_BLOCK_ELEMENTS = 32768
# Forward-model evaluations per call, in rows times features.
_FORWARD_BLOCK_ELEMENTS = 5_000_000
# Singular covariances (point masses) get this multiple of their mixture's scale on the
# diagonal in the merging costs only, which keeps Runnalls' bound finite; the merged
# moments stay exact.
_MERGE_COST_JITTER = 1e-9


# --------------------------------------------------------------------- merging
# The merge holds each component's weight, its mean's entries (L, ...) and the lower
# entries of its covariance (E = L (L + 1) / 2, ...) first, the rows and components
# after, so that one operation of long runs merges many pairs of many rows and the
# log-determinants are taken entry by entry (:func:`factor_entries`).
def _packed_logdet(Q, lower, jitter=None):
    """log|P| (...) of covariances given by their lower entries ``Q`` (E, ...);
    ``jitter`` (broadcast against ``Q[0]``), if given, added to their diagonal."""
    li, lj = lower
    L = int(li[-1]) + 1
    if jitter is not None:
        Q = Q + (li == lj).reshape((-1,) + (1,) * (Q.ndim - 1)) * jitter
    P = [[None] * L for _ in range(L)]
    for e, (l, h) in enumerate(zip(li, lj, strict=True)):
        P[l][h] = Q[e]
    return logdet_entries(factor_entries(P, L), L)


def _merged_pairs(w_i, m_i, Q_i, w_j, m_j, Q_j, lower, with_mean=True):
    """Weights (...), means (L, ...) and covariances' lower entries (E, ...) of the
    moment-preserving merges of components i and j; the mean is None without
    ``with_mean``."""
    li, lj = lower
    w = w_i + w_j
    a = w_i / w
    b = w_j / w
    d = m_i - m_j
    abd = (a * b) * d
    mean = a * m_i + b * m_j if with_mean else None
    Q = a * Q_i + b * Q_j + abd[li] * d[lj]
    return w, mean, Q


def _runnalls_cost(w_i, m_i, Q_i, ld_i, w_j, m_j, Q_j, ld_j, jitter, lower):
    """Runnalls' upper bound on the KL divergence caused by merging components i and j.

    B(i, j) = ((w_i + w_j) log|P_ij| - w_i log|P_i| - w_j log|P_j|) / 2, with ``jitter``
    added to the diagonal of every covariance (``ld`` are the log-determinants of the
    jittered ones; the jitter is 0 except on rows with a singular covariance; None:
    0 on every row).
    """
    w, _, Q = _merged_pairs(w_i, m_i, Q_i, w_j, m_j, Q_j, lower, with_mean=False)
    return 0.5 * (w * _packed_logdet(Q, lower, jitter) - w_i * ld_i - w_j * ld_j)


def _merge_block(weights, means, Q, n_keep, jitter, logdets):
    """Greedy Runnalls merging of the rows of one block, down to ``n_keep`` components.

    ``weights`` (n, K), ``means`` (L, n, K) and the covariances' lower entries ``Q``
    (E, n, K); ``logdets`` (n, K) the log-determinants of the jittered covariances.
    Returns the weights (n, n_keep), means (n, n_keep, L) and covariances
    (n, n_keep, L, L) of the components left, heaviest first.
    """
    L, n, K = means.shape
    lower = np.tril_indices(L)
    weights = weights.copy()
    means = means.copy()
    Q = Q.copy()
    logdets = logdets.copy()
    jitter = jitter if jitter.any() else None
    pair_jitter = None if jitter is None else jitter[:, None]
    active = np.ones((n, K), dtype=bool)
    rows = np.arange(n)
    iu, ju = np.triu_indices(K, k=1)
    cost = np.full((n, K, K), np.inf)
    cost[:, iu, ju] = _runnalls_cost(
        weights[:, iu], means[:, :, iu], Q[:, :, iu], logdets[:, iu],
        weights[:, ju], means[:, :, ju], Q[:, :, ju], logdets[:, ju], pair_jitter, lower,
    )
    ks = np.arange(K)
    for step in range(K - n_keep):
        flat = cost.reshape(n, K * K).argmin(axis=1)
        i, j = np.divmod(flat, K)  # i < j: only the upper triangle holds costs
        w, m, q = _merged_pairs(weights[rows, i], means[:, rows, i], Q[:, rows, i],
                                weights[rows, j], means[:, rows, j], Q[:, rows, j], lower)
        weights[rows, i] = w
        means[:, rows, i] = m
        Q[:, rows, i] = q
        weights[rows, j] = 0.0
        active[rows, j] = False
        if step == K - n_keep - 1:  # the last merge: no costs needed after it
            break
        logdets[rows, i] = ld = _packed_logdet(q, lower, jitter)
        cost[rows, j, :] = np.inf
        cost[rows, :, j] = np.inf
        # Costs between the merged component and every other one.
        new = _runnalls_cost(w[:, None], m[..., None], q[..., None], ld[:, None],
                             weights, means, Q, logdets, pair_jitter, lower)
        new[~active] = np.inf
        new[rows, i] = np.inf
        before = ks[None, :] < i[:, None]
        cost[rows, i, :] = np.where(before, np.inf, new)
        cost[rows, :, i] = np.where(before, new, np.inf)
    order = np.argsort(np.where(active, -weights, np.inf), axis=1, kind="stable")[:, :n_keep]
    r = rows[:, None]
    kept = Q[:, r, order].transpose(1, 2, 0)
    covs = np.empty((n, n_keep, L, L))
    covs[..., lower[0], lower[1]] = kept
    covs[..., lower[1], lower[0]] = kept
    return (np.take_along_axis(weights, order, axis=1), means[:, r, order].transpose(1, 2, 0),
            covs)


def merge_mixture(weights, means, covariances, n_components=2):
    """Reduce Gaussian mixtures to at most ``n_components`` components each.

    Components are merged two at a time, always the pair whose merge costs least by
    Runnalls' upper bound on the Kullback-Leibler divergence (A. R. Runnalls, IEEE
    Trans. Aerospace and Electronic Systems 43(3), 2007). Each merge preserves the
    weight, mean and covariance of the pair, so the reduced mixture has exactly the
    mean and covariance of the original. Applied to GLLiM's predictive mixture it gives
    the posterior modes of an ambiguous inverse problem: components that describe the
    same answer merge first, separate answers stay apart.

    Parameters
    ----------
    weights : array-like of shape (n_samples, K)
        Mixture weights of each sample's mixture: non-negative, with a positive sum in
        every row (rows that do not sum to 1 keep their total).
    means : array-like of shape (n_samples, K, L)
        Component means.
    covariances : array-like of shape (K, L, L) or (n_samples, K, L, L)
        Component covariances, shared by all samples or per sample: finite, symmetric
        and positive semi-definite. Singular ones (point masses) are merged too: their
        merging costs are taken with a tiny multiple of the mixture's scale on the
        diagonal, and the merged moments stay exact.
    n_components : int, default=2
        Largest number of components M to keep.

    Returns
    -------
    weights : ndarray of shape (n_samples, M')
        Weights of the merged components, largest first; ``M' = min(M, K)``.
    means : ndarray of shape (n_samples, M', L)
        Their means.
    covariances : ndarray of shape (n_samples, M', L, L)
        Their covariances.

    Examples
    --------
    >>> import numpy as np
    >>> from gllim_sk.posterior import merge_mixture
    >>> w = np.array([[0.3, 0.25, 0.45]])
    >>> mu = np.array([[[-1.0], [-1.1], [2.0]]])
    >>> cov = np.full((3, 1, 1), 0.01)
    >>> w2, mu2, cov2 = merge_mixture(w, mu, cov, n_components=2)
    >>> w2.round(2), mu2[..., 0].round(2)
    (array([[0.55, 0.45]]), array([[-1.05,  2.  ]]))
    """
    return _merge_mixture(weights, means, covariances, n_components)


def _merge_mixture(weights, means, covariances, n_components, check_covariances=True):
    """:func:`merge_mixture`; ``check_covariances=False`` for covariances symmetric and
    positive definite by construction (the inversion's own): only those of the
    components merged are factorised, and the checked path runs where one fails."""
    weights = np.asarray(weights, dtype=float)
    means = np.asarray(means, dtype=float)
    covariances = np.asarray(covariances, dtype=float)
    if weights.ndim != 2 or means.ndim != 3 or means.shape[:2] != weights.shape:
        raise ValueError(
            f"weights must be (n_samples, K) and means (n_samples, K, L); got shapes "
            f"{weights.shape} and {means.shape}."
        )
    n, K, L = means.shape
    if covariances.shape == (K, L, L):
        covariances = np.broadcast_to(covariances, (n, K, L, L))
    elif covariances.shape != (n, K, L, L):
        raise ValueError(
            f"covariances must have shape (K, L, L) = {(K, L, L)} or (n_samples, K, L, L) "
            f"= {(n, K, L, L)}; got {covariances.shape}."
        )
    if not isinstance(n_components, (int, np.integer)) or n_components < 1:
        raise ValueError(f"n_components must be a positive integer, got {n_components!r}.")
    if (weights < 0).any() or not np.all(np.isfinite(weights)):
        raise ValueError("weights must be finite and non-negative.")
    empty = np.flatnonzero(weights.sum(axis=1) <= 0)
    if empty.size:
        raise ValueError(
            f"weights of {empty.size} row(s) sum to 0 (the first is row {empty[0]}): each "
            "mixture needs a positive total weight."
        )
    if not (np.all(np.isfinite(means)) and np.all(np.isfinite(covariances))):
        raise ValueError(
            "means and covariances must be finite (a Student-t component with at most 2 "
            "degrees of freedom has no covariance and cannot be merged by moments)."
        )
    if check_covariances:
        jitter, logdets = _singular_jitter(weights, means, covariances)
    else:
        # Positive definite by construction: no jitter, and the log-determinants of the
        # components merged only (below); the general path where one is not.
        jitter, logdets = np.zeros(n), None
    n_keep = min(int(n_components), K)
    lower = np.tril_indices(L)
    # A component of weight 0 merges into any other at no cost and changes nothing: each
    # row merges its positive-weight components only (at least n_keep columns), the
    # rows grouped by that number, heaviest columns first.
    # Each row's weights are scaled by a power of two (exactly) to a largest weight in
    # [0.5, 1): the floor and the cut at 1e-300 below then act on relative weights, and
    # rows of tiny unnormalised weights keep their proportions and total.
    exponent = np.frexp(weights.max(axis=1))[1][:, None]
    rel = np.ldexp(weights, -exponent)
    width = np.maximum((rel > 0).sum(axis=1), n_keep)
    order = np.argsort(-rel, axis=1, kind="stable")
    out_w = np.empty((n, n_keep))
    out_m = np.empty((n, n_keep, L))
    out_c = np.empty((n, n_keep, L, L))
    merge = compiled_kernel("merge_rows", n * K)
    merged = merge is not None and merge(
        rel, order, width, means, covariances, n_keep, jitter,
        np.empty((0, 0)) if logdets is None else logdets, out_w, out_m, out_c)
    if not merged:  # numpy's code (also where the kernel met a covariance not definite)
        for c in np.unique(width):
            idx = np.flatnonzero(width == c)
            cols = order[idx, :c]
            w = rel[idx[:, None], cols]
            m = means[idx[:, None], cols]
            P = covariances[idx[:, None], cols]
            if c == n_keep:  # nothing to merge: already heaviest first
                out_w[idx], out_m[idx], out_c[idx] = w, m, P
                continue
            # Zero weights would make the merged weights 0/0; a floor far below any real
            # weight keeps the arithmetic defined without changing the moments measurably.
            w = np.maximum(w, 1e-300)
            # Entries first: (L, rows, c) and (E, rows, c).
            m = m.transpose(2, 0, 1)
            Q = P[..., lower[0], lower[1]].transpose(2, 0, 1)
            if logdets is not None:
                ld = logdets[idx[:, None], cols]
            else:
                try:
                    ld = _packed_logdet(Q, lower)
                except np.linalg.LinAlgError:
                    return _merge_mixture(weights, means, covariances, n_components)
            block = max(1, _MERGE_BLOCK_ELEMENTS // max(1, c * (c - 1) // 2))
            for a in range(0, idx.size, block):
                sl = slice(a, a + block)
                out_w[idx[sl]], out_m[idx[sl]], out_c[idx[sl]] = _merge_block(
                    w[sl], m[:, sl], Q[:, sl], n_keep, jitter[idx[sl]], ld[sl])
    out_w = np.ldexp(np.where(out_w <= 1e-300, 0.0, out_w), exponent)
    return out_w, out_m, out_c


def _singular_jitter(weights, means, covariances):
    """The diagonal jitter (n,) of each row's merging costs: 0 where every covariance is
    positive definite, else a tiny multiple of the mixture's scale (the mean variance of
    its components and of its means); and the log-determinants (n, K) of the jittered
    covariances. Refuses non-symmetric or indefinite covariances."""
    n, K, L = means.shape
    scale = np.abs(covariances).max(axis=(-2, -1), initial=0.0)
    asym = np.abs(covariances - np.swapaxes(covariances, -1, -2)).max(axis=(-2, -1),
                                                                      initial=0.0)
    if (asym > 1e-10 * np.maximum(scale, 1e-300)).any():
        raise ValueError("covariances must be symmetric matrices.")
    try:  # positive definite throughout (the usual case): no eigenvalues needed
        return np.zeros(n), spd_logdet(covariances)
    except np.linalg.LinAlgError:
        pass
    scale = np.abs(covariances).max(axis=(-2, -1), initial=0.0)
    low = np.linalg.eigvalsh(covariances).min(axis=-1)
    if (low < -1e-10 * scale).any():
        raise ValueError(
            f"covariances must be positive semi-definite; the smallest eigenvalue is "
            f"{low.min():.3g}."
        )
    singular = (low <= 0).any(axis=1)
    jitter = np.zeros(n)
    if singular.any():
        w = weights[singular] / weights[singular].sum(axis=1, keepdims=True)
        m = means[singular]
        centred = m - np.einsum("nk,nkl->nl", w, m)[:, None]
        spread = np.einsum("nk,nkl,nkl->n", w, centred, centred) / L
        within = np.einsum("nk,nkll->n", w, covariances[singular]) / L
        row_scale = spread + within
        jitter[singular] = _MERGE_COST_JITTER * np.where(row_scale > 0, row_scale, 1.0)
    return jitter, spd_logdet(covariances + jitter[:, None, None, None] * np.eye(L))


# --------------------------------------------------------------------- importance sampling
@dataclass
class ImportanceSamplingResult:
    """Weighted samples of the posterior p(y | x), for each row of X.

    Attributes
    ----------
    samples : ndarray of shape (n_samples_X, n_draws, L)
        Draws from the proposal(s).
    weights : ndarray of shape (n_samples_X, n_draws)
        Normalised importance weights (each row sums to 1).
    log_weights : ndarray of shape (n_samples_X, n_draws)
        Unnormalised log importance weights log p(x | y) + log p(y) - log q(y | x).
    mean : ndarray of shape (n_samples_X, L)
        Importance-sampling estimate of the posterior mean E[y | x].
    covariance : ndarray of shape (n_samples_X, L, L)
        Importance-sampling estimate of the posterior covariance.
    effective_sample_size : ndarray of shape (n_samples_X,)
        Kish's effective sample size (sum w)^2 / sum w^2 of each row, between 1 and
        ``n_draws`` (0 where every weight vanished).
    proposal_mean : ndarray of shape (n_samples_X, L)
        Mean of GLLiM's predictive mixture, the uncorrected estimate.
    """

    samples: np.ndarray
    weights: np.ndarray
    log_weights: np.ndarray
    mean: np.ndarray
    covariance: np.ndarray
    effective_sample_size: np.ndarray
    proposal_mean: np.ndarray


def _gaussian_log_likelihood(noise_covariance, n_features):
    """log N(x; F(y), S) as a vectorised callable of (x, F(y)), both (m, D).

    ``S`` is validated as ``feature_noise_var`` / ``feature_noise_cov`` are by the
    estimators, but must be positive definite: a likelihood needs a density.
    """
    S = np.asarray(noise_covariance, dtype=float)
    if S.ndim <= 1:
        if S.ndim == 1 and S.shape != (n_features,):
            raise ValueError(
                f"A diagonal noise_covariance must hold {n_features} variances; got shape "
                f"{S.shape}."
            )
        S = np.broadcast_to(check_noise_variances(S, "noise_covariance", positive=True),
                            (n_features,))
        logdet = np.log(S).sum()

        def loglik(x, fx):
            return -0.5 * (n_features * LOG_2PI + logdet + (((x - fx) ** 2) / S).sum(axis=1))

        return loglik
    if S.ndim != 2:
        raise ValueError(
            f"noise_covariance must be a scalar, (D,) or (D, D) with D = {n_features}; "
            f"got shape {S.shape}."
        )
    S = check_noise_matrix(S, n_features, "noise_covariance", definite=True)
    chol = np.linalg.cholesky(S)
    logdet = 2.0 * np.log(np.diag(chol)).sum()

    def loglik(x, fx):
        z = np.linalg.solve(chol, (x - fx).T)
        return -0.5 * (n_features * LOG_2PI + logdet + np.einsum("dm,dm->m", z, z))

    return loglik


def _evaluate(func, arg, expected_shape, name, log_density=False):
    out = np.asarray(func(arg), dtype=float)
    if out.shape != expected_shape:
        raise ValueError(
            f"{name} returned an array of shape {out.shape} for {arg.shape[0]} inputs; "
            f"expected {expected_shape}."
        )
    if np.isnan(out).any():
        raise ValueError(f"{name} returned NaN.")
    if log_density and (out == np.inf).any():
        raise ValueError(
            f"{name} returned +inf for {int((out == np.inf).sum())} of {out.size} inputs: a "
            "log-density must be finite, or -inf where the density is 0."
        )
    return out


def _log_target(X_block, draws, forward_model, log_prior, log_likelihood):
    """log p(x | y) + log p(y) of draws (b, s, L) for rows X_block (b, D): (b, s)."""
    b, s, L = draws.shape
    D = X_block.shape[1]
    flat = draws.reshape(b * s, L)
    prior = _evaluate(log_prior, flat, (b * s,), "log_prior", log_density=True)
    out = np.full(b * s, -np.inf)
    inside = np.isfinite(prior)
    if inside.any():
        fx = _evaluate(forward_model, flat[inside], (int(inside.sum()), D), "forward_model")
        x_rep = np.repeat(X_block, s, axis=0)[inside]
        out[inside] = _evaluate(lambda a: log_likelihood(x_rep, a), fx, (fx.shape[0],),
                                "log_likelihood", log_density=True) + prior[inside]
    return out.reshape(b, s)


def _weighted_moments(draws, log_w):
    """Normalised weights, mean, covariance and ESS of weighted draws (b, s, L)."""
    top = log_w.max(axis=1, keepdims=True)
    dead = ~np.isfinite(top[:, 0])
    top[dead] = 0.0
    w = np.exp(log_w - top)
    total = w.sum(axis=1, keepdims=True)
    total[dead] = 1.0
    w /= total
    mean = np.einsum("bs,bsl->bl", w, draws)
    diff = draws - mean[:, None, :]
    cov = np.einsum("bs,bsl,bsm->blm", w, diff, diff)
    ess = 1.0 / np.maximum((w**2).sum(axis=1), np.finfo(float).tiny)
    ess[dead] = 0.0
    return w, mean, cov, ess, dead


def _imis_component(draws, w, log_w, n_neighbours, base_cov, jitter):
    """One IMIS component per row: centred at the heaviest draw, covariance of its
    nearest draws (Mahalanobis under ``base_cov``), weighted as Raftery and Bao (2010)."""
    b, s, L = draws.shape
    rows = np.arange(b)
    best = np.argmax(log_w, axis=1)
    centre = draws[rows, best]  # (b, L)
    diff = draws - centre[:, None, :]
    delta, _ = mahalanobis_logdet(diff, base_cov[:, None])
    near = np.argpartition(delta, n_neighbours - 1, axis=1)[:, :n_neighbours]
    pts = draws[rows[:, None], near]  # (b, B, L)
    nw = 0.5 * (w[rows[:, None], near] + 1.0 / s)
    nw /= nw.sum(axis=1, keepdims=True)
    d = pts - centre[:, None, :]
    cov = np.einsum("bj,bjl,bjm->blm", nw, d, d)
    cov += jitter[:, None, None] * np.eye(L)
    return centre, cov


# The three steps of the sampler, on one block of rows: the proposal, the weights, IMIS.
def _proposal_moments(mixture):
    """Mean (n, L) and covariance (n, L, L) of the proposal (GLLiM's predictive mixture),
    ``inf`` where a t component has no covariance (dof <= 2); and the metric (n, L, L)
    of IMIS's nearest draws: that covariance, with the t's scale matrix for components
    that have none (a finite, positive definite matrix in every case)."""
    mean, cov = mixture.moments()
    if mixture.dof is None:
        return mean, cov, cov
    factor = t_covariance_factor(mixture.dof)
    factor = np.where(np.isfinite(factor), factor, 1.0)
    metric = PredictiveMixture(mixture.log_weights, mixture.means,
                               mixture.scales * factor[..., None, None], None,
                               mixture.dtype).moments()[1]
    return mean, cov, metric


def _proposal_draws(mixture, n_draws, rng):
    """Draws (b, n_draws, L) from the predictive mixture and their log-density under it."""
    draws = sample_mixture(np.exp(mixture.log_weights), mixture.means, mixture.scales,
                           n_draws, rng, mixture.dof)
    return draws, _proposal_log_density(mixture, draws)


def _proposal_log_density(mixture, draws):
    return mixture_log_density(draws, mixture.log_weights, mixture.means, mixture.scales,
                               mixture.dof)


def _imis_steps(mixture, draws, log_target, log_q0, n_steps, batch, metric, rng, target):
    """``n_steps`` IMIS steps from the draws of the predictive mixture: each adds a
    Gaussian at the heaviest draw, draws ``batch`` points from it and re-weights every
    draw against the mixture of all proposals. Returns the draws and log-weights."""
    b, n_draws, L = draws.shape
    log_w = log_target - log_q0
    centres, covs = [], []
    base_cov = metric + 1e-12 * np.eye(L)
    jitter = 1e-9 * np.maximum(np.einsum("bll->b", base_cov) / L, 1e-300)
    for step in range(n_steps):
        w, *_ = _weighted_moments(draws, log_w)
        centre, cov = _imis_component(draws, w, log_w, min(batch, draws.shape[1]),
                                      base_cov, jitter)
        centres.append(centre)
        covs.append(cov)
        new = sample_mixture(np.ones((b, 1)), centre[:, None], cov[:, None], batch, rng)
        draws = np.concatenate([draws, new], axis=1)
        log_target = np.concatenate([log_target, target(new)], axis=1)
        # Mixture proposal: n_draws from q0 and ``batch`` from each added Gaussian.
        n_so_far = n_draws + (step + 1) * batch
        log_q0 = _proposal_log_density(mixture, draws)
        log_h = mixture_log_density(draws, np.zeros((b, step + 1)), np.stack(centres, axis=1),
                                    np.stack(covs, axis=1))
        log_q = np.logaddexp(np.log(n_draws) + log_q0, np.log(batch) + log_h)
        log_w = log_target - (log_q - np.log(n_so_far))
    return draws, log_w


def importance_sampling(model, X, forward_model, log_prior, *, noise_covariance=None,
                        log_likelihood=None, n_draws=1000, n_imis_steps=0,
                        imis_batch=None, random_state=None):
    """Correct GLLiM's posterior by importance sampling with the true forward model.

    For each row ``x`` of ``X`` the target is the exact posterior
    ``p(y | x) ∝ p(x | y) p(y)`` of the physical model ``x = F(y) + noise``. Draws come
    from the fitted model's predictive mixture ``q(y | x)`` (GLLiM's approximation of
    that posterior) and get the weights ``p(x | y) p(y) / q(y | x)``. With
    ``n_imis_steps > 0`` the proposal grows by incremental mixture importance sampling
    (IMIS, Raftery and Bao, Biometrics 66, 2010): each step adds a Gaussian at the
    heaviest draw, with the weighted covariance of its nearest draws, draws
    ``imis_batch`` points from it, and re-weights every draw against the mixture of all
    proposals so far.

    Parameters
    ----------
    model : fitted GLLiMRegressor or StudentGLLiMRegressor
        Supplies the proposal through its predictive mixture.
    X : array-like of shape (n_samples_X, n_features)
        Observed features.
    forward_model : callable
        ``forward_model(Y)`` maps targets of shape (m, L) to noise-free features of shape
        (m, n_features); it is called on many draws at once.
    log_prior : callable
        ``log_prior(Y)`` returns the log prior density (up to a constant) of targets
        (m, L) as an array (m,); ``-inf`` outside the prior's support.
    noise_covariance : float or array-like of shape (n_features,) or (n_features, n_features)
        Covariance of Gaussian observation noise (scalar: isotropic; 1-D: diagonal).
    log_likelihood : callable, default=None
        Instead of ``noise_covariance``: ``log_likelihood(X_rep, F)`` returns
        ``log p(x | y)`` (m,) for rows ``X_rep`` (m, D) and ``F = forward_model(Y)``.
    n_draws : int, default=1000
        Draws from GLLiM's proposal per row.
    n_imis_steps : int, default=0
        Number of IMIS steps (0: plain importance sampling).
    imis_batch : int, default=None
        Draws per IMIS step; default ``max(n_draws // 10, 2 * L + 2)``.
    random_state : int, RandomState instance or None, default=None
        Seeds the draws.

    Returns
    -------
    result : ImportanceSamplingResult
        Weighted draws, corrected mean and covariance, effective sample sizes.

    Notes
    -----
    The sampler runs in memory: a dask ``X`` is computed first (the user's forward
    model and log-prior are called on the client, and the draws of all rows come from
    one generator in turn).

    Rows where no draw has positive target density (every draw outside the prior's
    support, or the likelihood underflows) cannot be corrected: they keep the proposal's
    mean and covariance, get an effective sample size of 0, and a warning says how many
    there are. A small effective sample size relative to ``n_draws`` says the proposal
    and the posterior differ much; more draws or IMIS steps then help. Where the
    proposal's covariance does not exist (a Student proposal with a component of at
    most 2 degrees of freedom) such rows get an infinite covariance, as
    ``predict(return_std=True)`` gives an infinite standard deviation there.

    ``log_prior`` and ``log_likelihood`` must return finite values or ``-inf``: ``NaN``
    or ``+inf`` (an infinite density, which no weight can normalise) raise a
    ``ValueError`` naming the function. ``noise_covariance`` is validated as the
    estimators' ``feature_noise_var`` and ``feature_noise_cov`` are (finite; a matrix
    symmetric), and must be positive definite.

    The sampler calls the model only through its predictive mixture (the hook behind
    every prediction of the GLLiM estimators), in three steps: the proposal's draws,
    their weights under the target, and the IMIS steps.

    Examples
    --------
    >>> import numpy as np
    >>> from gllim_sk import GLLiMRegressor
    >>> from gllim_sk.posterior import importance_sampling
    >>> F = lambda y: np.hstack([np.sin(y), y**2, np.cos(2 * y)])
    >>> rng = np.random.default_rng(0)
    >>> y = rng.uniform(-1, 1, (500, 1))
    >>> X = F(y) + 0.05 * rng.normal(size=(500, 3))
    >>> model = GLLiMRegressor(n_components=3, random_state=0).fit(X, y)
    >>> prior = lambda Y: np.where(np.abs(Y[:, 0]) <= 1, 0.0, -np.inf)
    >>> res = importance_sampling(model, X[:2], F, prior, noise_covariance=0.05**2,
    ...                           n_draws=500, random_state=0)
    >>> res.mean.shape, res.effective_sample_size.shape
    ((2, 1), (2,))
    """
    if not callable(forward_model) or not callable(log_prior):
        raise TypeError("forward_model and log_prior must be callables of an (m, L) array.")
    if (noise_covariance is None) == (log_likelihood is None):
        raise ValueError("Give exactly one of noise_covariance and log_likelihood.")
    for name, value, low in (("n_draws", n_draws, 2), ("n_imis_steps", n_imis_steps, 0)):
        if (not isinstance(value, (int, np.integer)) or isinstance(value, bool)
                or value < low):
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}.")
    rng = check_random_state(random_state)
    if _dask.is_dask_array(X):  # in memory, as the notes say
        X = X.compute()
    # The estimator's predictive hook validates X (and says what is wrong with it).
    mixture = model._predictive_mixture(X).to_numpy()
    X = np.asarray(to_numpy(X) if hasattr(X, "__dlpack__") else X, dtype=float)
    n, D = X.shape
    L = mixture.means.shape[2]
    if imis_batch is None:
        imis_batch = max(n_draws // 10, 2 * L + 2)
    if (not isinstance(imis_batch, (int, np.integer)) or isinstance(imis_batch, bool)
            or imis_batch < L + 1):
        raise ValueError(f"imis_batch must be an integer >= L + 1 = {L + 1}, got {imis_batch!r}.")
    if log_likelihood is None:
        log_likelihood = _gaussian_log_likelihood(noise_covariance, D)
    elif not callable(log_likelihood):
        raise TypeError("log_likelihood must be a callable (X_rep, F) -> (m,).")

    prop_mean, prop_cov, metric = _proposal_moments(mixture)
    total_draws = n_draws + n_imis_steps * imis_batch
    rows_per_block = max(1, _FORWARD_BLOCK_ELEMENTS // max(1, total_draws * max(D, L)))
    samples = np.empty((n, total_draws, L))
    log_weights = np.empty((n, total_draws))
    for a in range(0, n, rows_per_block):
        sl = slice(a, min(a + rows_per_block, n))

        def target(draws, X_block=X[sl]):
            return _log_target(X_block, draws, forward_model, log_prior, log_likelihood)

        block = mixture.rows(sl)
        draws, log_q0 = _proposal_draws(block, n_draws, rng)
        samples[sl], log_weights[sl] = _imis_steps(block, draws, target(draws), log_q0,
                                                   n_imis_steps, imis_batch, metric[sl],
                                                   rng, target)

    weights, mean, cov, ess, dead = _weighted_moments(samples, log_weights)
    if dead.any():
        warnings.warn(
            f"{int(dead.sum())} of {n} rows have no draw with positive posterior density "
            "(outside the prior's support, or a likelihood that underflows); they keep "
            "GLLiM's mean and covariance and an effective sample size of 0.",
            RuntimeWarning,
            stacklevel=2,
        )
        mean[dead] = prop_mean[dead]
        cov[dead] = prop_cov[dead]
    return ImportanceSamplingResult(
        samples=samples, weights=weights, log_weights=log_weights, mean=mean,
        covariance=0.5 * (cov + np.swapaxes(cov, 1, 2)), effective_sample_size=ess,
        proposal_mean=prop_mean,
    )
