"""Numerical core of GLLiM: structures, block EM steps and the forward mixture.

The pieces, in the order EM uses them:

- one *noise structure* object per kind of Sigma_k (``NOISE_STRUCTURES``) and one *target
  structure* per kind of Gamma_k (``TARGET_STRUCTURES``): each knows its storage, solve,
  log-determinant, quadratic form, M-step finalisation, public attribute, parameter count
  and precision. No other code tests a covariance-type name;
- :class:`GLLiMModel`, the model's EM steps on *blocks* of samples: an E-step plan
  (parameter side, once per iteration), a per-block E-step fused with the block's
  :class:`SufficientStats`, and an M-step from statistics summed over blocks.

This module is pure arithmetic: how the blocks are executed (threads, BLAS limits, a
cluster) is the business of :mod:`gllim_sk._engine`.

Everything here works on features ``Xc`` centred once by the training mean. Numpy arrays
take numpy's own code (float64, as tuned for the CPU); arrays of other Array API
libraries (torch, CuPy, array-api-strict) go through their namespace: their products over
samples run in the data's dtype (float32 allowed), every sum over samples and every
parameter in float64. All products with ``Xc`` are batched over components into one
matrix product of shape (n, D) x (D, K * m), so no (n, K, D) temporary and, for the
diagonal noise family, no D x D matrix is ever formed. Arrays indexed by component and
sample are (K, n), sample axis last. Everything quadratic in y goes through the per-sample
products of y1 = [y, 1].

Notation: y (n, L) targets, x (n, D) features, K components, ``A`` (K, D, L) the target
loadings, ``W`` (K, D, Lw) the latent loadings of the partially-latent model, ``b`` (K, D)
intercepts in centred coordinates, ``c`` (K, L) target means, ``gamma`` (K, L, L) target
covariances (always stored full here).
"""

import dataclasses
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy.linalg import cho_solve, solve_triangular
from sklearn.utils.extmath import randomized_svd

from ._compat import (
    array_device,
    array_namespace,
    concat,
    copy,
    einsum,
    eye,
    linalg_errors,
    permute,
    reshape,
    swap_last,
    to_numpy,
    zeros,
)

LOG_2PI = float(np.log(2.0 * np.pi))
# Smallest noise variance of the latent model, relative to the feature's variance.
LATENT_NOISE_FLOOR = 1e-5
# Components whose total responsibility falls below this many samples are "empty".
EMPTY_COMPONENT_MASS = 1e-8
# Responsibilities below exp(-300) relative to a sample's largest are raised to it: they
# are zero for every sum, and the floor keeps the products of responsibilities with data
# (the statistics) clear of subnormal numbers, which CPUs multiply many times slower.
LOG_RESP_FLOOR = -300.0
# Added to every component's mass so that no mixture weight is exactly zero.
_TINY_MASS = float(10 * np.finfo(float).eps)


# ------------------------------------------------------------------------ noise structures
class _DiagonalNoise:
    """Sigma_k held as variances ``var`` (K, D); shared kinds hold broadcast copies."""

    name = ""
    spherical = False  # the x-terms need squared norms only, not squared features
    dense_quadratic = False  # x' Sigma^-1 x needs its own solve (not the squared features)

    def n_squared(self, n_features):
        """Columns of squared features the E-step and M-step use."""
        return 1 if self.spherical else n_features

    def squared_features(self, Xc, out=None):
        """(n, 1) squared row norms for the spherical kinds, else (n, D) squares."""
        xp = array_namespace(Xc)
        if xp is not np:
            return xp.sum(Xc * Xc, axis=1)[:, None] if self.spherical else Xc * Xc
        if self.spherical:
            if out is None:
                return np.einsum("nd,nd->n", Xc, Xc)[:, None]
            np.einsum("nd,nd->n", Xc, Xc, out=out[:, 0])
            return out
        return np.multiply(Xc, Xc, out=out)

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
        return np.log(var).sum(axis=1) if xp is np else xp.sum(xp.log(var), axis=1)

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
            if xp is np:
                raw = np.repeat(raw[:, None], D, axis=1)
            else:
                raw = xp.broadcast_to(raw[:, None], (K, D))
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
        var = np.maximum(raw, 0.0) if xp is np else xp.maximum(raw, xp.zeros_like(raw))
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
        return np.repeat(mean, var.shape[1], axis=1) if xp is np else xp.broadcast_to(
            mean, var.shape)

    def public(self, var):
        return copy(array_namespace(var), var[:, 0])

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
        xp = array_namespace(var)
        if xp is np:
            return np.full(var.shape, float(pis @ var.mean(axis=1)))
        return xp.broadcast_to(pis @ xp.mean(var, axis=1), var.shape)

    def public(self, var):
        xp = array_namespace(var)
        return np.asarray(var[0, 0]) if xp is np else copy(xp, var[0, 0])

    def n_parameters(self, n_components, n_features):
        return 1


