"""GLLiM on dask arrays: fitting without gathering the samples, and lazy prediction.

GLLiM's EM is a sum over samples of sufficient statistics followed by a small M-step, so
it runs over a dask array exactly, with nothing approximated: the engine's EM loop runs
with :class:`~gllim_sk._engine.DaskExecutor`, which keeps the row blocks on the workers
and brings only the summed statistics to the client. This module adds what a fit needs
besides the EM loop (checks of dask inputs, the initialisation over blocks) and the
lazy, block-by-block prediction of the fitted model.

dask is imported only here and in the executor, and only when a dask array is passed in.
"""

import functools
import sys
import warnings
from dataclasses import dataclass

import numpy as np
from sklearn.exceptions import UndefinedMetricWarning

from . import _engine, _init
from . import _gllim_math as gm

# Latent initialisation: per-component D x D Gram matrices up to this many floats in all
# (256 MiB), above that a subspace iteration of this many passes, with this many extra
# directions, over the blocks.
LATENT_GRAM_MAX_FLOATS = 2**25
LATENT_POWER_ITERATIONS = 6
LATENT_OVERSAMPLING = 8
# The starting runs of a dask fit (on random subsets of the samples, see
# _init.candidate_rows) run on the client, in memory, when they need at most this many
# bytes there, estimated as the subset's rows of X and y and CLIENT_FLOATS_PER_COMPONENT
# floats per row and component (the E-step's and the statistics' work arrays): each of
# their EM iterations would otherwise be a round trip through the cluster's scheduler.
CLIENT_SUBSET_MAX_BYTES = 2**29
CLIENT_FLOATS_PER_COMPONENT = 8


def is_dask_array(a):
    """Whether ``a`` is a dask array (False, without importing dask, when dask is not loaded)."""
    module = sys.modules.get("dask.array")
    return module is not None and isinstance(a, module.Array)


def any_dask_array(*arrays):
    return any(is_dask_array(a) for a in arrays)


# ---------------------------------------------------------------------------- fitting
def check_training_arrays(estimator, X, y):
    """``X`` (n, D) and ``y`` (n,) or (n, L) as float64 dask arrays with the row blocks of
    ``X`` (one block of columns), after the checks of the in-memory fit that need no data."""
    import dask.array as da

    X = X if is_dask_array(X) else da.from_array(np.asarray(X))
    y = y if is_dask_array(y) else da.from_array(np.asarray(y))
    if X.ndim != 2:
        raise ValueError(f"Expected a 2-D X, got an array of shape {X.shape}.")
    if y.ndim not in (1, 2):
        raise ValueError(f"Expected a 1-D or 2-D y, got an array of shape {y.shape}.")
    for name, a in (("X", X), ("y", y)):
        if not (np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.integer)):
            raise ValueError(f"{name} must be numeric; got dtype {a.dtype}.")
    if np.isnan(X.shape[0]) or np.isnan(y.shape[0]):
        raise ValueError("X and y need known numbers of rows: call compute_chunk_sizes() first.")
    n, D = X.shape
    if n != y.shape[0]:
        raise ValueError(f"X and y have inconsistent numbers of samples: {n} and {y.shape[0]}.")
    y2 = y.reshape(n, 1) if y.ndim == 1 else y
    if n < 2:
        raise ValueError(f"Found array with {n} sample(s) while a minimum of 2 is required.")
    estimator._check_sizes(n, D, y2.shape[1])
    X = X.astype(np.float64).rechunk({1: -1})
    if 0 in X.chunks[0]:  # empty blocks (left by filtering, say) hold nothing to fit
        X = X.rechunk({0: tuple(size for size in X.chunks[0] if size)})
    y2 = y2.astype(np.float64).rechunk((X.chunks[0], -1))
    return X, y2, y.ndim


