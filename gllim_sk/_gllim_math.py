"""Numerical core of GLLiM: EM steps and the forward mixture, in GEMM form.

Everything here works on features ``Xc`` that were centred once by the training mean, in
float64. The noise covariance Sigma_k is held either as variances (the diagonal family:
"diag", "spherical", "tied_diag", "tied_spherical") or as Cholesky factors (the full
family: "full", "tied"). All products with ``Xc`` are batched over components into one
matrix product of shape (n, D) x (D, K * m), so no (n, K, D) temporary and, for the
diagonal family, no D x D matrix is ever formed. The EM steps keep arrays indexed by
component and sample as (K, n), sample axis last: their elementwise work then runs over
long contiguous rows. Everything quadratic in y goes through the per-sample products of
y1 = [y, 1] (see :class:`Data`).

Notation (see the user guide): y (n, L) targets, x (n, D) features, K components,
``A`` (K, D, L) the target loadings, ``W`` (K, D, Lw) the latent loadings of the
partially-latent model, ``b`` (K, D) intercepts in centred coordinates, ``c`` (K, L)
target means, ``gamma`` (K, L, L) target covariances (always stored full here).
"""

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy.linalg import cho_solve, solve_triangular
from sklearn.utils.extmath import randomized_svd

LOG_2PI = np.log(2.0 * np.pi)
DIAG_FAMILY = ("diag", "spherical", "tied_diag", "tied_spherical")
FULL_FAMILY = ("full", "tied")
SPHERICAL_TYPES = ("spherical", "tied_spherical")
# Components whose total responsibility falls below this many samples are "empty".
EMPTY_COMPONENT_MASS = 1e-8
# Added to every component's mass so that no mixture weight is exactly zero.
_TINY_MASS = 10 * np.finfo(float).eps


@dataclass
class Noise:
    """Sigma_k for all components: variances (diagonal family) or Cholesky factors.

    ``var`` is (K, D) for the diagonal family (shared types are broadcast copies).
    ``chol`` is (K, D, D) for "full" and (1, D, D) for "tied" (lower triangular).
    """

    kind: str
    var: np.ndarray | None = None
    chol: np.ndarray | None = None

    @property
    def is_diag(self):
        return self.kind in DIAG_FAMILY

    def chol_of(self, k):
        return self.chol[0 if self.chol.shape[0] == 1 else k]

    def solve(self, k, M):
        """Sigma_k^-1 @ M for M of shape (D, m)."""
        if self.is_diag:
            return M / self.var[k][:, None]
        return cho_solve((self.chol_of(k), True), M, check_finite=False)

    def logdet(self, n_components):
        if self.is_diag:
            return np.log(self.var).sum(axis=1)
        diag = np.log(np.diagonal(self.chol, axis1=1, axis2=2)).sum(axis=1) * 2.0
        return np.broadcast_to(diag, (n_components,)).copy()

    def quad_features(self, Xc, sq, n_components):
        """x_n' Sigma_k^-1 x_n for all k, n: (K, n)."""
        if self.is_diag:
            if sq.shape[1] == 1:  # spherical types: sq holds squared row norms
                return (1.0 / self.var[:, :1]) @ sq.T
            return _matmul_transposed(sq, (1.0 / self.var).T)
        out = np.empty((n_components, Xc.shape[0]))
        for k in range(self.chol.shape[0]):
            z = solve_triangular(self.chol[k], Xc.T, lower=True, check_finite=False)
            out[k] = np.einsum("dn,dn->n", z, z)
        if self.chol.shape[0] == 1:  # tied: one factor for all components
            out[1:] = out[0]
        return out

    def dense(self, k):
        """Sigma_k as a dense (D, D) matrix (for small D and for users)."""
        if self.is_diag:
            return np.diag(self.var[k])
        lk = self.chol_of(k)
        return lk @ lk.T


def _matmul_transposed(a, b):
    """(a @ b).T as a C-contiguous array.

    Written straight into a Fortran-ordered buffer: no transposed copy, and OpenBLAS
    splits this orientation of a short-and-wide product across threads much better.
    """
    out = np.empty((a.shape[0], b.shape[1]), order="F")
    return np.matmul(a, b, out=out).T


def squared_features(Xc, covariance_type):
    """Per-sample squared statistics used by the x-terms: (n, D), or (n, 1) row norms."""
    if covariance_type in SPHERICAL_TYPES:
        return np.einsum("nd,nd->n", Xc, Xc)[:, None]
    if covariance_type in DIAG_FAMILY:
        return Xc * Xc
    return None


@dataclass
class Params:
    """Inverse GLLiM parameters in centred feature coordinates."""

    weights: np.ndarray  # (K,)
    c: np.ndarray  # (K, L)
    gamma: np.ndarray  # (K, L, L)
    A: np.ndarray  # (K, D, L)
    W: np.ndarray  # (K, D, Lw)
    b: np.ndarray  # (K, D)
    noise: Noise


