"""The compiled kernels (numba) of :mod:`gllim_sk._compiled`, which imports this module
only where numba is installed and a call is large enough."""

import math

import numba
import numpy as np

_OPTIONS = dict(nogil=True, error_model="numpy", boundscheck=False)


def _njit(func=None, **options):
    """``func`` compiled on first call, without the GIL; cached on disk where a cache
    folder is writable."""
    if func is None:
        return lambda f: _njit(f, **options)
    options = {**_OPTIONS, **options}
    try:
        return numba.njit(cache=True, **options)(func)
    except RuntimeError:  # no writable cache location: compiled in each process
        return numba.njit(**options)(func)


# Helpers that take arrays are inlined into their callers: a call would count
# references to every array it passes, which costs more than their arithmetic.
_helper = _njit(inline="always")


@_njit
def noisy_diagonal_rows(XcT, SgT, sigma_g, inv_g, Az, pairs, means_x, c, offset, det,
                        quad_out, means, covs, block_rows):
    """Per row i and component k, with V = Sigma_k + diag(s_i) scaled by g (``sigma_g``
    (K, D) and ``SgT`` (D, n) hold Sigma / g and S' / g, ``inv_g`` 1 / g): the posterior
    precision P = prior + Az' V^-1 Az (``pairs`` (K, E, D + 1): the products of Az's
    columns (i, j), i >= j, per feature, then the prior's entry), u = Az' V^-1 r with
    r = x_i - ``means_x``[k], and from P's Cholesky factor C:

    - ``det``[i, k] = prod_d (V_d / g_d) |P| (its logarithm is taken by the caller),
    - ``quad_out``[i, k] = r' V^-1 r - u' P^-1 u,
    - ``means``[i, k] = (P^-1 u)[:L] + ``c``[k] + ``offset`` and ``covs``[i, k] =
      (P^-1)[:L, :L].

    A precision that is not positive definite leaves a ``det`` of 0 or NaN.

    The rows run in blocks, the block's rows innermost: every loop is a long
    contiguous one over the rows, as numpy's operations are.
    """
    D, n = XcT.shape
    K, _, Lz = Az.shape
    L = c.shape[1]
    M = block_rows
    P = np.empty((Lz, Lz, M))  # the precision, then its factor, in the lower triangle
    G = np.empty((Lz, Lz, M))  # the factor's inverse (lower)
    u = np.empty((Lz, M))
    z = np.empty((Lz, M))
    quad = np.empty(M)
    prod = np.empty(M)
    inv_v = np.empty(M)
    v_r = np.empty(M)
    s = np.empty(M)
    block_means = np.empty((M, K, L))
    block_covs = np.empty((M, K, L, L))
    for start in range(0, n, M):
        m = min(M, n - start)
        for k in range(K):
            e = 0
            for a in range(Lz):
                for b in range(a + 1):
                    prior = pairs[k, e, D]
                    for j in range(m):
                        P[a, b, j] = prior
                    e += 1
                for j in range(m):
                    u[a, j] = 0.0
            for j in range(m):
                quad[j] = 0.0
                prod[j] = 1.0
            for d in range(D):
                sigma_kd = sigma_g[k, d]
                scale = inv_g[d]
                mean_kd = means_x[k, d]
                for j in range(m):
                    v = sigma_kd + SgT[d, start + j]
                    prod[j] *= v
                    iv = scale / v
                    r = XcT[d, start + j] - mean_kd
                    w = r * iv
                    quad[j] += r * w
                    inv_v[j] = iv
                    v_r[j] = w
                e = 0
                for a in range(Lz):
                    for b in range(a + 1):
                        pair = pairs[k, e, d]
                        for j in range(m):
                            P[a, b, j] += pair * inv_v[j]
                        e += 1
                    loading = Az[k, d, a]
                    for j in range(m):
                        u[a, j] += loading * v_r[j]
            # Cholesky factor C of P, in place; prod takes |P| = prod of the pivots.
            for t in range(Lz):
                for a in range(t, Lz):  # column t: the pivot, then the entries below it
                    for j in range(m):
                        s[j] = P[a, t, j]
                    for h in range(t):
                        for j in range(m):
                            s[j] -= P[a, h, j] * P[t, h, j]
                    if a == t:
                        for j in range(m):
                            root = math.sqrt(s[j])
                            P[t, t, j] = root
                            G[t, t, j] = 1.0 / root
                            prod[j] *= s[j]
                    else:
                        for j in range(m):
                            P[a, t, j] = s[j] * G[t, t, j]
            # G = C^-1, so that P^-1 = G' G.
            for a in range(Lz):
                for b in range(a):
                    for j in range(m):
                        s[j] = P[a, b, j] * G[b, b, j]
                    for h in range(b + 1, a):
                        for j in range(m):
                            s[j] += P[a, h, j] * G[h, b, j]
                    for j in range(m):
                        G[a, b, j] = -s[j] * G[a, a, j]
            # z = G u: u' P^-1 u = |z|^2 and P^-1 u = G' z.
            for a in range(Lz):
                for j in range(m):
                    s[j] = 0.0
                for b in range(a + 1):
                    for j in range(m):
                        s[j] += G[a, b, j] * u[b, j]
                for j in range(m):
                    z[a, j] = s[j]
                    quad[j] -= s[j] * s[j]
            for j in range(m):
                det[start + j, k] = prod[j]
                quad_out[start + j, k] = quad[j]
            for a in range(L):
                for j in range(m):
                    s[j] = 0.0
                for h in range(a, Lz):
                    for j in range(m):
                        s[j] += G[h, a, j] * z[h, j]
                c_ka = c[k, a]
                offset_a = offset[a]
                for j in range(m):
                    block_means[j, k, a] = (s[j] + c_ka) + offset_a
                for b in range(a + 1):
                    for j in range(m):
                        s[j] = 0.0
                    for h in range(a, Lz):
                        for j in range(m):
                            s[j] += G[h, a, j] * G[h, b, j]
                    for j in range(m):
                        block_covs[j, k, a, b] = s[j]
                        block_covs[j, k, b, a] = s[j]
        means[start : start + m] = block_means[:m]
        covs[start : start + m] = block_covs[:m]