class _CholeskyNoise:
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
        xp = array_namespace(chol)
        if xp is np:
            return np.stack([cho_solve((self._chol(chol, k), True), M[k], check_finite=False)
                             for k in range(M.shape[0])])
        inv_chol = xp.linalg.inv(chol)
        return swap_last(xp, inv_chol) @ (inv_chol @ M)

    def solve_rows(self, chol, Mt):
        xp = array_namespace(chol)
        return swap_last(xp, self.solve(chol, swap_last(xp, Mt)))

    def logdet(self, chol, n_components):
        xp = array_namespace(chol)
        if xp is np:
            diag = np.log(np.diagonal(chol, axis1=1, axis2=2)).sum(axis=1) * 2.0
            return np.broadcast_to(diag, (n_components,)).copy()
        diag = xp.sum(xp.log(xp.linalg.diagonal(chol)), axis=1) * 2.0
        return xp.broadcast_to(diag, (n_components,))

    def squared_weights(self, chol, n_sq):
        return None

    def quad_features(self, chol, Xc, sq, n_components):
        xp = array_namespace(chol)
        if xp is not np:
            z = xp.linalg.inv(xp.astype(chol, Xc.dtype)) @ Xc.T  # (K or 1, D, n)
            quad = xp.sum(z * z, axis=1)
            return copy(xp, xp.broadcast_to(quad, (n_components, Xc.shape[0])))
        out = np.empty((n_components, Xc.shape[0]))
        for k in range(chol.shape[0]):
            z = solve_triangular(chol[k], Xc.T, lower=True, check_finite=False)
            out[k] = np.einsum("dn,dn->n", z, z)
        if chol.shape[0] == 1:  # tied: one factor for all components
            out[1:] = out[0]
        return out

    def finalize(self, raw, pis, reg, var_floor=None):
        xp = array_namespace(raw)
        if var_floor is None:
            eig_floor = None
        else:
            eig_floor = float(np.mean(var_floor)) if xp is np else xp.mean(var_floor)
        if xp is np:
            return np.stack([_cholesky_with_floor(S.copy(), reg, eig_floor) for S in raw])
        return _cholesky_with_floor_xp(xp, raw, reg, eig_floor)

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
        Xc = block.Xc
        xp = array_namespace(Xc)
        if xp is not np:  # in float64: the full noise is for small D
            X64, r64 = _to_float64(Xc), _to_float64(resp)
            return (X64.T[None, ...] * r64[:, None, :]) @ X64
        return np.stack([(Xc.T * resp[k]) @ Xc for k in range(resp.shape[0])])

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

    def n_parameters(self, n_components, n_features):
        return n_features * (n_features + 1) / 2


NOISE_STRUCTURES = {
    cls.name: cls()
    for cls in (FullNoise, DiagNoise, SphericalNoise, TiedNoise, TiedDiagNoise,
                TiedSphericalNoise)
}


# ----------------------------------------------------------------------- target structures
class FullTarget:
    name = "full"

    def project(self, gamma, pis):
        return gamma

    def public(self, gamma):
        return gamma

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

    def n_parameters(self, n_components, n_targets):
        return n_targets * (n_targets + 1) / 2


TARGET_STRUCTURES = {cls.name: cls() for cls in (FullTarget, DiagTarget, SphericalTarget,
                                                 TiedTarget)}


def _finalize_gamma(target, gamma, pis, reg):
    xp = array_namespace(gamma)
    K, L, _ = gamma.shape
    gamma = target.project(gamma, pis)
    gamma = 0.5 * (gamma + swap_last(xp, gamma))
    if xp is np:
        gamma.reshape(K, L * L)[:, :: L + 1] += reg  # the diagonals
        return gamma
    return gamma + reg * eye(xp, L, gamma)[None, ...]


# ------------------------------------------------------------------------------ containers
@dataclass
class Params:
    """Inverse GLLiM parameters in centred feature coordinates.

    ``noise`` is stored as its noise structure says: variances (K, D) or Cholesky factors.
    """

    weights: np.ndarray  # (K,)
    c: np.ndarray  # (K, L)
    gamma: np.ndarray  # (K, L, L)
    A: np.ndarray  # (K, D, L)
    W: np.ndarray  # (K, D, Lw)
    b: np.ndarray  # (K, D)
    noise: np.ndarray | None


@dataclass(frozen=True)
class MStepMoments:
    """The M-step before its noise is finalised: every parameter but the noise (and,
    for the latent model's first M-step, the latent loadings W), the raw per-component
    noise moments and the (unnormalised) weights that pool them. :meth:`complete` makes
    the parameters; nothing is filled in afterwards."""

    params_type: type
    fields: dict  # the fields of ``params_type`` but ``noise``
    raw: object
    pool_weights: object

    @property
    def weights(self):
        return self.fields["weights"]

    def complete(self, noise, **changes):
        """The parameters, with ``noise`` and the fields in ``changes`` (e.g. ``W``)."""
        return self.params_type(**{**self.fields, **changes}, noise=noise)


@dataclass
class Block:
    """A block of training samples in the forms the EM steps use, computed once per fit.

    ``quad_feats`` (n, Dq + P) holds, side by side, the squared features of the diagonal
    noise family (Dq = D; Dq = 1, the squared norms, for the spherical kinds; Dq = 0 for
    the full family) and the products y1_i y1_j (i <= j) of y1 = [y, 1], P of them. One
    product with it gives x' Sigma_k^-1 x together with every quadratic form in y
    (E-step), or every second moment that the M-step needs.

    ``sample_sums(weights, M)`` computes ``weights @ M`` (m, n) x (n, p), the sums over
    samples; the executor picks the product orientation that suits how it runs the block.
    """

    Xc: np.ndarray  # (n, D) centred features
    y: np.ndarray  # (n, L) centred targets
    y1: np.ndarray  # (L + 1, n): y' stacked over a row of ones
    quad_feats: np.ndarray  # (n, Dq + P)
    n_sq: int  # Dq
    sample_sums: object = np.matmul
    _feature_gram: np.ndarray | None = None

    @property
    def n_samples(self):
        return self.Xc.shape[0]

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
        """Xc' Xc, computed on first use (the "tied" M-step needs it every iteration)."""
        if self._feature_gram is None:
            X64 = _to_float64(self.Xc)  # in float64: the tied noise is for small D
            self._feature_gram = X64.T @ X64
        return self._feature_gram

    def rows(self, start, stop):
        """The block of samples ``start:stop`` (views where possible)."""
        y1 = self.y1[:, start:stop]
        return Block(Xc=self.Xc[start:stop], y=self.y[start:stop],
                     y1=np.ascontiguousarray(y1) if isinstance(y1, np.ndarray) else y1,
                     quad_feats=self.quad_feats[start:stop], n_sq=self.n_sq,
                     sample_sums=self.sample_sums)


def _scaled(value, factor):
    return None if value is None else value * factor