def take_rows(a, rows):
    """The rows ``rows`` (sorted indices) of the dask array ``a``, without empty blocks."""
    a = a[rows]
    if 0 in a.chunks[0]:
        a = a.rechunk({0: tuple(size for size in a.chunks[0] if size)})
    return a


def subset_rows(Xc, y, rows, n_components):
    """The rows ``rows`` (sorted indices) of the dask arrays ``Xc`` and ``y``: gathered to
    the client as numpy arrays when EM with ``n_components`` on them needs at most
    ``CLIENT_SUBSET_MAX_BYTES`` there, left on the workers otherwise."""
    Xc, y = take_rows(Xc, rows), take_rows(y, rows)
    per_row = Xc.shape[1] + y.shape[1] + CLIENT_FLOATS_PER_COMPONENT * n_components
    if len(rows) * per_row * 8 > CLIENT_SUBSET_MAX_BYTES:
        return Xc, y
    import dask.array as da

    both = _engine.compute(da.concatenate([Xc, y], axis=1))
    return both[:, :Xc.shape[1]].copy(), both[:, Xc.shape[1]:].copy()


def column_means(executor, blocks, func):
    """Mean over all samples of ``func(block)`` (n_block, m) -> (m,)."""
    _, total = executor.map_reduce(lambda block: (None, func(block).sum(axis=0)), blocks)
    return total / sum(executor.sizes(blocks))


def column_variances(executor, blocks, attribute):
    """Variance of each column of the blocks' ``attribute`` arrays over all samples (two
    passes, as numpy's ``var``)."""
    mean = column_means(executor, blocks, lambda block: getattr(block, attribute))
    return column_means(executor, blocks, lambda block: (getattr(block, attribute) - mean) ** 2)


def column_spreads(X, y):
    """(name, max - min of each column) of the dask arrays X and y."""
    import dask

    spreads = dask.compute(*(a.max(axis=0) - a.min(axis=0) for a in (X, y)))
    return list(zip(("X", "y"), spreads, strict=True))


def initial_params(estimator, problem, random_state, init_params=None):
    """The first M-step of a fit on dask arrays, from responsibilities made block by
    block (as :meth:`GLLiMRegressor._em_initial_params` makes them from whole arrays);
    ``init_params`` overrides the estimator's."""
    est = estimator
    model, executor, blocks = problem.model, problem.executor, problem.blocks
    K = est.n_components
    esteps = _initial_esteps(est, executor, blocks, random_state,
                             init_params or est.init_params, problem.Xc.shape[1])
    moments = _engine.m_step_from_esteps(model, executor, blocks, esteps, np.zeros((K, 0, 0)))
    if est.n_latent == 0:
        return moments.complete(model.finalize_noise(moments.raw, moments.weights))
    return _init_latent(model, executor, blocks, esteps, moments, est.n_latent, random_state)


def _estep_of_resp(resp):
    K, n = resp.shape
    return gm.BlockEStep(log_prob=np.full(n, np.nan), resp=resp,
                         latent_mean=np.zeros((0, K, n)))


def _given_estep(resp_block):
    if not np.isfinite(resp_block).all():
        raise ValueError("Input resp_init contains NaN or infinity.")
    if (resp_block < 0).any():
        raise ValueError("resp_init has negative entries; responsibilities are >= 0.")
    totals = resp_block.sum(axis=1, keepdims=True)
    if (totals <= 0).any():
        raise ValueError("resp_init has rows that sum to 0; each row needs mass.")
    return _estep_of_resp(np.ascontiguousarray((resp_block / totals).T))


def _random_estep(block, n_components, seed):
    resp = np.random.default_rng(seed).uniform(size=(n_components, block.n_samples))
    return _estep_of_resp(resp / resp.sum(axis=0))


def _kmeans_points(block, joint, scale=None, projection=None):
    points = np.hstack([block.y, block.Xc]) if joint else block.y
    if scale is None:
        return points
    return _init.joint_points(points / scale, block.y.shape[1], projection)


