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
diagonal noise family, no D x D matrix is ever formed; with few features the products
y1_j x_d are columns of the block instead (``FUSED_CROSS_MAX_COLUMNS``). Arrays indexed
by component and sample are (K, n), sample axis last. Everything quadratic in y goes
through the per-sample products of y1 = [y, 1].

Notation: y (n, L) targets, x (n, D) features, K components, ``A`` (K, D, L) the target
loadings, ``W`` (K, D, Lw) the latent loadings of the partially-latent model, ``b`` (K, D)
intercepts in centred coordinates, ``c`` (K, L) target means, ``gamma`` (K, L, L) target
covariances (always stored full here).
"""

import dataclasses
from dataclasses import dataclass

import numpy as np
import scipy.linalg
from sklearn.utils.extmath import randomized_svd

from ._compat import (
    array_namespace,
    concat,
    copy,
    einsum,
    eye,
    permute,
    reshape,
    swap_last,
    to_numpy,
    zeros,
)
from ._forward import Forward, ForwardMixin  # noqa: F401
from ._kernels import (  # noqa: F401  (the kernels are used as gm.<name> elsewhere)
    LOG_2PI,
    _cholesky_with_floor,
    _cholesky_with_floor_xp,
    _index,
    _matmul_transposed,
    _pair_weights,
    _pairs,
    _solve_moments,
    _solve_scaled_moments,
    _target_quadratic,
    _to_float64,
    _triu,
    _unpack_pairs,
    _with_ones_row,
    any_true,
    as_dtype,
    cross_products,
    loadings_side_by_side,
    log_weights,
    logsumexp,
    move_like,
    normalised_exp,
    quad_weights,
    regressor_moments,
    side_by_side,
    spd_inverse_and_logdet,
    target_log_density,
    total,
    weighted_regressors,
    with_rows_of_ones,
)
from ._structures import (  # noqa: F401
    NOISE_STRUCTURES,
    TARGET_STRUCTURES,
    NoiseStructure,
    TargetStructure,
    _finalize_gamma,
)

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
# Blocks with at most this many products y1_j x_d keep them as columns of ``quad_feats``:
# the E-step's cross term and the M-step's cross moments then come from the same two
# products as the quadratic terms, without the (L1 K, n) passes that the separate cross
# product needs, which cost about as much as the products when D is small. Wider blocks
# keep the separate product: the fused one, with only K columns out, runs slower there,
# and its extra columns cost L1 times the memory of the features.
FUSED_CROSS_MAX_COLUMNS = 128


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

    ``quad_feats`` (n, Dq + P + Dc) holds, side by side, the squared features of the
    diagonal noise family (Dq = D; Dq = 1, the squared norms, for the spherical kinds;
    Dq = 0 for the full family), the products y1_i y1_j (i <= j) of y1 = [y, 1], P of
    them, and, when the model fuses them (:meth:`GLLiMModel.fuses_cross`), the Dc = L1 D
    products y1_j x_d (column j D + d). One product with it gives x' Sigma_k^-1 x together
    with every quadratic form in y (and the cross terms, when fused) (E-step), or every
    moment that the M-step needs of them.

    ``sample_sums(weights, M)`` computes ``weights @ M`` (m, n) x (n, p), the sums over
    samples; the executor picks the product orientation that suits how it runs the block.
    """

    Xc: np.ndarray  # (n, D) centred features
    y: np.ndarray  # (n, L) centred targets
    y1: np.ndarray  # (L + 1, n): y' stacked over a row of ones
    quad_feats: np.ndarray  # (n, Dq + P + Dc)
    n_sq: int  # Dq
    n_cross: int = 0  # Dc
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
        return self.quad_feats[:, self.n_sq : self.quad_feats.shape[1] - self.n_cross]

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
        return Block(Xc=self.Xc[start:stop, ...], y=self.y[start:stop, ...],
                     y1=np.ascontiguousarray(y1) if isinstance(y1, np.ndarray) else y1,
                     quad_feats=self.quad_feats[start:stop, ...], n_sq=self.n_sq,
                     n_cross=self.n_cross, sample_sums=self.sample_sums)


