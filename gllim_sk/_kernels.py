"""The small kernels of the numerical core: each written once, for numpy and for the
Array API namespaces (numpy arrays take numpy's own code, as tuned for the CPU).

Pair products of y1 = [y, 1], log-sum-exp, SPD inverses and log-determinants, Cholesky
factors with a floor, and the moment solves of the M-step.
"""

import mmap
import sys
from functools import lru_cache
from math import prod

import numpy as np
from scipy.linalg import cho_solve, solve_triangular

from ._compat import (
    array_device,
    array_namespace,
    concat,
    copy,
    einsum,
    eye,
    linalg_errors,
    move_to,
    permute,
    swap_last,
    to_numpy,
    zeros,
)

LOG_2PI = float(np.log(2.0 * np.pi))
# Outputs of at least this many bytes are mapped by :func:`large_empty`: above glibc's
# largest threshold of its own mappings, every such array is fresh memory anyway.
LARGE_OUTPUT_BYTES = 32 << 20


def large_empty(shape, min_bytes=None):
    """An uninitialised float64 array of ``shape``, as ``np.empty``, for large outputs.

    On Linux, arrays of at least ``min_bytes`` (default :data:`LARGE_OUTPUT_BYTES`) are
    mapped as plain private anonymous memory, without the transparent-huge-page advice
    numpy gives its large arrays. Kernels that make huge pages on demand
    (``defrag=madvise``, a common default) compact physical memory at the first touch of
    advised memory once it is fragmented, which can cost more than the computation that
    fills the array; plain memory is faulted in page by page instead. The array owns
    its mapping (released with it). Smaller ``min_bytes`` suit work arrays reused
    within a call: glibc maps large allocations of threads afresh at every call, with
    the advice.
    """
    nbytes = prod(shape) * 8
    if min_bytes is None:
        min_bytes = LARGE_OUTPUT_BYTES
    if not nbytes or nbytes < min_bytes or not sys.platform.startswith("linux"):
        return np.empty(shape)
    return np.frombuffer(mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE),
                         dtype=np.float64).reshape(shape)


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


def quad_weights(M, const, squared, n_sq):
    """The E-step's weights (K, n_sq + P) of [squared features, y1 pairs]: ``squared``
    (K, n_sq) (zeros when None), then -1/2 the pair weights of M (K, L1, L1) with
    ``const`` (K,) (None: no constant) added to the weight of the pair y1_L y1_L = 1."""
    xp = array_namespace(M)
    K, L1, _ = M.shape
    if xp is not np:
        weights = -0.5 * _pair_weights(M)
        if const is not None:
            weights[:, -1] += const
        if squared is None and n_sq:
            squared = zeros(xp, (K, n_sq), weights)
        return weights if squared is None else xp.concat([squared, weights], axis=1)
    rows, cols, scale = _triu(L1)
    out = np.empty((K, n_sq + rows.size))
    # -1/2 and the pair scale (1 or 2) are powers of two: the same numbers as scaling
    # the pair weights first.
    np.multiply(M[:, rows, cols], -0.5 * scale, out=out[:, n_sq:])
    if const is not None:
        out[:, -1] += const
    if n_sq:
        out[:, :n_sq] = 0.0 if squared is None else squared
    return out


def log_weights(weights):
    """log of mixture weights (K,): -inf for a zero weight, without a warning."""
    xp = array_namespace(weights)
    with np.errstate(divide="ignore"):
        return xp.log(weights)


def loadings_side_by_side(A, b, W):
    """B_k' = [A_k, b_k, W_k]' (K, L + 1 + Lw, D) of A (K, D, L), b (K, D), W (K, D, Lw)."""
    if not isinstance(A, np.ndarray):
        xp = array_namespace(A)
        return xp.concat([swap_last(xp, A), b[:, None, :], swap_last(xp, W)], axis=1)
    K, D, L = A.shape
    out = np.empty((K, L + 1 + W.shape[2], D))
    out[:, :L] = A.swapaxes(1, 2)
    out[:, L] = b
    out[:, L + 1:] = W.swapaxes(1, 2)
    return out


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