def _labels_estep(block, kmeans, joint, scale, projection):
    labels = kmeans.predict(_kmeans_points(block, joint, scale, projection))
    resp = np.zeros((kmeans.n_clusters, block.n_samples))
    resp[labels, np.arange(block.n_samples)] = 1.0
    return _estep_of_resp(resp)


def _initial_esteps(est, executor, blocks, random_state, init_params, n_features):
    """Per-block initial E-steps (lazy dask values) for ``init_params``."""
    import dask
    import dask.array as da

    K = est.n_components
    n = sum(executor.sizes(blocks))
    if est.resp_init is not None:
        resp = da.asarray(est.resp_init)
        if resp.ndim != 2:
            raise ValueError(
                "resp_init must be a 2-D array of shape (n_samples, n_components), got an "
                f"array with {resp.ndim} dimension(s)."
            )
        if resp.shape != (n, K):
            raise ValueError(f"resp_init has shape {resp.shape}; expected (n_samples, "
                             f"n_components) = ({n}, {K}).")
        resp = resp.astype(np.float64).rechunk((tuple(executor.sizes(blocks)), -1))
        given = dask.delayed(_given_estep, pure=True)
        return [given(part) for part in resp.to_delayed().ravel()]
    if K == 1:
        return executor.derived_blocks(lambda block: _estep_of_resp(np.ones((1, block.n_samples))),
                                       blocks, 0)
    if init_params == "random":
        seeds = random_state.randint(2**31 - 1, size=len(blocks))
        call = dask.delayed(_random_estep, pure=True)
        return [call(block, K, int(seed)) for block, seed in zip(blocks, seeds, strict=True)]
    joint = init_params == "kmeans_joint"
    # Drawn first, as in memory.
    projection = _init.joint_projection(n_features, random_state) if joint else None
    sample = None
    if n > _init.KMEANS_MAX_SAMPLES:
        sample = np.sort(random_state.choice(n, _init.KMEANS_MAX_SAMPLES, replace=False))
    starts = np.cumsum([0] + executor.sizes(blocks))
    scale = None
    if joint:  # standardised [y, Xc], the scale from all samples as in memory
        mean = column_means(executor, blocks, lambda block: _kmeans_points(block, True))
        _, total = executor.map_reduce(
            lambda block: (None, ((_kmeans_points(block, True) - mean) ** 2).sum(axis=0)),
            blocks)
        scale = np.sqrt(total / n)
        scale = np.where(scale > 0, scale, 1.0)

    def take_points(block, start):
        rows = slice(None) if sample is None else (
            sample[(sample >= start) & (sample < start + block.n_samples)] - start)
        return None, [_kmeans_points(block, joint, scale, projection)[rows]]

    _, parts = executor.map_reduce(take_points, blocks, list(starts[:-1]))
    with executor.serial():
        kmeans = _init.fitted_kmeans(np.concatenate(parts), K, random_state)
    esteps = executor.derived_blocks(
        functools.partial(_labels_estep, kmeans=kmeans, joint=joint, scale=scale,
                          projection=projection), blocks, 0)
    if joint:
        return esteps
    # The Gaussian mixture on y that refines k-means, over blocks of targets alone.
    y_scale = _init.scale_of_variances(column_variances(executor, blocks, "y"))
    y_model = gm.GLLiMModel("diag", est.target_covariance_type,
                            _init.target_mixture_reg(est.reg_covar, y_scale))
    y_shift = column_means(executor, blocks, lambda block: block.y)
    y_blocks = executor.derived_blocks(
        lambda block: y_model.prepare_block(np.empty((block.n_samples, 0)), block.y - y_shift),
        blocks, 0)
    return _init.refine_target_mixture_esteps(y_model, executor, y_blocks, esteps, K)