@dataclass
class SufficientStats:
    """Responsibility-weighted sums over samples: all that an M-step needs of the data.

    Statistics of disjoint blocks of samples add up (``+``) to those of all of them, and
    scale (``factor * stats``), so that online EM can blend them. ``resp_mass`` sums the
    responsibilities (it sets the mixture weights); every other sum carries the
    responsibilities times the per-sample weights of the E-step (1 in plain GLLiM, so
    ``mass == resp_mass`` there). A variant adds its own fields in a subclass.
    """

    n_samples: float  # number of samples summed
    log_prob: float  # sum of log p(x_n, y_n) under the E-step's parameters (NaN: none)
    resp_mass: np.ndarray  # (K,) sums of r
    mass: np.ndarray  # (K,) sums of r u
    moments: np.ndarray  # (K, Dq + P) sums of r u [squared features, y1 pairs]
    cross: np.ndarray  # (L1 + Lw, K, D) sums of r u [y1, E w] x'
    latent_sum: np.ndarray  # (K, Lw) sums of r u E[w]
    latent_y: np.ndarray  # (K, L, Lw) sums of r u y E[w]'
    latent_second: np.ndarray  # (K, Lw, Lw) sums of r u E[w w']
    noise_moments: np.ndarray | None  # what the noise structure's M-step needs besides

    def _fields(self):
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def __add__(self, other):
        return type(self)(**{
            name: None if value is None else value + getattr(other, name)
            for name, value in self._fields().items()
        })

    def __mul__(self, factor):
        return type(self)(**{name: _scaled(value, factor)
                             for name, value in self._fields().items()})

    __rmul__ = __mul__


@dataclass
class BlockLikelihood:
    """The log-likelihood summed over a block of samples (summable, like the statistics)."""

    n_samples: float
    log_prob: float

    def __add__(self, other):
        return BlockLikelihood(self.n_samples + other.n_samples,
                               self.log_prob + other.log_prob)


@dataclass
class EStepPlan:
    """The parameter side of an E-step: computed once, shared by every block of samples."""

    cross: np.ndarray | None  # (D, m K), columns Sigma_k^-1 [A_k, b_k, W_k], component last
    quad_weights: np.ndarray  # (K, Dq + P) weights of the squared features and y1 pairs
    noise: np.ndarray  # the noise parameter, for x' Sigma_k^-1 x of the full family
    latent_cov: np.ndarray  # (K, Lw, Lw) Cov[w | x, y, Z = k]
    latent_cross: np.ndarray  # (Lw K, L1) W_k' Sigma_k^-1 [A_k, b_k], latent index first
    x_terms: bool = True  # False: the plan of the target density alone


@dataclass
class BlockEStep:
    """A block's E-step: what the M-step needs per sample (kept with the block)."""

    log_prob: np.ndarray  # (n,) log p(x_n, y_n)
    resp: np.ndarray  # (K, n) p(Z_n = k | x_n, y_n)
    latent_mean: np.ndarray  # (Lw, K, n) E[w_n | x_n, y_n, Z_n = k]
    sample_weight: np.ndarray | None = None  # (K, n) per-sample weights of a variant


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


# ------------------------------------------------------------------------- small kernels
def _matmul_transposed(a, b):
    """(a @ b).T as a C-contiguous array.

    Written straight into a Fortran-ordered buffer: no transposed copy, and OpenBLAS
    splits this orientation of a short-and-wide product across threads much better.
    """
    if not isinstance(a, np.ndarray):
        return (a @ b).T
    out = np.empty((a.shape[0], b.shape[1]), order="F")
    return np.matmul(a, b, out=out).T


@lru_cache
def _triu(L1):
    """Row and column indices of the upper triangle of an L1 x L1 matrix, and the weight
    (1 on the diagonal, 2 off it) of each entry in a symmetric quadratic form."""
    rows, cols = np.triu_indices(L1)
    return rows, cols, np.where(rows == cols, 1.0, 2.0)


def _to_float64(a):
    """``a`` in float64 (numpy arrays are already)."""
    if isinstance(a, np.ndarray):
        return a
    xp = array_namespace(a)
    return a if a.dtype == xp.float64 else xp.astype(a, xp.float64)


def _index(xp, values, like):
    """Integer indices ``values`` as an array of ``xp`` on the device of ``like``."""
    return xp.asarray(values, dtype=xp.int64, device=array_device(like))


def _pairs(y1):
    """The products y1_i y1_j (i <= j) of the rows of y1 (L1, n), as (n, P)."""
    xp = array_namespace(y1)
    rows, cols, _ = _triu(y1.shape[0])
    if xp is np:
        return y1[rows].T * y1[cols].T
    return (xp.take(y1, _index(xp, rows, y1), axis=0)
            * xp.take(y1, _index(xp, cols, y1), axis=0)).T


def _pair_weights(M):
    """Weights w_k (K, P) with w_k . pairs_n = y1_n' M_k y1_n for symmetric M (K, L1, L1)."""
    xp = array_namespace(M)
    K, L1, _ = M.shape
    rows, cols, scale = _triu(L1)
    if xp is np:
        return M[:, rows, cols] * scale
    flat = xp.take(xp.reshape(M, (K, L1 * L1)), _index(xp, rows * L1 + cols, M), axis=1)
    return flat * xp.asarray(scale, dtype=M.dtype, device=array_device(M))


def _unpack_pairs(sums, L1):
    """Symmetric (K, L1, L1) matrices from their upper triangles (K, P)."""
    xp = array_namespace(sums)
    rows, cols, _ = _triu(L1)
    if xp is np:
        out = np.empty((sums.shape[0], L1, L1))
        out[:, rows, cols] = sums
        out[:, cols, rows] = sums
        return out
    position = np.empty((L1, L1), dtype=np.int64)
    position[rows, cols] = np.arange(rows.size)
    position[cols, rows] = np.arange(rows.size)
    full = xp.take(sums, _index(xp, position.ravel(), sums), axis=1)
    return xp.reshape(full, (sums.shape[0], L1, L1))