@lru_cache
def _regressor_pairs(L1):
    """Positions among the pairs of y1 (see :func:`_triu`) of y_i y1_L (i < L) and of
    y_i y_j (i, j < L, row by row)."""
    rows, cols, _ = _triu(L1)
    position = np.empty((L1, L1), dtype=np.intp)
    position[rows, cols] = position[cols, rows] = np.arange(rows.size)
    L = L1 - 1
    return np.concatenate([position[:L, L], position[:L, :L].ravel()])


def regressor_moments(pair_sums, latent_sum, latent_y, latent_second, cross, mass):
    """Means and covariances of the regressors z = [y, w] and of the features x.

    From the responsibility-weighted sums over samples of the y1 pairs (K, P), of E[w]
    (K, Lw), y E[w]' (K, L, Lw), E[w w'] (K, Lw, Lw) and [y1, E w] x' (L1 + Lw, K, D),
    and the masses (K,): zbar (K, Lz), Mzz (K, Lz, Lz), xbar (K, D) and the
    cross-covariances Mzx (K, Lz, D), feature axis last and contiguous.
    """
    xp = array_namespace(pair_sums)
    Lw = latent_sum.shape[1]
    L1, K, D = cross.shape
    L1 -= Lw
    L = L1 - 1
    if isinstance(pair_sums, np.ndarray) and not Lw:
        # The same divisions and differences as below, in fewer steps.
        means = pair_sums[:, _regressor_pairs(L1)] / mass[:, None]
        zbar = means[:, :L].copy()  # contiguous, as the products that use it expect
        Mzz = means[:, L:].reshape(K, L, L) - zbar[:, :, None] * zbar[:, None, :]
        centred = cross / mass[:, None]
        xbar = centred[L]
        Mzx = np.empty((K, L, D))
        np.subtract(centred[:L].transpose(1, 0, 2), zbar[:, :, None] * xbar[:, None, :],
                    out=Mzx)
        return zbar, Mzz, xbar, Mzx
    y_moments = _unpack_pairs(pair_sums, L1)  # sums of r y1 y1' (K, L1, L1)
    z_sum = y_moments[:, :L, L]
    zz = y_moments[:, :L, :L]
    zx = permute(xp, cross[:L, ...], (1, 0, 2))
    if Lw:
        z_sum = concat(xp, [z_sum, latent_sum], axis=1)
        zz = concat(xp, [concat(xp, [zz, latent_y], axis=2),
                         concat(xp, [swap_last(xp, latent_y), latent_second], axis=2)],
                    axis=1)
        zx = concat(xp, [zx, permute(xp, cross[L1:, ...], (1, 0, 2))], axis=1)
    zbar = z_sum / mass[:, None]
    Mzz = zz / mass[:, None, None] - zbar[:, :, None] * zbar[:, None, :]
    xbar = cross[L, ...] / mass[:, None]
    Mzx = zx / mass[:, None, None]
    Mzx -= zbar[:, :, None] * xbar[:, None, :]
    return zbar, Mzz, xbar, Mzx


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
    M[:, :L, L] = M[:, L, :L] = -pc
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
        logdet = 2.0 * np.log(chol.diagonal(0, -2, -1)).sum(axis=-1)
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


def _solve_moments(Mzz, Mzx, gamma=None):
    """Mzz^+ @ Mzx per component: Cholesky when well conditioned, else pseudo-inverse.

    Returns the solution and, for SPD matrices ``gamma`` of Mzz's shape (numpy), their
    inverses and log-determinants from the same factorisation calls (the numbers a
    separate :func:`spd_inverse_and_logdet` gives), else None.
    """
    # Mzz mixes the targets' units with the latent factors' unit variance: scaling it to
    # unit diagonal keeps the conditioning test and the pseudo-inverse independent of
    # the targets' scale (the solution is the same when Mzz is invertible).
    xp = array_namespace(Mzz)
    if xp is np:
        diag = Mzz.diagonal(0, 1, 2)
        if diag.size and not diag.min() > 0:  # (np.where gives diag itself otherwise)
            diag = np.where(diag > 0, diag, 1.0)
        unit = 1.0 / np.sqrt(diag)  # (K, Lz)
    else:
        diag = xp.linalg.diagonal(Mzz)
        unit = 1.0 / xp.sqrt(xp.where(diag > 0, diag, xp.ones_like(diag)))
    Mzz = Mzz * unit[:, :, None] * unit[:, None, :]
    factors = None
    if gamma is not None and isinstance(Mzz, np.ndarray) and gamma.shape == Mzz.shape:
        solution, factors = _solve_scaled_sharing(Mzz, Mzx * unit[:, :, None], gamma)
    else:
        solution = _solve_scaled_moments(Mzz, Mzx * unit[:, :, None])
    return unit[:, :, None] * solution, factors


