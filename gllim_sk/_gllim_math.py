"""Numerical core of GLLiM: EM steps and the forward mixture, in GEMM form.

Everything here works on features ``Xc`` that were centred once by the training mean, in
float64. The noise covariance Sigma_k is held either as variances (the diagonal family:
"diag", "spherical", "tied_diag", "tied_spherical") or as Cholesky factors (the full
family: "full", "tied"). All products with ``Xc`` are batched over components into one
matrix product of shape (n, D) x (D, K * m), so no (n, K, D) temporary and, for the
diagonal family, no D x D matrix is ever formed.

Notation (see the user guide): y (n, L) targets, x (n, D) features, K components,
``A`` (K, D, L) the target loadings, ``W`` (K, D, Lw) the latent loadings of the
partially-latent model, ``b`` (K, D) intercepts in centred coordinates, ``c`` (K, L)
target means, ``gamma`` (K, L, L) target covariances (always stored full here).
"""

from dataclasses import dataclass

import numpy as np
from scipy.linalg import cho_solve, solve_triangular
from sklearn.utils.extmath import randomized_svd

LOG_2PI = np.log(2.0 * np.pi)
DIAG_FAMILY = ("diag", "spherical", "tied_diag", "tied_spherical")
FULL_FAMILY = ("full", "tied")
SPHERICAL_TYPES = ("spherical", "tied_spherical")
# Components whose total responsibility falls below this many samples are "empty".
EMPTY_COMPONENT_MASS = 1e-8


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
        """x_n^T Sigma_k^-1 x_n for all n, k: (n, K)."""
        if self.is_diag:
            if sq.shape[1] == 1:  # spherical types: sq holds squared row norms
                return sq @ (1.0 / self.var[:, :1]).T
            return sq @ (1.0 / self.var).T
        out = np.empty((Xc.shape[0], n_components))
        if self.chol.shape[0] == 1:
            z = solve_triangular(self.chol[0], Xc.T, lower=True, check_finite=False)
            out[:] = np.einsum("dn,dn->n", z, z)[:, None]
            return out
        for k in range(n_components):
            z = solve_triangular(self.chol[k], Xc.T, lower=True, check_finite=False)
            out[:, k] = np.einsum("dn,dn->n", z, z)
        return out

    def dense(self, k):
        """Sigma_k as a dense (D, D) matrix (for small D and for users)."""
        if self.is_diag:
            return np.diag(self.var[k])
        lk = self.chol_of(k)
        return lk @ lk.T


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


def target_log_density(y, c, gamma):
    """log N(y_n; c_k, Gamma_k) for all n, k: (n, K)."""
    K, L, _ = gamma.shape
    _, logdet, inv_chol = _spd_inverse_and_logdet(gamma)
    # z[n, i, k] = (Gamma_k^-1/2 (y_n - c_k))_i, from one (n, L) x (L, L K) product.
    z = (y @ inv_chol.transpose(2, 1, 0).reshape(L, L * K)).reshape(-1, L, K)
    z -= np.einsum("kij,kj->ik", inv_chol, c)[None]
    z *= z
    quad = z.sum(axis=1)
    return -0.5 * (L * LOG_2PI + logdet[None, :] + quad)


def _solved_stack(noise, M):
    """Sigma_k^-1 M_k for a stack M (K, D, m), returned as (K, D, m)."""
    if noise.is_diag:
        return M / noise.var[:, :, None]
    return np.stack([noise.solve(k, M[k]) for k in range(M.shape[0])])


