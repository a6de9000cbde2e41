"""Noise structures (the kinds of Sigma_k) and target structures (the kinds of Gamma_k).

One object per kind (``NOISE_STRUCTURES``, ``TARGET_STRUCTURES``) knows its storage,
solve, log-determinant, quadratic form, M-step finalisation, public attribute, parameter
count and precision; no other code tests a covariance-type name. :class:`NoiseStructure`
and :class:`TargetStructure` state the interface every structure implements.
"""

from abc import ABC, abstractmethod

import numpy as np

from ._compat import array_namespace, copy, einsum, eye, reshape, swap_last
from ._kernels import (
    _matmul_transposed,
    _to_float64,
    cholesky_logdet,
    cholesky_quad,
    cholesky_solve,
    floored_choleskys,
    positive_part,
    repeated,
    squares,
    symmetrised_with_diagonal,
    weighted_grams,
)


class NoiseStructure(ABC):
    """The interface of a noise structure: how Sigma_k (K, D, D) is stored (``noise``:
    variances or Cholesky factors) and used by the E-step, the M-step and prediction.

    ``spherical`` says that the x-terms need squared norms only; ``dense_quadratic``
    that x' Sigma^-1 x needs its own solve (no squared features).
    """

    name = ""
    spherical = False
    dense_quadratic = False

    @abstractmethod
    def n_squared(self, n_features):
        """Columns of squared features the E-step and M-step use."""

    @abstractmethod
    def squared_features(self, Xc, out=None):
        """The squared features of a block (n, n_squared), or ``out``."""

    @abstractmethod
    def block_moments(self, block, resp, weighted=False):
        """Extra statistics of the M-step for a block, or None."""

    @abstractmethod
    def solve(self, noise, M):
        """Sigma_k^-1 M_k for a stack M (K, D, m)."""

    @abstractmethod
    def solve_rows(self, noise, Mt):
        """(Sigma_k^-1 M_k)' for a stack Mt = M' (K, m, D)."""

    @abstractmethod
    def logdet(self, noise, n_components):
        """log|Sigma_k|, (K,)."""

    @abstractmethod
    def squared_weights(self, noise, n_sq):
        """E-step weights of the squared features, (K, n_sq)."""

    @abstractmethod
    def quad_features(self, noise, Xc, sq, n_components):
        """x_n' Sigma_k^-1 x_n for all k, n: (K, n)."""

    @abstractmethod
    def raw(self, stats, xbar, loadings_t, Mzx, explained, pis, scale=None):
        """Per-component noise moments before pooling and flooring."""

    @abstractmethod
    def remove_latent(self, raw, W, weights):
        """The raw moments less W_k W_k' (the latent model's first M-step)."""

    @abstractmethod
    def finalize(self, raw, weights, reg_covar, var_floor):
        """The stored noise from raw moments: pooled (tied kinds) and floored."""

    @abstractmethod
    def precision(self, noise):
        """Sigma_k^-1."""

    @abstractmethod
    def dense(self, noise):
        """Sigma_k as dense matrices (K, D, D)."""

    @abstractmethod
    def public(self, noise):
        """The ``noise_covariances_`` attribute."""

    @abstractmethod
    def from_public(self, public, n_components, n_features):
        """The stored noise parameters back from :meth:`public`'s array (numpy)."""

    @abstractmethod
    def n_parameters(self, n_components, n_features):
        """Free parameters of the noise covariances."""


class TargetStructure(ABC):
    """The interface of a target structure: the kind of Gamma_k, always stored full
    (K, L, L) and projected on its kind by the M-step."""

    name = ""

    @abstractmethod
    def project(self, gamma, pis):
        """The M-step's Gamma_k (K, L, L) projected on this kind (``pis``: weights)."""

    @abstractmethod
    def public(self, gamma):
        """The ``target_covariances_`` attribute."""

    @abstractmethod
    def from_public(self, public, n_components, n_targets):
        """Gamma_k (K, L, L) back from :meth:`public`'s array (numpy)."""

    @abstractmethod
    def n_parameters(self, n_components, n_targets):
        """Free parameters of the target covariances."""