def _solve_scaled_sharing(Mzz, Mzx, gamma):
    """:func:`_solve_scaled_moments` (numpy) with the SPD ``gamma`` factorised and
    inverted in the same (stacked) LAPACK calls: per matrix, the same numbers. Returns the
    solution and (gamma^-1, log|gamma|), or None for those when a factorisation fails."""
    K = Mzz.shape[0]
    try:
        chol = np.linalg.cholesky(np.concatenate([Mzz, gamma]))
        inv_chol = np.linalg.inv(chol)
    except np.linalg.LinAlgError:  # either failed: each on its own, as without sharing
        return _solve_scaled_moments(Mzz, Mzx), None
    gamma_inv_chol = inv_chol[K:]
    factors = (gamma_inv_chol.swapaxes(-1, -2) @ gamma_inv_chol,
               2.0 * np.log(chol[K:].diagonal(0, -2, -1)).sum(axis=-1))
    chol, inv_chol = chol[:K], inv_chol[:K]
    pivots = chol.diagonal(0, 1, 2).min(axis=1, initial=np.inf)
    scale = np.sqrt(Mzz.diagonal(0, 1, 2).max(axis=1, initial=0.0))
    if (pivots > 1e-6 * scale).all():  # condition number below about 1e12
        return (inv_chol.swapaxes(1, 2) @ inv_chol) @ Mzx, factors
    return np.linalg.pinv(Mzz, rcond=1e-12, hermitian=True) @ Mzx, factors


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
        pivots = chol.diagonal(0, 1, 2).min(axis=1, initial=np.inf)
        scale = np.sqrt(Mzz.diagonal(0, 1, 2).max(axis=1, initial=0.0))
        if (pivots > 1e-6 * scale).all():  # condition number below about 1e12
            inv_chol = np.linalg.inv(chol)
            return (inv_chol.swapaxes(1, 2) @ inv_chol) @ Mzx
    except np.linalg.LinAlgError:
        pass
    return np.linalg.pinv(Mzz, rcond=1e-12, hermitian=True) @ Mzx


# -------------------------------------------------- the per-block kernels of the E-step
def as_dtype(a, dtype):
    """``a`` in ``dtype`` (numpy blocks are float64 throughout: returned as they are)."""
    if isinstance(a, np.ndarray):
        return a
    xp = array_namespace(a)
    return a if a.dtype == dtype else xp.astype(a, dtype)


def move_like(a, like):
    """The numpy float64 array ``a`` in the namespace and on the device of ``like``."""
    if isinstance(like, np.ndarray):
        return a
    xp = array_namespace(like)
    return xp.asarray(a, dtype=xp.float64, device=array_device(like))


def side_by_side(left_width, fill_left, right, right_width=0, fill_right=None):
    """The columns [left, right, extra], (n, left_width + p + right_width), of ``right``
    (n, p), of the ``left_width`` columns that ``fill_left(out)`` writes into ``out``
    (numpy: straight into the result, no (n, left_width) temporary) or returns (``out``
    None), and of the ``right_width`` columns that ``fill_right(out)`` gives likewise."""
    if isinstance(right, np.ndarray):
        p = right.shape[1]
        out = np.empty((right.shape[0], left_width + p + right_width))
        if left_width:
            fill_left(out[:, :left_width])
        out[:, left_width : left_width + p] = right
        if right_width:
            fill_right(out[:, left_width + p :])
        return out
    left = [fill_left(None)] if left_width else []
    extra = [fill_right(None)] if right_width else []
    return array_namespace(right).concat(left + [right] + extra, axis=1)


def cross_products(Xc, y1, out=None):
    """The products y1_j x_d of features ``Xc`` (n, D) and targets y1 (L1, n), as (n, L1 D)
    with column j D + d (numpy writes them into ``out`` when given)."""
    n, D = Xc.shape
    L1 = y1.shape[0]
    if not isinstance(Xc, np.ndarray):
        xp = array_namespace(Xc)
        y1 = as_dtype(y1, Xc.dtype)
        return xp.reshape(swap_last(xp, y1)[:, :, None] * Xc[:, None, :], (n, L1 * D))
    if out is None:
        out = np.empty((n, L1 * D))
    for j in range(L1):
        np.multiply(Xc, y1[j][:, None], out=out[:, j * D : (j + 1) * D])
    return out