@dataclass
class Data:
    """Training data in the forms the EM steps use, computed once per fit.

    ``quad_feats`` (n, Dq + P) holds, side by side, the squared features of the diagonal
    noise family (Dq = D; Dq = 1, the squared norms, for the spherical types; Dq = 0 for
    the full family) and the products y1_i y1_j (i <= j) of y1 = [y, 1], P of them. One
    product with it gives x' Sigma_k^-1 x together with every quadratic form in y
    (E-step), or every second moment that the M-step needs.
    """

    Xc: np.ndarray  # (n, D) centred features
    y: np.ndarray  # (n, L) centred targets
    y1: np.ndarray  # (L + 1, n): y' stacked over a row of ones
    quad_feats: np.ndarray  # (n, Dq + P)
    n_sq: int  # Dq
    # BLAS runs on one thread: the products over samples take the orientation that is
    # fastest there (OpenBLAS splits the other one better across threads).
    single_threaded: bool = False
    _feature_gram: np.ndarray | None = None

    def sample_sums(self, weights, M):
        """weights @ M, (m, n) x (n, p) -> (m, p): sums over samples."""
        if self.single_threaded:
            return weights @ M
        return (M.T @ weights.T).T

    @property
    def sq(self):
        """The squared features, (n, Dq)."""
        return self.quad_feats[:, : self.n_sq]

    @property
    def pairs(self):
        """The products y1_i y1_j, (n, P)."""
        return self.quad_feats[:, self.n_sq :]

    @property
    def feature_gram(self):
        """Xc' Xc / n, computed on first use (the "tied" M-step needs it every iteration)."""
        if self._feature_gram is None:
            self._feature_gram = self.Xc.T @ self.Xc / self.Xc.shape[0]
        return self._feature_gram

    def split(self, n_chunks):
        """The samples in ``n_chunks`` consecutive chunks (views where possible).

        The chunks are for EM on one BLAS thread each: they use its product orientation.
        """
        if n_chunks == 1:
            return [self]
        bounds = np.linspace(0, self.Xc.shape[0], n_chunks + 1).round().astype(int)
        return [
            Data(Xc=self.Xc[a:b], y=self.y[a:b], y1=np.ascontiguousarray(self.y1[:, a:b]),
                 quad_feats=self.quad_feats[a:b], n_sq=self.n_sq, single_threaded=True)
            for a, b in zip(bounds[:-1], bounds[1:], strict=True)
        ]


@lru_cache
def _triu(L1):
    """Row and column indices of the upper triangle of an L1 x L1 matrix, and the weight
    (1 on the diagonal, 2 off it) of each entry in a symmetric quadratic form."""
    rows, cols = np.triu_indices(L1)
    return rows, cols, np.where(rows == cols, 1.0, 2.0)


def prepare_data(Xc, y, covariance_type):
    """Build the :class:`Data` of centred features ``Xc`` (n, D) and targets ``y`` (n, L)."""
    n, L = y.shape
    y1 = np.empty((L + 1, n))
    y1[:L] = y.T
    y1[L] = 1.0
    rows, cols, _ = _triu(L + 1)
    n_sq = {"diag": Xc.shape[1], "tied_diag": Xc.shape[1], "spherical": 1,
            "tied_spherical": 1}.get(covariance_type, 0)
    quad_feats = np.empty((n, n_sq + rows.size))
    if n_sq == 1:
        np.einsum("nd,nd->n", Xc, Xc, out=quad_feats[:, 0])
    elif n_sq:
        np.multiply(Xc, Xc, out=quad_feats[:, :n_sq])
    np.multiply(y1[rows].T, y1[cols].T, out=quad_feats[:, n_sq:])
    return Data(Xc=Xc, y=y, y1=y1, quad_feats=quad_feats, n_sq=n_sq)


def _pair_weights(M):
    """Weights w_k (K, P) with w_k . pairs_n = y1_n' M_k y1_n for symmetric M (K, L1, L1)."""
    rows, cols, scale = _triu(M.shape[1])
    return M[:, rows, cols] * scale


def _unpack_pairs(sums, L1):
    """Symmetric (K, L1, L1) matrices from their upper triangles (K, P)."""
    rows, cols, _ = _triu(L1)
    out = np.empty((sums.shape[0], L1, L1))
    out[:, rows, cols] = sums
    out[:, cols, rows] = sums
    return out


def _target_quadratic(c, precision):
    """M_k with y1' M_k y1 = (y - c_k)' Gamma_k^-1 (y - c_k): (K, L + 1, L + 1)."""
    K, L = c.shape
    pc = np.einsum("kij,kj->ki", precision, c)
    M = np.empty((K, L + 1, L + 1))
    M[:, :L, :L] = precision
    M[:, :L, L] = -pc
    M[:, L, :L] = -pc
    M[:, L, L] = np.einsum("ki,ki->k", pc, c)
    return M


def target_log_density(data, c, gamma):
    """log N(y_n; c_k, Gamma_k) for all k, n: (K, n)."""
    precision, logdet, _ = _spd_inverse_and_logdet(gamma)
    quad = _matmul_transposed(data.pairs, _pair_weights(_target_quadratic(c, precision)).T)
    np.maximum(quad, 0.0, out=quad)  # the expanded form can dip below zero by rounding
    return -0.5 * (c.shape[1] * LOG_2PI + logdet[:, None] + quad)


def logsumexp(a, axis, keepdims=False):
    """log(sum(exp(a))) along ``axis``; a lean version for the hot loop."""
    top = a.max(axis=axis, keepdims=True)
    top = np.where(np.isfinite(top), top, 0.0)
    out = np.log(np.exp(a - top).sum(axis=axis, keepdims=True)) + top
    return out if keepdims else np.squeeze(out, axis=axis)