def e_step(Xc, sq, y, params):
    """Exact E-step of (hybrid) GLLiM.

    Arrays indexed by sample and component keep the component axis last, so that the
    per-component arithmetic runs on contiguous (n, K) slices.

    Returns
    -------
    log_prob : (n,) log p(x_n, y_n)
    resp : (n, K) p(Z_n = k | x_n, y_n)
    latent_mean : (n, Lw, K) E[w_n | x_n, y_n, Z_n = k]
    latent_cov : (K, Lw, Lw) Cov[w | x, y, Z = k]
    """
    n, L = y.shape
    K, D, Lw = params.W.shape
    m = L + 1 + Lw
    # B_k = [A_k, b_k, W_k]; one GEMM gives x^T Sigma_k^-1 B_k for every n and k.
    B = np.concatenate([params.A, params.b[:, :, None], params.W], axis=2)
    SB = _solved_stack(params.noise, B)
    gram = np.swapaxes(B, 1, 2) @ SB  # (K, m, m)
    # Two GEMMs give E[n, j, k]: for the target columns j <= L, the cross terms of the
    # quadratic form ([y, 1]^T B^T S^-1 B - 2 x^T S^-1 B)_j; for the latent columns,
    # W^T S^-1 (x - A y - b) (S = Sigma_k, the same for every column of component k).
    sign = np.where(np.arange(m) <= L, -2.0, 1.0)
    y1 = np.concatenate([y, np.ones((n, 1))], axis=1)
    E = Xc @ (SB * sign).transpose(1, 2, 0).reshape(D, m * K)
    E += y1 @ (gram[:, : L + 1, :] * -np.sign(sign)).transpose(1, 2, 0).reshape(L + 1, m * K)
    E = E.reshape(n, m, K)
    quad = params.noise.quad_features(Xc, sq, K)
    quad += np.einsum("njk,nj->nk", E[:, : L + 1, :], y1)
    logdet = params.noise.logdet(K)

    if Lw:
        # Latent part: Woodbury on Sigma_k + W_k W_k^T.
        latent_prec = np.eye(Lw)[None] + gram[:, L + 1 :, L + 1 :]
        latent_cov, neg_logdet_s, _ = _spd_inverse_and_logdet(latent_prec)
        t = E[:, L + 1 :, :]  # W_k^T Sigma_k^-1 (x_n - A_k y_n - b_k): (n, Lw, K)
        # Batched BLAS over components (K, n, Lw) @ (K, Lw, Lw): faster than an einsum.
        latent_mean = np.ascontiguousarray(
            np.matmul(t.transpose(2, 0, 1), latent_cov).transpose(1, 2, 0)
        )
        quad -= np.einsum("nlk,nlk->nk", t, latent_mean)
        logdet += neg_logdet_s
    else:
        latent_mean = np.zeros((n, 0, K))
        latent_cov = np.zeros((K, 0, 0))
    np.maximum(quad, 0.0, out=quad)  # expanded forms can dip below zero by rounding

    with np.errstate(divide="ignore"):
        log_w = np.log(params.weights)
    log_joint = target_log_density(y, params.c, params.gamma)
    log_joint += log_w[None, :] - 0.5 * (D * LOG_2PI + logdet[None, :] + quad)
    # Column-wise max and a GEMV sum: faster than reductions over a short axis.
    top = log_joint[:, 0].copy()
    for k in range(1, K):
        np.maximum(top, log_joint[:, k], out=top)
    top[~np.isfinite(top)] = 0.0
    shifted = log_joint - top[:, None]
    # exp(-700) ~ 1e-304 is zero for the sums; clipping avoids libm's slow path.
    np.maximum(shifted, -700.0, out=shifted)
    resp = np.exp(shifted, out=shifted)
    total = resp @ np.ones(K)
    resp /= total[:, None]
    return np.log(total) + top, resp, latent_mean, latent_cov


def _finalize_gamma(gamma_k, pis, target_covariance_type, reg):
    K, L, _ = gamma_k.shape
    if target_covariance_type == "diag":
        gamma_k = np.einsum("kii->ki", gamma_k)[:, :, None] * np.eye(L)[None]
    elif target_covariance_type == "spherical":
        gamma_k = np.einsum("kii->k", gamma_k)[:, None, None] / L * np.eye(L)[None]
    elif target_covariance_type == "tied":
        gamma_k = np.broadcast_to(np.einsum("k,kij->ij", pis, gamma_k), (K, L, L)).copy()
    gamma_k = 0.5 * (gamma_k + np.swapaxes(gamma_k, 1, 2))
    gamma_k[:, np.arange(L), np.arange(L)] += reg
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