def any_true(mask):
    """Whether any entry of the boolean array ``mask`` is true, as a Python bool."""
    if isinstance(mask, np.ndarray):
        return bool(mask.any())
    return bool(array_namespace(mask).any(mask))


def total(a):
    """The sum of all entries of ``a``, summed in float64, as a Python float."""
    if isinstance(a, np.ndarray):
        return float(a.sum())
    xp = array_namespace(a)
    return float(xp.sum(xp.astype(a, xp.float64)))


def with_rows_of_ones(resp, rows):
    """A copy of ``resp`` (K, n) with the rows ``rows`` (K,) bool set to 1."""
    if isinstance(resp, np.ndarray):
        resp = resp.copy()
        resp[rows] = 1.0
        return resp
    xp = array_namespace(resp)
    return xp.where(rows[:, None], xp.ones_like(resp), resp)


def normalised_exp(log_joint, floor):
    """Responsibilities and log-normalisers of log-densities ``log_joint`` (K, n).

    Returns ``(log_prob (n,), resp (K, n))``, resp = exp(log_joint - log_prob) with
    log-ratios below ``floor`` raised to it. Numpy's ``log_joint`` is overwritten (by
    ``resp``); other namespaces' is left as it is.
    """
    if not isinstance(log_joint, np.ndarray):
        xp = array_namespace(log_joint)
        top = xp.max(log_joint, axis=0)
        top = xp.where(xp.isfinite(top), top, xp.zeros_like(top))
        resp = xp.exp(xp.clip(log_joint - top, min=floor))
        norm = xp.sum(resp, axis=0)
        return xp.log(norm) + top, resp / norm
    top = log_joint.max(axis=0)
    if not np.isfinite(top).all():
        top[~np.isfinite(top)] = 0.0
    log_joint -= top
    np.maximum(log_joint, floor, out=log_joint)
    resp = np.exp(log_joint, out=log_joint)
    norm = resp.sum(axis=0)
    resp /= norm
    log_prob = np.log(norm)
    log_prob += top
    return log_prob, resp


def weighted_regressors(y1, resp, latent_mean, dtype, with_targets=True):
    """rz[j, k, n] = r_kn [y1_n, E[w_n | k]]_j as ((L1 + Lw) K, n) in ``dtype``, for the
    one product over samples of every first-order cross moment, and the float64 latent
    part r_kn E[w_n | k] (Lw, K, n). ``with_targets=False`` leaves the y1 rows out: rz is
    then the latent rows alone (Lw K, n) (a mixture of y alone needs no cross moments, and
    blocks that hold the products y1_j x_d have them already)."""
    L1, n = y1.shape
    Lw, K, _ = latent_mean.shape
    if isinstance(resp, np.ndarray):
        target_rows = L1 if with_targets else 0
        rz = np.empty((target_rows + Lw, K, n))
        if target_rows:
            np.multiply(y1[:-1, None, :], resp, out=rz[: L1 - 1])
            rz[L1 - 1] = resp  # the row of ones of y1
        ryw = rz[target_rows:]
        np.multiply(latent_mean, resp, out=ryw)
        return rz.reshape((target_rows + Lw) * K, n), ryw
    xp = array_namespace(resp)
    resp64 = _to_float64(resp)
    ryw = _to_float64(latent_mean) * resp64[None, ...]
    parts = [y1[:, None, :] * as_dtype(resp, dtype)[None, ...]] if with_targets else []
    parts.append(as_dtype(ryw, dtype))
    rz = xp.concat(parts, axis=0)
    return xp.reshape(rz, (rz.shape[0] * K, n)), ryw


# -------------------------------------------------- the kernels of the noise structures
def squares(Xc, norms, out=None):
    """Squared row norms (n, 1) of ``Xc`` when ``norms``, else its squares (n, D); numpy
    writes them into ``out`` when given."""
    if not isinstance(Xc, np.ndarray):
        xp = array_namespace(Xc)
        return xp.sum(Xc * Xc, axis=1)[:, None] if norms else Xc * Xc
    if not norms:
        return np.multiply(Xc, Xc, out=out)
    if out is None:
        return np.einsum("nd,nd->n", Xc, Xc)[:, None]
    np.einsum("nd,nd->n", Xc, Xc, out=out[:, 0])
    return out