def _spd_inverse_and_logdet(M):
    """Inverse and log-determinant of a stack of small SPD matrices."""
    chol = np.linalg.cholesky(M)
    inv_chol = np.linalg.inv(chol)
    inv = np.swapaxes(inv_chol, -1, -2) @ inv_chol
    logdet = 2.0 * np.log(np.diagonal(chol, axis1=-2, axis2=-1)).sum(axis=-1)
    return inv, logdet, inv_chol


def _solved_stack(noise, M):
    """Sigma_k^-1 M_k for a stack M (K, D, m), returned as (K, D, m)."""
    if noise.is_diag:
        return M / noise.var[:, :, None]
    return np.stack([noise.solve(k, M[k]) for k in range(M.shape[0])])


@dataclass
class EStepPlan:
    """The parameter side of an E-step: computed once, shared by every chunk of samples."""

    cross: np.ndarray | None  # (D, m K), columns Sigma_k^-1 [A_k, b_k, W_k], component last
    quad_weights: np.ndarray  # (K, Dq + P) weights of the squared features and y1 pairs
    noise: Noise  # for x' Sigma_k^-1 x of the full family
    latent_cov: np.ndarray  # (K, Lw, Lw) Cov[w | x, y, Z = k]
    latent_cross: np.ndarray  # (Lw K, L1) W_k' Sigma_k^-1 [A_k, b_k], latent index first


def plan_e_step(params, n_sq):
    """The :class:`EStepPlan` of ``params`` for data with ``n_sq`` squared-feature columns."""
    K, D, Lw = params.W.shape
    L1 = params.c.shape[1] + 1
    m = L1 + Lw
    noise = params.noise
    # B_k = [A_k, b_k, W_k], held transposed (K, m, D); one (n, D) x (D, m K) product
    # gives B_k' Sigma_k^-1 x_n.
    Bt = np.concatenate(
        [np.swapaxes(params.A, 1, 2), params.b[:, None, :], np.swapaxes(params.W, 1, 2)], axis=1
    )
    if noise.is_diag:
        SBt = Bt / noise.var[:, None, :]
    else:
        SBt = np.swapaxes(_solved_stack(noise, np.swapaxes(Bt, 1, 2)), 1, 2)
    gram = Bt @ np.swapaxes(SBt, 1, 2)  # (K, m, m)
    cross = SBt.transpose(2, 1, 0).reshape(D, m * K) if D else None
    # log p(x, y, Z = k) = const_k - (x' S^-1 x - 2 x' S^-1 [A, b] y1 + y1' M_k y1) / 2,
    # where M_k gathers every term quadratic in y: [A, b]' S^-1 [A, b] and the target
    # density's (y - c)' G^-1 (y - c). All but the cross term come from one product with
    # [squared features, y1 pairs]; the pair y1_L y1_L = 1 carries const_k.
    gamma_prec, logdet_gamma, _ = _spd_inverse_and_logdet(params.gamma)
    M = gram[:, :L1, :L1] + _target_quadratic(params.c, gamma_prec)
    logdet = noise.logdet(K) + logdet_gamma
    if Lw:
        # Latent part: Woodbury on Sigma_k + W_k W_k'.
        latent_cov, neg_logdet_s, _ = _spd_inverse_and_logdet(
            np.eye(Lw)[None] + gram[:, L1:, L1:]
        )
        logdet += neg_logdet_s
    else:
        latent_cov = np.zeros((K, 0, 0))
    with np.errstate(divide="ignore"):
        const = np.log(params.weights) - 0.5 * ((D + L1 - 1) * LOG_2PI + logdet)
    weights = -0.5 * _pair_weights(M)
    weights[:, -1] += const
    if noise.is_diag:
        weights = np.concatenate([-0.5 / noise.var[:, :n_sq], weights], axis=1)
    latent_cross = gram[:, L1:, :L1].transpose(1, 0, 2).reshape(Lw * K, L1)
    return EStepPlan(cross=cross, quad_weights=weights, noise=noise, latent_cov=latent_cov,
                     latent_cross=latent_cross)


def e_step_chunk(data, plan):
    """E-step on the samples of ``data`` with a precomputed :class:`EStepPlan`.

    Returns ``log_prob`` (n,), ``resp`` (K, n) and ``latent_mean`` (Lw, K, n), as
    :func:`e_step` does.
    """
    y1 = data.y1
    L1, n = y1.shape
    K = plan.quad_weights.shape[0]
    Lw = plan.latent_cov.shape[1]
    log_joint = _matmul_transposed(data.quad_feats, plan.quad_weights.T)
    if not plan.noise.is_diag:
        log_joint -= 0.5 * plan.noise.quad_features(data.Xc, None, K)
    if plan.cross is not None:
        H = _matmul_transposed(data.Xc, plan.cross).reshape(L1 + Lw, K, n)
        log_joint += np.einsum("jkn,jn->kn", H[:L1], y1)
    if Lw:
        # t = W' S^-1 (x - A y - b) = W' S^-1 x - (W' S^-1 [A, b]) y1: (Lw, K, n)
        t = -(plan.latent_cross @ y1).reshape(Lw, K, n)
        if plan.cross is not None:
            t += H[L1:]
        latent_mean = np.einsum("klm,mkn->lkn", plan.latent_cov, t)
        log_joint += 0.5 * np.einsum("lkn,lkn->kn", t, latent_mean)
    else:
        latent_mean = np.zeros((0, K, n))

    top = log_joint.max(axis=0)
    if not np.isfinite(top).all():
        top[~np.isfinite(top)] = 0.0
    log_joint -= top
    # exp(-700) ~ 1e-304 is zero for the sums; clipping avoids libm's slow path.
    np.maximum(log_joint, -700.0, out=log_joint)
    resp = np.exp(log_joint, out=log_joint)
    total = resp.sum(axis=0)
    resp /= total
    log_prob = np.log(total)
    log_prob += top
    return log_prob, resp, latent_mean


