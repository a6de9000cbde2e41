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
from ._kernels import (
    LOG_2PI,
    _matmul_transposed,
    _to_float64,
    contiguous,
    logsumexp,
    spd_inverse_and_logdet,
)


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

    def noisy_forward_terms(self, params, Xc, noise_var=None, noise_cov=None):
        """The forward mixture when the observed features carry known extra noise.

        The observations are x + e, e ~ N(0, S), so Sigma_k becomes Sigma_k + S in
        Gamma*_k and in the star parameters. ``noise_var`` holds variances, (1, D) shared
        or (n, D) per sample; ``noise_cov`` is a shared (D, D) covariance. The latent
        factors join the targets, z = [y, w] with prior N([c_k, 0], diag(Gamma_k, I)),
        and y's block of the posterior of z is the answer.

        Returns the unnormalised log gating weights log pi_k + log N(x; c*_k, Gamma*_k + S)
        (K, n), the component means (n, K, L) and covariances (n, K, L, L), in centred
        coordinates. A diagonal Sigma_k with
        variances S costs O(n D K (L + Lw)^2); otherwise each Sigma_k + S is a dense
        D x D matrix, factorised once per component for a shared S and once per sample
        and component for per-sample variances.
        """
        n, D = Xc.shape
        K, _, L = params.A.shape
        Lw = params.W.shape[2]
        Lz = L + Lw
        Az = np.concatenate([params.A, params.W], axis=2)  # (K, D, Lz)
        gamma_inv, logdet_gamma, _ = spd_inverse_and_logdet(params.gamma)
        prior_prec = np.zeros((K, Lz, Lz))
        prior_prec[:, :L, :L] = gamma_inv
        prior_prec[:, L:, L:] = np.eye(Lw)
        means_x = np.einsum("kdl,kl->kd", params.A, params.c) + params.b
        diagonal = noise_cov is None and not self.noise.dense_quadratic
        with np.errstate(divide="ignore"):
            log_w = np.log(params.weights)
        log_nu = np.empty((K, n))
        means = np.empty((n, K, L))
        covs = np.empty((n, K, L, L))
        for k in range(K):
            r = Xc - means_x[k]  # (n, D)
            if diagonal:
                V = params.noise[k] + noise_var  # (1 or n, D)
                inv_V = 1.0 / V
                Vr = r * inv_V
                # A' V^-1 A for every sample as one product, no (n, D, Lz) temporary.
                pairs = (Az[k][:, :, None] * Az[k][:, None, :]).reshape(D, Lz * Lz)
                gram = (inv_V @ pairs).reshape(-1, Lz, Lz)
                logdet_V = np.log(V).sum(axis=1)
            else:
                sigma = self.noise.dense(params.noise, k)
                if noise_cov is not None:
                    V = (sigma + noise_cov)[None]
                else:
                    V = sigma[None] + noise_var[:, :, None] * np.eye(D)
                chol = np.linalg.cholesky(V)  # (1 or n, D, D)
                logdet_V = 2.0 * np.log(np.diagonal(chol, axis1=1, axis2=2)).sum(axis=1)
                VA = np.linalg.solve(V, np.broadcast_to(Az[k], (V.shape[0], D, Lz)))
                gram = np.einsum("dl,ndm->nlm", Az[k], VA)
                if V.shape[0] == 1:
                    Vr = np.linalg.solve(V[0], r.T).T
                else:
                    Vr = np.linalg.solve(V, r[:, :, None])[:, :, 0]
            precision = prior_prec[k] + gram
            post_cov = np.linalg.inv(precision)  # (1 or n, Lz, Lz)
            post_cov = 0.5 * (post_cov + np.swapaxes(post_cov, 1, 2))
            u = Vr @ Az[k]  # (n, Lz)
            shift = np.einsum("nlm,nm->nl", np.broadcast_to(post_cov, (n, Lz, Lz)), u)
            delta = np.einsum("nd,nd->n", r, Vr) - np.einsum("nl,nl->n", u, shift)
            # Determinant lemma: log|Gamma*| = log|V| + log|Gamma| + log|precision|.
            logdet_x = logdet_V + logdet_gamma[k] + np.linalg.slogdet(precision)[1]
            log_nu[k] = log_w[k] - 0.5 * (D * LOG_2PI + logdet_x + delta)
            means[:, k] = params.c[k] + shift[:, :L]
            covs[:, k] = post_cov[:, :L, :L]
        return log_nu, means, covs