def positive_part(a):
    """max(a, 0), a new array."""
    if isinstance(a, np.ndarray):
        return np.maximum(a, 0.0)
    xp = array_namespace(a)
    return xp.maximum(a, xp.zeros_like(a))


def contiguous(a):
    """``a`` C-contiguous (numpy; other namespaces lay out their own arrays)."""
    return np.ascontiguousarray(a) if isinstance(a, np.ndarray) else a


def repeated(values, shape):
    """``values`` broadcast to ``shape``, as an array of its own."""
    xp = array_namespace(values)
    return copy(xp, xp.broadcast_to(values, shape))


def _factor(chol, k):
    return chol[0 if chol.shape[0] == 1 else k, ...]


def cholesky_solve(chol, M):
    """Sigma_k^-1 M_k (K, D, m) from lower Cholesky factors ``chol`` (K or 1, D, D)."""
    if isinstance(chol, np.ndarray):
        return np.stack([cho_solve((_factor(chol, k), True), M[k], check_finite=False)
                         for k in range(M.shape[0])])
    xp = array_namespace(chol)
    inv_chol = xp.linalg.inv(chol)
    return swap_last(xp, inv_chol) @ (inv_chol @ M)


def cholesky_logdet(chol, n_components):
    """log|Sigma_k| (K,) from lower Cholesky factors ``chol`` (K or 1, D, D)."""
    if isinstance(chol, np.ndarray):
        diag = np.log(np.diagonal(chol, axis1=1, axis2=2)).sum(axis=1) * 2.0
        return np.broadcast_to(diag, (n_components,)).copy()
    xp = array_namespace(chol)
    diag = xp.sum(xp.log(xp.linalg.diagonal(chol)), axis=1) * 2.0
    return xp.broadcast_to(diag, (n_components,))


def cholesky_quad(chol, Xc, n_components):
    """x_n' Sigma_k^-1 x_n (K, n) from lower Cholesky factors ``chol`` (K or 1, D, D)."""
    if not isinstance(chol, np.ndarray):
        xp = array_namespace(chol)
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


def floored_choleskys(raw, reg, var_floor=None):
    """Lower Cholesky factors of the covariances ``raw`` (K, D, D), symmetrised, with
    their eigenvalues floored at the mean of ``var_floor`` (when given) and ``reg``
    added to their diagonals."""
    if isinstance(raw, np.ndarray):
        eig_floor = None if var_floor is None else float(np.mean(var_floor))
        return np.stack([_cholesky_with_floor(S.copy(), reg, eig_floor) for S in raw])
    xp = array_namespace(raw)
    eig_floor = None if var_floor is None else xp.mean(var_floor)
    return _cholesky_with_floor_xp(xp, raw, reg, eig_floor)


def weighted_grams(Xc, resp):
    """Sums of r_nk x_n x_n' (K, D, D), in float64 (the full noise is for small D)."""
    if isinstance(Xc, np.ndarray):
        return np.stack([(Xc.T * resp[k]) @ Xc for k in range(resp.shape[0])])
    X64, r64 = _to_float64(Xc), _to_float64(resp)
    return (X64.T[None, ...] * r64[:, None, :]) @ X64


def symmetrised_with_diagonal(M, value):
    """(M + M') / 2 for the stack ``M`` (K, L, L), with ``value`` added to every diagonal
    (a new array)."""
    xp = array_namespace(M)
    if xp is np:
        out = M + M.swapaxes(1, 2)
        out *= 0.5
        out.reshape(out.shape[0], -1)[:, :: out.shape[-1] + 1] += value
        return out
    return 0.5 * (M + swap_last(xp, M)) + value * eye(xp, M.shape[-1], M)[None, ...]


# -------------------------------------------------- the kernels of the predictions
def _as_dtype(a, dtype):
    """``a`` in ``dtype`` (numpy: without a copy when it is already)."""
    xp = array_namespace(a)
    return a.astype(dtype, copy=False) if xp is np else xp.astype(a, dtype)