def _target_quadratic(c, precision):
    """M_k with y1' M_k y1 = (y - c_k)' Gamma_k^-1 (y - c_k): (K, L + 1, L + 1)."""
    xp = array_namespace(c)
    K, L = c.shape
    pc = einsum(xp, "kij,kj->ki", precision, c)
    if xp is not np:
        top = xp.concat([precision, -pc[:, :, None]], axis=2)
        corner = einsum(xp, "ki,ki->k", pc, c)[:, None, None]
        return xp.concat([top, xp.concat([-pc[:, None, :], corner], axis=2)], axis=1)
    M = np.empty((K, L + 1, L + 1))
    M[:, :L, :L] = precision
    M[:, :L, L] = -pc
    M[:, L, :L] = -pc
    M[:, L, L] = np.einsum("ki,ki->k", pc, c)
    return M


def logsumexp(a, axis, keepdims=False):
    """log(sum(exp(a))) along ``axis``; a lean version for the hot loop."""
    xp = array_namespace(a)
    top = xp.max(a, axis=axis, keepdims=True)
    top = xp.where(xp.isfinite(top), top, xp.zeros_like(top))
    out = xp.log(xp.sum(xp.exp(a - top), axis=axis, keepdims=True)) + top
    return out if keepdims else xp.squeeze(out, axis=axis)


def spd_inverse_and_logdet(M):
    """Inverse, log-determinant and inverse Cholesky factor of a stack of small SPD matrices."""
    xp = array_namespace(M)
    chol = xp.linalg.cholesky(M)
    inv_chol = xp.linalg.inv(chol)
    inv = swap_last(xp, inv_chol) @ inv_chol
    if xp is np:
        logdet = 2.0 * np.log(np.diagonal(chol, axis1=-2, axis2=-1)).sum(axis=-1)
    else:
        logdet = 2.0 * xp.sum(xp.log(xp.linalg.diagonal(chol)), axis=-1)
    return inv, logdet, inv_chol


def _with_ones_row(y):
    """y1 = [y, 1]' (L + 1, n) of targets ``y`` (n, L)."""
    xp = array_namespace(y)
    n, L = y.shape
    if xp is not np:
        return xp.concat([y.T, xp.ones((1, n), dtype=y.dtype, device=array_device(y))], axis=0)
    y1 = np.empty((L + 1, n))
    y1[:L] = y.T
    y1[L] = 1.0
    return y1


def target_log_density(y, c, gamma):
    """log N(y_n; c_k, Gamma_k) for all k, n: (K, n), from centred targets ``y`` (n, L)."""
    xp = array_namespace(y)
    L = y.shape[1]
    precision, logdet, _ = spd_inverse_and_logdet(gamma)
    quad = _matmul_transposed(_pairs(_with_ones_row(y)),
                              _pair_weights(_target_quadratic(c, precision)).T)
    quad = xp.maximum(quad, xp.zeros_like(quad))  # the expanded form can dip below zero
    return -0.5 * (L * LOG_2PI + logdet[:, None] + quad)


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


def _cholesky_with_floor_xp(xp, S, reg, eig_floor=None):
    """:func:`_cholesky_with_floor` for a stack (K, D, D) in any namespace."""
    S = 0.5 * (S + swap_last(xp, S))
    if eig_floor is not None:
        vals, vecs = xp.linalg.eigh(S)
        vals = xp.maximum(vals, xp.broadcast_to(eig_floor, vals.shape))
        S = (vecs * vals[:, None, :]) @ swap_last(xp, vecs)
    S = S + reg * eye(xp, S.shape[-1], S)[None, ...]
    try:
        chol = xp.linalg.cholesky(S)
        if bool(xp.all(xp.isfinite(chol))):
            return chol
    except linalg_errors():  # the namespace's own class; out-of-memory goes through
        pass
    vals, vecs = xp.linalg.eigh(S)
    vals = xp.clip(vals, min=reg)
    return xp.linalg.cholesky((vecs * vals[:, None, :]) @ swap_last(xp, vecs))


def _solve_moments(Mzz, Mzx):
    """Mzz^+ @ Mzx per component: Cholesky when well conditioned, else pseudo-inverse."""
    # Mzz mixes the targets' units with the latent factors' unit variance: scaling it to
    # unit diagonal keeps the conditioning test and the pseudo-inverse independent of
    # the targets' scale (the solution is the same when Mzz is invertible).
    xp = array_namespace(Mzz)
    if xp is np:
        diag = np.diagonal(Mzz, axis1=1, axis2=2)
        unit = 1.0 / np.sqrt(np.where(diag > 0, diag, 1.0))  # (K, Lz)
    else:
        diag = xp.linalg.diagonal(Mzz)
        unit = 1.0 / xp.sqrt(xp.where(diag > 0, diag, xp.ones_like(diag)))
    Mzz = Mzz * unit[:, :, None] * unit[:, None, :]
    return unit[:, :, None] * _solve_scaled_moments(Mzz, Mzx * unit[:, :, None])


def _solve_scaled_moments(Mzz, Mzx):
    xp = array_namespace(Mzz)
    if xp is not np:
        if Mzz.shape[1] == 0:
            return zeros(xp, (Mzz.shape[0], 0, Mzx.shape[2]), Mzx)
        try:
            chol = xp.linalg.cholesky(Mzz)
            pivots = xp.min(xp.linalg.diagonal(chol), axis=1)
            scale = xp.sqrt(xp.max(xp.linalg.diagonal(Mzz), axis=1))
            if bool(xp.all(pivots > 1e-6 * scale)):
                inv_chol = xp.linalg.inv(chol)
                return (swap_last(xp, inv_chol) @ inv_chol) @ Mzx
        except linalg_errors():  # the namespace's own class; out-of-memory goes through
            pass
        return xp.linalg.pinv(Mzz, rtol=1e-12) @ Mzx
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