def _summed(terms, empty):
    """The sum of ``terms`` (a new array), or ``empty`` when there are none."""
    return sum(terms[1:], terms[0]) if len(terms) > 1 else (terms[0] if terms else empty)


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
    # (m = L1 + Lw; m = Lw when the blocks fuse the cross products, None when Lw = 0 then)
    quad_weights: np.ndarray  # (K, Dq + P + Dc) weights of the columns of quad_feats
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


def _leading_right_singular(M, n_dirs, random_state):
    """Leading singular values and right singular vectors of M (m, D), each vector with
    its largest entry positive (a singular vector's sign is arbitrary, and LAPACK's
    choice changes with the order in which the rows were summed, e.g. on dask blocks)."""
    m, D = M.shape
    if min(m, D) > 1000:
        _, s, vt = randomized_svd(
            M, n_dirs, n_iter=3, power_iteration_normalizer="QR", random_state=random_state
        )
    elif m <= D:
        # Eigen-decomposition of the smaller Gram matrix: one GEMM and a small eigh.
        vals, u = _leading_eigh(M @ M.T, n_dirs)
        s = np.sqrt(np.maximum(vals, 0.0))
        vt = (u.T @ M) / np.where(s > 0, s, 1.0)[:, None]
    else:
        vals, v = _leading_eigh(M.T @ M, n_dirs)
        s, vt = np.sqrt(np.maximum(vals, 0.0)), v.T
    return s, canonical_signs(vt)


def canonical_signs(vt):
    """The rows of ``vt`` (directions), each with its largest entry made positive."""
    largest = vt[np.arange(len(vt)), np.abs(vt).argmax(axis=1)]
    return vt * np.where(largest < 0, -1.0, 1.0)[:, None]