@dataclass
class LatentPCAStats:
    """What the latent initialisation needs of the samples, summed over blocks.

    Each sample enters the weighted PCA of the residuals e = x - A_k y - b_k of its most
    responsible component: ``gram`` (K, D, D) sums r e e' over those samples (``None``
    when too large: then ``product`` (K, D, m) sums r e e' Q_k for given directions Q_k),
    ``total`` (K,) sums r e'e, ``weight`` (K,) sums r, ``count`` (K,) counts them. A
    component with fewer samples than the PCA needs uses its most responsible samples
    instead: ``top_resp`` (K, m) and ``top_resid`` (K, m, D) keep them (merged by keeping
    the largest).
    """

    gram: np.ndarray | None
    product: np.ndarray | None
    total: np.ndarray
    weight: np.ndarray
    count: np.ndarray
    top_resp: np.ndarray
    top_resid: np.ndarray

    def __add__(self, other):
        m = max(self.top_resp.shape[1], other.top_resp.shape[1])
        resp = np.concatenate([self.top_resp, other.top_resp], axis=1)
        resid = np.concatenate([self.top_resid, other.top_resid], axis=1)
        keep = np.sort(np.argsort(resp, axis=1, kind="stable")[:, -m:], axis=1)
        return LatentPCAStats(
            None if self.gram is None else self.gram + other.gram,
            None if self.product is None else self.product + other.product,
            self.total + other.total, self.weight + other.weight, self.count + other.count,
            np.take_along_axis(resp, keep, axis=1),
            np.take_along_axis(resid, keep[:, :, None], axis=1),
        )


def _latent_pca_block(block, estep, A, b, min_rows, directions=None):
    """A block's :class:`LatentPCAStats`: with the Gram matrices, or with their products
    with ``directions`` (K, D, m) when given."""
    resp = estep.resp
    K, n = resp.shape
    D = block.Xc.shape[1]
    owner = resp.argmax(axis=0)
    gram = np.zeros((K, D, D)) if directions is None else None
    product = None if directions is None else np.zeros(directions.shape)
    total, weight, count = np.zeros(K), np.zeros(K), np.zeros(K)
    m = min(min_rows, n)
    top_resp, top_resid = np.zeros((K, m)), np.zeros((K, m, D))
    for k in range(K):
        rows = np.flatnonzero(owner == k)
        r = np.maximum(resp[k, rows], np.finfo(float).tiny)
        resid = block.Xc[rows] - block.y[rows] @ A[k].T - b[k]
        if directions is None:
            gram[k] = (resid.T * r) @ resid
        else:
            product[k] = resid.T @ ((resid @ directions[k]) * r[:, None])
        total[k] = np.einsum("n,nd,nd->", r, resid, resid)
        weight[k], count[k] = r.sum(), rows.size
        top = np.sort(np.argsort(resp[k], kind="stable")[-m:])
        top_resp[k] = resp[k, top]
        top_resid[k] = block.Xc[top] - block.y[top] @ A[k].T - b[k]
    return None, LatentPCAStats(gram, product, total, weight, count, top_resp, top_resid)


def ppca_loadings(lam, vt, total):
    """Probabilistic-PCA loadings (D, m) from the leading variances ``lam`` (m,) and
    directions ``vt`` (m, D) of data of total variance ``total``: U (Lambda - s2)^(1/2),
    with s2 the mean discarded variance (as :meth:`GLLiMModel.init_latent`)."""
    D = vt.shape[1]
    s2 = max(total - lam.sum(), 0.0) / max(D - lam.size, 1)
    return vt.T * np.sqrt(np.maximum(lam - s2, 0.0))


