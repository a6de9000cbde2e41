"""The forward mixture p(y | x) = sum_k nu_k(x) N(y; A*_k x + b*_k, Sigma*_k) of GLLiM.

:class:`Forward` holds it with the caches that prediction uses; :class:`ForwardMixin`
(a part of :class:`~gllim_sk._gllim_math.GLLiMModel`, which supplies its ``noise``
structure) makes it from the inverse parameters (eq. (3) of Lathuilière et al., 2017, by
the Woodbury identity: no D x D matrix for the diagonal noise family), evaluates it on
centred features and, with known observation noise, conditions on x + e.
"""

from dataclasses import dataclass

import numpy as np

from ._compat import array_namespace, concat, einsum, eye, permute, reshape, swap_last
from ._compiled import kernel as compiled_kernel
from ._compiled import run_noisy_diagonal
from ._kernels import (
    LOG_2PI,
    _matmul_transposed,
    _to_float64,
    contiguous,
    large_empty,
    logsumexp,
    spd_inverse_and_logdet,
)
from ._small_spd import MAX_DIM, factor_entries, inverse_entries, logdet_entries, spd_logdet

# Small matrices (rows x components) per block of rows of the noisy forward mixture.
_NOISY_BLOCK = 8192


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
    logdet_x: np.ndarray  # (K,) log|Gamma*_k|, Gamma*_k = Sigma_k + W_k W_k' + A_k Gamma_k A_k'
    t0: np.ndarray  # (K, Lw) W' Sigma^-1 c*
    u0: np.ndarray  # (K, L) P' c*
    latent_cov: np.ndarray  # (K, Lw, Lw)
    noise: np.ndarray