@_njit
def mixture_moments(weights, means, covs, mean, cov):
    """Mean ``mean`` (n, L) and covariance ``cov`` (n, L, L) of each row's mixture of
    ``weights`` (n, K), ``means`` (n, K, L) and ``covs`` (n, K, L, L): the weighted sums
    of the means and of the covariances, plus the weighted spread of the means about
    their mean, symmetrised."""
    n, K, L = means.shape
    within = np.empty((L, L))
    spread = np.empty((L, L))
    for i in range(n):
        for a in range(L):
            total = 0.0
            for k in range(K):
                total += weights[i, k] * means[i, k, a]
            mean[i, a] = total
        within[:, :] = 0.0
        spread[:, :] = 0.0
        for k in range(K):
            w = weights[i, k]
            for a in range(L):
                w_d = w * (means[i, k, a] - mean[i, a])
                for b in range(L):
                    within[a, b] += w * covs[i, k, a, b]
                    spread[a, b] += w_d * (means[i, k, b] - mean[i, b])
        for a in range(L):
            for b in range(L):
                cov[i, a, b] = 0.5 * ((within[a, b] + spread[a, b])
                                      + (within[b, a] + spread[b, a]))


@_helper
def _packed_logdet(Q, L, jitter, work):
    """log|P + jitter I| of the covariance P whose lower entries, row by row, are ``Q``
    (``work``: an (L, L) scratch array); NaN where it is not positive definite."""
    e = 0
    for a in range(L):
        for b in range(a + 1):
            work[a, b] = Q[e]
            e += 1
        work[a, a] += jitter
    pivots = 1.0
    for t in range(L):
        s = work[t, t]
        for h in range(t):
            s -= work[t, h] * work[t, h]
        if not s > 0.0:
            return np.nan
        pivots *= s
        root = math.sqrt(s)
        for a in range(t + 1, L):
            v = work[a, t]
            for h in range(t):
                v -= work[a, h] * work[t, h]
            work[a, t] = v / root
        work[t, t] = root
    if 2.2250738585072014e-308 <= pivots <= 1.7976931348623157e308:
        return math.log(pivots)
    total = 0.0  # the product left the range of floats: a sum of logarithms instead
    for t in range(L):
        total += 2.0 * math.log(work[t, t])
    return total


@_helper
def _merged(w, mu, Q, first, second, L, merged_mean, merged_Q):
    """The moment-preserving merge of components ``first`` and ``second`` (weights
    ``w``, means ``mu`` and covariances' lower entries ``Q``): its weight returned, its
    mean and entries written to ``merged_mean`` and ``merged_Q``."""
    total = w[first] + w[second]
    a = w[first] / total
    b = w[second] / total
    ab = a * b
    e = 0
    for i in range(L):
        merged_mean[i] = a * mu[first, i] + b * mu[second, i]
        d_i = mu[first, i] - mu[second, i]
        for j in range(i + 1):
            merged_Q[e] = (a * Q[first, e] + b * Q[second, e]) + (ab * d_i) * (
                mu[first, j] - mu[second, j])
            e += 1
    return total


