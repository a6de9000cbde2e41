"""EM and prediction over dask arrays: the samples stay in blocks where the workers hold them.

GLLiM's EM is a sum over samples of sufficient statistics followed by a small M-step, so
it runs over a dask array exactly, with nothing approximated: every iteration sends the
E-step's parameters to the workers, each block computes its log-likelihood and
statistics where it lives, a tree of additions reduces them, and the client runs the
M-step on the reduced statistics. The features are never gathered on the client.

dask is imported only here, and this module only when a dask array is passed in. The
active ``distributed`` client is used when there is one (``dask.compute`` picks it up);
otherwise dask's default scheduler.
"""

import contextlib
import functools
import sys
from dataclasses import dataclass

import numpy as np
from sklearn.cluster import KMeans

from . import _gllim_math as gm

# Blocks added together per task of the tree reduction.
REDUCTION_FAN_IN = 8
# k-means initialisation: on all target rows up to this many, above that on a uniform
# random sample of this many rows (the labels of all rows then come from the centres).
KMEANS_MAX_SAMPLES = 100_000


def is_dask_array(a):
    """Whether ``a`` is a dask array (False, without importing dask, when dask is not loaded)."""
    module = sys.modules.get("dask.array")
    return module is not None and isinstance(a, module.Array)


def any_dask_array(*arrays):
    return any(is_dask_array(a) for a in arrays)


def _sum(*parts):
    """Sum of summable results: numbers, :class:`~gllim_sk._gllim_math.SufficientStats`,
    tuples of them (added entry by entry) and None (absent everywhere)."""
    first = parts[0]
    if first is None:
        return None
    if isinstance(first, tuple):
        return tuple(_sum(*entries) for entries in zip(*parts, strict=True))
    return functools.reduce(lambda a, b: a + b, parts)


def _tree_sum(delayed_parts):
    """One delayed sum of ``delayed_parts``, added in a tree of fan-in REDUCTION_FAN_IN."""
    from dask import delayed

    parts = list(delayed_parts)
    while len(parts) > 1:
        parts = [delayed(_sum, pure=True)(*parts[i : i + REDUCTION_FAN_IN])
                 for i in range(0, len(parts), REDUCTION_FAN_IN)]
    return parts[0]


def _active_client():
    """The active distributed client, or None (without importing distributed)."""
    if "distributed" not in sys.modules:
        return None
    from distributed import default_client

    try:
        return default_client()
    except ValueError:
        return None