class _DiagonalNoise(NoiseStructure):
    """Sigma_k held as variances ``var`` (K, D); shared kinds hold broadcast copies."""

    name = ""
    spherical = False  # the x-terms need squared norms only, not squared features
    dense_quadratic = False  # x' Sigma^-1 x needs its own solve (not the squared features)

    def from_public(self, public, n_components, n_features):
        # (K, D), (D,) and () broadcast as they are; "spherical" overrides for (K,).
        return np.array(np.broadcast_to(public, (n_components, n_features)))

    def n_squared(self, n_features):
        """Columns of squared features the E-step and M-step use."""
        return 1 if self.spherical else n_features

    def squared_features(self, Xc, out=None):
        """(n, 1) squared row norms for the spherical kinds, else (n, D) squares."""
        return squares(Xc, self.spherical, out)

    def block_moments(self, block, resp, weighted=False):
        """Extra statistics of the M-step: none (the squared features cover it)."""
        return None

    def solve(self, var, M):
        """Sigma_k^-1 M_k for a stack M (K, D, m)."""
        return M / var[:, :, None]

    def solve_rows(self, var, Mt):
        """(Sigma_k^-1 M_k)' for a stack Mt = M' (K, m, D)."""
        return Mt / var[:, None, :]

    def logdet(self, var, n_components):
        xp = array_namespace(var)
        return xp.sum(xp.log(var), axis=1)

    def squared_weights(self, var, n_sq):
        """E-step weights of the squared features: -Sigma_k^-1 / 2 as (K, Dq)."""
        return -0.5 / var[:, :n_sq]

    def quad_features(self, var, Xc, sq, n_components):
        """x_n' Sigma_k^-1 x_n for all k, n: (K, n)."""
        if self.spherical:
            return (1.0 / var[:, :1]) @ sq.T
        return _matmul_transposed(sq, (1.0 / var).T)

    def raw(self, stats, xbar, loadings_t, Mzx, explained, pis, scale=None):
        """Per-component noise moments before pooling and flooring, (K, D).

        ``scale`` (K,), when given, multiplies each component's moments (a variant with
        per-sample weights u divides by sum r rather than sum r u; see
        :meth:`GLLiMModel.covariance_scale`).
        """
        xp = array_namespace(xbar)
        n_sq = self.n_squared(xbar.shape[1])
        second = stats.moments[:, :n_sq] / stats.mass[:, None]  # (K, D) or (K, 1)
        if self.spherical:  # only the trace is needed
            K, D = xbar.shape
            raw = (second[:, 0] - xp.sum(xbar**2, axis=1) - xp.sum(explained, axis=1)) / D
            raw = repeated(raw[:, None], (K, D))
        else:
            raw = second - xbar**2 - explained
        return raw if scale is None else raw * scale[:, None]

    def remove_latent(self, raw, W, weights):
        """Take diag(W_k W_k') out of the noise moments (latent initialisation)."""
        return raw - einsum(array_namespace(W), "kdl,kdl->kd", W, W)

    def finalize(self, raw, pis, reg, var_floor=None):
        """Clip, pool across components as the kind says, and add ``reg``."""
        xp = array_namespace(raw)
        # Clip what cancellation in the expanded moments made negative.
        var = positive_part(raw)
        if var_floor is not None:
            # Clipping is the constrained maximiser of the per-feature M-step objective.
            var = xp.maximum(var, xp.broadcast_to(var_floor, var.shape))
        return self._pool(var, pis) + reg

    def _pool(self, var, pis):
        return var

    def precision(self, var):
        """Sigma_k^-1: (K, D) for the diagonal family."""
        return 1.0 / var

    def dense(self, var, k):
        """Sigma_k as a dense (D, D) matrix (numpy)."""
        return np.diag(var[k])

    def n_parameters(self, n_components, n_features):
        raise NotImplementedError


