"""Mixtures of Gaussian or Student-t components: densities, draws, and the predictive
mixture that every prediction of the estimators consumes.

This private module holds what the estimators and :mod:`gllim_sk.posterior` share, so
that the estimators import nothing from the public posterior tools. ``dof`` is ``None``
for Gaussian components, otherwise the components' degrees of freedom, and ``scales``
are then the t scale matrices (covariance = scale * dof / (dof - 2), which exists only
for dof > 2).
"""

from dataclasses import dataclass

import numpy as np
from scipy.special import betaln, chdtri, gammaln, ndtri

from ._compat import array_namespace, swap_last, to_numpy
from ._compiled import kernel as compiled_kernel
from ._small_spd import spd_logdet

LOG_2PI = np.log(2.0 * np.pi)


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
    # Precisions and log-determinants of all the (tiny) scale matrices at once.
    logdet, prec = spd_logdet(scales, inverse=True)  # (n|1, K), (n|1, K, L, L)
    n, m, L = y.shape
    K = means.shape[1]
    # d' P d = y' P y - 2 y' P mu + mu' P mu, for all points and components as one
    # product per row: [pairs y_i y_j, y] times [packed P, -2 P mu]. Both sides are
    # centred on the row's mean of the component means first, so that the three terms
    # stay of the size of the distances (no cancellation far from the origin).
    centre = means.mean(axis=1, keepdims=True)
    yc, mc = y - centre, means - centre
    i, j = np.triu_indices(L)
    prec = np.broadcast_to(prec, (n, K, L, L))
    p_mu = np.einsum("nklj,nkj->nkl", prec, mc)
    right = np.concatenate([prec[..., i, j] * np.where(i == j, 1.0, 2.0), -2.0 * p_mu],
                           axis=2)  # (n, K, P + L)
    left = np.concatenate([yc[..., i] * yc[..., j], yc], axis=2)  # (n, m, P + L)
    delta = left @ np.swapaxes(right, 1, 2) + np.einsum("nkl,nkl->nk", mc, p_mu)[:, None]
    delta = np.maximum(delta, 0.0)  # rounding near a component's mean
    logdet = np.broadcast_to(logdet, (n, K))[:, None, :]
    if dof is not None:
        dof = np.broadcast_to(np.asarray(dof, dtype=float), (n, K))[:, None, :]
    terms = gaussian_or_t_log_density(delta, logdet, L, dof) + log_weights[:, None, :]
    # log-sum-exp over the components (rows of -inf weights only give -inf).
    top = terms.max(axis=2, keepdims=True)
    top = np.where(np.isfinite(top), top, 0.0)
    with np.errstate(divide="ignore"):
        return np.log(np.exp(terms - top).sum(axis=2)) + top[..., 0]


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