class ForwardMixin:
    """The forward mixture of a model with a noise structure ``self.noise``."""

    def forward(self, params):
        """Forward parameters of eq. (3), with the latent part integrated out."""
        xp = array_namespace(params.A)
        K, D, L = params.A.shape
        Lw = params.W.shape[2]
        noise = params.noise
        SA = self.noise.solve(noise, params.A)
        SW = self.noise.solve(noise, params.W)
        latent_cov, neg_logdet_s, _ = spd_inverse_and_logdet(
            eye(xp, Lw, params.A)[None, ...] + swap_last(xp, params.W) @ SW
        )
        # P_k = (Sigma_k + W_k W_k^T)^-1 A_k by Woodbury.
        P = SA - SW @ (latent_cov @ (swap_last(xp, SW) @ params.A))
        gamma_inv, logdet_gamma, _ = spd_inverse_and_logdet(params.gamma)
        cov_inv = gamma_inv + swap_last(xp, params.A) @ P
        cov = xp.linalg.inv(cov_inv)
        cov = 0.5 * (cov + swap_last(xp, cov))
        _, logdet_cov = xp.linalg.slogdet(cov)
        coef = cov @ swap_last(xp, P)
        intercept = einsum(
            xp, "kij,kj->ki", cov,
            einsum(xp, "kij,kj->ki", gamma_inv, params.c)
            - einsum(xp, "kdl,kd->kl", P, params.b),
        )
        means_x = einsum(xp, "kdl,kl->kd", params.A, params.c) + params.b
        Sc = self.noise.solve(noise, means_x[:, :, None])[:, :, 0]
        logdet_gamma_star = self.noise.logdet(noise, K) + neg_logdet_s + logdet_gamma - logdet_cov
        with np.errstate(divide="ignore"):
            log_w = xp.log(params.weights)
        const = log_w - 0.5 * (D * LOG_2PI + logdet_gamma_star
                               + einsum(xp, "kd,kd->k", Sc, means_x))
        stack = concat(xp, [Sc[:, :, None], SW, P], axis=2)  # (K, D, 1 + Lw + L)
        gemm = reshape(xp, permute(xp, stack, (1, 2, 0)), (D, -1))
        return Forward(
            weights=params.weights, means_x=means_x, coef=coef, intercept=intercept, cov=cov,
            gemm=contiguous(gemm), const=const,
            logdet_x=logdet_gamma_star,
            t0=einsum(xp, "kdl,kd->kl", SW, means_x), u0=einsum(xp, "kdl,kd->kl", P, means_x),
            latent_cov=latent_cov, noise=noise,
        )

    def forward_mixture(self, Xc, fwd):
        """Posterior log-weights log nu_k(x) (n, K) and means A*_k x + b*_k (n, K, L)."""
        xp = array_namespace(Xc)
        log_nu, means = self.forward_terms(Xc, fwd)
        log_nu -= logsumexp(log_nu, axis=0, keepdims=True)
        return log_nu.T, permute(xp, means, (2, 1, 0))

    def forward_terms(self, Xc, fwd):
        """Unnormalised log nu_k(x) = log pi_k + log N(x; c*_k, Gamma*_k) (K, n), and the
        means A*_k x + b*_k as (L, K, n), in float64 (float32 features: the products over
        samples run in float32)."""
        xp = array_namespace(Xc)
        if self.noise.dense_quadratic:  # full noise kinds (small D): products in float64
            Xc = _to_float64(Xc)
        n, D = Xc.shape
        K, L, _ = fwd.coef.shape
        Lw = fwd.t0.shape[1]
        gemm = fwd.gemm if Xc.dtype == fwd.gemm.dtype else xp.astype(fwd.gemm, Xc.dtype)
        # Component-by-sample layout, as in the E-step: H[j, k, n].
        H = _to_float64(reshape(xp, _matmul_transposed(Xc, gemm), (1 + Lw + L, K, n)))
        t = H[1 : 1 + Lw, ...] - fwd.t0.T[:, :, None]
        hu = H[1 + Lw :, ...]
        u = hu - fwd.u0.T[:, :, None]
        if self.noise.dense_quadratic:
            quad = self.noise.quad_features(fwd.noise, _to_float64(Xc), None, K)
        else:
            sq = self.noise.squared_features(Xc)
            noise = fwd.noise if Xc.dtype == fwd.noise.dtype else xp.astype(fwd.noise, Xc.dtype)
            quad = _to_float64(self.noise.quad_features(noise, Xc, sq, K))
        quad -= 2.0 * H[0, ...]
        if Lw:
            quad -= einsum(xp, "lkn,lkn->kn", t, einsum(xp, "klm,mkn->lkn", fwd.latent_cov, t))
        quad -= einsum(xp, "lkn,lkn->kn", u, einsum(xp, "klm,mkn->lkn", fwd.cov, u))
        # quad lacks the constant c*' Sigma^-1 c*, which sits in fwd.const.
        log_nu = fwd.const[:, None] - 0.5 * quad
        means = einsum(xp, "klm,mkn->lkn", fwd.cov, hu) + fwd.intercept.T[:, :, None]
        return log_nu, means

    def noisy_forward_terms(self, params, Xc, noise_var=None, noise_cov=None, offset=None,
                            out=None):
        """The forward mixture when the observed features carry known extra noise.

        The observations are x + e, e ~ N(0, S), so Sigma_k becomes Sigma_k + S in
        Gamma*_k and in the star parameters. ``noise_var`` holds variances, (1, D) shared
        or (n, D) per sample; ``noise_cov`` covariances, (D, D) shared or (n, D, D) per
        sample. The latent factors join the targets, z = [y, w] with prior
        N([c_k, 0], diag(Gamma_k, I)), and y's block of the posterior of z is the answer.

        Returns the unnormalised log gating weights log pi_k + log N(x; c*_k, Gamma*_k + S)
        (K, n), the component means (n, K, L) and covariances (n, K, L, L), in centred
        coordinates; ``offset`` (L,), if given, is added to the means (the targets' mean:
        means on the targets' scale). ``out``, if given, is the pair of arrays (n, K, L)
        and (n, K, L, L) that the means and covariances are written into (and returned).

        The posterior of z given x under component k has the precision
        P = prior precision + Az' V^-1 Az with V = Sigma_k + S, Az = [A_k, W_k] (the
        information form of the Woodbury identity: only (L + Lw)-square matrices are
        factorised per sample), and log|Gamma*_k + S| = log|V| + log|Gamma_k| + log|P|
        (the determinant lemma). With a diagonal Sigma_k and variances S, V is diagonal
        and the cost is O(n K D (L + Lw)^2); otherwise V is a dense D x D matrix,
        factorised once per component for a shared S and once per sample and component
        for per-sample S. Rows run in blocks (all components at once) whose small
        factorisations stay in cache (:func:`~gllim_sk._small_spd.spd_logdet`).
        """
        n, D = Xc.shape
        K, _, L = params.A.shape
        Lw = params.W.shape[2]
        Lz = L + Lw
        Az = np.concatenate([params.A, params.W], axis=2)  # (K, D, Lz)
        gamma_inv, logdet_gamma, _ = spd_inverse_and_logdet(params.gamma)
        prior_prec = np.zeros((K, 1, Lz, Lz))
        prior_prec[:, 0, :L, :L] = gamma_inv
        prior_prec[:, 0, L:, L:] = np.eye(Lw)
        means_x = np.einsum("kdl,kl->kd", params.A, params.c) + params.b
        diagonal = noise_cov is None and not self.noise.dense_quadratic
        per_sample = (noise_cov.ndim == 3 and noise_cov.shape[0] > 1 if noise_cov is not None
                      else noise_var.shape[0] > 1)
        with np.errstate(divide="ignore"):
            log_w = np.log(params.weights)
        if diagonal:
            sigma = np.broadcast_to(params.noise, (K, D))
            # Az' V^-1 Az for every row as one product with V^-1 (no (m, D, Lz) array).
            pairs = (Az[:, :, :, None] * Az[:, :, None, :]).reshape(K, D, Lz * Lz)
        else:
            sigma = np.stack([self.noise.dense(params.noise, k) for k in range(K)])
            if noise_cov is None:
                noise_cov = noise_var[:, :, None] * np.eye(D)
            elif noise_cov.ndim == 2:
                noise_cov = noise_cov[None]

        def noise_terms(S):
            """V^-1 (K, m, D[, D]), log|V| + log|Gamma| (K, m) and the posterior
            precisions P (K, m, Lz, Lz), for the noises S of m rows."""
            if diagonal:
                V = sigma[:, None, :] + S[None]
                inv_V = 1.0 / V
                gram = np.matmul(inv_V, pairs).reshape(K, -1, Lz, Lz)
                logdet_V = np.log(V).sum(axis=2)
            else:
                logdet_V, inv_V = spd_logdet(sigma[:, None] + S[None], inverse=True)
                gram = np.swapaxes(Az, 1, 2)[:, None] @ (inv_V @ Az[:, None])
            return inv_V, logdet_V + logdet_gamma[:, None], prior_prec + gram

        noise = noise_var if diagonal else noise_cov
        if diagonal and per_sample and Lz <= MAX_DIM:
            return _noisy_diagonal_rows(Xc, noise, sigma, Az, means_x, prior_prec[:, 0],
                                        log_w - 0.5 * (D * LOG_2PI + logdet_gamma), params.c,
                                        offset, out)
        if not per_sample:
            inv_V, logdet_x, precision = noise_terms(noise)
            logdet_P, post_cov = spd_logdet(precision, inverse=True)
            logdet_x = logdet_x + logdet_P
        log_nu = np.empty((K, n))
        means, covs = _outputs(out, n, K, L)
        rows = max(1, _NOISY_BLOCK // K)
        for a in range(0, n, rows):
            sl = slice(a, min(a + rows, n))
            if per_sample:
                inv_V, logdet_x, precision = noise_terms(noise[sl])
            r = Xc[None, sl] - means_x[:, None]  # (K, m, D)
            Vr = r * inv_V if diagonal else (inv_V @ r[..., None])[..., 0]
            u = np.matmul(Vr, Az)  # (K, m, Lz)
            if per_sample:
                logdet_P, post_cov, shift = spd_logdet(precision, inverse=True, rhs=u)
                log_det = logdet_x + logdet_P
            else:
                shift = (post_cov @ u[..., None])[..., 0]
                log_det = logdet_x
            delta = np.einsum("kmd,kmd->km", r, Vr) - np.einsum("kml,kml->km", u, shift)
            log_nu[:, sl] = log_w[:, None] - 0.5 * (D * LOG_2PI + log_det + delta)
            means[sl] = np.swapaxes(params.c[:, None] + shift[..., :L], 0, 1)
            covs[sl] = np.swapaxes(post_cov[..., :L, :L], 0, 1)
        if offset is not None:
            means += offset
        return log_nu, means, covs


def _outputs(out, n, K, L):
    """The arrays of the component means (n, K, L) and covariances (n, K, L, L): ``out``
    if given (checked), else new ones."""
    if out is None:
        return large_empty((n, K, L)), large_empty((n, K, L, L))
    means, covs = out
    if means.shape != (n, K, L) or covs.shape != (n, K, L, L):
        raise ValueError(f"out must hold arrays of shapes {(n, K, L)} and {(n, K, L, L)}; "
                         f"got {means.shape} and {covs.shape}.")
    return means, covs


def _noisy_diagonal_rows(Xc, S, sigma, Az, means_x, prior_prec, const, c, offset=None,
                         out=None, compiled=True):
    """:meth:`ForwardMixin.noisy_forward_terms` for diagonal Sigma_k and per-row
    variances S (n, D): the same quantities, each row block held entry by entry.

    The sums over the D features are products, per component, of (K, D, m) arrays of a
    block of m rows; their results are turned into arrays (m, K), one per entry, so
    that the small posterior precisions are factorised without moving them into a
    batch of matrices first (:func:`~gllim_sk._small_spd.factor_entries`), and the
    outputs (n, K, ...) are written from them by plain transpositions. ``const`` (K,)
    holds log pi_k - (D log 2 pi + log|Gamma_k|) / 2; ``offset`` (L,), if given, is added
    to the means; ``out``, if given, holds the arrays of the means and covariances.
    """
    n, D = Xc.shape
    K, _, Lz = Az.shape
    L = c.shape[1]
    lower = [(i, j) for i in range(Lz) for j in range(i + 1)]
    # Entry (i, j) of the posterior precision prior_prec + Az' V^-1 Az for all rows as
    # one product with [V^-1; 1] (D + 1, m): the last column holds the prior's entry.
    pairs = np.stack([np.append(Az[:, :, i] * Az[:, :, j], prior_prec[:, i, j, None], axis=1)
                      for i, j in lower], axis=1)  # (K, E, D + 1)
    AzT = np.ascontiguousarray(np.swapaxes(Az, 1, 2))  # (K, Lz, D)
    # Features rescaled by the geometric mean g of their noise variances, so that
    # log|V| = log prod_d (V_d / g_d) + sum_d log g_d takes one logarithm per row and
    # component instead of D (the sum of logarithms where the product leaves the
    # floating-point range).
    log_g = np.log(sigma).mean(axis=0)
    g = np.exp(log_g)
    sigma_g = (sigma / g)[:, :, None]
    inv_g = (1.0 / g)[None, :, None]
    SgT = np.ascontiguousarray((S / g).T)
    XcT = np.ascontiguousarray(Xc.T)
    mx = means_x[:, :, None]
    # log_nu is made (n, K) and returned as its (K, n) view: the weights the callers
    # make of it are then row-major (n, K).
    log_nu = np.empty((n, K))
    means, covs = _outputs(out, n, K, L)
    kernel = compiled_kernel("noisy_diagonal_rows", n * K) if compiled else None
    if kernel is not None:
        det = np.empty((n, K))
        run_noisy_diagonal(kernel, XcT, SgT, sigma_g[:, :, 0], inv_g.ravel(), Az, pairs,
                           means_x, c, np.zeros(L) if offset is None else offset, det,
                           log_nu, means, covs)
        # |V / g| |P| outside the normal range of floats, or a precision that is not
        # positive definite (0 or NaN): those rows by numpy, which sums logarithms
        # (or raises).
        in_range = (det >= np.finfo(float).tiny) & (det <= np.finfo(float).max)
        log_nu += log_g.sum()
        np.add(log_nu, np.log(det, out=det, where=in_range), out=log_nu, where=in_range)
        log_nu *= -0.5
        log_nu += const
        bad = np.flatnonzero(~in_range.all(axis=1))
        if bad.size:
            log_nu_bad, means[bad], covs[bad] = _noisy_diagonal_rows(
                Xc[bad], S[bad], sigma, Az, means_x, prior_prec, const, c, offset,
                compiled=False)
            log_nu[bad] = log_nu_bad.T
        return log_nu.T, means, covs
    rows = max(1, min(_NOISY_BLOCK // K, n))
    E = len(lower)
    # Work arrays of a full block, reused by every block (a partial one uses their
    # first rows or columns): V / g, [V^-1; 1] and the residuals r (K, D, m); the
    # products (K, E + Lz, m) and the same entry first (E + Lz, m, K); the entries of
    # the posterior covariances and of the shifts P^-1 u (m, K).
    Vg, r = np.empty((K, D, rows)), np.empty((K, D, rows))
    inv_V1 = np.empty((K, D + 1, rows))
    inv_V1[:, D] = 1.0
    prods = np.empty((K, E + Lz, rows))
    entries = np.empty((E + Lz, rows, K))
    inv_buf = np.empty((Lz, Lz, rows, K))
    shift_buf = np.empty((Lz, rows, K))
    for a in range(0, n, rows):
        m = min(rows, n - a)
        V = np.add(sigma_g, SgT[None, :, a : a + m], out=Vg[:, :, :m])  # V / g
        with np.errstate(over="ignore", under="ignore"):
            prod = np.prod(V, axis=1)
        if np.all(np.isfinite(prod) & (prod > 0)):
            logdet_V = np.log(prod) + log_g.sum()
        else:
            logdet_V = np.log(V).sum(axis=1) + log_g.sum()
        inv_V = np.divide(inv_g, V, out=inv_V1[:, :D, :m])
        res = np.subtract(XcT[None, :, a : a + m], mx, out=r[:, :, :m])
        Vr = np.multiply(res, inv_V, out=V)
        # The precisions' entries, then u = Az' V^-1 r.
        np.matmul(pairs, inv_V1[:, :, :m], out=prods[:, :E, :m])
        np.matmul(AzT, Vr, out=prods[:, E:, :m])
        ent = entries[:, :m]
        np.copyto(ent, prods[:, :, :m].transpose(1, 2, 0))
        u = ent[E:]
        P = [[None] * Lz for _ in range(Lz)]
        for e, (i, j) in enumerate(lower):
            P[i][j] = ent[e]
        C = factor_entries(P, Lz)
        inv = inverse_entries(C, Lz, out=inv_buf[:, :, :m])
        shift = shift_buf[:, :m]
        for i in range(Lz):
            np.multiply(inv[i][0], u[0], out=shift[i])
            for j in range(1, Lz):
                shift[i] += inv[i][j] * u[j]
        u_shift = u[0] * shift[0]  # u' P^-1 u
        for i in range(1, Lz):
            u_shift += u[i] * shift[i]
        quad = np.einsum("kdm,kdm->mk", res, Vr) - u_shift
        log_det = logdet_V.T + logdet_entries(C, Lz)
        log_nu[a : a + m] = const - 0.5 * (log_det + quad)
        if offset is None:
            np.add(shift[:L].transpose(1, 2, 0), c, out=means[a : a + m])
        else:
            np.add(shift[:L].transpose(1, 2, 0) + c, offset, out=means[a : a + m])
        covs[a : a + m] = inv_buf[:L, :L, :m].transpose(2, 3, 0, 1)
    return log_nu.T, means, covs