@_helper
def _runnalls_cost(w, mu, Q, ld, first, second, L, jitter, merged_mean, merged_Q, work):
    """Runnalls' bound on the cost of merging ``first`` and ``second`` (see
    :func:`gllim_sk.posterior._runnalls_cost`)."""
    total = _merged(w, mu, Q, first, second, L, merged_mean, merged_Q)
    logdet = _packed_logdet(merged_Q, L, jitter, work)
    return 0.5 * (total * logdet - w[first] * ld[first] - w[second] * ld[second])


@_njit
def merge_rows(rel, order, width, means, covs, n_keep, jitter, logdets, out_w, out_m, out_c):
    """Greedy Runnalls merging of each row's mixture down to ``n_keep`` components, as
    :func:`gllim_sk.posterior._merge_block` does for a block of rows of one width.

    Row i merges its ``width[i]`` heaviest components, ``order[i, :width[i]]``, of
    relative weights ``rel`` (floored at 1e-300), means ``means`` and covariances
    ``covs``; ``logdets`` (n, K), if not empty, holds the log-determinants of the
    covariances plus ``jitter[i]`` on the diagonal (else they are computed). Writes the
    components left, heaviest first. Returns False where a covariance (or a merged one)
    is not positive definite: nothing is then to be trusted.
    """
    n, K, L = means.shape
    E = L * (L + 1) // 2
    w = np.empty(K)
    mu = np.empty((K, L))
    Q = np.empty((K, E))
    ld = np.empty(K)
    active = np.empty(K, dtype=np.bool_)
    # Each log-determinant and cost is computed once, where it is still unknown (each in
    # one place of the code: its helpers are inlined there); a cost takes its pair in
    # the order of ``lead`` (the merged component first, as the numpy code does).
    ld_unknown = np.empty(K, dtype=np.bool_)
    cost = np.empty((K, K))
    cost_unknown = np.empty((K, K), dtype=np.bool_)
    lead = np.empty((K, K), dtype=np.int64)
    merged_mean = np.empty(L)
    merged_Q = np.empty(E)
    work = np.empty((L, L))
    given = logdets.shape[0] > 0
    for i in range(n):
        c = width[i]
        if c == n_keep:  # nothing to merge: already heaviest first
            for t in range(c):
                col = order[i, t]
                out_w[i, t] = rel[i, col]
                for a in range(L):
                    out_m[i, t, a] = means[i, col, a]
                    for b in range(L):
                        out_c[i, t, a, b] = covs[i, col, a, b]
            continue
        for t in range(c):
            col = order[i, t]
            w[t] = max(rel[i, col], 1e-300)
            e = 0
            for a in range(L):
                mu[t, a] = means[i, col, a]
                for b in range(a + 1):
                    Q[t, e] = covs[i, col, a, b]
                    e += 1
            ld[t] = logdets[i, col] if given else 0.0
            ld_unknown[t] = not given
            active[t] = True
            for s in range(t + 1, c):
                cost_unknown[t, s] = True
                lead[t, s] = t
        for _ in range(c - n_keep):
            for t in range(c):
                if ld_unknown[t]:
                    ld_unknown[t] = False
                    for e in range(E):
                        merged_Q[e] = Q[t, e]
                    ld[t] = _packed_logdet(merged_Q, L, jitter[i], work)
                    if not math.isfinite(ld[t]):
                        return False
            for t in range(c):
                for s in range(t + 1, c):
                    if cost_unknown[t, s]:
                        cost_unknown[t, s] = False
                        one = lead[t, s]
                        cost[t, s] = _runnalls_cost(w, mu, Q, ld, one, t + s - one, L,
                                                    jitter[i], merged_mean, merged_Q, work)
            best, first, second = np.inf, -1, -1
            for t in range(c):
                if active[t]:
                    for s in range(t + 1, c):
                        if active[s] and cost[t, s] < best:
                            best, first, second = cost[t, s], t, s
            if first < 0:  # NaN costs: a merged covariance that is not definite
                return False
            w[first] = _merged(w, mu, Q, first, second, L, merged_mean, merged_Q)
            for a in range(L):
                mu[first, a] = merged_mean[a]
            for e in range(E):
                Q[first, e] = merged_Q[e]
            w[second] = 0.0
            active[second] = False
            ld_unknown[first] = True
            for s in range(c):
                if active[s] and s != first:
                    cost_unknown[min(first, s), max(first, s)] = True
                    lead[min(first, s), max(first, s)] = first
        for slot in range(n_keep):  # the heaviest first (the first on ties)
            pick = -1
            for t in range(c):
                if active[t] and (pick < 0 or w[t] > w[pick]):
                    pick = t
            active[pick] = False
            out_w[i, slot] = w[pick]
            e = 0
            for a in range(L):
                out_m[i, slot, a] = mu[pick, a]
                for b in range(a + 1):
                    out_c[i, slot, a, b] = Q[pick, e]
                    out_c[i, slot, b, a] = Q[pick, e]
                    e += 1
    return True