def _init_latent(model, executor, blocks, esteps, moments, n_latent, random_state):
    """:meth:`GLLiMModel.init_latent` from statistics summed over blocks: each component's
    weighted residual Gram matrix (D x D) instead of its residual rows, the same PCA with
    an exact eigendecomposition. When the K Gram matrices would exceed LATENT_GRAM_MAX_FLOATS
    their leading directions come from a subspace iteration over the blocks instead (as the
    in-memory fit uses a randomised SVD at large D): no D x D matrix is formed."""
    A, b = moments.fields["A"], moments.fields["b"]
    K, D, _ = A.shape
    min_rows = max(2 * n_latent + 2, 10)

    def pass_over(directions=None):
        return executor.map_reduce(
            lambda block, estep: _latent_pca_block(block, estep, A, b, min_rows, directions),
            blocks, esteps)[1]

    leading = {}  # component -> (variances, directions (m, D)) of the weighted residuals
    if K * D * D <= LATENT_GRAM_MAX_FLOATS:
        pca = pass_over()
        for k in np.flatnonzero(pca.count >= min_rows):
            lam, vecs = np.linalg.eigh(pca.gram[k] / pca.weight[k])
            leading[k] = lam[::-1], gm.canonical_signs(vecs[:, ::-1].T)
    else:
        m = min(n_latent + LATENT_OVERSAMPLING, D)
        Q = random_state.standard_normal((K, D, m))
        for _ in range(LATENT_POWER_ITERATIONS):
            Q = np.linalg.qr(Q)[0]
            pca = pass_over(Q)
            Q = pca.product / np.maximum(pca.weight, np.finfo(float).tiny)[:, None, None]
        Q = np.linalg.qr(Q)[0]
        pca = pass_over(Q)
        for k in np.flatnonzero(pca.count >= min_rows):  # Rayleigh-Ritz on span(Q_k)
            lam, vecs = np.linalg.eigh(Q[k].T @ pca.product[k] / pca.weight[k])
            leading[k] = lam[::-1], gm.canonical_signs((Q[k] @ vecs[:, ::-1]).T)
    W = np.zeros((K, D, n_latent))
    for k in range(K):
        if k in leading:
            n_dirs = min(n_latent, int(pca.count[k]), D)
            lam, vt = leading[k]
            W[k, :, :n_dirs] = ppca_loadings(np.maximum(lam[:n_dirs], 0.0), vt[:n_dirs],
                                             pca.total[k] / pca.weight[k])
        else:
            w = np.maximum(pca.top_resp[k], np.finfo(float).tiny)
            resid = pca.top_resid[k] * np.sqrt(w / w.sum())[:, None]
            n_dirs = min(n_latent, *resid.shape)
            s, vt = gm._leading_right_singular(resid, n_dirs, random_state)
            W[k, :, :n_dirs] = ppca_loadings(s[:n_dirs] ** 2, vt[:n_dirs],
                                             np.einsum("nd,nd->", resid, resid))
    return model.with_latent(moments, W)


# ---------------------------------------------------------------------------- prediction
def _is_array_argument(value):
    return is_dask_array(value) or (isinstance(value, np.ndarray | list) and np.ndim(value) >= 1)


# GLLiM's observation-noise keywords, shared by all samples (a variance, per-feature
# variances, a covariance) up to these numbers of dimensions: such a value goes whole to
# every row block; per-sample variances (n_samples, n_features) follow the row blocks.
SHARED_NOISE = {"feature_noise_var": 1, "feature_noise_cov": 2}