def e_step(data, params):
    """Exact E-step of (hybrid) GLLiM.

    Arrays indexed by component and sample keep the sample axis last, so that the
    per-sample arithmetic runs over long contiguous rows.

    Returns
    -------
    log_prob : (n,) log p(x_n, y_n)
    resp : (K, n) p(Z_n = k | x_n, y_n)
    latent_mean : (Lw, K, n) E[w_n | x_n, y_n, Z_n = k]
    latent_cov : (K, Lw, Lw) Cov[w | x, y, Z = k]
    """
    plan = plan_e_step(params, data.n_sq)
    return (*e_step_chunk(data, plan), plan.latent_cov)


def _finalize_gamma(gamma_k, pis, target_covariance_type, reg):
    K, L, _ = gamma_k.shape
    if target_covariance_type == "diag":
        gamma_k = np.einsum("kii->ki", gamma_k)[:, :, None] * np.eye(L)[None]
    elif target_covariance_type == "spherical":
        gamma_k = np.einsum("kii->k", gamma_k)[:, None, None] / L * np.eye(L)[None]
    elif target_covariance_type == "tied":
        gamma_k = np.broadcast_to(np.einsum("k,kij->ij", pis, gamma_k), (K, L, L)).copy()
    gamma_k = 0.5 * (gamma_k + np.swapaxes(gamma_k, 1, 2))
    gamma_k.reshape(K, L * L)[:, :: L + 1] += reg  # the diagonals
    return gamma_k


def _finalize_diag_noise(var_k, pis, covariance_type, reg, var_floor):
    K, D = var_k.shape
    np.maximum(var_k, 0.0, out=var_k)  # cancellation in expanded moments
    if var_floor is not None:
        # Clipping is the constrained maximiser of the per-feature M-step objective.
        np.maximum(var_k, var_floor, out=var_k)
    if covariance_type == "spherical":
        var_k = np.repeat(var_k.mean(axis=1, keepdims=True), D, axis=1)
    elif covariance_type == "tied_diag":
        var_k = np.broadcast_to(pis @ var_k, (K, D)).copy()
    elif covariance_type == "tied_spherical":
        var_k = np.full((K, D), float(pis @ var_k.mean(axis=1)))
    return Noise(covariance_type, var=var_k + reg)


def _cholesky_with_floor(S, reg, eig_floor=None):
    S = 0.5 * (S + S.T)
    if eig_floor is not None:
        # Clipping eigenvalues is the constrained maximiser for a full covariance.
        vals, vecs = np.linalg.eigh(S)
        S = (vecs * np.maximum(vals, eig_floor)) @ vecs.T
    S[np.diag_indices_from(S)] += reg
    try:
        return np.linalg.cholesky(S)
    except np.linalg.LinAlgError:
        # Rounding made the matrix indefinite: project onto the PSD cone, then floor.
        vals, vecs = np.linalg.eigh(S)
        vals = np.maximum(vals, reg)
        return np.linalg.cholesky((vecs * vals) @ vecs.T)


def _solve_moments(Mzz, Mzx):
    """Mzz^+ @ Mzx per component: Cholesky when well conditioned, else pseudo-inverse."""
    try:
        chol = np.linalg.cholesky(Mzz)
        pivots = np.diagonal(chol, axis1=1, axis2=2).min(axis=1, initial=np.inf)
        scale = np.sqrt(np.diagonal(Mzz, axis1=1, axis2=2).max(axis=1, initial=0.0))
        if np.all(pivots > 1e-6 * scale):  # condition number below about 1e12
            inv_chol = np.linalg.inv(chol)
            return (np.swapaxes(inv_chol, 1, 2) @ inv_chol) @ Mzx
    except np.linalg.LinAlgError:
        pass
    return np.linalg.pinv(Mzz, rcond=1e-12, hermitian=True) @ Mzx


@dataclass
class SufficientStats:
    """Responsibility-weighted sums over samples: all that an M-step needs of the data.

    Sums over disjoint chunks of samples add up (``+``) to the sums over all of them.
    """

    mass: np.ndarray  # (K,) sums of r
    moments: np.ndarray  # (K, Dq + P) sums of r [squared features, y1 pairs]
    cross: np.ndarray  # (L1 + Lw, K, D) sums of r [y1, E w] x'
    latent_sum: np.ndarray  # (K, Lw) sums of r E[w]
    latent_y: np.ndarray  # (K, L, Lw) sums of r y E[w]'
    latent_second: np.ndarray  # (K, Lw, Lw) sums of r E[w] E[w]'
    feature_second: np.ndarray | None  # (K, D, D) sums of r x x' ("full" noise only)

    def __add__(self, other):
        return SufficientStats(**{
            name: None if value is None else value + getattr(other, name)
            for name, value in vars(self).items()
        })