# --------------------------------------------------------------------- predictive mixture
def t_covariance_factor(dof):
    """dof / (dof - 2), the factor from a t's scale matrix to its covariance; ``inf``
    where dof <= 2 (the covariance does not exist)."""
    dof = np.asarray(dof, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(dof > 2.0, dof / np.where(dof > 2.0, dof - 2.0, 1.0), np.inf)


@dataclass(frozen=True)
class PredictiveMixture:
    """The predictive mixture p(y | x) of a block of rows: what every prediction consumes.

    ``log_weights`` (n, K), ``means`` (n, K, L) on the targets' scale, ``scales`` (K, L,
    L) shared by the rows or (n, K, L, L), ``dof`` ``None`` (Gaussian components) or the
    components' degrees of freedom, (K,) or (n, K); all in the namespace and on the
    device of the estimator's arrays. ``dtype`` is the dtype the predictions come back
    in (that of X).
    """

    log_weights: object
    means: object
    scales: object
    dof: object
    dtype: object

    @property
    def xp(self):
        return array_namespace(self.means)

    def covariances(self):
        """Component covariances (the scales for Gaussian components; ``inf`` for t
        components whose covariance does not exist)."""
        if self.dof is None:
            return self.scales
        return self.scales * t_covariance_factor(self.dof)[..., None, None]

    def moments(self, weights=None):
        """Mean (n, L) and covariance (n, L, L) of each row's mixture (``weights``: its
        weights exp(log_weights), when the caller has them)."""
        xp = self.xp
        nu = xp.exp(self.log_weights) if weights is None else weights
        n, K, L = self.means.shape
        covs = self.covariances()
        kernel = (compiled_kernel("mixture_moments", n * K) if xp is np and covs.ndim == 4
                  else None)
        if kernel is not None:
            mean, cov = np.empty((n, L)), np.empty((n, L, L))
            kernel(*(np.asarray(a, dtype=np.float64) for a in (nu, self.means, covs)),
                   mean, cov)
            return mean, cov
        # The sums over components as products of each row's weights (1, K) with its
        # (K, L) means and (K, L * L) covariances.
        mean = (nu[:, None, :] @ self.means)[:, 0, :]
        with np.errstate(invalid="ignore"):  # inf * 0 where a weight underflows
            if covs.ndim == 4:
                within = nu[:, None, :] @ xp.reshape(covs, (n, K, L * L))
            else:
                within = nu @ xp.reshape(covs, (K, L * L))
        within = xp.reshape(within, (n, L, L))
        diff = self.means - mean[:, None, :]
        # sum_k nu_k d_k d_k' as one product per row (a three-operand einsum is slower).
        cov = within + swap_last(xp, nu[:, :, None] * diff) @ diff
        return mean, 0.5 * (cov + swap_last(xp, cov))

    def to_numpy(self):
        """The same mixture as float64 numpy arrays."""
        def f64(a):
            return None if a is None else np.asarray(to_numpy(a), dtype=np.float64)
        return PredictiveMixture(f64(self.log_weights), f64(self.means), f64(self.scales),
                                 f64(self.dof), self.dtype)

    def rows(self, sl):
        """The mixture of the rows ``sl`` (a slice)."""
        def per_row(a, shared_ndim):
            return a if a is None or a.ndim == shared_ndim else a[sl]
        return PredictiveMixture(self.log_weights[sl], self.means[sl],
                                 per_row(self.scales, 3), per_row(self.dof, 1), self.dtype)


# --------------------------------------------------------------------- noise settings
def check_noise_matrix(cov, n_features, name, *, definite, n_samples=None):
    """A validated (D, D) noise covariance, or with ``n_samples`` also per-sample ones
    (n_samples, D, D): finite, symmetric (to rounding) and positive semi-definite, or
    positive definite with ``definite``; returned symmetrised."""
    cov = np.asarray(cov, dtype=np.float64)
    D = n_features
    if cov.shape != (D, D) and (n_samples is None or cov.shape != (n_samples, D, D)):
        per_sample = ("" if n_samples is None
                      else f" or (n_samples, {D}, {D}) = ({n_samples}, {D}, {D})")
        raise ValueError(f"{name} must have shape ({D}, {D}){per_sample}; got {cov.shape}.")
    if not np.all(np.isfinite(cov)):
        raise ValueError(f"{name} must be finite; it holds NaN or infinite values.")
    if cov.size == 0:
        return cov
    scale = np.maximum(np.abs(cov).max(axis=(-2, -1), keepdims=True), 1e-300)
    sym = np.swapaxes(cov, -1, -2)
    if np.any(np.abs(cov - sym) > 1e-12 * scale + 1e-10 * np.abs(sym)):
        raise ValueError(f"{name} must be a symmetric matrix.")
    cov = 0.5 * (cov + sym)
    low = np.linalg.eigvalsh(cov).min(axis=-1)
    rel = low / scale[..., 0, 0]
    worst = np.unravel_index(np.argmin(rel), rel.shape)
    where = f" (sample {worst[0]})" if cov.ndim == 3 else ""
    if definite and np.any(low <= 0):
        raise ValueError(f"{name} must be positive definite (its smallest eigenvalue is "
                         f"{low[worst]:.3g}{where}).")
    if np.any(rel < -1e-10):
        raise ValueError(f"{name} must be positive semi-definite (its smallest eigenvalue "
                         f"is {low[worst]:.3g}{where}).")
    return cov


def check_noise_variances(var, name, *, positive):
    """Validated variances: finite and non-negative, or positive with ``positive``."""
    var = np.asarray(var, dtype=np.float64)
    if not np.all(np.isfinite(var)):
        raise ValueError(f"{name} must be finite; it holds NaN or infinite values.")
    if positive and not np.all(var > 0):
        raise ValueError(f"{name} must hold positive variances; got a minimum of "
                         f"{var.min():.3g}.")
    if (var < 0).any():
        raise ValueError(f"{name} must hold non-negative variances; got a minimum of "
                         f"{var.min():.3g}.")
    return var