def blockwise(*, constant_outputs=(), shared=None, row_offset=None):
    """Method decorator: dask-array inputs give lazy dask arrays, computed block by block.

    The method takes per-sample arrays (rows aligned) and returns per-sample arrays, or a
    tuple of them in which the outputs at ``constant_outputs`` do not depend on the samples
    (they are returned as they are). With no dask array among the arguments the method
    runs as it is. Otherwise every array argument is aligned on the row blocks of the
    first dask array and the method is mapped over the blocks: its outputs are dask arrays
    with those row blocks. Shapes and dtypes come from a call on one synthetic row, which
    also raises the method's own errors (wrong number of features...) right away.
    ``shared`` maps keyword arguments to the number of dimensions up to which they are
    sample-independent: such a value is computed if it is a dask array and passed whole
    to every block. ``row_offset`` names a keyword argument that receives the index of
    the block's first row among all rows (what a method whose result for a row depends
    on the row's position, such as the draws of a counter-based generator, needs); it is
    left to its default when the method runs on in-memory arrays.
    """
    shared = shared or {}

    def decorate(method):
        @functools.wraps(method)
        def wrapper(self, *args, **kwargs):
            if not any_dask_array(*args, *kwargs.values()):
                return method(self, *args, **kwargs)
            kwargs = {
                name: (np.asarray(value) if name in shared and value is not None
                       and np.ndim(value) <= shared[name] else value)
                for name, value in kwargs.items()
            }
            if not any_dask_array(*args, *kwargs.values()):
                return method(self, *args, **kwargs)
            return _map_over_row_blocks(method, self, args, kwargs, constant_outputs,
                                        shared, row_offset)
        return wrapper
    return decorate


def _call_with(estimator, method_name, values, n_args):
    """``estimator.method_name(...)`` with ``values`` keyed by argument position or name."""
    return getattr(estimator, method_name)(
        *[values[i] for i in range(n_args)],
        **{name: value for name, value in values.items() if not isinstance(name, int)},
    )


def _packed_block(*block_values, estimator, spec, block_info=None):
    """The method on one row block, its per-sample outputs packed side by side (n, width)."""
    values = dict(spec["values"])
    if spec["row_offset"] is not None:  # dask passes the block's location in the output
        values[spec["row_offset"]] = block_info[None]["array-location"][0][0]
    for name, block in zip(spec["order"], block_values, strict=True):
        values[name] = block.reshape((block.shape[0], *spec["tails_in"][name]))
    out = _call_with(estimator, spec["method"], values, spec["n_args"])
    out = (out,) if spec["single"] else out
    n = block_values[0].shape[0]
    return np.concatenate(
        [np.asarray(out[i]).reshape(n, -1).astype(spec["dtype"]) for i in spec["per_sample"]],
        axis=1,
    )


def _map_over_row_blocks(method, estimator, args, kwargs, constant_outputs, shared,
                         row_offset):
    import dask
    import dask.array as da

    values = dict(enumerate(args)) | kwargs
    arrays = {name: value for name, value in values.items()
              if _is_array_argument(value)
              and not (name in shared and np.ndim(value) <= shared[name])}
    first = next(value for value in arrays.values() if is_dask_array(value))
    n_rows = first.shape[0]
    if np.isnan(n_rows):
        raise ValueError("Dask arrays need known row counts; call compute_chunk_sizes() first.")
    if n_rows == 0:
        # No block to map over: the method on the (empty) arrays in memory gives the
        # error, or the result, that it gives on numpy arrays.
        values = {name: value.compute() if is_dask_array(value) else value
                  for name, value in values.items()}
        return _call_with(estimator, method.__name__, values, len(args))
    for value in arrays.values():
        if np.shape(value)[0] != n_rows:
            raise ValueError(
                f"Inconsistent numbers of samples: {n_rows} and {np.shape(value)[0]}."
            )
    row_chunks = first.rechunk({i: -1 for i in range(1, first.ndim)}).chunks[0]
    blocks, tails_in, dtypes_in = {}, {}, {}
    for name, value in arrays.items():
        a = value if is_dask_array(value) else da.from_array(np.asarray(value))
        tails_in[name], dtypes_in[name] = a.shape[1:], a.dtype
        # Every argument 2-D, aligned on the same row blocks, one block of columns.
        blocks[name] = a.reshape(n_rows, -1).rechunk((row_chunks, -1))

    # One synthetic row gives the outputs' shapes and dtypes (and the method's errors).
    probe = _call_with(
        estimator, method.__name__,
        values | {name: np.zeros((1, *tails_in[name]), dtype=dtypes_in[name])
                  for name in arrays},
        len(args),
    )
    single = not isinstance(probe, tuple)
    probe = (probe,) if single else probe
    per_sample = [i for i in range(len(probe)) if i not in constant_outputs]
    widths = [int(np.prod(probe[i].shape[1:], dtype=int)) for i in per_sample]
    dtype = np.result_type(*(probe[i].dtype for i in per_sample))
    spec = {
        "method": method.__name__, "n_args": len(args), "single": single,
        "values": {name: value for name, value in values.items() if name not in arrays},
        "order": list(blocks), "tails_in": tails_in, "per_sample": per_sample,
        "dtype": dtype, "row_offset": row_offset,
    }
    packed = da.map_blocks(
        _packed_block, *blocks.values(), estimator=dask.delayed(estimator), spec=spec,
        chunks=(row_chunks, (sum(widths),)), dtype=dtype, meta=np.empty((0, 0), dtype=dtype),
        name=f"gllim-{method.__name__}-"
             f"{dask.base.tokenize(estimator, spec['values'], *blocks.values())}",
    )
    outputs, start = list(probe), 0
    for i, width in zip(per_sample, widths, strict=True):
        tail = probe[i].shape[1:]
        part = packed[:, start : start + width]
        start += width
        part = part[:, 0] if tail == () else part.reshape((n_rows, *tail))
        outputs[i] = part.astype(probe[i].dtype, copy=False)
    return outputs[0] if single else tuple(outputs)