def sufficient_stats(data, resp, latent_mean, covariance_type):
    """The :class:`SufficientStats` of responsibilities ``resp`` (K, n) on ``data``."""
    Xc, y1 = data.Xc, data.y1
    n, D = Xc.shape
    L1 = y1.shape[0]
    K = resp.shape[0]
    Lw = latent_mean.shape[0]
    # One product gives the second moments of the squared features and of y1 = [y, 1].
    moments = data.sample_sums(resp, data.quad_feats)
    # rz[j, k, n] = r_nk [y1_n, E[w_n | k]]_j; one (m K, n) x (n, D) product gives all
    # first-order cross moments with x (a mixture of y alone, D = 0, needs none).
    rz = np.empty((L1 + Lw, K, n))
    if D:
        np.multiply(y1[:, None, :], resp, out=rz[:L1])
    if Lw:
        ryw = rz[L1:]
        np.multiply(latent_mean, resp, out=ryw)
        latent_sum = ryw.sum(axis=2).T
        latent_y = (y1[:-1] @ ryw.reshape(Lw * K, n).T).reshape(L1 - 1, Lw, K)
        latent_y = latent_y.transpose(2, 0, 1)
        latent_second = np.matmul(ryw.transpose(1, 0, 2), latent_mean.transpose(1, 2, 0))
    else:
        latent_sum, latent_y, latent_second = (
            np.zeros((K, 0)), np.zeros((K, L1 - 1, 0)), np.zeros((K, 0, 0))
        )
    if D:
        cross = data.sample_sums(rz.reshape((L1 + Lw) * K, n), Xc).reshape(L1 + Lw, K, D)
    else:
        cross = np.zeros((L1 + Lw, K, 0))
    feature_second = None
    if covariance_type == "full":
        feature_second = np.stack([(Xc.T * resp[k]) @ Xc for k in range(K)])
    return SufficientStats(
        mass=resp.sum(axis=1), moments=moments, cross=cross, latent_sum=latent_sum,
        latent_y=latent_y, latent_second=latent_second, feature_second=feature_second,
    )


def m_step_from_stats(stats, latent_cov, n_samples, covariance_type, target_covariance_type,
                      reg_covar, *, weight_mass=None, feature_gram=None, var_floor=None,
                      return_raw=False):
    """M-step of (hybrid) GLLiM from :class:`SufficientStats`.

    ``weight_mass`` (K,), the total responsibilities that set the mixture weights,
    defaults to ``stats.mass``; :func:`m_step` passes the real ones when it gave empty
    components the moments of all samples. ``feature_gram`` (D, D), Xc' Xc / n, is needed
    by the "tied" noise only.
    """
    mass = stats.mass
    weight_mass = mass if weight_mass is None else weight_mass
    K = mass.shape[0]
    Lw = latent_cov.shape[1]
    L1 = stats.cross.shape[0] - Lw
    L = L1 - 1
    n_sq = stats.moments.shape[1] - L1 * (L1 + 1) // 2
    pis = (weight_mass + _TINY_MASS) / (n_samples + K * _TINY_MASS)

    # Moments of the augmented regressors z = [y, w].
    y_moments = _unpack_pairs(stats.moments[:, n_sq:], L1)  # sums of r y1 y1' (K, L1, L1)
    Lz = L + Lw
    z_sum = np.empty((K, Lz))
    z_sum[:, :L] = y_moments[:, :L, L]
    z_sum[:, L:] = stats.latent_sum
    Szz = np.empty((K, Lz, Lz))
    Szz[:, :L, :L] = y_moments[:, :L, :L]
    if Lw:
        Szz[:, :L, L:] = stats.latent_y
        Szz[:, L:, :L] = np.swapaxes(stats.latent_y, 1, 2)
        # E[w w' | k] adds the posterior covariance to the outer product of the means.
        Szz[:, L:, L:] = stats.latent_second + mass[:, None, None] * latent_cov
    Szz /= mass[:, None, None]
    zbar = z_sum / mass[:, None]  # (K, Lz)
    Mzz = Szz - zbar[:, :, None] * zbar[:, None, :]

    G = stats.cross
    K, D = G.shape[1:]
    xbar = G[L] / mass[:, None]  # (K, D)
    # Cross-covariances of z and x, (K, Lz, D): feature axis last, contiguous.
    Mzx = np.empty((K, Lz, D))
    np.divide(G[:L].transpose(1, 0, 2), mass[:, None, None], out=Mzx[:, :L])
    np.divide(G[L1:].transpose(1, 0, 2), mass[:, None, None], out=Mzx[:, L:])
    Mzx -= zbar[:, :, None] * xbar[:, None, :]

    # Minimum-norm least squares: exact when Mzz is invertible, finite when it is not.
    # The loadings come transposed, [A_k, W_k]' (K, Lz, D).
    loadings_t = _solve_moments(Mzz, Mzx) if D else np.zeros((K, Lz, 0))
    b = xbar - (zbar[:, None, :] @ loadings_t)[:, 0]
    explained = np.einsum("kld,kld->kd", loadings_t, Mzx)  # diag(A Mzx) per component

    gamma = _finalize_gamma(Mzz[:, :L, :L].copy(), pis, target_covariance_type, reg_covar)

    if covariance_type in DIAG_FAMILY:
        second = stats.moments[:, :n_sq] / mass[:, None]  # (K, D) or (K, 1)
        if n_sq == 1:  # spherical types: only the trace is needed
            D = xbar.shape[1]
            raw = (second[:, 0] - (xbar**2).sum(1) - explained.sum(1)) / D
            raw = np.repeat(raw[:, None], D, axis=1)
        else:
            raw = second - xbar**2 - explained
    elif covariance_type == "full":
        raw = stats.feature_second / mass[:, None, None]
        raw -= xbar[:, :, None] * xbar[:, None, :]
        raw -= np.swapaxes(loadings_t, 1, 2) @ Mzx
    else:  # tied
        raw = feature_gram - np.einsum("k,kd,ke->de", pis, xbar, xbar)
        raw -= np.einsum("k,kld,kle->de", pis, loadings_t, Mzx)
        raw = raw[None]
    result = Params(
        weights=pis / pis.sum(), c=zbar[:, :L].copy(), gamma=gamma,
        A=np.swapaxes(loadings_t[:, :L], 1, 2), W=np.swapaxes(loadings_t[:, L:], 1, 2), b=b,
        noise=None,
    )
    if return_raw:
        return result, raw
    result.noise = finalize_noise(raw, pis, covariance_type, reg_covar, var_floor)
    return result


