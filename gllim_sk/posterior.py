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
the t scale matrices (covariance = scale * dof / (dof - 2)).
"""

import warnings
from dataclasses import dataclass

import numpy as np
from scipy.special import betaln, chdtri, gammaln, logsumexp, ndtri
from sklearn.utils import check_random_state

from . import _dask

__all__ = ["ImportanceSamplingResult", "importance_sampling", "merge_mixture"]

LOG_2PI = np.log(2.0 * np.pi)
# Samples of the merge are processed in blocks of this many: the initial pairwise
# costs hold (block, K, K, L, L) merged covariances.
_MERGE_BLOCK_ELEMENTS = 2_000_000
# Forward-model evaluations per call, in rows times features.
_FORWARD_BLOCK_ELEMENTS = 5_000_000


# --------------------------------------------------------------------- densities
def mahalanobis_logdet(diff, scales):
    """Squared Mahalanobis distances and log-determinants for a stack of SPD matrices.

    ``diff`` is (..., L) and ``scales`` (..., L, L), broadcasting against each other;
    returns ``(delta, logdet)`` with ``delta = diff' scales^-1 diff``.
    """
    chol = np.linalg.cholesky(scales)
    z = np.linalg.solve(chol, diff[..., None])[..., 0]
    logdet = 2.0 * np.log(np.diagonal(chol, axis1=-2, axis2=-1)).sum(axis=-1)
    return np.einsum("...i,...i->...", z, z), logdet


def gaussian_or_t_log_density(delta, logdet, dim, dof=None):
    """Log-density of a Gaussian (``dof=None``) or multivariate t from its distance.

    ``delta`` is the squared Mahalanobis distance under the scale matrix, ``logdet``
    the scale's log-determinant, ``dim`` the dimension and ``dof`` the degrees of
    freedom (scipy's ``multivariate_t(shape=scale, df=dof)``); all broadcast.
    """
    if dof is None:
        return -0.5 * (dim * LOG_2PI + logdet + delta)
    dof = np.asarray(dof, dtype=float)
    # log Gamma((dof + dim)/2) - log Gamma(dof/2) through betaln: exact for large dof.
    return (
        gammaln(0.5 * dim) - betaln(0.5 * dof, 0.5 * dim)
        - 0.5 * dim * np.log(dof * np.pi) - 0.5 * logdet
        - 0.5 * (dof + dim) * np.log1p(delta / dof)
    )


def mixture_log_density(y, log_weights, means, scales, dof=None):
    """log sum_k w_k f_k(y) for each of n mixtures at m points each.

    ``y`` is (n, m, L); ``log_weights`` (n, K); ``means`` (n, K, L); ``scales``
    (K, L, L) or (n, K, L, L); ``dof`` None, (K,) or (n, K). Returns (n, m).
    """
    if scales.ndim == 3:
        scales = scales[None]
    chol = np.linalg.cholesky(scales)  # (n|1, K, L, L)
    logdet = 2.0 * np.log(np.diagonal(chol, axis1=-2, axis2=-1)).sum(axis=-1)
    diff = y[:, :, None, :] - means[:, None, :, :]  # (n, m, K, L)
    n, m, K, L = diff.shape
    chol_b = np.broadcast_to(chol, (n, K, L, L))
    # Solve per (n, k) for all m points at once: (n, K, L, m).
    z = np.linalg.solve(chol_b, np.transpose(diff, (0, 2, 3, 1)))
    delta = np.einsum("nklm,nklm->nmk", z, z)
    logdet = np.broadcast_to(logdet, (n, K))[:, None, :]
    if dof is not None:
        dof = np.broadcast_to(np.asarray(dof, dtype=float), (n, K))[:, None, :]
    log_comp = gaussian_or_t_log_density(delta, logdet, L, dof)
    with np.errstate(divide="ignore"):
        return logsumexp(log_comp + log_weights[:, None, :], axis=2)


def sample_mixture(weights, means, scales, n_draws, rng, dof=None):
    """Draw ``n_draws`` points from each of n mixtures: (n, n_draws, L).

    Shapes as in :func:`mixture_log_density`; ``weights`` need not be normalised.
    """
    n, K, L = means.shape
    choice = rng.uniform(size=(n, n_draws))
    normal = rng.standard_normal((n, n_draws, L))
    return _mixture_draws(weights, means, scales, choice, normal, dof, rng.chisquare)


def _mixture_draws(weights, means, scales, choice, normal, dof, chisquare):
    """Mixture draws (n, s, L) from uniforms ``choice`` (n, s) that pick the components,
    standard normals ``normal`` (n, s, L) and, for t components, ``chisquare(dof_ns)``,
    chi-square draws of the picked components' degrees of freedom (n, s)."""
    n, K, L = means.shape
    cum = np.cumsum(weights, axis=1)
    u = choice * cum[:, -1:]
    comp = np.minimum((u[:, :, None] > cum[:, None, :]).sum(axis=2), K - 1)
    if scales.ndim == 3:
        scales = scales[None]
    chol = np.broadcast_to(np.linalg.cholesky(scales), (n, K, L, L))
    rows = np.arange(n)[:, None]
    noise = np.einsum("nslm,nsm->nsl", chol[rows, comp], normal)
    if dof is not None:
        dof_nk = np.broadcast_to(np.asarray(dof, dtype=float), (n, K))[rows, comp]
        # t = Gaussian / sqrt(chi2_dof / dof)
        noise /= np.sqrt(chisquare(dof_nk) / dof_nk)[:, :, None]
    return means[rows, comp] + noise


def stream_key(random_state):
    """The 128-bit key (two ints) of :func:`row_uniforms`'s stream, drawn from a numpy
    ``RandomState`` (as from ``check_random_state``)."""
    return tuple(int(v) for v in random_state.randint(2**63, size=2, dtype=np.int64))


# Philox makes four 64-bit values per step of its counter.
_PHILOX_VALUES_PER_COUNT = 4


def row_uniforms(key, first_row, n_rows, per_row):
    """Uniforms in (0, 1), (n_rows, per_row), for rows ``first_row`` onwards of a stream.

    Row ``r`` takes its values from its own stretch of a counter-based generator (numpy's
    :class:`~numpy.random.Philox` keyed by ``key``), from counter ``r * ceil(per_row /
    4)`` on: the values of a row do not depend on which other rows are drawn with it,
    so that rows drawn in blocks, in any blocks, get the values of rows drawn at once.
    Each value has 52 random bits, centred in its interval: the smallest is 2^-53, the
    largest 1 - 2^-53.
    """
    stride = -(-per_row // _PHILOX_VALUES_PER_COUNT)
    bits = np.random.Philox(key=np.array(key, dtype=np.uint64), counter=first_row * stride)
    raw = bits.random_raw(n_rows * stride * _PHILOX_VALUES_PER_COUNT)
    raw = raw.reshape(n_rows, stride * _PHILOX_VALUES_PER_COUNT)[:, :per_row]
    return ((raw >> np.uint64(12)).astype(np.float64) + 0.5) * 2.0**-52


def sample_mixture_rows(weights, means, scales, n_draws, key, first_row=0, dof=None):
    """:func:`sample_mixture` for rows ``first_row`` onwards, from :func:`row_uniforms`.

    Each row's draws come from its own uniforms (standard normals and chi-squares by
    their inverse distribution functions): the draws of a row are the same whichever
    block of rows it is drawn in.
    """
    n, K, L = means.shape
    width = 2 + L if dof is not None else 1 + L
    u = row_uniforms(key, first_row, n, n_draws * width).reshape(n, n_draws, width)
    return _mixture_draws(weights, means, scales, u[:, :, 0], ndtri(u[:, :, 1 : L + 1]), dof,
                          lambda dof_ns: chdtri(dof_ns, u[:, :, L + 1]))


# --------------------------------------------------------------------- merging
def _merged_moments(w_i, m_i, P_i, w_j, m_j, P_j):
    """Weight, mean and covariance of the moment-preserving merge of two components."""
    w = w_i + w_j
    a = w_i / w
    b = w_j / w
    d = m_i - m_j
    mean = a[..., None] * m_i + b[..., None] * m_j
    cov = (a[..., None, None] * P_i + b[..., None, None] * P_j
           + (a * b)[..., None, None] * d[..., :, None] * d[..., None, :])
    return w, mean, cov


def _runnalls_cost(w_i, m_i, P_i, ld_i, w_j, m_j, P_j, ld_j):
    """Runnalls' upper bound on the KL divergence caused by merging components i and j.

    B(i, j) = ((w_i + w_j) log|P_ij| - w_i log|P_i| - w_j log|P_j|) / 2.
    """
    w, _, cov = _merged_moments(w_i, m_i, P_i, w_j, m_j, P_j)
    logdet = np.linalg.slogdet(cov)[1]
    return 0.5 * (w * logdet - w_i * ld_i - w_j * ld_j)


def _merge_block(weights, means, covs, n_keep):
    n, K, L = means.shape
    weights = weights.copy()
    means = means.copy()
    covs = covs.copy()
    logdets = np.linalg.slogdet(covs)[1]
    active = np.ones((n, K), dtype=bool)
    rows = np.arange(n)
    iu, ju = np.triu_indices(K, k=1)
    cost = np.full((n, K, K), np.inf)
    cost[:, iu, ju] = _runnalls_cost(
        weights[:, iu], means[:, iu], covs[:, iu], logdets[:, iu],
        weights[:, ju], means[:, ju], covs[:, ju], logdets[:, ju],
    )
    ks = np.arange(K)
    for _ in range(K - n_keep):
        flat = cost.reshape(n, K * K).argmin(axis=1)
        i, j = np.divmod(flat, K)  # i < j: only the upper triangle holds costs
        w, m, P = _merged_moments(weights[rows, i], means[rows, i], covs[rows, i],
                                  weights[rows, j], means[rows, j], covs[rows, j])
        weights[rows, i], means[rows, i], covs[rows, i] = w, m, P
        logdets[rows, i] = np.linalg.slogdet(P)[1]
        weights[rows, j] = 0.0
        active[rows, j] = False
        cost[rows, j, :] = np.inf
        cost[rows, :, j] = np.inf
        # Costs between the merged component and every other one.
        new = _runnalls_cost(
            weights[rows, i][:, None], means[rows, i][:, None], covs[rows, i][:, None],
            logdets[rows, i][:, None], weights, means, covs, logdets,
        )
        new[~active] = np.inf
        new[rows, i] = np.inf
        before = ks[None, :] < i[:, None]
        cost[rows, i, :] = np.where(before, np.inf, new)
        cost[rows, :, i] = np.where(before, new, np.inf)
    order = np.argsort(np.where(active, -weights, np.inf), axis=1, kind="stable")[:, :n_keep]
    return (np.take_along_axis(weights, order, axis=1), means[rows[:, None], order],
            covs[rows[:, None], order])


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
        Mixture weights of each sample's mixture (rows sum to 1).
    means : array-like of shape (n_samples, K, L)
        Component means.
    covariances : array-like of shape (K, L, L) or (n_samples, K, L, L)
        Component covariances, shared by all samples or per sample.
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
    if not (np.all(np.isfinite(means)) and np.all(np.isfinite(covariances))):
        raise ValueError(
            "means and covariances must be finite (a Student-t component with at most 2 "
            "degrees of freedom has no covariance and cannot be merged by moments)."
        )
    n_keep = min(int(n_components), K)
    # Zero weights would make the merged weights 0/0; a floor far below any real weight
    # keeps the arithmetic defined without changing the moments measurably.
    floored = np.maximum(weights, 1e-300)
    block = max(1, _MERGE_BLOCK_ELEMENTS // max(1, K * K * L * L))
    parts = [
        _merge_block(floored[a : a + block], means[a : a + block], covariances[a : a + block],
                     n_keep)
        for a in range(0, n, block)
    ]
    if not parts:
        return np.zeros((0, n_keep)), np.zeros((0, n_keep, L)), np.zeros((0, n_keep, L, L))
    out_w, out_m, out_c = (np.concatenate(p, axis=0) for p in zip(*parts, strict=True))
    out_w = np.where(out_w <= 1e-300, 0.0, out_w)
    return out_w, out_m, out_c


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
    """log N(x; F(y), S) as a vectorised callable of (x, F(y)), both (m, D)."""
    S = np.asarray(noise_covariance, dtype=float)
    if S.ndim == 0:
        S = np.full(n_features, float(S))
    if S.ndim == 1:
        if S.shape != (n_features,) or not np.all(S > 0) or not np.all(np.isfinite(S)):
            raise ValueError(
                f"A diagonal noise_covariance must hold {n_features} positive finite "
                f"variances; got shape {S.shape}."
            )
        logdet = np.log(S).sum()

        def loglik(x, fx):
            return -0.5 * (n_features * LOG_2PI + logdet + (((x - fx) ** 2) / S).sum(axis=1))

        return loglik
    if S.shape != (n_features, n_features):
        raise ValueError(
            f"noise_covariance must be a scalar, (D,) or (D, D) with D = {n_features}; "
            f"got shape {S.shape}."
        )
    try:
        chol = np.linalg.cholesky(0.5 * (S + S.T))
    except np.linalg.LinAlgError:
        raise ValueError("noise_covariance is not positive definite.") from None
    logdet = 2.0 * np.log(np.diag(chol)).sum()

    def loglik(x, fx):
        z = np.linalg.solve(chol, (x - fx).T)
        return -0.5 * (n_features * LOG_2PI + logdet + np.einsum("dm,dm->m", z, z))

    return loglik


def _evaluate(func, arg, expected_shape, name):
    out = np.asarray(func(arg), dtype=float)
    if out.shape != expected_shape:
        raise ValueError(
            f"{name} returned an array of shape {out.shape} for {arg.shape[0]} inputs; "
            f"expected {expected_shape}."
        )
    if np.isnan(out).any():
        raise ValueError(f"{name} returned NaN.")
    return out


def _log_target(X_block, draws, forward_model, log_prior, log_likelihood):
    """log p(x | y) + log p(y) of draws (b, s, L) for rows X_block (b, D): (b, s)."""
    b, s, L = draws.shape
    D = X_block.shape[1]
    flat = draws.reshape(b * s, L)
    prior = _evaluate(log_prior, flat, (b * s,), "log_prior")
    out = np.full(b * s, -np.inf)
    inside = np.isfinite(prior)
    if inside.any():
        fx = _evaluate(forward_model, flat[inside], (int(inside.sum()), D), "forward_model")
        x_rep = np.repeat(X_block, s, axis=0)[inside]
        out[inside] = _evaluate(lambda a: log_likelihood(x_rep, a), fx, (fx.shape[0],),
                                "log_likelihood") + prior[inside]
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
    and the posterior differ much; more draws or IMIS steps then help.

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
        if not isinstance(value, (int, np.integer)) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}.")
    rng = check_random_state(random_state)
    if _dask.is_dask_array(X):  # in memory, as the notes say
        X = X.compute()
    log_w_mix, means, scales, dof, _ = model._predictive_components(X)
    X = np.asarray(model._check_X(X)[0], dtype=float)
    n, D = X.shape
    K, L = means.shape[1:]
    if imis_batch is None:
        imis_batch = max(n_draws // 10, 2 * L + 2)
    if not isinstance(imis_batch, (int, np.integer)) or imis_batch < L + 1:
        raise ValueError(f"imis_batch must be an integer >= L + 1 = {L + 1}, got {imis_batch!r}.")
    if log_likelihood is None:
        log_likelihood = _gaussian_log_likelihood(noise_covariance, D)
    elif not callable(log_likelihood):
        raise TypeError("log_likelihood must be a callable (X_rep, F) -> (m,).")

    # Moments of the proposal (the uncorrected GLLiM posterior).
    w_mix = np.exp(log_w_mix)
    cov_comp = scales if dof is None else scales * (dof / (dof - 2.0))[..., None, None]
    cov_comp = np.broadcast_to(cov_comp if cov_comp.ndim == 4 else cov_comp[None], (n, K, L, L))
    prop_mean = np.einsum("nk,nkl->nl", w_mix, means)
    prop_cov = np.einsum("nk,nklm->nlm", w_mix, cov_comp)
    prop_cov += np.einsum("nk,nkl,nkm->nlm", w_mix, means, means)
    prop_cov -= prop_mean[:, :, None] * prop_mean[:, None, :]

    total_draws = n_draws + n_imis_steps * imis_batch
    rows_per_block = max(1, _FORWARD_BLOCK_ELEMENTS // max(1, total_draws * max(D, L)))
    samples = np.empty((n, total_draws, L))
    log_weights = np.empty((n, total_draws))
    for a in range(0, n, rows_per_block):
        sl = slice(a, min(a + rows_per_block, n))
        b = sl.stop - sl.start
        sc = scales if scales.ndim == 3 else scales[sl]
        dof_b = None if dof is None else (dof if np.ndim(dof) == 1 else dof[sl])
        draws = sample_mixture(w_mix[sl], means[sl], sc, n_draws, rng, dof_b)
        log_target = _log_target(X[sl], draws, forward_model, log_prior, log_likelihood)
        log_q0 = mixture_log_density(draws, log_w_mix[sl], means[sl], sc, dof_b)
        log_w = log_target - log_q0
        # IMIS: log of sum over added components of N(draw; centre_j, cov_j), per draw.
        added_centres, added_covs = [], []
        base_cov = prop_cov[sl] + 1e-12 * np.eye(L)
        jitter = 1e-9 * np.maximum(np.einsum("bll->b", base_cov) / L, 1e-300)
        for step in range(n_imis_steps):
            w, *_ = _weighted_moments(draws, log_w)
            centre, cov = _imis_component(draws, w, log_w, min(imis_batch, draws.shape[1]),
                                          base_cov, jitter)
            added_centres.append(centre)
            added_covs.append(cov)
            new = sample_mixture(np.ones((b, 1)), centre[:, None], cov[:, None], imis_batch,
                                 rng)
            draws = np.concatenate([draws, new], axis=1)
            log_target = np.concatenate(
                [log_target, _log_target(X[sl], new, forward_model, log_prior, log_likelihood)],
                axis=1,
            )
            # Mixture proposal: n_draws from q0 and imis_batch from each added Gaussian.
            n_so_far = n_draws + (step + 1) * imis_batch
            log_q0 = mixture_log_density(draws, log_w_mix[sl], means[sl], sc, dof_b)
            log_h = mixture_log_density(
                draws, np.zeros((b, step + 1)), np.stack(added_centres, axis=1),
                np.stack(added_covs, axis=1),
            )
            log_q = np.logaddexp(np.log(n_draws) + log_q0, np.log(imis_batch) + log_h)
            log_w = log_target - (log_q - np.log(n_so_far))
        samples[sl] = draws
        log_weights[sl] = log_w

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


# --------------------------------------------------------------------- estimator side
class PosteriorMixin:
    """Posterior tools shared by the GLLiM estimators.

    An estimator supplies ``predict_mixture``, and ``_predictive_components(X, *,
    feature_noise_var=None, feature_noise_cov=None)``: the predictive mixture's log
    weights (n, K), means (n, K, L), scale matrices ((K, L, L) or (n, K, L, L)) and
    degrees of freedom (``None`` for Gaussian components) as float64 numpy arrays, and
    the dtype of the predictions (what :func:`importance_sampling` and ``sample_y`` draw
    from).
    """

    @_dask.blockwise(shared=_dask.SHARED_NOISE)
    def predict_modes(self, X, n_modes=2, *, feature_noise_var=None, feature_noise_cov=None):
        """Posterior modes: the predictive mixture of each sample merged into ``n_modes``.

        Components are merged greedily by Runnalls' Kullback-Leibler bound, preserving
        weights, means and covariances (:func:`gllim_sk.posterior.merge_mixture`). In an
        ambiguous inverse problem, where several targets explain the same features, the
        merged components sit at the different answers while :meth:`predict` averages
        them.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Features.
        n_modes : int, default=2
            Largest number of modes M to return.
        feature_noise_var, feature_noise_cov : array-like, default=None
            Known observation noise, as in :meth:`predict_mixture`.

        Returns
        -------
        weights : ndarray of shape (n_samples, M')
            Mode weights, largest first (``M' = min(M, n_components)``).
        means : ndarray of shape (n_samples, M', n_targets)
            Mode locations.
        covariances : ndarray of shape (n_samples, M', n_targets, n_targets)
            Spread of each mode.

        Notes
        -----
        Each sample's modes depend on that sample alone: on a dask array of features the
        three outputs are lazy dask arrays, merged block by block of rows.
        """
        weights, means, covariances = self.predict_mixture(
            X, feature_noise_var=feature_noise_var, feature_noise_cov=feature_noise_cov
        )
        dtype = np.asarray(means).dtype
        out = merge_mixture(weights, means, covariances, n_modes)
        return tuple(a.astype(dtype, copy=False) for a in out)