def _spread(n_blocks):
    """Workers for ``n_blocks`` blocks, in contiguous runs of equal length (``None`` each
    without a distributed client)."""
    client = _active_client()
    if client is None:
        return [None] * n_blocks
    workers = sorted(client.scheduler_info(n_workers=-1)["workers"])
    return [[workers[i * len(workers) // n_blocks]] for i in range(n_blocks)]


def _on_workers(workers):
    """Tasks made in this context run on ``workers`` only (``None``: anywhere)."""
    if workers is None:
        return contextlib.nullcontext()
    import dask

    return dask.annotate(workers=workers, allow_other_workers=False)


def _wait(persisted):
    """Wait until persisted blocks are in the workers' memory (with a distributed client)."""
    if _active_client() is not None:
        from distributed import futures_of, wait

        wait([future for block in persisted for future in futures_of(block)])


def _holders(persisted):
    """The workers holding each persisted block now (``None`` where unknown: a block
    being recomputed after a worker was lost, or no distributed client)."""
    client = _active_client()
    if client is None:
        return [None] * len(persisted)
    from distributed import futures_of

    futures = [futures_of(block)[0] for block in persisted]
    who_has = client.who_has(futures)
    return [list(who_has[future.key]) or None for future in futures]


# ---------------------------------------------------------------------------- blocks
def _prepare_block(X_block, y_block, offset, y_offset, covariance_type):
    """The :class:`~gllim_sk._gllim_math.Data` of one block, centred by the training means."""
    if not np.isfinite(X_block).all():
        raise ValueError("Input X contains NaN or infinity.")
    if not np.isfinite(y_block).all():
        raise ValueError("Input y contains NaN or infinity.")
    y_block = y_block.reshape(len(y_block), -1).astype(np.float64)
    data = gm.prepare_data(X_block.astype(np.float64) - offset, y_block - y_offset,
                           covariance_type)
    # Blocks run in parallel, one BLAS thread each: the products take that orientation.
    data.single_threaded = True
    return data


def _feature_gram_block(data):
    return data.Xc.T @ data.Xc


def _targets_only(data):
    """The mixture of y alone is GLLiM without features: the same steps run it."""
    return gm.prepare_data(np.empty((data.y.shape[0], 0)), data.y, "diag")


@dataclass
class RespSource:
    """Where a block's responsibilities come from in one pass over the blocks.

    ``kind`` is "plan" (GLLiM's E-step with an :class:`~gllim_sk._gllim_math.EStepPlan`),
    "target_plan" (the E-step of the mixture of y alone), "labels" (one-hot labels of a
    fitted k-means, on the targets or on the standardised joint [y, x]), "random" (seeded
    per block) or "given" (per-block arrays passed alongside).
    """

    kind: str
    value: object = None
    n_components: int = 0
    joint_scale: np.ndarray | None = None  # "labels" on the standardised [y, x]

    def resp(self, data, block_arg):
        """log p(x, y) per sample (or None), responsibilities (K, n), latent means."""
        n = data.y.shape[0]
        K = self.n_components
        no_latent = np.zeros((0, K, n))
        if self.kind == "plan":
            return gm.e_step_chunk(data, self.value)
        if self.kind == "target_plan":
            log_prob, resp, _ = gm.e_step_chunk(_targets_only(data), self.value)
            return log_prob, resp, no_latent
        if self.kind == "labels":
            points = data.y
            if self.joint_scale is not None:
                points = np.hstack([data.y, data.Xc]) / self.joint_scale
            resp = np.zeros((K, n))
            resp[self.value.predict(points), np.arange(n)] = 1.0
            return None, resp, no_latent
        if self.kind == "random":
            resp = np.random.default_rng(block_arg).uniform(size=(K, n))
            return None, resp / resp.sum(axis=0), no_latent
        if K == 1:  # "given" with one component, or the trivial start
            return None, np.ones((1, n)), no_latent
        resp = np.ascontiguousarray(np.asarray(block_arg, dtype=np.float64).T)
        return None, resp / resp.sum(axis=0), no_latent


def _block_pass(data, block_arg, source, covariance_type, targets_only, empty):
    """One block's share of an EM pass: (sum of log p(x, y) or NaN, statistics).

    ``empty`` (K,) bool marks components whose global mass vanished: they get the
    moments of all samples, as the in-memory M-step gives them.
    """
    log_prob, resp, latent_mean = source.resp(data, block_arg)
    if empty is not None:
        resp = gm._with_empty_filled(resp, empty)
    stats_data = _targets_only(data) if targets_only else data
    stats = gm.sufficient_stats(stats_data, resp, latent_mean,
                                "diag" if targets_only else covariance_type)
    total = np.nan if log_prob is None else float(log_prob.sum())
    return total, stats


@dataclass
class LatentPCAStats:
    """What the latent initialisation needs of the samples, summed over blocks.

    Each sample enters the weighted PCA of the residuals x - A_k y - b_k of its most
    responsible component: ``gram`` (K, D, D) sums r e e' over those samples, ``weight``
    (K,) sums r, ``count`` (K,) counts them. A component with fewer than ``min_rows``
    samples uses its ``min_rows`` most responsible samples instead: ``top_resp`` (K, m)
    and ``top_resid`` (K, m, D) keep them (merged by keeping the largest).
    """

    gram: np.ndarray
    weight: np.ndarray
    count: np.ndarray
    top_resp: np.ndarray
    top_resid: np.ndarray

    def __add__(self, other):
        resp = np.concatenate([self.top_resp, other.top_resp], axis=1)
        resid = np.concatenate([self.top_resid, other.top_resid], axis=1)
        keep = np.sort(np.argsort(resp, axis=1, kind="stable")[:, -self.top_resp.shape[1]:],
                       axis=1)
        return LatentPCAStats(
            self.gram + other.gram, self.weight + other.weight, self.count + other.count,
            np.take_along_axis(resp, keep, axis=1),
            np.take_along_axis(resid, keep[:, :, None], axis=1),
        )


def _latent_pca_block(data, block_arg, source, A, b, min_rows):
    _, resp, _ = source.resp(data, block_arg)
    K, n = resp.shape
    D = data.Xc.shape[1]
    owner = resp.argmax(axis=0)
    gram = np.zeros((K, D, D))
    weight, count = np.zeros(K), np.zeros(K)
    m = min(min_rows, n)
    top_resp, top_resid = np.zeros((K, m)), np.zeros((K, m, D))
    for k in range(K):
        rows = np.flatnonzero(owner == k)
        r = np.maximum(resp[k, rows], np.finfo(float).tiny)
        resid = data.Xc[rows] - data.y[rows] @ A[k].T - b[k]
        gram[k] = (resid.T * r) @ resid
        weight[k], count[k] = r.sum(), rows.size
        top = np.sort(np.argsort(resp[k], kind="stable")[-m:])
        top_resp[k] = resp[k, top]
        top_resid[k] = data.Xc[top] - data.y[top] @ A[k].T - b[k]
    return LatentPCAStats(gram, weight, count, top_resp, top_resid)


def _validate_resp_block(block):
    if (block < 0).any():
        raise ValueError("resp_init has negative entries; responsibilities are >= 0.")
    if (block.sum(axis=1) <= 0).any():
        raise ValueError("resp_init has rows that sum to 0; each row needs mass.")
    return block


class DaskBlocks:
    """Training samples held as persisted blocks of prepared data on dask's workers.

    ``X`` (n, D) and ``y`` (n,) or (n, L) are dask arrays or array-likes (at least one of
    them a dask array); they are aligned on the row blocks of ``X``. Nothing of size n
    is gathered on the client.
    """

    def __init__(self, X, y, covariance_type, offsets=None):
        import dask
        import dask.array as da

        X, y = da.asarray(X), da.asarray(y)
        if X.ndim != 2:
            raise ValueError(f"Expected a 2-D X, got an array of shape {X.shape}.")
        if y.ndim not in (1, 2):
            raise ValueError(f"Expected a 1-D or 2-D y, got an array of shape {y.shape}.")
        for name, a in (("X", X), ("y", y)):
            if not (np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.integer)):
                raise ValueError(f"{name} must be numeric; got dtype {a.dtype}.")
        if np.isnan(X.shape[0]) or np.isnan(y.shape[0]):
            raise ValueError(
                "X and y need known row counts; call compute_chunk_sizes() on them first."
            )
        if X.shape[0] != y.shape[0]:
            raise ValueError(
                f"X and y have inconsistent numbers of samples: {X.shape[0]} and {y.shape[0]}."
            )
        self.n_samples, self.n_features = X.shape
        self.y_ndim = y.ndim
        self.n_targets = 1 if y.ndim == 1 else y.shape[1]
        X = X.rechunk({1: -1})
        row_chunks = X.chunks[0]
        y = y.rechunk((row_chunks,) if y.ndim == 1 else (row_chunks, -1))
        self.row_chunks = row_chunks
        self.covariance_type = covariance_type
        self._X, self._y = X, y
        if offsets is None:
            offsets = dask.compute(X.mean(axis=0, dtype=np.float64),
                                   y.reshape(-1, self.n_targets).mean(axis=0, dtype=np.float64))
        self.feature_mean, self.target_mean = offsets
        self.n_sq = gm.prepare_data(np.zeros((0, self.n_features)), np.zeros((0, 1)),
                                    covariance_type).n_sq
        prepare = dask.delayed(_prepare_block, pure=True)
        offsets = dask.delayed(self.feature_mean), dask.delayed(self.target_mean)
        blocks = []
        X_blocks, y_blocks = X.to_delayed().ravel(), y.to_delayed().ravel()
        # The blocks are spread evenly over the workers, where they then stay.
        for xb, yb, workers in zip(X_blocks, y_blocks, _spread(len(X_blocks)), strict=True):
            with _on_workers(workers):
                blocks.append(prepare(xb, yb, *offsets, covariance_type))
        self.blocks = dask.persist(*blocks)
        _wait(self.blocks)

    def map_reduce(self, func, *args, block_args=None):
        """``sum(func(block, block_arg, *args))`` over the blocks, computed where they live.

        ``args`` go to every block (sent once per worker); ``block_args``, one per block,
        go with their block. The sum runs as a tree on the workers.
        """
        import dask

        shared = [dask.delayed(a) for a in args]
        if block_args is None:
            block_args = [None] * len(self.blocks)
        call = dask.delayed(func, pure=True)
        parts = []
        holders = _holders(self.blocks)
        for block, arg, workers in zip(self.blocks, block_args, holders, strict=True):
            # Each block's task runs where the block lives: a scheduler that balances
            # load (work stealing) would otherwise move whole blocks between workers.
            with _on_workers(workers):
                parts.append(call(block, arg, *shared))
        return dask.compute(_tree_sum(parts))[0]

    def feature_gram(self):
        """Xc' Xc / n, the tied noise's feature Gram matrix."""
        return self.map_reduce(lambda data, _: _feature_gram_block(data)) / self.n_samples

    def feature_variance(self):
        """The variance of each feature (centred by the training mean)."""
        return self.map_reduce(lambda data, _: np.einsum("nd,nd->d", data.Xc, data.Xc)
                               ) / self.n_samples

    def pass_over(self, source, *, targets_only=False, block_args=None):
        """Mean log-likelihood (NaN unless from an E-step) and the statistics of ``source``.

        Components whose total responsibility vanishes get the moments of all samples (a
        second pass, rare), as the in-memory M-step gives them; the third value is their
        true mass, which sets the mixture weights.
        """
        total, stats = self.map_reduce(
            _block_pass, source, self.covariance_type, targets_only, None,
            block_args=block_args,
        )
        mass = stats.mass
        empty = mass < gm.EMPTY_COMPONENT_MASS
        if empty.any():
            _, stats = self.map_reduce(
                _block_pass, source, self.covariance_type, targets_only, empty,
                block_args=block_args,
            )
        return total / self.n_samples, stats, mass

    # ------------------------------------------------------------------ initialisation
    def resp_init_blocks(self, resp_init, n_components):
        """The user's initial responsibilities as blocks aligned with the samples."""
        import dask.array as da

        resp = da.asarray(resp_init)
        if resp.ndim != 2:
            raise ValueError(
                f"resp_init must be a 2-D array of shape (n_samples, n_components), got "
                f"an array with {resp.ndim} dimension(s)."
            )
        if resp.shape != (self.n_samples, n_components):
            raise ValueError(
                f"resp_init has shape {resp.shape}; expected (n_samples, n_components) = "
                f"({self.n_samples}, {n_components})."
            )
        resp = resp.astype(np.float64).rechunk((self.row_chunks, -1))
        resp = resp.map_blocks(_validate_resp_block, dtype=np.float64)
        return list(resp.to_delayed().ravel())

    def random_block_seeds(self, random_state):
        return [int(s) for s in random_state.randint(2**31 - 1, size=len(self.blocks))]

    def kmeans_source(self, n_components, random_state, joint):
        """k-means labels on the targets (or on the standardised joint [y, x] when
        ``joint``), fitted on all rows up to KMEANS_MAX_SAMPLES, else on a random sample."""
        import dask
        import dask.array as da

        n = self.n_samples
        rows = None
        if n > KMEANS_MAX_SAMPLES:
            rows = np.sort(random_state.choice(n, KMEANS_MAX_SAMPLES, replace=False))
        y = self._y.reshape(-1, self.n_targets).astype(np.float64) - self.target_mean
        scale = None
        if joint:
            Xc = self._X.astype(np.float64) - self.feature_mean
            points = da.concatenate([y, Xc], axis=1)
            scale = points.std(axis=0)
            points = points if rows is None else points[rows]
            points, scale = dask.compute(points, scale)
            scale = np.where(scale > 0, scale, 1.0)
            points = points / scale
        else:
            points = (y if rows is None else y[rows]).compute()
        kmeans = KMeans(n_clusters=n_components, n_init=1, random_state=random_state)
        import warnings

        from sklearn.exceptions import ConvergenceWarning

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            kmeans.fit(points)
        return RespSource("labels", kmeans, n_components, joint_scale=scale)

    def init_latent(self, source, params, raw, n_latent, covariance_type, reg_covar,
                    random_state, var_floor, block_args=None):
        """The latent initialisation of the in-memory fit (a weighted PCA of residuals per
        component), from statistics summed over the blocks."""
        K, D, _ = params.A.shape
        min_rows = max(2 * n_latent + 2, 10)
        pca = self.map_reduce(_latent_pca_block, source, params.A, params.b, min_rows,
                              block_args=block_args)
        W = np.zeros((K, D, n_latent))
        for k in range(K):
            if pca.count[k] >= min_rows:
                n_dirs = min(n_latent, int(pca.count[k]), D)
                gram = pca.gram[k] / pca.weight[k]
                lam, vecs = np.linalg.eigh(gram)
                lam = np.maximum(lam[::-1][:n_dirs], 0.0)
                W[k, :, :n_dirs] = gm.ppca_loadings(lam, vecs[:, ::-1][:, :n_dirs].T,
                                                    np.trace(gram))
            else:
                w = np.maximum(pca.top_resp[k], np.finfo(float).tiny)
                resid = pca.top_resid[k] * np.sqrt(w / w.sum())[:, None]
                n_dirs = min(n_latent, *resid.shape)
                s, vt = gm._leading_right_singular(resid, n_dirs, random_state)
                W[k, :, :n_dirs] = gm.ppca_loadings(s[:n_dirs] ** 2, vt[:n_dirs],
                                                    np.einsum("nd,nd->", resid, resid))
        return gm.with_latent_loadings(params, raw, W, covariance_type, reg_covar, var_floor)

    def refine_by_target_mixture(self, source, n_components, target_covariance_type,
                                 reg_covar, max_iter, tol):
        """EM on the mixture of y alone from ``source``'s responsibilities, over the blocks;
        returns the source of its last E-step (as the in-memory refinement does)."""
        latent_cov = np.zeros((n_components, 0, 0))
        _, stats, mass = self.pass_over(source, targets_only=True)
        previous = -np.inf
        for _ in range(max_iter):
            params = gm.m_step_from_stats(stats, latent_cov, self.n_samples, "diag",
                                          target_covariance_type, reg_covar, weight_mass=mass)
            source = RespSource("target_plan", gm.plan_e_step(params, 0), n_components)
            # The E-step's log-likelihood and the statistics of its responsibilities.
            current, stats, mass = self.pass_over(source, targets_only=True)
            if abs(current - previous) < tol:
                break
            previous = current
        return source


# ---------------------------------------------------------------------------- prediction
def _is_array_argument(value):
    return is_dask_array(value) or (isinstance(value, np.ndarray | list) and np.ndim(value) >= 1)


def blockwise(*, constant_outputs=()):
    """Method decorator: dask-array inputs give lazy dask arrays, computed block by block.

    The method takes per-sample arrays (rows aligned) and returns per-sample arrays, or a
    tuple of them in which the outputs at ``constant_outputs`` do not depend on the samples
    (they are returned as they are). With no dask array among the arguments the method
    runs as it is. Otherwise every array argument is aligned on the row blocks of the
    first dask array and the method is mapped over the blocks: its outputs are dask arrays
    with those row blocks. Shapes and dtypes come from a call on one synthetic row, which
    also raises the method's own errors (wrong number of features...) right away.
    """
    def decorate(method):
        @functools.wraps(method)
        def wrapper(self, *args, **kwargs):
            if not any_dask_array(*args, *kwargs.values()):
                return method(self, *args, **kwargs)
            return _map_over_row_blocks(method, self, args, kwargs, constant_outputs)
        return wrapper
    return decorate


def _call_with(estimator, method_name, values, n_args):
    """``estimator.method_name(...)`` with ``values`` keyed by argument position or name."""
    return getattr(estimator, method_name)(
        *[values[i] for i in range(n_args)],
        **{name: value for name, value in values.items() if not isinstance(name, int)},
    )


def _packed_block(*block_values, estimator, spec):
    """The method on one row block, its per-sample outputs packed side by side (n, width)."""
    values = dict(spec["values"])
    for name, block in zip(spec["order"], block_values, strict=True):
        values[name] = block.reshape((block.shape[0], *spec["tails_in"][name]))
    out = _call_with(estimator, spec["method"], values, spec["n_args"])
    out = (out,) if spec["single"] else out
    n = block_values[0].shape[0]
    return np.concatenate(
        [np.asarray(out[i]).reshape(n, -1).astype(spec["dtype"]) for i in spec["per_sample"]],
        axis=1,
    )


def _map_over_row_blocks(method, estimator, args, kwargs, constant_outputs):
    import dask
    import dask.array as da

    values = dict(enumerate(args)) | kwargs
    arrays = {name: value for name, value in values.items() if _is_array_argument(value)}
    first = next(value for value in arrays.values() if is_dask_array(value))
    n_rows = first.shape[0]
    if np.isnan(n_rows):
        raise ValueError("Dask arrays need known row counts; call compute_chunk_sizes() first.")
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
        "dtype": dtype,
    }
    packed = da.map_blocks(
        _packed_block, *blocks.values(), estimator=dask.delayed(estimator), spec=spec,
        chunks=(row_chunks, (sum(widths),)), dtype=dtype, meta=np.empty((0, 0), dtype=dtype),
        name=f"gllim-{method.__name__}-{dask.base.tokenize(estimator, *blocks.values())}",
    )
    outputs, start = list(probe), 0
    for i, width in zip(per_sample, widths, strict=True):
        tail = probe[i].shape[1:]
        part = packed[:, start : start + width]
        start += width
        part = part[:, 0] if tail == () else part.reshape((n_rows, *tail))
        outputs[i] = part.astype(probe[i].dtype, copy=False)
    return outputs[0] if single else tuple(outputs)


# ---------------------------------------------------------------------------- the EM loop
def fit(estimator, X, y):
    """EM of ``estimator`` (a GLLiMRegressor) over dask arrays ``X``, ``y``; sets its fitted
    attributes as the in-memory fit does."""
    import warnings
    from time import time

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.utils import check_random_state

    from . import _gllim

    est = estimator
    do_warm = (est.warm_start and hasattr(est, "_params")
               and est._params.A.shape[1] == np.shape(X)[1])
    blocks = DaskBlocks(X, y, est.covariance_type,
                        offsets=(est.feature_mean_, est.target_mean_) if do_warm else None)
    n, D, L = blocks.n_samples, blocks.n_features, blocks.n_targets
    K, Lw = est.n_components, est.n_latent
    if n < 2:
        raise ValueError(f"Found array with {n} sample(s) while a minimum of 2 is required.")
    if L > D:
        raise ValueError(
            f"y has {L} columns but X has only {D} features: GLLiM regresses a "
            "low-dimensional target from high-dimensional features (n_targets <= n_features)."
        )
    if L + Lw > D:
        raise ValueError(f"n_targets + n_latent = {L} + {Lw} exceeds n_features = {D}.")
    if K > n:
        raise ValueError(f"n_components={K} must be <= n_samples={n}.")
    if hasattr(est, "feature_names_in_"):
        del est.feature_names_in_
    est.n_features_in_ = D
    est.n_targets_ = L
    est._y_ndim = blocks.y_ndim
    random_state = check_random_state(est.random_state)
    cov = est.covariance_type
    var_floor = _gllim.LATENT_NOISE_FLOOR * blocks.feature_variance() if Lw else None
    feature_gram = blocks.feature_gram() if cov == "tied" else None

    def m_step(stats, mass, latent_cov, **kw):
        return gm.m_step_from_stats(stats, latent_cov, n, cov, est.target_covariance_type,
                                    est.reg_covar, weight_mass=mass, feature_gram=feature_gram,
                                    **kw)

    best = None
    # Blocks that run in this process (threaded scheduler, in-process workers) run in
    # parallel threads: one BLAS thread each.
    with _gllim._blas_threads(1):
        for init in range(1 if do_warm else est.n_init):
            est._print(1, f"Initialization {init}")
            start = time()
            if do_warm:
                params = est._params
            else:
                source, block_args = _initial_source(est, blocks, random_state)
                _, stats, mass = blocks.pass_over(source, block_args=block_args)
                params, raw = m_step(stats, mass, np.zeros((K, 0, 0)), return_raw=True)
                if Lw:
                    params = blocks.init_latent(source, params, raw, Lw, cov, est.reg_covar,
                                                random_state, var_floor, block_args)
                else:
                    params.noise = gm.finalize_noise(raw, params.weights, cov, est.reg_covar)
            bound, stats, mass = blocks.pass_over(
                RespSource("plan", plan := gm.plan_e_step(params, blocks.n_sq), K))
            bounds = [bound]
            converged = False
            n_iter = 1
            for n_iter in range(2, est.max_iter + 1):
                params = m_step(stats, mass, plan.latent_cov, var_floor=var_floor)
                plan = gm.plan_e_step(params, blocks.n_sq)
                bound, stats, mass = blocks.pass_over(RespSource("plan", plan, K))
                bounds.append(bound)
                change = bounds[-1] - bounds[-2]
                if n_iter % est.verbose_interval == 0:
                    est._print(2, f"  Iteration {n_iter}\t time lapse {time() - start:.5f}s\t "
                                  f"ll change {change:.5f}")
                if abs(change) < est.tol:
                    converged = True
                    break
            if est.max_iter == 1 and est.tol > 0:
                converged = False
            if not np.isfinite(bounds[-1]):
                raise ValueError(
                    "EM produced a non-finite log-likelihood; the data may contain extreme "
                    "values. Standardise X and y, or increase reg_covar."
                )
            if best is None or bounds[-1] > best[0][-1]:
                best = (bounds, params, n_iter, converged)
    bounds, params, n_iter, converged = best
    if not converged and est.tol > 0 and est.max_iter > 1:
        warnings.warn(
            "Best performing initialization did not converge. Try different init "
            "parameters, or increase max_iter, tol, or check for degenerate data.",
            ConvergenceWarning, stacklevel=3,
        )
    est.converged_ = converged
    est.n_iter_ = n_iter
    est.lower_bounds_ = bounds
    est.lower_bound_ = bounds[-1]
    est.feature_mean_ = blocks.feature_mean
    est.target_mean_ = blocks.target_mean
    est._set_params_from(params)
    return est


def _initial_source(est, blocks, random_state):
    """Where the initial responsibilities come from, and their per-block arguments."""
    from . import _gllim

    K = est.n_components
    if est.resp_init is not None:
        return RespSource("given", None, K), blocks.resp_init_blocks(est.resp_init, K)
    if K == 1:
        return RespSource("given", None, 1), None
    if est.init_params == "random":
        return RespSource("random", None, K), blocks.random_block_seeds(random_state)
    with _gllim._blas_threads(1):
        source = blocks.kmeans_source(K, random_state, joint=est.init_params == "kmeans_joint")
    if est.init_params == "kmeans":
        source = blocks.refine_by_target_mixture(
            source, K, est.target_covariance_type, max(est.reg_covar, 1e-6),
            _gllim.GMM_INIT_MAX_ITER, _gllim.GMM_INIT_TOL,
        )
    return source, None