def _with_empty_filled(resp, empty):
    """``resp`` with the rows of empty components set to 1 (a copy when any is empty)."""
    if not empty.any():
        return resp
    resp = resp.copy()
    resp[empty] = 1.0
    return resp


def m_step(data, resp, latent_mean, latent_cov, covariance_type, target_covariance_type,
           reg_covar, *, var_floor=None, return_raw=False):
    """M-step of (hybrid) GLLiM from responsibilities and latent posteriors.

    ``resp`` is (K, n); ``latent_mean`` (Lw, K, n) and ``latent_cov`` (K, Lw, Lw) may have
    Lw = 0. Components with vanishing total responsibility get the moments of all samples
    (and a negligible weight), which keeps every parameter finite and well conditioned.
    """
    mass = resp.sum(axis=1)
    resp = _with_empty_filled(resp, mass < EMPTY_COMPONENT_MASS)
    stats = sufficient_stats(data, resp, latent_mean, covariance_type)
    return m_step_from_stats(
        stats, latent_cov, data.Xc.shape[0], covariance_type, target_covariance_type,
        reg_covar, weight_mass=mass,
        feature_gram=data.feature_gram if covariance_type == "tied" else None,
        var_floor=var_floor, return_raw=return_raw,
    )


def finalize_noise(raw, pis, covariance_type, reg_covar, var_floor=None):
    """Turn raw per-component noise moments into a floored :class:`Noise`.

    ``var_floor`` (D,), used by the partially-latent model, bounds every noise variance
    (every eigenvalue, for full types: by its mean) from below before ``reg_covar`` is
    added.
    """
    if covariance_type in DIAG_FAMILY:
        return _finalize_diag_noise(raw.copy(), pis, covariance_type, reg_covar, var_floor)
    eig_floor = None if var_floor is None else float(np.mean(var_floor))
    chol = np.stack([_cholesky_with_floor(S.copy(), reg_covar, eig_floor) for S in raw])
    return Noise(covariance_type, chol=chol)


def _leading_right_singular(M, n_dirs, random_state):
    """Leading singular values and right singular vectors of M (m, D)."""
    m, D = M.shape
    if min(m, D) > 1000:
        _, s, vt = randomized_svd(
            M, n_dirs, n_iter=3, power_iteration_normalizer="QR", random_state=random_state
        )
        return s, vt
    # Eigen-decomposition of the smaller Gram matrix: one GEMM and a small eigh.
    if m <= D:
        vals, u = np.linalg.eigh(M @ M.T)
        vals, u = vals[::-1][:n_dirs], u[:, ::-1][:, :n_dirs]
        s = np.sqrt(np.maximum(vals, 0.0))
        vt = (u.T @ M) / np.where(s > 0, s, 1.0)[:, None]
        return s, vt
    vals, v = np.linalg.eigh(M.T @ M)
    return np.sqrt(np.maximum(vals[::-1][:n_dirs], 0.0)), v[:, ::-1][:, :n_dirs].T


def init_latent(Xc, y, resp, params, raw, n_latent, covariance_type, reg_covar, random_state,
                var_floor):
    """Initialise W_k by a weighted PCA of the residuals of the Lw = 0 fit.

    W_k = U (Lambda - s2)^(1/2) with U, Lambda the leading principal directions and
    variances of the weighted residuals x - A_k y - b_k and s2 the mean discarded
    variance (the probabilistic-PCA solution); the noise moments lose diag(W W^T) so that
    Sigma_k + W_k W_k^T keeps the residual variance.
    """
    K, D, _ = params.A.shape
    W = np.zeros((K, D, n_latent))
    # Each sample enters the PCA of its most responsible component only, which keeps the
    # initialisation at O(n D Lw) whatever K is; tiny components use their top samples.
    owner = resp.argmax(axis=0)
    min_rows = max(2 * n_latent + 2, 10)
    for k in range(K):
        r = resp[k]
        rows = np.flatnonzero(owner == k)
        if rows.size < min_rows:
            rows = np.argsort(r)[-min_rows:]
        weight = np.maximum(r[rows], np.finfo(float).tiny)
        sw = np.sqrt(weight / weight.sum())[:, None]
        resid = (Xc[rows] - y[rows] @ params.A[k].T - params.b[k]) * sw
        n_dirs = min(n_latent, *resid.shape)
        s, vt = _leading_right_singular(resid, n_dirs, random_state)
        W[k, :, :n_dirs] = ppca_loadings(s[:n_dirs] ** 2, vt[:n_dirs],
                                         np.einsum("nd,nd->", resid, resid))
    return with_latent_loadings(params, raw, W, covariance_type, reg_covar, var_floor)