class DiagNoise(_DiagonalNoise):
    name = "diag"

    def public(self, var):
        return copy(array_namespace(var), var)

    def n_parameters(self, n_components, n_features):
        return n_components * n_features


class SphericalNoise(_DiagonalNoise):
    name = "spherical"
    spherical = True

    def _pool(self, var, pis):
        xp = array_namespace(var)
        mean = xp.mean(var, axis=1, keepdims=True)
        return repeated(mean, var.shape)

    def public(self, var):
        return copy(array_namespace(var), var[:, 0])

    def from_public(self, public, n_components, n_features):
        return np.array(np.broadcast_to(public[:, None], (n_components, n_features)))

    def n_parameters(self, n_components, n_features):
        return n_components


class TiedDiagNoise(_DiagonalNoise):
    name = "tied_diag"

    def _pool(self, var, pis):
        return array_namespace(var).broadcast_to(pis @ var, var.shape)

    def public(self, var):
        return copy(array_namespace(var), var[0, :])

    def n_parameters(self, n_components, n_features):
        return n_features


class TiedSphericalNoise(_DiagonalNoise):
    name = "tied_spherical"
    spherical = True

    def _pool(self, var, pis):
        return repeated(pis @ array_namespace(var).mean(var, axis=1), var.shape)

    def public(self, var):
        xp = array_namespace(var)
        return reshape(xp, copy(xp, var[:1, :1]), ())

    def n_parameters(self, n_components, n_features):
        return 1


class _CholeskyNoise(NoiseStructure):
    """Sigma_k held as lower Cholesky factors ``chol``: (K, D, D), or (1, D, D) when tied.

    O(D^2) memory and O(n D^2) time: for small D.
    """

    name = ""
    spherical = False
    dense_quadratic = True

    def n_squared(self, n_features):
        return 0

    def squared_features(self, Xc, out=None):
        return out

    def _chol(self, chol, k):
        return chol[0 if chol.shape[0] == 1 else k, ...]

    def solve(self, chol, M):
        return cholesky_solve(chol, M)

    def solve_rows(self, chol, Mt):
        xp = array_namespace(chol)
        return swap_last(xp, self.solve(chol, swap_last(xp, Mt)))

    def logdet(self, chol, n_components):
        return cholesky_logdet(chol, n_components)

    def squared_weights(self, chol, n_sq):
        return None

    def quad_features(self, chol, Xc, sq, n_components):
        return cholesky_quad(chol, Xc, n_components)

    def finalize(self, raw, pis, reg, var_floor=None):
        return floored_choleskys(raw, reg, var_floor)

    def precision(self, chol):
        """Sigma_k^-1 as dense (K or 1, D, D) matrices."""
        xp = array_namespace(chol)
        inv_chol = xp.linalg.inv(chol)
        return swap_last(xp, inv_chol) @ inv_chol

    def dense(self, chol, k):
        """Sigma_k as a dense (D, D) matrix."""
        lk = self._chol(chol, k)
        return lk @ lk.T


class FullNoise(_CholeskyNoise):
    name = "full"

    def block_moments(self, block, resp, weighted=False):
        """Sums of r_nk x_n x_n', (K, D, D)."""
        return weighted_grams(block.Xc, resp)

    def raw(self, stats, xbar, loadings_t, Mzx, explained, pis, scale=None):
        xp = array_namespace(xbar)
        raw = stats.noise_moments / stats.mass[:, None, None]
        raw -= xbar[:, :, None] * xbar[:, None, :]
        raw -= swap_last(xp, loadings_t) @ Mzx
        return raw if scale is None else raw * scale[:, None, None]

    def remove_latent(self, raw, W, weights):
        return raw - W @ swap_last(array_namespace(W), W)

    def public(self, chol):
        return chol @ swap_last(array_namespace(chol), chol)

    def from_public(self, public, n_components, n_features):
        return np.linalg.cholesky(public)

    def n_parameters(self, n_components, n_features):
        return n_components * n_features * (n_features + 1) / 2