def _solve_moments(Mxz, Mzz):
    """Mxz @ Mzz^+ per component: Cholesky when well conditioned, else pseudo-inverse."""
    try:
        chol = np.linalg.cholesky(Mzz)
        pivots = np.diagonal(chol, axis1=1, axis2=2).min(axis=1, initial=np.inf)
        scale = np.sqrt(np.diagonal(Mzz, axis1=1, axis2=2).max(axis=1, initial=0.0))
        if np.all(pivots > 1e-6 * scale):  # condition number below about 1e12
            inv_chol = np.linalg.inv(chol)
            return (Mxz @ np.swapaxes(inv_chol, 1, 2)) @ inv_chol
    except np.linalg.LinAlgError:
        pass
    return Mxz @ np.linalg.pinv(Mzz, rcond=1e-12, hermitian=True)


def m_step(Xc, sq, y, resp, latent_mean, latent_cov, covariance_type,
           target_covariance_type, reg_covar, *, var_floor=None, return_raw=False):
    """M-step of (hybrid) GLLiM from responsibilities and latent posteriors.

    ``latent_mean`` (n, Lw, K) and ``latent_cov`` (K, Lw, Lw) may have Lw = 0.
    Components with vanishing total responsibility get the moments of all samples
    (and a negligible weight), which keeps every parameter finite and well conditioned.
    """
    n, D = Xc.shape
    L = y.shape[1]
    K = resp.shape[1]
    Lw = latent_mean.shape[1]
    ones = np.ones(n)
    mass = ones @ resp
    pis = (mass + 10 * np.finfo(float).eps) / (n + 10 * K * np.finfo(float).eps)
    empty = mass < EMPTY_COMPONENT_MASS
    if empty.any():
        resp = resp.copy()
        resp[:, empty] = 1.0
        mass = ones @ resp

    # Augmented regressors z = [y, w] (component axis last): moments per component.
    Lz = L + Lw
    z = np.concatenate([np.broadcast_to(y[:, :, None], (n, L, K)), latent_mean], axis=1)
    rz = np.concatenate([resp[:, None, :], resp[:, None, :] * z], axis=1)  # (n, 1 + Lz, K)
    rz2 = rz.reshape(n, (1 + Lz) * K)
    zbar = ((ones @ rz2).reshape(1 + Lz, K)[1:] / mass).T  # (K, Lz)
    Szz = np.empty((K, Lz, Lz))
    yy = (y[:, :, None] * y[:, None, :]).reshape(n, L * L)
    Szz[:, :L, :L] = (yy.T @ resp).reshape(L, L, K).transpose(2, 0, 1)
    if Lw:
        ryw = rz[:, 1 + L :, :]  # r_nk E[w_n | k]: (n, Lw, K)
        Syw = (y.T @ ryw.reshape(n, Lw * K)).reshape(L, Lw, K).transpose(2, 0, 1)
        Szz[:, :L, L:] = Syw
        Szz[:, L:, :L] = np.swapaxes(Syw, 1, 2)
        Szz[:, L:, L:] = np.matmul(ryw.transpose(2, 1, 0), latent_mean.transpose(2, 0, 1))
    Szz[:, L:, L:] += mass[:, None, None] * latent_cov  # posterior covariance, weighted by mass
    Szz /= mass[:, None, None]
    Mzz = Szz - zbar[:, :, None] * zbar[:, None, :]

    # One GEMM for all first-order cross moments with x.
    G = (Xc.T @ rz2).reshape(D, 1 + Lz, K)
    xbar = (G[:, 0, :] / mass).T  # (K, D)
    Mxz = G[:, 1:, :].transpose(2, 0, 1) / mass[:, None, None]
    Mxz -= xbar[:, :, None] * zbar[:, None, :]

    # Minimum-norm least squares: exact when Mzz is invertible, finite when it is not.
    A_full = _solve_moments(Mxz, Mzz)
    b = xbar - np.einsum("kdl,kl->kd", A_full, zbar)
    explained = np.einsum("kdl,kdl->kd", A_full, Mxz)  # diag(A Mzx) per component

    gamma = Mzz[:, :L, :L].copy()
    gamma = _finalize_gamma(gamma, pis, target_covariance_type, reg_covar)

    if covariance_type in DIAG_FAMILY:
        second = (resp.T @ sq) / mass[:, None]  # (K, D) or (K, 1)
        if sq.shape[1] == 1:  # spherical types: only the trace is needed
            raw = (second[:, 0] - (xbar**2).sum(1) - explained.sum(1)) / D
            raw_var = np.repeat(raw[:, None], D, axis=1)
        else:
            raw_var = second - xbar**2 - explained
        raw = raw_var
    elif covariance_type == "full":
        raw = np.empty((K, D, D))
        for k in range(K):
            Sxx = (Xc.T * resp[:, k]) @ Xc / mass[k]
            raw[k] = Sxx - np.outer(xbar[k], xbar[k]) - A_full[k] @ Mxz[k].T
    else:  # tied
        raw = Xc.T @ Xc / n - np.einsum("k,kd,ke->de", pis, xbar, xbar)
        raw -= np.einsum("k,kdl,kel->de", pis, A_full, Mxz)
        raw = raw[None]
    result = Params(
        weights=pis / pis.sum(), c=zbar[:, :L].copy(), gamma=gamma, A=A_full[:, :, :L],
        W=A_full[:, :, L:], b=b, noise=None,
    )
    if return_raw:
        return result, raw
    result.noise = finalize_noise(raw, pis, covariance_type, reg_covar, var_floor)
    return result


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
    raw = raw.copy()
    # Each sample enters the PCA of its most responsible component only, which keeps the
    # initialisation at O(n D Lw) whatever K is; tiny components use their top samples.
    owner = resp.argmax(axis=1)
    min_rows = max(2 * n_latent + 2, 10)
    for k in range(K):
        r = resp[:, k]
        rows = np.flatnonzero(owner == k)
        if rows.size < min_rows:
            rows = np.argsort(r)[-min_rows:]
        weight = np.maximum(r[rows], np.finfo(float).tiny)
        sw = np.sqrt(weight / weight.sum())[:, None]
        resid = (Xc[rows] - y[rows] @ params.A[k].T - params.b[k]) * sw
        n_dirs = min(n_latent, *resid.shape)
        s, vt = _leading_right_singular(resid, n_dirs, random_state)
        s, vt = s[:n_dirs], vt[:n_dirs]
        lam = s**2
        total = np.einsum("nd,nd->", resid, resid)
        s2 = max(total - lam.sum(), 0.0) / max(D - n_dirs, 1)
        W[k, :, :n_dirs] = vt.T * np.sqrt(np.maximum(lam - s2, 0.0))
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
    gemm: np.ndarray  # (D, K * (1 + Lw + L)) stacked [Sigma^-1 c*, Sigma^-1 W, P]
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
        gemm=np.ascontiguousarray(stack.transpose(1, 0, 2).reshape(D, -1)), const=const,
        t0=np.einsum("kdl,kd->kl", SW, means_x), u0=np.einsum("kdl,kd->kl", P, means_x),
        latent_cov=latent_cov, noise=noise,
    )


def forward_mixture(Xc, sq, fwd):
    """Posterior component log-weights log nu_k(x) (n, K) and means A*_k x + b*_k (n, K, L)."""
    n = Xc.shape[0]
    K, L, _ = fwd.coef.shape
    Lw = fwd.t0.shape[1]
    H = (Xc @ fwd.gemm).reshape(n, K, 1 + Lw + L)
    t = H[:, :, 1 : 1 + Lw] - fwd.t0[None]
    hu = H[:, :, 1 + Lw :]
    u = hu - fwd.u0[None]
    quad = fwd.noise.quad_features(Xc, sq, K) - 2.0 * H[:, :, 0]
    quad -= np.einsum("nkm,nkm->nk", np.einsum("nkl,klm->nkm", t, fwd.latent_cov), t)
    quad -= np.einsum("nkm,nkm->nk", np.einsum("nkl,klm->nkm", u, fwd.cov), u)
    # quad lacks the constant c*' Sigma^-1 c*, which sits in fwd.const.
    log_nu = fwd.const[None, :] - 0.5 * quad
    log_nu -= logsumexp(log_nu, axis=1, keepdims=True)
    means = np.einsum("klm,nkm->nkl", fwd.cov, hu) + fwd.intercept[None]
    return log_nu, means