def _latent_loadings(Xc, y, resp, A, b, n_latent, random_state):
    """Probabilistic-PCA loadings W (K, D, Lw) of each component's weighted residuals
    (numpy; see :meth:`GLLiMModel.init_latent`)."""
    K, D, _ = A.shape
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
        resid = (Xc[rows] - y[rows] @ A[k].T - b[k]) * sw
        n_dirs = min(n_latent, *resid.shape)
        s, vt = _leading_right_singular(resid, n_dirs, random_state)
        s, vt = s[:n_dirs], vt[:n_dirs]
        lam = s**2
        total = np.einsum("nd,nd->", resid, resid)
        s2 = max(total - lam.sum(), 0.0) / max(D - n_dirs, 1)
        W[k, :, :n_dirs] = vt.T * np.sqrt(np.maximum(lam - s2, 0.0))
    return W


# ------------------------------------------------------------------------------ the model
class GLLiMModel:
    """The EM steps of (hybrid) GLLiM for one choice of structures and settings.

    The EM engine (:mod:`gllim_sk._engine`) drives it through four hooks: :meth:`plan`
    (parameter side of the E-step, once per iteration), :meth:`e_step_with_stats` (one
    block of samples: E-step and the block's statistics), :meth:`block_stats` (the
    statistics of a kept E-step, for components that emptied) and :meth:`m_step`
    (parameters from statistics summed over all blocks). A variant (robust, ...)
    subclasses it: :meth:`log_joint` gives per-(k, n) log-densities, :meth:`mahalanobis`
    the squared distances of y and x, and :class:`BlockEStep.sample_weight` per-(k, n)
    weights that :meth:`block_stats` multiplies into the responsibilities.

    Parameters
    ----------
    covariance_type, target_covariance_type : str
        Keys of ``NOISE_STRUCTURES`` and ``TARGET_STRUCTURES``.
    reg_covar : float
        Added to the diagonal of every Sigma_k after each M-step (and of every Gamma_k
        unless ``target_reg_covar`` is given).
    var_floor : ndarray of shape (n_features,) or None
        Lower bound of every noise variance (eigenvalue, for full kinds: its mean).
    target_reg_covar : float or None
        Added to the diagonal of every Gamma_k after each M-step (None: ``reg_covar``).
    """

    stats_type = SufficientStats

    def __init__(self, covariance_type, target_covariance_type, reg_covar, var_floor=None,
                 target_reg_covar=None):
        self.noise = NOISE_STRUCTURES[covariance_type]
        self.target = TARGET_STRUCTURES[target_covariance_type]
        self.reg_covar = reg_covar
        self.var_floor = var_floor
        self.target_reg_covar = reg_covar if target_reg_covar is None else target_reg_covar

    # -- data ----------------------------------------------------------------------------
    def prepare_block(self, Xc, y):
        """The :class:`Block` of centred features ``Xc`` (n, D) and targets ``y`` (n, L).

        Numpy blocks are float64; other namespaces keep the dtype of ``Xc`` (float32 or
        float64) for the per-sample products, except with the full noise kinds (meant for
        small D), whose products need float64.
        """
        xp = array_namespace(Xc)
        if xp is not np and self.noise.dense_quadratic:
            Xc, y = _to_float64(Xc), _to_float64(y)
        n, L = y.shape
        y1 = _with_ones_row(y)
        n_sq = self.noise.n_squared(Xc.shape[1]) if Xc.shape[1] else 0
        if xp is not np:
            parts = [self.noise.squared_features(Xc)] if n_sq else []
            quad_feats = xp.concat(parts + [_pairs(y1)], axis=1)
            return Block(Xc=Xc, y=y, y1=y1, quad_feats=quad_feats, n_sq=n_sq)
        rows, cols, _ = _triu(L + 1)
        quad_feats = np.empty((n, n_sq + rows.size))
        if n_sq:
            self.noise.squared_features(Xc, out=quad_feats[:, :n_sq])
        np.multiply(y1[rows].T, y1[cols].T, out=quad_feats[:, n_sq:])
        return Block(Xc=Xc, y=y, y1=y1, quad_feats=quad_feats, n_sq=n_sq)

    # -- E-step --------------------------------------------------------------------------
    def plan(self, params, n_sq, *, x_terms=True, y_terms=True, with_const=True, dtype=None):
        """The :class:`EStepPlan` of ``params`` for blocks with ``n_sq`` squared columns.

        ``x_terms`` / ``y_terms`` select the parts of the log-density (the x given y term,
        the target term); ``with_const=False`` drops the normalising constants and the
        log mixture weights, leaving -1/2 times the squared Mahalanobis distances.
        ``dtype``: the dtype of the blocks, when it is not the parameters' (float32
        blocks take the arrays of the products over samples in float32).
        """
        xp = array_namespace(params.A)
        K, D, Lw = params.W.shape
        L1 = params.c.shape[1] + 1
        m = L1 + Lw
        noise = params.noise
        # B_k = [A_k, b_k, W_k], held transposed (K, m, D); one (n, D) x (D, m K) product
        # gives B_k' Sigma_k^-1 x_n.
        Bt = concat(
            xp, [swap_last(xp, params.A), params.b[:, None, :], swap_last(xp, params.W)], axis=1
        )
        SBt = self.noise.solve_rows(noise, Bt)
        gram = Bt @ swap_last(xp, SBt)  # (K, m, m)
        cross = (reshape(xp, permute(xp, SBt, (2, 1, 0)), (D, m * K))
                 if D and x_terms else None)
        # log p(x, y, Z = k) = const_k - (x' S^-1 x - 2 x' S^-1 [A, b] y1 + y1' M_k y1) / 2,
        # where M_k gathers every term quadratic in y: [A, b]' S^-1 [A, b] and the target
        # density's (y - c)' G^-1 (y - c). All but the cross term come from one product
        # with [squared features, y1 pairs]; the pair y1_L y1_L = 1 carries const_k.
        gamma_prec, logdet_gamma, _ = spd_inverse_and_logdet(params.gamma)
        M = zeros(xp, (K, L1, L1), params.A)
        if x_terms:
            M += gram[:, :L1, :L1]
        if y_terms:
            M += _target_quadratic(params.c, gamma_prec)
        logdet = zeros(xp, (K,), params.A)
        if x_terms:
            logdet += self.noise.logdet(noise, K)
        if y_terms:
            logdet += logdet_gamma
        if Lw:
            # Latent part: Woodbury on Sigma_k + W_k W_k'.
            latent_cov, neg_logdet_s, _ = spd_inverse_and_logdet(
                eye(xp, Lw, params.A)[None, ...] + gram[:, L1:, L1:]
            )
            logdet += neg_logdet_s
        else:
            latent_cov = zeros(xp, (K, 0, 0), params.A)
        weights = -0.5 * _pair_weights(M)
        if with_const:
            dims = (D if x_terms else 0) + (L1 - 1 if y_terms else 0)
            with np.errstate(divide="ignore"):
                const = xp.log(params.weights) - 0.5 * (dims * LOG_2PI + logdet)
            weights[:, -1] += const
        squared = self.noise.squared_weights(noise, n_sq) if x_terms else None
        if squared is not None:
            weights = concat(xp, [squared, weights], axis=1)
        elif n_sq:
            weights = concat(xp, [zeros(xp, (K, n_sq), weights), weights], axis=1)
        latent_cross = reshape(xp, permute(xp, gram[:, L1:, :L1], (1, 0, 2)), (Lw * K, L1))
        plan = EStepPlan(cross=cross, quad_weights=weights, noise=noise, latent_cov=latent_cov,
                         latent_cross=latent_cross, x_terms=x_terms)
        if dtype is not None and dtype != weights.dtype:
            for field in ("cross", "quad_weights"):
                value = getattr(plan, field)
                if value is not None:
                    setattr(plan, field, xp.astype(value, dtype))
        return plan

    def log_joint(self, block, plan):
        """log p(x_n, y_n, Z_n = k) (K, n) and E[w_n | x_n, y_n, k] (Lw, K, n)."""
        xp = array_namespace(block.Xc)
        y1 = block.y1
        L1, n = y1.shape
        K = plan.quad_weights.shape[0]
        Lw = plan.latent_cov.shape[1]
        # The products over samples run in the block's dtype; the rest in float64.
        log_joint = _to_float64(_matmul_transposed(block.quad_feats, plan.quad_weights.T))
        if xp is not np:
            y1 = xp.astype(y1, xp.float64)
        if plan.x_terms and self.noise.dense_quadratic and block.Xc.shape[1]:
            log_joint -= 0.5 * self.noise.quad_features(plan.noise, _to_float64(block.Xc),
                                                        None, K)
        if plan.cross is not None:
            H = _to_float64(reshape(xp, _matmul_transposed(block.Xc, plan.cross),
                                       (L1 + Lw, K, n)))
            log_joint += einsum(xp, "jkn,jn->kn", H[:L1, ...], y1)
        if Lw and plan.x_terms:
            # t = W' S^-1 (x - A y - b) = W' S^-1 x - (W' S^-1 [A, b]) y1: (Lw, K, n)
            t = -reshape(xp, plan.latent_cross @ y1, (Lw, K, n))
            if plan.cross is not None:
                t += H[L1:, ...]
            latent_mean = einsum(xp, "klm,mkn->lkn", plan.latent_cov, t)
            log_joint += 0.5 * einsum(xp, "lkn,lkn->kn", t, latent_mean)
        else:
            latent_mean = zeros(xp, (Lw, K, n), log_joint)
        return log_joint, latent_mean

    def mahalanobis(self, block, params):
        """Squared Mahalanobis distances (K, n) of y_n to c_k under Gamma_k, and of x_n to
        A_k y_n + b_k under Sigma_k + W_k W_k' (the latent factors integrated out)."""
        xp = array_namespace(block.Xc)
        n_sq = block.n_sq
        dtype = block.Xc.dtype
        dist_y, _ = self.log_joint(block, self.plan(params, n_sq, x_terms=False,
                                                    with_const=False, dtype=dtype))
        dist_x, _ = self.log_joint(block, self.plan(params, n_sq, y_terms=False,
                                                    with_const=False, dtype=dtype))
        return (xp.maximum(-2.0 * dist_y, xp.zeros_like(dist_y)),
                xp.maximum(-2.0 * dist_x, xp.zeros_like(dist_x)))

    def e_step(self, block, plan):
        """The :class:`BlockEStep` of a block under ``plan``."""
        log_joint, latent_mean = self.log_joint(block, plan)
        xp = array_namespace(log_joint)
        if xp is not np:
            top = xp.max(log_joint, axis=0)
            top = xp.where(xp.isfinite(top), top, xp.zeros_like(top))
            resp = xp.exp(xp.clip(log_joint - top, min=LOG_RESP_FLOOR))
            total = xp.sum(resp, axis=0)
            return BlockEStep(log_prob=xp.log(total) + top, resp=resp / total,
                              latent_mean=latent_mean)
        top = log_joint.max(axis=0)
        if not np.isfinite(top).all():
            top[~np.isfinite(top)] = 0.0
        log_joint -= top
        np.maximum(log_joint, LOG_RESP_FLOOR, out=log_joint)
        resp = np.exp(log_joint, out=log_joint)
        total = resp.sum(axis=0)
        resp /= total
        log_prob = np.log(total)
        log_prob += top
        return BlockEStep(log_prob=log_prob, resp=resp, latent_mean=latent_mean)

    def e_step_with_stats(self, block, plan, with_stats=True):
        """E-step of a block fused with the statistics of the next M-step.

        Returns the :class:`BlockEStep` (kept with the block) and the block's
        :class:`SufficientStats`, or only its :class:`BlockLikelihood` when ``with_stats``
        is false; either carries ``n_samples`` and the summed ``log_prob`` (summed in
        float64).
        """
        estep = self.e_step(block, plan)
        xp = array_namespace(estep.log_prob)
        log_prob = (float(estep.log_prob.sum()) if xp is np
                    else float(xp.sum(xp.astype(estep.log_prob, xp.float64))))
        if not with_stats:
            return estep, BlockLikelihood(float(block.n_samples), log_prob)
        stats = self.block_stats(block, estep, plan.latent_cov)
        stats.log_prob = log_prob
        return estep, stats

    # -- statistics ------------------------------------------------------------------------
    def block_stats(self, block, estep, latent_cov, fill=None):
        """The :class:`SufficientStats` of a block's E-step.

        ``fill`` (K,) bool marks components that emptied: they get responsibility 1 on
        every sample (the moments of all samples). ``estep.sample_weight`` (K, n), when
        set, multiplies the responsibilities in every sum but ``resp_mass`` and the
        posterior covariance of the latent factors.

        The products over samples run in the block's dtype; their results, and every sum
        of the statistics, are float64 (float32 blocks are summed in float64).
        """
        xp = array_namespace(block.Xc)
        if xp is not np:
            return self._block_stats_xp(xp, block, estep, latent_cov, fill)
        resp = estep.resp
        resp_mass = resp.sum(axis=1)
        filled_mass = resp_mass
        if fill is not None and fill.any():
            resp = resp.copy()
            resp[fill] = 1.0
            filled_mass = resp.sum(axis=1)
        mass = filled_mass
        weighted = estep.sample_weight is not None
        if weighted:
            resp = resp * estep.sample_weight
            mass = resp.sum(axis=1)
        latent_mean = estep.latent_mean
        Xc, y1 = block.Xc, block.y1
        n, D = Xc.shape
        L1 = y1.shape[0]
        K = resp.shape[0]
        Lw = latent_mean.shape[0]
        # One product gives the second moments of the squared features and of y1 = [y, 1].
        moments = block.sample_sums(resp, block.quad_feats)
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
            # E[w w' | k] adds the posterior covariance to the outer product of the means
            # (with the responsibilities alone: a variant's weights scale the means only).
            latent_second += filled_mass[:, None, None] * latent_cov
        else:
            latent_sum, latent_y, latent_second = (
                np.zeros((K, 0)), np.zeros((K, L1 - 1, 0)), np.zeros((K, 0, 0))
            )
        if D:
            cross = block.sample_sums(rz.reshape((L1 + Lw) * K, n), Xc).reshape(L1 + Lw, K, D)
        else:
            cross = np.zeros((L1 + Lw, K, 0))
        return self.stats_type(
            n_samples=float(n), log_prob=np.nan, resp_mass=resp_mass, mass=mass,
            moments=moments, cross=cross, latent_sum=latent_sum, latent_y=latent_y,
            latent_second=latent_second,
            noise_moments=self.noise.block_moments(block, resp, weighted) if D else None,
        )

    def _block_stats_xp(self, xp, block, estep, latent_cov, fill):
        """:meth:`block_stats` in any array namespace."""
        dtype = block.Xc.dtype
        resp64 = _to_float64(estep.resp)
        resp_mass = xp.sum(resp64, axis=1)
        filled_mass = resp_mass
        if fill is not None and bool(xp.any(fill)):
            resp64 = xp.where(fill[:, None], xp.ones_like(resp64), resp64)
            filled_mass = xp.sum(resp64, axis=1)
        mass = filled_mass
        weighted = estep.sample_weight is not None
        if weighted:
            resp64 = resp64 * _to_float64(estep.sample_weight)
            mass = xp.sum(resp64, axis=1)
        resp = xp.astype(resp64, dtype)  # for the products over samples
        mean64 = _to_float64(estep.latent_mean)
        Xc, y1 = block.Xc, block.y1
        n, D = Xc.shape
        L1 = y1.shape[0]
        K = resp.shape[0]
        Lw = mean64.shape[0]
        moments = _to_float64(block.sample_sums(resp, block.quad_feats))
        parts = [y1[:, None, :] * resp[None, ...]] if D else []
        if Lw:
            ryw64 = mean64 * resp64[None, ...]
            parts.append(xp.astype(ryw64, dtype))
            latent_sum = xp.sum(ryw64, axis=2).T
            latent_y = einsum(xp, "jn,lkn->kjl", _to_float64(y1[:-1, :]), ryw64)
            latent_second = einsum(xp, "lkn,mkn->klm", ryw64, mean64)
            latent_second += filled_mass[:, None, None] * _to_float64(latent_cov)
        else:
            latent_sum = zeros(xp, (K, 0), resp_mass)
            latent_y = zeros(xp, (K, L1 - 1, 0), resp_mass)
            latent_second = zeros(xp, (K, 0, 0), resp_mass)
        if D:
            rz = xp.reshape(xp.concat(parts, axis=0), ((L1 + Lw) * K, n))
            cross = xp.reshape(_to_float64(block.sample_sums(rz, Xc)), (L1 + Lw, K, D))
        else:
            cross = zeros(xp, (L1 + Lw, K, 0), resp_mass)
        noise_moments = self.noise.block_moments(block, resp, weighted) if D else None
        return self.stats_type(
            n_samples=float(n), log_prob=np.nan, resp_mass=resp_mass, mass=mass,
            moments=moments, cross=cross, latent_sum=latent_sum, latent_y=latent_y,
            latent_second=latent_second,
            noise_moments=None if noise_moments is None else _to_float64(noise_moments),
        )

    # -- M-step ----------------------------------------------------------------------------
    def m_step(self, stats):
        """Parameters from statistics summed over all samples."""
        moments = self.m_step_moments(stats)
        return moments.complete(self.finalize_noise(moments.raw, moments.pool_weights))

    def finalize_noise(self, raw, weights):
        return self.noise.finalize(raw, weights, self.reg_covar, self.var_floor)

    def covariance_scale(self, stats):
        """Factors (K,) of the covariance moments Gamma_k and Sigma_k, or None (1).

        The Gaussian M-step divides every weighted sum by the same mass. A variant with
        per-sample weights u (robust GLLiM) weighs the sums by r u but divides the
        covariances by sum r: it returns sum r u / sum r here.
        """
        return None

    def m_step_moments(self, stats):
        """The M-step with the noise left as raw moments.

        Returns :class:`MStepMoments`: the parameters but the noise, the raw
        per-component noise moments and the (unnormalised) mixture weights that pool
        them; :meth:`m_step` floors them.
        """
        xp = array_namespace(stats.mass)
        mass = stats.mass
        K = mass.shape[0]
        Lw = stats.latent_sum.shape[1]
        L1 = stats.cross.shape[0] - Lw
        L = L1 - 1
        n_sq = stats.moments.shape[1] - L1 * (L1 + 1) // 2
        pis = (stats.resp_mass + _TINY_MASS) / (stats.n_samples + K * _TINY_MASS)

        # Moments of the augmented regressors z = [y, w].
        y_moments = _unpack_pairs(stats.moments[:, n_sq:], L1)  # sums of r y1 y1' (K, L1, L1)
        Lz = L + Lw
        G = stats.cross
        K, D = G.shape[1:]
        if xp is np:
            z_sum = np.empty((K, Lz))
            z_sum[:, :L] = y_moments[:, :L, L]
            z_sum[:, L:] = stats.latent_sum
            Szz = np.empty((K, Lz, Lz))
            Szz[:, :L, :L] = y_moments[:, :L, :L]
            if Lw:
                Szz[:, :L, L:] = stats.latent_y
                Szz[:, L:, :L] = np.swapaxes(stats.latent_y, 1, 2)
                Szz[:, L:, L:] = stats.latent_second
            Szz /= mass[:, None, None]
        else:
            z_sum = xp.concat([y_moments[:, :L, L], stats.latent_sum], axis=1)
            top = xp.concat([y_moments[:, :L, :L], stats.latent_y], axis=2)
            bottom = xp.concat([swap_last(xp, stats.latent_y), stats.latent_second], axis=2)
            Szz = xp.concat([top, bottom], axis=1) / mass[:, None, None]
        zbar = z_sum / mass[:, None]  # (K, Lz)
        Mzz = Szz - zbar[:, :, None] * zbar[:, None, :]

        xbar = G[L, ...] / mass[:, None]  # (K, D)
        # Cross-covariances of z and x, (K, Lz, D): feature axis last, contiguous.
        if xp is np:
            Mzx = np.empty((K, Lz, D))
            np.divide(G[:L].transpose(1, 0, 2), mass[:, None, None], out=Mzx[:, :L])
            np.divide(G[L1:].transpose(1, 0, 2), mass[:, None, None], out=Mzx[:, L:])
        else:
            Mzx = permute(xp, xp.concat([G[:L, ...], G[L1:, ...]], axis=0), (1, 0, 2))
            Mzx = Mzx / mass[:, None, None]
        Mzx -= zbar[:, :, None] * xbar[:, None, :]

        # Minimum-norm least squares: exact when Mzz is invertible, finite when it is not.
        # The loadings come transposed, [A_k, W_k]' (K, Lz, D).
        loadings_t = _solve_moments(Mzz, Mzx) if D else zeros(xp, (K, Lz, 0), Mzz)
        b = xbar - (zbar[:, None, :] @ loadings_t)[:, 0, :]
        explained = einsum(xp, "kld,kld->kd", loadings_t, Mzx)  # diag(A Mzx) per component

        scale = self.covariance_scale(stats)
        target_moments = copy(xp, Mzz[:, :L, :L])
        if scale is not None:
            target_moments = target_moments * scale[:, None, None]
        gamma = _finalize_gamma(self.target, target_moments, pis, self.target_reg_covar)
        raw = self.noise.raw(stats, xbar, loadings_t, Mzx, explained, pis, scale)
        fields = dict(
            weights=pis / (pis.sum() if xp is np else xp.sum(pis)), c=copy(xp, zbar[:, :L]),
            gamma=gamma,
            A=swap_last(xp, loadings_t[:, :L, :]), W=swap_last(xp, loadings_t[:, L:, :]),
            b=b,
        )
        return MStepMoments(Params, fields, raw, pis)

    def init_latent(self, Xc, y, resp, moments, n_latent, random_state):
        """Initialise W_k by a weighted PCA of the residuals of the Lw = 0 fit.

        W_k = U (Lambda - s2)^(1/2) with U, Lambda the leading principal directions and
        variances of the weighted residuals x - A_k y - b_k and s2 the mean discarded
        variance (the probabilistic-PCA solution); the noise moments lose W_k W_k' (as the
        noise structure holds them) so that Sigma_k + W_k W_k' keeps the residual variance.
        The PCA runs with numpy on the host whatever the namespace (an initialisation,
        like k-means: K small eigen-problems, which some libraries solve slowly).
        ``moments`` (:class:`MStepMoments`) is the M-step of the Lw = 0 fit; returns new
        parameters.
        """
        A, b = moments.fields["A"], moments.fields["b"]
        xp = array_namespace(A)
        if xp is np:
            W = _latent_loadings(Xc, y, resp, A, b, n_latent, random_state)
        else:
            host = [np.asarray(to_numpy(a), dtype=np.float64) for a in (Xc, y, resp, A, b)]
            W = xp.asarray(_latent_loadings(*host, n_latent, random_state), dtype=xp.float64,
                           device=array_device(A))
        return self.with_latent(moments, W)

    def with_latent(self, moments, W):
        """The parameters of ``moments`` with latent loadings ``W``: the noise loses W W'
        (so that Sigma_k + W_k W_k' keeps the residual variance) and is finalised."""
        raw = self.noise.remove_latent(moments.raw, W, moments.weights)
        return moments.complete(self.finalize_noise(raw, moments.weights), W=W)

    # -- the forward mixture -----------------------------------------------------------------
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
            gemm=np.ascontiguousarray(gemm) if xp is np else gemm, const=const,
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

    def n_parameters(self, n_components, n_features, n_targets, n_latent):
        """Free parameters: weights, c, Gamma, A, b, Sigma, and W up to rotation."""
        K, D, L, Lw = n_components, n_features, n_targets, n_latent
        latent = K * (D * Lw - Lw * (Lw - 1) / 2)
        return int((K - 1) + K * L + self.target.n_parameters(K, L) + K * D * L + K * D
                   + self.noise.n_parameters(K, D) + latent)