def _total(a):
    """The sum of ``a`` (numpy's scalar for numpy arrays, a float otherwise)."""
    xp = array_namespace(a)
    return a.sum() if xp is np else float(xp.sum(xp.astype(a, xp.float64)))


def host_result_like(a, like, dtype, xp):
    """The host (numpy) result ``a`` in ``dtype``, in namespace ``xp`` on the device of
    ``like`` (``xp`` numpy: a numpy array)."""
    if xp is np:
        return np.asarray(a).astype(dtype, copy=False)
    return xp.asarray(np.asarray(a), dtype=dtype, device=array_device(like))


def centred_block(X, y, feature_mean):
    """Features centred by ``feature_mean`` and targets, in the precision the E-step
    runs in: float64 for numpy, the dtype of ``X`` otherwise."""
    Xc = centred_features(X, feature_mean)
    return Xc, as_dtype(y, X.dtype)


# -------------------------------------------------- the kernels of the estimators
def input_array(a):
    """``a`` as an array (lists and data frames become numpy arrays)."""
    if hasattr(a, "__array_namespace__") or hasattr(a, "__dlpack__"):
        return a
    return np.asarray(a)


def input_in_namespace(a, xp, like):
    """The input ``a`` in namespace ``xp`` on the device of ``like``, ready for
    validation; numpy (``xp`` numpy) leaves it as given."""
    if xp is np:
        return a
    return move_to(input_array(a), xp=xp, device=array_device(like))


def validated_array(a, xp):
    """What validation returned for ``a`` as an array of ``xp`` (numpy: ``np.asarray``)."""
    return np.asarray(a) if xp is np else a


def training_precision(X, y):
    """Training data in the precision EM runs in: float64 for numpy, otherwise the dtype
    of ``X`` (float32 allowed) for both."""
    if isinstance(X, np.ndarray):
        return X.astype(np.float64, copy=False), y.astype(np.float64, copy=False)
    return X, array_namespace(X).astype(y, X.dtype)


def centred_training_data(X, y, offsets=None, with_variance=False):
    """``(offset, y_offset, Xc, yc, var)``: the means of the training data X (n, D) and
    y (n, L) (``offsets`` instead when given: a warm start), the data centred by them
    and, ``with_variance``, the column variances of Xc (else None).

    Numpy computes in float64. Other namespaces take the means and the centring in
    float64 and return the centred data in the dtype of X.
    """
    if isinstance(X, np.ndarray):
        offset, y_offset = (X.mean(axis=0), y.mean(axis=0)) if offsets is None else offsets
        Xc = X - offset
        return offset, y_offset, Xc, y - y_offset, Xc.var(axis=0) if with_variance else None
    xp = array_namespace(X)
    X64, y64 = xp.astype(X, xp.float64), xp.astype(y, xp.float64)
    offset, y_offset = ((xp.mean(X64, axis=0), xp.mean(y64, axis=0)) if offsets is None
                        else offsets)
    Xc64 = X64 - offset
    var = xp.var(Xc64, axis=0) if with_variance else None
    return offset, y_offset, xp.astype(Xc64, X.dtype), xp.astype(y64 - y_offset, X.dtype), var


def centred_features(X, feature_mean):
    """Features centred by ``feature_mean``, in the precision the E-step runs in: float64
    for numpy, the dtype of ``X`` otherwise."""
    if isinstance(X, np.ndarray):
        return X.astype(np.float64) - feature_mean
    return X - array_namespace(X).astype(feature_mean, X.dtype)


def take_rows(a, rows):
    """The rows ``rows`` (numpy integers) of ``a``, in its namespace and on its device."""
    if isinstance(a, np.ndarray):
        return a[rows]
    xp = array_namespace(a)
    return xp.take(a, xp.asarray(rows, device=array_device(a)), axis=0)


def own_contiguous(a):
    """``a`` as an array of its own: numpy's C-contiguous (a copy unless it already is),
    a copy in other namespaces (their views share memory)."""
    if isinstance(a, np.ndarray):
        return np.ascontiguousarray(a)
    return array_namespace(a).asarray(a, copy=True)


def namespace_converter(xp, device):
    """A function moving arrays to namespace ``xp`` on ``device`` (numpy: to the host,
    through each array's own namespace, which can read a device's memory)."""
    if xp is np:
        return to_numpy
    return lambda value: move_to(value, xp=xp, device=device)