def ppca_loadings(lam, vt, total):
    """Probabilistic-PCA loadings (D, n_dirs) from the leading variances ``lam`` and
    directions ``vt`` (n_dirs, D) of data with total variance ``total``."""
    D = vt.shape[1]
    s2 = max(total - lam.sum(), 0.0) / max(D - lam.size, 1)
    return vt.T * np.sqrt(np.maximum(lam - s2, 0.0))


def with_latent_loadings(params, raw, W, covariance_type, reg_covar, var_floor):
    """``params`` with latent loadings ``W`` (K, D, Lw) and the noise from the raw moments
    ``raw`` less W_k W_k', so that Sigma_k + W_k W_k' keeps the residual variance."""
    K = W.shape[0]
    raw = raw.copy()
    for k in range(K):
        if covariance_type in DIAG_FAMILY:
            raw[k] -= np.einsum("dl,dl->d", W[k], W[k])
        elif covariance_type == "full":
            raw[k] -= W[k] @ W[k].T
    if covariance_type == "tied":
        raw[0] -= np.einsum("k,kdl,kel->de", params.weights, W, W)
    params.W = W
    params.noise = finalize_noise(raw, params.weights, covariance_type, reg_covar, var_floor)
    return params


@dataclass
class Forward:
    """The forward mixture p(y | x) in centred coordinates, with prediction caches."""

    weights: np.ndarray  # (K,)
    means_x: np.ndarray  # (K, D) c*_k (centred)
    coef: np.ndarray  # (K, L, D) A*_k
    intercept: np.ndarray  # (K, L) b*_k (centred coordinates)
    cov: np.ndarray  # (K, L, L) Sigma*_k
    gemm: np.ndarray  # (D, (1 + Lw + L) * K): [Sigma^-1 c*, Sigma^-1 W, P], component last
    const: np.ndarray  # (K,) log pi - (D log 2pi + log|Gamma*_k| + c*' Sigma^-1 c*) / 2
    t0: np.ndarray  # (K, Lw) W' Sigma^-1 c*
    u0: np.ndarray  # (K, L) P' c*
    latent_cov: np.ndarray  # (K, Lw, Lw)
    noise: Noise


def forward_params(params):
    """Forward parameters of eq. (3), with the latent part integrated out."""
    K, D, L = params.A.shape
    Lw = params.W.shape[2]
    noise = params.noise
    SA = _solved_stack(noise, params.A)
    SW = _solved_stack(noise, params.W)
    latent_cov, neg_logdet_s, _ = _spd_inverse_and_logdet(
        np.eye(Lw)[None] + np.swapaxes(params.W, 1, 2) @ SW
    )
    # P_k = (Sigma_k + W_k W_k^T)^-1 A_k by Woodbury.
    P = SA - SW @ (latent_cov @ (np.swapaxes(SW, 1, 2) @ params.A))
    gamma_inv, logdet_gamma, _ = _spd_inverse_and_logdet(params.gamma)
    cov_inv = gamma_inv + np.swapaxes(params.A, 1, 2) @ P
    cov = np.linalg.inv(cov_inv)
    cov = 0.5 * (cov + np.swapaxes(cov, 1, 2))
    _, logdet_cov = np.linalg.slogdet(cov)
    coef = cov @ np.swapaxes(P, 1, 2)
    intercept = np.einsum(
        "kij,kj->ki", cov,
        np.einsum("kij,kj->ki", gamma_inv, params.c) - np.einsum("kdl,kd->kl", P, params.b),
    )
    means_x = np.einsum("kdl,kl->kd", params.A, params.c) + params.b
    Sc = _solved_stack(noise, means_x[:, :, None])[:, :, 0]
    logdet_gamma_star = noise.logdet(K) + neg_logdet_s + logdet_gamma - logdet_cov
    with np.errstate(divide="ignore"):
        log_w = np.log(params.weights)
    const = log_w - 0.5 * (D * LOG_2PI + logdet_gamma_star + np.einsum("kd,kd->k", Sc, means_x))
    stack = np.concatenate([Sc[:, :, None], SW, P], axis=2)  # (K, D, 1 + Lw + L)
    return Forward(
        weights=params.weights, means_x=means_x, coef=coef, intercept=intercept, cov=cov,
        gemm=np.ascontiguousarray(stack.transpose(1, 2, 0).reshape(D, -1)), const=const,
        t0=np.einsum("kdl,kd->kl", SW, means_x), u0=np.einsum("kdl,kd->kl", P, means_x),
        latent_cov=latent_cov, noise=noise,
    )