def r2_score(y_true, y_pred, sample_weight=None):
    """scikit-learn's ``r2_score`` (the average over targets, non-finite scores forced as
    it does) of predictions and targets of which one at least is a dask array: the sums
    it needs are reduced where the blocks live, and only they reach the client."""
    import dask
    import dask.array as da

    first = next(a for a in (y_pred, y_true, sample_weight) if is_dask_array(a))
    n = first.shape[0]
    if np.isnan(n):
        raise ValueError("Dask arrays need known row counts; call compute_chunk_sizes() first.")
    row_chunks = first.rechunk({i: -1 for i in range(1, first.ndim)}).chunks[0]

    def rows(name, a):
        a = da.asarray(a)
        if a.ndim not in (1, 2) or a.shape[0] != n:
            raise ValueError(f"{name} has shape {a.shape}; expected {n} rows (1-D or 2-D).")
        return a.reshape(n, -1).astype(np.float64).rechunk((row_chunks, -1))

    y_true, y_pred = rows("y", y_true), rows("the predictions", y_pred)
    if y_true.shape[1] != y_pred.shape[1]:
        raise ValueError(
            f"y has {y_true.shape[1]} target column(s); the model predicts {y_pred.shape[1]}."
        )
    if n < 2:
        warnings.warn("R^2 score is not well-defined with less than two samples.",
                      UndefinedMetricWarning, stacklevel=3)
        return float("nan")
    weight = da.ones((n, 1), chunks=(row_chunks, 1)) if sample_weight is None else (
        rows("sample_weight", sample_weight))
    if weight.shape[1] != 1:
        raise ValueError(f"sample_weight must be 1-D; got shape {sample_weight.shape}.")
    # Two reductions over y in one graph (the weighted mean, then the spread around it),
    # as scikit-learn computes the denominator, rather than sum y^2 - n mean^2, which
    # cancels.
    mean = (weight * y_true).sum(axis=0) / weight.sum()
    numerator, denominator = dask.compute(
        (weight * (y_true - y_pred) ** 2).sum(axis=0),
        (weight * (y_true - mean) ** 2).sum(axis=0),
    )
    scores = np.where(numerator == 0, 1.0, 0.0)  # where the denominator is 0
    nonzero = denominator != 0
    scores[nonzero] = 1.0 - numerator[nonzero] / denominator[nonzero]
    return float(np.mean(scores))
