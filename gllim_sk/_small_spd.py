"""Log-determinants and inverses of many tiny symmetric positive definite matrices.

numpy's batched ``linalg`` calls LAPACK once per matrix, which costs far more than the
arithmetic of a 2 x 2 to 8 x 8 matrix. Here the Cholesky factorisation runs over the
whole batch at once, one numpy operation per matrix entry ("structure of arrays"), on
blocks of matrices small enough to stay in cache. The posterior precisions of GLLiM's
inversion with per-observation noise (one L x L matrix per observation and component)
and the merged covariances of :func:`~gllim_sk.posterior.merge_mixture` are such
batches.
"""

import numpy as np

# Matrices per block: each entry's array (8 bytes a matrix) stays below the size at
# which the allocator maps fresh pages, and in cache.
_BLOCK = 16384
# Above this size the per-entry operations outnumber LAPACK's per-matrix overhead.
MAX_DIM = 8


def _not_definite():
    return np.linalg.LinAlgError("Matrix is not positive definite")


def factor_entries(S, p):
    """Lower Cholesky factor of p x p matrices given entry by entry.

    ``S[i][j]`` (``i >= j``; only the lower triangle is read) are arrays of one common
    shape, one element per matrix (nested lists, or an array of shape (p, p, ...)).
    Returns the factor as nested lists ``C[i][j]`` (``i >= j``) of such arrays. Raises
    :class:`numpy.linalg.LinAlgError` when a matrix is not positive definite (or holds
    NaN).
    """
    C = [[None] * p for _ in range(p)]
    for j in range(p):
        s = _minus_products(S[j][j], C[j], C[j], j)
        if not np.all(s > 0):  # also catches NaN
            raise _not_definite()
        C[j][j] = np.sqrt(s)
        inv = 1.0 / C[j][j]
        for i in range(j + 1, p):
            C[i][j] = _minus_products(S[i][j], C[i], C[j], j) * inv
    return C


def _minus_products(s, a, b, k):
    """s - a[0] b[0] - ... - a[k-1] b[k-1], entry by entry (s itself is not modified)."""
    if k == 0:
        return s
    s = s - a[0] * b[0]
    for h in range(1, k):
        s -= a[h] * b[h]
    return s


def logdet_entries(C, p):
    """log|S| from the factor of :func:`factor_entries`."""
    s = np.log(C[0][0])
    for j in range(1, p):
        s += np.log(C[j][j])
    return 2.0 * s


def inverse_entries(C, p, out=None):
    """Entries ``I[i][j]`` of (C C')^-1 from the factor of :func:`factor_entries`, as
    nested lists (``I[i][j]`` and ``I[j][i]`` are the same array): G' G with G = C^-1.
    With ``out`` (an array (p, p, ...)), the entries are written there, both triangles,
    and are views of it."""
    G = [[None] * p for _ in range(p)]
    for i in range(p):
        G[i][i] = 1.0 / C[i][i]
        neg = -G[i][i] if i else None
        for j in range(i):
            s = C[i][j] * G[j][j]
            for k in range(j + 1, i):
                s += C[i][k] * G[k][j]
            G[i][j] = s * neg
    inv = [[None] * p for _ in range(p)]
    for i in range(p):
        for j in range(i + 1):
            # Accumulated in place: in ``out`` itself when given.
            s = np.multiply(G[i][i], G[i][j], out=None if out is None else out[i, j])
            for k in range(i + 1, p):
                s += G[k][i] * G[k][j]
            if out is not None and j < i:
                out[j, i] = s
            inv[i][j] = inv[j][i] = s
    return inv


def spd_logdet(M, *, inverse=False, rhs=None):
    """log|M| of symmetric positive definite matrices, and optionally M^-1 and M^-1 b.

    Parameters
    ----------
    M : ndarray of shape (..., p, p)
        Symmetric positive definite matrices (only the lower triangle is read).
    inverse : bool, default=False
        Also return the inverses.
    rhs : ndarray of shape (..., p), default=None
        Also return the solutions ``M^-1 b`` of these right-hand sides (needs
        ``inverse=True``).

    Returns
    -------
    logdet : ndarray of shape (...)
    inv : ndarray of shape (..., p, p)
        Only with ``inverse=True``.
    solution : ndarray of shape (..., p)
        Only with ``rhs``.

    Raises
    ------
    numpy.linalg.LinAlgError
        When a matrix is not positive definite (or holds NaN).
    """
    M = np.asarray(M, dtype=float)
    lead, p = M.shape[:-2], M.shape[-1]
    flat = M.reshape(-1, p, p)
    m = flat.shape[0]
    logdet = np.empty(m)
    inv = np.empty((m, p, p)) if inverse else None
    if rhs is not None:
        rhs = np.broadcast_to(rhs, lead + (p,)).reshape(m, p)
        sol = np.empty((m, p))
    if p > MAX_DIM:
        chol = np.linalg.cholesky(flat)
        if not np.all(np.isfinite(chol)):
            raise _not_definite()
        logdet[:] = 2.0 * np.log(np.diagonal(chol, axis1=1, axis2=2)).sum(axis=1)
        if inverse:
            inv[:] = np.linalg.inv(flat)
            inv[:] = 0.5 * (inv + np.swapaxes(inv, 1, 2))
    else:
        block_out = np.empty((p, p, min(m, _BLOCK)))
        for a in range(0, m, _BLOCK):
            b = min(a + _BLOCK, m)
            S = np.ascontiguousarray(flat[a:b].transpose(1, 2, 0))
            C = factor_entries(S, p)
            logdet[a:b] = logdet_entries(C, p)
            if inverse:
                out = block_out[:, :, : b - a]
                inverse_entries(C, p, out)
                inv[a:b] = out.transpose(2, 0, 1)
                if rhs is not None:
                    r = np.ascontiguousarray(rhs[a:b].T)
                    sol[a:b] = np.einsum("ijm,jm->mi", out, r)
    if rhs is not None and p > MAX_DIM:
        sol[:] = np.einsum("mij,mj->mi", inv, rhs)
    logdet = logdet.reshape(lead)
    if not inverse:
        return logdet
    if rhs is None:
        return logdet, inv.reshape(M.shape)
    return logdet, inv.reshape(M.shape), sol.reshape(lead + (p,))