def forward_mixture(Xc, sq, fwd):
    """Posterior component log-weights log nu_k(x) (n, K) and means A*_k x + b*_k (n, K, L)."""
    n, D = Xc.shape
    K, L, _ = fwd.coef.shape
    Lw = fwd.t0.shape[1]
    # Component-by-sample layout, as in the E-step: H[j, k, n].
    H = _matmul_transposed(Xc, fwd.gemm).reshape(1 + Lw + L, K, n)
    t = H[1 : 1 + Lw] - fwd.t0.T[:, :, None]
    hu = H[1 + Lw :]
    u = hu - fwd.u0.T[:, :, None]
    quad = fwd.noise.quad_features(Xc, sq, K)
    quad -= 2.0 * H[0]
    if Lw:
        quad -= np.einsum("lkn,lkn->kn", t, np.einsum("klm,mkn->lkn", fwd.latent_cov, t))
    quad -= np.einsum("lkn,lkn->kn", u, np.einsum("klm,mkn->lkn", fwd.cov, u))
    # quad lacks the constant c*' Sigma^-1 c*, which sits in fwd.const.
    log_nu = fwd.const[:, None] - 0.5 * quad
    log_nu -= logsumexp(log_nu, axis=0, keepdims=True)
    means = np.einsum("klm,mkn->lkn", fwd.cov, hu) + fwd.intercept.T[:, :, None]
    return log_nu.T, means.transpose(2, 1, 0)


@dataclass
class EMState:
    """An E-step over chunks of samples, with the sufficient statistics of the next M-step."""

    mean_log_prob: float  # mean over all samples of log p(x_n, y_n)
    resp: list  # per chunk, (K, n_chunk)
    latent_mean: list  # per chunk, (Lw, K, n_chunk)
    latent_cov: np.ndarray  # (K, Lw, Lw)
    stats: SufficientStats | None  # summed over the chunks


def _map_chunks(func, items, pool):
    """``[func(*item) for item in items]``, all items but the first on the thread ``pool``.

    The calling thread runs the first item meanwhile: products and array arithmetic
    release the GIL, so the chunks run in parallel, on one BLAS thread each.
    """
    if pool is None or len(items) == 1:
        return [func(*item) for item in items]
    futures = [pool.submit(func, *item) for item in items[1:]]
    return [func(*items[0])] + [future.result() for future in futures]


def _total(parts):
    return sum(parts[1:], parts[0])


def e_step_with_stats(chunks, params, covariance_type, pool=None, with_stats=True):
    """E-step over ``chunks`` of the samples, each chunk also summing its statistics.

    Fusing the E-step with the statistics of the next M-step means one hand-off to the
    thread ``pool`` per EM iteration.
    """
    plan = plan_e_step(params, chunks[0].n_sq)

    def run(chunk):
        log_prob, resp, latent_mean = e_step_chunk(chunk, plan)
        stats = (sufficient_stats(chunk, resp, latent_mean, covariance_type)
                 if with_stats else None)
        return float(log_prob.sum()), resp, latent_mean, stats

    results = _map_chunks(run, [(chunk,) for chunk in chunks], pool)
    total, resp, latent_mean, stats = zip(*results, strict=True)
    return EMState(
        mean_log_prob=sum(total) / sum(r.shape[1] for r in resp), resp=list(resp),
        latent_mean=list(latent_mean), latent_cov=plan.latent_cov,
        stats=_total(stats) if with_stats else None,
    )


def state_from_resp(chunks, resp, covariance_type, pool=None):
    """An :class:`EMState` of given responsibilities ``resp`` (K, n), with no latent part.

    Its ``mean_log_prob`` is NaN: no E-step made it.
    """
    K = resp.shape[0]
    bounds = np.cumsum([0] + [chunk.Xc.shape[0] for chunk in chunks])
    resps = [resp[:, a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
    no_latent = [np.zeros((0, K, r.shape[1])) for r in resps]
    stats = _map_chunks(
        lambda chunk, r, w: sufficient_stats(chunk, r, w, covariance_type),
        list(zip(chunks, resps, no_latent, strict=True)), pool,
    )
    return EMState(mean_log_prob=np.nan, resp=resps, latent_mean=no_latent,
                   latent_cov=np.zeros((K, 0, 0)), stats=_total(stats))


def m_step_from_state(chunks, state, covariance_type, target_covariance_type, reg_covar, *,
                      pool=None, feature_gram=None, var_floor=None, return_raw=False):
    """The M-step after :func:`e_step_with_stats`; the same as :func:`m_step` on all samples."""
    stats = state.stats
    mass = stats.mass
    empty = mass < EMPTY_COMPONENT_MASS
    if empty.any():  # rare: recompute the statistics with the empty components filled
        stats = _total(_map_chunks(
            lambda chunk, r, w: sufficient_stats(
                chunk, _with_empty_filled(r, empty), w, covariance_type
            ),
            list(zip(chunks, state.resp, state.latent_mean, strict=True)), pool,
        ))
    return m_step_from_stats(
        stats, state.latent_cov, sum(r.shape[1] for r in state.resp), covariance_type,
        target_covariance_type, reg_covar, weight_mass=mass, feature_gram=feature_gram,
        var_floor=var_floor, return_raw=return_raw,
    )