class TiedNoise(_CholeskyNoise):
    name = "tied"

    def block_moments(self, block, resp, weighted=False):
        """Sums of x_n x_n' over the block (D, D), the same every iteration: kept.

        With per-sample weights (``weighted``), the sums of (sum_k r_nk) x_n x_n'.
        """
        if weighted:
            X64 = _to_float64(block.Xc)
            return (X64.T * array_namespace(resp).sum(_to_float64(resp), axis=0)) @ X64
        return block.feature_gram

    def raw(self, stats, xbar, loadings_t, Mzx, explained, pis, scale=None):
        xp = array_namespace(xbar)
        raw = stats.noise_moments / stats.n_samples
        if scale is not None:  # the pooled per-component terms carry the scale
            pis = pis * scale
        raw = raw - einsum(xp, "k,kd,ke->de", pis, xbar, xbar)
        raw -= einsum(xp, "k,kld,kle->de", pis, loadings_t, Mzx)
        return raw[None, ...]

    def remove_latent(self, raw, W, weights):
        return raw - einsum(array_namespace(W), "k,kdl,kel->de", weights, W, W)[None, ...]

    def public(self, chol):
        return chol[0, ...] @ chol[0, ...].T

    def from_public(self, public, n_components, n_features):
        return np.linalg.cholesky(public[None])

    def n_parameters(self, n_components, n_features):
        return n_features * (n_features + 1) / 2


NOISE_STRUCTURES = {
    cls.name: cls()
    for cls in (FullNoise, DiagNoise, SphericalNoise, TiedNoise, TiedDiagNoise,
                TiedSphericalNoise)
}


# ----------------------------------------------------------------------- target structures
class FullTarget(TargetStructure):
    name = "full"

    def project(self, gamma, pis):
        return gamma

    def public(self, gamma):
        return gamma

    def from_public(self, public, n_components, n_targets):
        return np.array(public)

    def n_parameters(self, n_components, n_targets):
        return n_components * n_targets * (n_targets + 1) / 2


class DiagTarget(FullTarget):
    name = "diag"

    def project(self, gamma, pis):
        xp = array_namespace(gamma)
        return einsum(xp, "kii->ki", gamma)[:, :, None] * eye(xp, gamma.shape[1], gamma)[None, ...]

    def public(self, gamma):
        xp = array_namespace(gamma)
        return copy(xp, einsum(xp, "kii->ki", gamma))

    def from_public(self, public, n_components, n_targets):
        return public[:, :, None] * np.eye(n_targets)

    def n_parameters(self, n_components, n_targets):
        return n_components * n_targets


class SphericalTarget(FullTarget):
    name = "spherical"

    def project(self, gamma, pis):
        xp = array_namespace(gamma)
        L = gamma.shape[1]
        return einsum(xp, "kii->k", gamma)[:, None, None] / L * eye(xp, L, gamma)[None, ...]

    def public(self, gamma):
        return copy(array_namespace(gamma), gamma[:, 0, 0])

    def from_public(self, public, n_components, n_targets):
        return public[:, None, None] * np.eye(n_targets)

    def n_parameters(self, n_components, n_targets):
        return n_components


class TiedTarget(FullTarget):
    name = "tied"

    def project(self, gamma, pis):
        xp = array_namespace(gamma)
        pooled = xp.broadcast_to(einsum(xp, "k,kij->ij", pis, gamma), gamma.shape)
        return copy(xp, pooled)

    def public(self, gamma):
        return copy(array_namespace(gamma), gamma[0, ...])

    def from_public(self, public, n_components, n_targets):
        return np.array(np.broadcast_to(public, (n_components, n_targets, n_targets)))

    def n_parameters(self, n_components, n_targets):
        return n_targets * (n_targets + 1) / 2


TARGET_STRUCTURES = {cls.name: cls() for cls in (FullTarget, DiagTarget, SphericalTarget,
                                                 TiedTarget)}


def _finalize_gamma(target, gamma, pis, reg):
    gamma = target.project(gamma, pis)
    return symmetrised_with_diagonal(gamma, reg)