def _leading_eigh(G, n_dirs):
    """The n_dirs largest eigenvalues of the symmetric G, decreasing, and their vectors:
    only those are computed, since every start's latent initialisation needs no more."""
    size = G.shape[0]
    vals, vecs = scipy.linalg.eigh(G, subset_by_index=[size - n_dirs, size - 1])
    return vals[::-1], vecs[:, ::-1]


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
class GLLiMModel(ForwardMixin):
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
        if self.noise.dense_quadratic:  # (numpy blocks are float64 already)
            Xc, y = _to_float64(Xc), _to_float64(y)
        y1 = _with_ones_row(y)
        D = Xc.shape[1]
        n_sq = self.noise.n_squared(D) if D else 0
        n_cross = D * y1.shape[0] if self.fuses_cross(D, y1.shape[0]) else 0
        quad_feats = side_by_side(
            n_sq, lambda out: self.noise.squared_features(Xc, out=out), _pairs(y1),
            n_cross, lambda out: cross_products(Xc, y1, out))
        return Block(Xc=Xc, y=y, y1=y1, quad_feats=quad_feats, n_sq=n_sq, n_cross=n_cross)

    @staticmethod
    def fuses_cross(n_features, n_targets1):
        """Whether blocks of ``n_features`` features and y1 of ``n_targets1`` rows hold the
        products y1_j x_d among their ``quad_feats`` (see ``FUSED_CROSS_MAX_COLUMNS``)."""
        return 0 < n_features * n_targets1 <= FUSED_CROSS_MAX_COLUMNS

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
        Bt = loadings_side_by_side(params.A, params.b, params.W)
        SBt = self.noise.solve_rows(noise, Bt)
        gram = Bt @ swap_last(xp, SBt)  # (K, m, m)
        fused = self.fuses_cross(D, L1)
        # The columns of x_n' Sigma_k^-1 B_k that a product with the features gives: those
        # of the latent factors only when the blocks hold the products y1_j x_d.
        product_rows = Lw if fused else m
        cross = (reshape(xp, permute(xp, SBt[:, m - product_rows :, :], (2, 1, 0)),
                         (D, product_rows * K))
                 if D and x_terms and product_rows else None)
        # log p(x, y, Z = k) = const_k - (x' S^-1 x - 2 x' S^-1 [A, b] y1 + y1' M_k y1) / 2,
        # where M_k gathers every term quadratic in y: [A, b]' S^-1 [A, b] and the target
        # density's (y - c)' G^-1 (y - c). All but the cross term come from one product
        # with [squared features, y1 pairs]; the pair y1_L y1_L = 1 carries const_k.
        # The y pairs' weights are -M_k / 2 (upper triangle, off-diagonal entries twice).
        if x_terms and y_terms:
            gamma_prec, logdet_gamma = self.target_factors(params.gamma)
            M = gram[:, :L1, :L1] + _target_quadratic(params.c, gamma_prec)
            logdet = self.noise.logdet(noise, K) + logdet_gamma
        elif x_terms:
            M = gram[:, :L1, :L1]
            logdet = self.noise.logdet(noise, K)
        elif y_terms:
            gamma_prec, logdet = self.target_factors(params.gamma)
            M = _target_quadratic(params.c, gamma_prec)
        else:
            M, logdet = zeros(xp, (K, L1, L1), params.A), zeros(xp, (K,), params.A)
        if Lw:
            # Latent part: Woodbury on Sigma_k + W_k W_k'.
            latent_cov, neg_logdet_s, _ = spd_inverse_and_logdet(
                eye(xp, Lw, params.A)[None, ...] + gram[:, L1:, L1:]
            )
            logdet = logdet + neg_logdet_s
        else:
            latent_cov = zeros(xp, (K, 0, 0), params.A)
        squared = self.noise.squared_weights(noise, n_sq) if x_terms else None
        const = None
        if with_const:
            dims = (D if x_terms else 0) + (L1 - 1 if y_terms else 0)
            const = log_weights(params.weights) - 0.5 * (dims * LOG_2PI + logdet)
        weights = quad_weights(M, const, squared, n_sq)
        if fused:
            # The weight of y1_j x_d is (Sigma_k^-1 B_k)_dj: x' S^-1 [A, b] y1 in one product.
            fused_weights = (reshape(xp, SBt[:, :L1, :], (K, L1 * D)) if x_terms
                             else zeros(xp, (K, L1 * D), weights))
            weights = concat(xp, [weights, fused_weights], axis=1)
        latent_cross = reshape(xp, permute(xp, gram[:, L1:, :L1], (1, 0, 2)), (Lw * K, L1))
        plan = EStepPlan(cross=cross, quad_weights=weights, noise=noise, latent_cov=latent_cov,
                         latent_cross=latent_cross, x_terms=x_terms)
        if dtype is not None and dtype != weights.dtype:
            for field in ("cross", "quad_weights"):
                value = getattr(plan, field)
                if value is not None:
                    setattr(plan, field, xp.astype(value, dtype))
        return plan

    def target_factors(self, gamma):
        """Gamma_k^-1 and log|Gamma_k| of ``gamma`` (K, L, L): those the last M-step
        computed with its own factorisations when it made this very array (parameters are
        never written into), else computed here."""
        cached = getattr(self, "_gamma_factors", None)
        if cached is not None and cached[0] is gamma:
            return cached[1], cached[2]
        precision, logdet, _ = spd_inverse_and_logdet(gamma)
        return precision, logdet

    def log_joint(self, block, plan):
        """log p(x_n, y_n, Z_n = k) (K, n) and E[w_n | x_n, y_n, k] (Lw, K, n)."""
        xp = array_namespace(block.Xc)
        y1 = block.y1
        L1, n = y1.shape
        K = plan.quad_weights.shape[0]
        Lw = plan.latent_cov.shape[1]
        # The products over samples run in the block's dtype; the rest in float64.
        log_joint = _to_float64(_matmul_transposed(block.quad_feats, plan.quad_weights.T))
        y1 = _to_float64(y1)
        if plan.x_terms and self.noise.dense_quadratic and block.Xc.shape[1]:
            log_joint -= 0.5 * self.noise.quad_features(plan.noise, _to_float64(block.Xc),
                                                        None, K)
        # Without the products y1_j x_d among the block's columns, the cross term
        # x' S^-1 [A, b] y1 is a product with x and a sum over j.
        target_rows = 0 if block.n_cross else L1
        if plan.cross is not None:
            H = _to_float64(reshape(xp, _matmul_transposed(block.Xc, plan.cross),
                                       (target_rows + Lw, K, n)))
            if target_rows:
                log_joint += einsum(xp, "jkn,jn->kn", H[:L1, ...], y1)
        if Lw and plan.x_terms:
            # t = W' S^-1 (x - A y - b) = W' S^-1 x - (W' S^-1 [A, b]) y1: (Lw, K, n)
            t = -reshape(xp, plan.latent_cross @ y1, (Lw, K, n))
            if plan.cross is not None:
                t += H[target_rows:, ...]
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
        log_prob, resp = normalised_exp(log_joint, LOG_RESP_FLOOR)
        return BlockEStep(log_prob=log_prob, resp=resp, latent_mean=latent_mean)

    def e_step_with_stats(self, block, plan, with_stats=True):
        """E-step of a block fused with the statistics of the next M-step.

        Returns the :class:`BlockEStep` (kept with the block) and the block's
        :class:`SufficientStats`, or only its :class:`BlockLikelihood` when ``with_stats``
        is false; either carries ``n_samples`` and the summed ``log_prob`` (summed in
        float64).
        """
        estep = self.e_step(block, plan)
        log_prob = total(estep.log_prob)
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
        dtype = block.Xc.dtype
        resp = _to_float64(estep.resp)
        resp_mass = xp.sum(resp, axis=1)
        filled_mass = resp_mass
        if fill is not None and any_true(fill):
            resp = with_rows_of_ones(resp, fill)
            filled_mass = xp.sum(resp, axis=1)
        mass = filled_mass
        weighted = estep.sample_weight is not None
        if weighted:
            resp = resp * _to_float64(estep.sample_weight)
            mass = xp.sum(resp, axis=1)
        latent_mean = _to_float64(estep.latent_mean)
        Xc, y1 = block.Xc, block.y1
        n, D = Xc.shape
        L1 = y1.shape[0]
        K = resp.shape[0]
        Lw = latent_mean.shape[0]
        # One product gives the second moments of the squared features and of y1 = [y, 1]
        # (the products over samples run in the block's dtype, their sums in float64),
        # and the cross moments of y1 with x when the block holds their products.
        moments = _to_float64(block.sample_sums(as_dtype(resp, dtype), block.quad_feats))
        fused_cross = None
        if block.n_cross:
            width = moments.shape[1] - block.n_cross
            fused_cross = permute(xp, reshape(xp, moments[:, width:], (K, L1, D)), (1, 0, 2))
            moments = moments[:, :width]
        # rz[j, k, n] = r_nk [y1_n, E[w_n | k]]_j; one (m K, n) x (n, D) product gives all
        # first-order cross moments with x (a mixture of y alone, D = 0, needs none; the
        # latent rows alone when the y1 rows came fused).
        rz, ryw = weighted_regressors(y1, resp, latent_mean, dtype,
                                      with_targets=bool(D) and not block.n_cross)
        if Lw:
            latent_sum = swap_last(xp, xp.sum(ryw, axis=2))
            latent_y = reshape(xp, _to_float64(y1[:-1, :]) @ swap_last(
                xp, reshape(xp, ryw, (Lw * K, n))), (L1 - 1, Lw, K))
            latent_y = permute(xp, latent_y, (2, 0, 1))
            latent_second = permute(xp, ryw, (1, 0, 2)) @ permute(xp, latent_mean, (1, 2, 0))
            # E[w w' | k] adds the posterior covariance to the outer product of the means
            # (with the responsibilities alone: a variant's weights scale the means only).
            latent_second = latent_second + filled_mass[:, None, None] * _to_float64(latent_cov)
        else:
            latent_sum = zeros(xp, (K, 0), resp_mass)
            latent_y = zeros(xp, (K, L1 - 1, 0), resp_mass)
            latent_second = zeros(xp, (K, 0, 0), resp_mass)
        if fused_cross is not None:
            latent_cross = (reshape(xp, _to_float64(block.sample_sums(rz, Xc)), (Lw, K, D))
                            if Lw else zeros(xp, (0, K, D), moments))
            cross = concat(xp, [fused_cross, latent_cross], axis=0)
        elif D:
            cross = reshape(xp, _to_float64(block.sample_sums(rz, Xc)), (L1 + Lw, K, D))
        else:
            cross = zeros(xp, (L1 + Lw, K, 0), resp_mass)
        noise_moments = (self.noise.block_moments(block, as_dtype(resp, dtype), weighted)
                         if D else None)
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

        # Moments of the augmented regressors z = [y, w] and their cross-moments with x.
        Lz = L + Lw
        K, D = stats.cross.shape[1:]
        zbar, Mzz, xbar, Mzx = regressor_moments(
            stats.moments[:, n_sq:], stats.latent_sum, stats.latent_y, stats.latent_second,
            stats.cross, mass)

        scale = self.covariance_scale(stats)
        target_moments = Mzz[:, :L, :L]  # (read only: the projection makes new arrays)
        if scale is not None:
            target_moments = target_moments * scale[:, None, None]
        gamma = _finalize_gamma(self.target, target_moments, pis, self.target_reg_covar)

        # Minimum-norm least squares: exact when Mzz is invertible, finite when it is not.
        # The loadings come transposed, [A_k, W_k]' (K, Lz, D). Gamma's inverse and
        # log-determinant, which the next E-step needs, come from the same factorisations
        # where the shapes allow (see target_factors).
        if D:
            loadings_t, factors = _solve_moments(Mzz, Mzx, gamma)
        else:
            loadings_t, factors = zeros(xp, (K, Lz, 0), Mzz), None
        self._gamma_factors = None if factors is None else (gamma, *factors)
        b = xbar - (zbar[:, None, :] @ loadings_t)[:, 0, :]
        explained = einsum(xp, "kld,kld->kd", loadings_t, Mzx)  # diag(A Mzx) per component
        raw = self.noise.raw(stats, xbar, loadings_t, Mzx, explained, pis, scale)
        fields = dict(
            weights=pis / xp.sum(pis), c=copy(xp, zbar[:, :L]),
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
        host = [np.asarray(to_numpy(a), dtype=np.float64) for a in (Xc, y, resp, A, b)]
        W = move_like(_latent_loadings(*host, n_latent, random_state), A)
        return self.with_latent(moments, W)

    def with_latent(self, moments, W):
        """The parameters of ``moments`` with latent loadings ``W``: the noise loses W W'
        (so that Sigma_k + W_k W_k' keeps the residual variance) and is finalised."""
        raw = self.noise.remove_latent(moments.raw, W, moments.weights)
        return moments.complete(self.finalize_noise(raw, moments.weights), W=W)

    # -- the forward mixture -----------------------------------------------------------------
    def n_parameters(self, n_components, n_features, n_targets, n_latent):
        """Free parameters: weights, c, Gamma, A, b, Sigma, and W up to rotation."""
        K, D, L, Lw = n_components, n_features, n_targets, n_latent
        latent = K * (D * Lw - Lw * (Lw - 1) / 2)
        return int((K - 1) + K * L + self.target.n_parameters(K, L) + K * D * L + K * D
                   + self.noise.n_parameters(K, D) + latent)
