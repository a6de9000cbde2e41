"""The EM engine: how EM's steps run over blocks of samples, and the EM loop, once.

Two parts, both independent of what the model computes:

- *executors* run a model's per-block functions over the blocks of the training samples
  and sum what they return. :class:`SerialExecutor` runs one block;
  :class:`ThreadedExecutor` runs sample chunks on parallel Python threads, one BLAS thread
  each. :func:`make_executor` picks one from the problem size and the BLAS thread limits.
  An executor has three methods: ``blocks`` (split the data into blocks), ``map_reduce``
  (run a function on every block; keep its first result per block, sum its second) and
  ``sizes``. :class:`DaskExecutor` runs them over dask arrays: the blocks stay on the
  workers that hold them and only the sums come back to the client.
- the EM loop (:class:`EMMixin`): initialisations, warm start, ``tol``,
  ``ConvergenceWarning`` and verbose messages, as in scikit-learn's mixtures. An
  estimator supplies a model (see :class:`gllim_sk._gllim_math.GLLiMModel`) and a hook
  for its initial parameters.

One EM iteration is: the parameter side of the E-step (``model.plan``), then on every
block an E-step fused with the statistics of the next M-step, the statistics summed
over blocks, and the M-step from the sum.
"""

import contextlib
import functools
import operator
import sys
import warnings
from concurrent.futures import CancelledError, ThreadPoolExecutor
from dataclasses import dataclass
from time import time

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from threadpoolctl import ThreadpoolController

from ._compat import array_namespace, zeros
from ._gllim_math import EMPTY_COMPONENT_MASS, BlockEStep

# EM's threading by the size n * D * K * (L + 2 + Lw) (see _em_parallelism): one thread
# below SMALL_PROBLEM_WORK, BLAS threads up to CHUNKED_PROBLEM_WORK, sample chunks above.
SMALL_PROBLEM_WORK = 2e6
CHUNKED_PROBLEM_WORK = 2e7
MIN_CHUNK_SAMPLES = 500
_threadpool_controller = None


def _controller():
    """One ThreadpoolController, kept: scanning the loaded libraries costs milliseconds."""
    global _threadpool_controller
    if _threadpool_controller is None:
        _threadpool_controller = ThreadpoolController()
    return _threadpool_controller


def blas_threads(limit):
    """Context manager limiting BLAS/OpenMP threads (``None``: no limit)."""
    return _controller().limit(limits=limit)


def _em_parallelism(n_samples, work):
    """How EM runs: (number of sample chunks run in parallel threads, BLAS thread limit).

    Measured on 2 cores: small problems run fastest on one thread (thread hand-offs cost
    more than the products); middle-sized ones with BLAS's own threads in the products;
    large ones (from about n=4000, D=100, K=10) by splitting the samples into chunks, one
    Python thread and one BLAS thread each. That keeps every core busy through the array
    arithmetic between the products too (products and array arithmetic release the GIL),
    once the chunks are large enough that the threads' many small array operations do
    not wait on each other for the interpreter.
    The threads are those BLAS may use: threadpoolctl limits and ``OMP_NUM_THREADS`` or
    ``OPENBLAS_NUM_THREADS`` are honoured.
    """
    if work < SMALL_PROBLEM_WORK:
        return 1, 1
    n_threads = blas_thread_count()
    if n_threads == 1:  # BLAS runs on one thread anyway: its fastest orientation there
        return 1, 1
    n_chunks = min(n_threads, n_samples // MIN_CHUNK_SAMPLES)
    if n_chunks < 2 or work < CHUNKED_PROBLEM_WORK:
        return 1, None
    return n_chunks, 1


def blas_thread_count():
    """The threads BLAS may use now (threadpoolctl limits and ``OMP_NUM_THREADS`` or
    ``OPENBLAS_NUM_THREADS`` honoured); 1 without a BLAS library found."""
    return max(
        (lib.num_threads for lib in _controller().select(user_api="blas").lib_controllers),
        default=1,
    )


def row_chunks(n_rows, min_rows):
    """How many consecutive row ranges a row-wise computation of ``n_rows`` rows (each
    row's result its own, as an inversion's) runs on in parallel threads: as many as
    BLAS may use threads (so ``OMP_NUM_THREADS=1`` keeps everything on one thread), at
    most one per ``min_rows`` rows (a thread hand-off costs more than a few rows)."""
    return max(1, min(blas_thread_count(), n_rows // max(1, min_rows)))


def map_row_chunks(func, n_rows, n_chunks):
    """``[func(start, stop), ...]`` over ``n_chunks`` consecutive ranges of ``n_rows``
    rows, in order. With several, they run in parallel threads, BLAS on one thread each
    (array arithmetic and products release the GIL); the calling thread runs the first
    range meanwhile."""
    bounds = np.linspace(0, n_rows, n_chunks + 1).round().astype(int)
    ranges = list(zip(bounds[:-1].tolist(), bounds[1:].tolist(), strict=True))
    if len(ranges) == 1:
        return [func(*ranges[0])]
    with blas_threads(1), ThreadPoolExecutor(len(ranges) - 1) as pool:
        futures = [pool.submit(func, *r) for r in ranges[1:]]
        # (an error of the first range leaves the pool only once the others are done)
        first = func(*ranges[0])
        results = [future.result() for future in futures]
    return [first] + results


def _sums_one_thread(weights, M):
    """weights @ M, in the orientation fastest on one BLAS thread."""
    return weights @ M


def _sums_many_threads(weights, M):
    """weights @ M, in the orientation OpenBLAS splits best across threads."""
    return (M.T @ weights.T).T


class SerialExecutor:
    """Run EM on one block, under a BLAS thread limit (``None``: BLAS decides)."""

    def __init__(self, blas_limit=None, sample_sums=None, device_library=False):
        self.blas_limit = blas_limit
        self.sample_sums = sample_sums
        self.device_library = device_library
        self._limits = None
        self._threads_before = None

    def __enter__(self):
        self._threads_before = blas_thread_count()
        self._limits = blas_threads(self.blas_limit)
        self._limits.__enter__()
        return self

    def __exit__(self, *exc):
        self._limits.__exit__(*exc)

    def subproblem(self):
        """A context for an EM problem on numpy arrays run in the middle of this one (the
        starting runs on a subset of the samples): this executor's threads or workers
        wait meanwhile, so the subproblem's own executor may use the BLAS threads there
        were before this one limited them."""
        return blas_threads(self._threads_before)

    def _sample_sums(self):
        if self.sample_sums is not None:
            return self.sample_sums
        return _sums_one_thread if self.blas_limit == 1 else _sums_many_threads

    def blocks(self, model, Xc, y):
        """The training data as the model's blocks."""
        block = model.prepare_block(Xc, y)
        block.sample_sums = self._sample_sums()
        return [block]

    def sizes(self, blocks):
        return [block.n_samples for block in blocks]

    def n_squared(self, blocks):
        """The number of squared-feature columns of the blocks (see ``Block.n_sq``)."""
        return blocks[0].n_sq

    def dtype(self, blocks):
        """The dtype of the blocks' features."""
        return blocks[0].Xc.dtype

    def map_reduce(self, func, *per_block):
        """``func(*args)`` for the arguments of every block: the list of first results,
        and the sum of the second ones (``None`` when they are ``None``)."""
        return _split_and_sum([func(*args) for args in zip(*per_block, strict=True)])

    def serial(self):
        """A context with BLAS on one thread, for small sequential work (k-means)."""
        return blas_threads(1)

    def host_work(self):
        """A context for numpy work on the host in the middle of EM (the latent PCA): with
        another array library's arrays, BLAS on one thread beside that library's own
        threads (no oversubscribed cores); with numpy, the executor's own setting."""
        return self.serial() if self.device_library else contextlib.nullcontext()


class ThreadedExecutor(SerialExecutor):
    """Run EM on ``n_chunks`` consecutive sample chunks in parallel threads.

    The calling thread runs the first chunk meanwhile: products and array arithmetic
    release the GIL, so the chunks run in parallel, each on one BLAS thread.
    """

    def __init__(self, n_chunks):
        super().__init__(blas_limit=1)
        self.n_chunks = n_chunks
        self._pool = None

    def __enter__(self):
        super().__enter__()
        self._pool = ThreadPoolExecutor(self.n_chunks - 1)
        return self

    def __exit__(self, *exc):
        self._pool.shutdown()
        self._pool = None
        super().__exit__(*exc)

    def blocks(self, model, Xc, y):
        whole = model.prepare_block(Xc, y)
        whole.sample_sums = self._sample_sums()
        bounds = np.linspace(0, Xc.shape[0], self.n_chunks + 1).round().astype(int)
        return [whole.rows(a, b) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]

    def map_reduce(self, func, *per_block):
        items = list(zip(*per_block, strict=True))
        if self._pool is None or len(items) == 1:
            return super().map_reduce(func, *per_block)
        futures = [self._pool.submit(func, *args) for args in items[1:]]
        results = [func(*items[0])] + [future.result() for future in futures]
        return _split_and_sum(results)


def _split_and_sum(results):
    kept = [result[0] for result in results]
    parts = [result[1] for result in results]
    total = None if parts[0] is None else sum(parts[1:], parts[0])
    return kept, total


def make_executor(n_samples, work, xp=np):
    """The executor for a problem of ``n_samples`` and size ``work`` (see _em_parallelism)
    in namespace ``xp``: arrays of other libraries than numpy run as one block, their
    library deciding how (a GPU runs each product on the whole device)."""
    if xp is not np:
        return SerialExecutor(sample_sums=_sums_one_thread, device_library=True)
    n_chunks, blas_limit = _em_parallelism(n_samples, work)
    if n_chunks > 1:
        return ThreadedExecutor(n_chunks)
    return SerialExecutor(blas_limit)


class DaskExecutor:
    """Run EM's per-block functions over dask arrays, where dask's workers hold the blocks.

    :meth:`blocks` prepares the row blocks of a dask array on the workers and keeps them
    there (``persist``), spread evenly over the workers of a ``distributed`` cluster.
    :meth:`map_reduce` sends a function with its arguments to the workers, runs it on each
    block where the block lives, and adds the second results in a tree of additions on the
    workers: only that sum reaches the client. The first results (kept E-steps) are left
    as lazy dask values, recomputed on the workers from their block if they are ever
    used (only for components that empty). The active ``distributed`` client is used when
    there is one (``dask.compute`` picks it up); otherwise dask's default scheduler.

    Nothing is approximated: the sums are those of the in-memory executors, added in
    another order.
    """

    # Parts added together per task of the tree reduction.
    reduction_fan_in = 8

    def __init__(self):
        self._limits = None
        self._threads_before = None
        self._sizes = None
        self._persisted = None
        self._n_sq = {}  # by the key of a block list's first block

    def __enter__(self):
        # Blocks that run in this process (threaded scheduler, in-process workers) run in
        # parallel threads: one BLAS thread each.
        self._threads_before = blas_thread_count()
        self._limits = blas_threads(1)
        self._limits.__enter__()
        return self

    subproblem = SerialExecutor.subproblem  # (on a subset gathered to the client)

    def __exit__(self, *exc):
        self._limits.__exit__(*exc)

    def serial(self):
        return blas_threads(1)

    def host_work(self):
        return contextlib.nullcontext()  # the client's numpy work beside the workers

    def blocks(self, model, Xc, y):
        """The model's blocks of the row blocks of dask arrays ``Xc`` (n, D) and ``y``
        (n, L), prepared and kept on the workers (a list of persisted dask values)."""
        import dask

        prepare = dask.delayed(_prepare_dask_block, pure=True)
        X_blocks, y_blocks = Xc.to_delayed().ravel(), y.to_delayed().ravel()
        blocks = []
        for xb, yb, workers in zip(X_blocks, y_blocks, _spread(len(X_blocks)), strict=True):
            with _on_workers(workers):
                blocks.append(prepare(model, xb, yb))
        blocks = list(dask.persist(*blocks))
        _wait(blocks)
        self._sizes = [int(size) for size in Xc.chunks[0]]
        self._persisted = blocks
        self._n_sq[blocks[0].key] = model.noise.n_squared(Xc.shape[1]) if Xc.shape[1] else 0
        return blocks

    def derived_blocks(self, func, blocks, n_squared):
        """Lazy ``func(block)`` for every block, blocks with ``n_squared`` squared-feature
        columns (computed where the block lives, when used)."""
        import dask

        call = dask.delayed(func, pure=False)  # closures: unique keys, never shared
        derived = [call(block) for block in blocks]
        self._n_sq[derived[0].key] = n_squared
        return derived

    def sizes(self, blocks):
        return list(self._sizes)

    def n_squared(self, blocks):
        return self._n_sq[blocks[0].key]

    def dtype(self, blocks):
        return np.dtype(np.float64)  # the dask path prepares float64 blocks

    def map_reduce(self, func, *per_block):
        """As :meth:`SerialExecutor.map_reduce`; the first results come back lazy."""
        import dask

        shared_func = dask.delayed(func, pure=False)
        # Every list of per-block values is aligned with the persisted blocks.
        holders = _holders(self._persisted)
        parts = []
        for args, workers in zip(zip(*per_block, strict=True), holders, strict=True):
            # Each block's task runs where the block lives: a scheduler that balances
            # load (work stealing) would otherwise move whole blocks between workers.
            with _on_workers(workers):
                parts.append(dask.delayed(_call, pure=True)(shared_func, *args))
        getitem = dask.delayed(operator.getitem, pure=True)
        kept = [getitem(part, 0) for part in parts]
        sums = [getitem(part, 1) for part in parts]
        while len(sums) > 1:
            sums = [dask.delayed(_add, pure=True)(*sums[i : i + self.reduction_fan_in])
                    for i in range(0, len(sums), self.reduction_fan_in)]
        return kept, compute(sums[0])


def _call(func, *args):
    return func(*args)


def _add(*parts):
    """Sum of summable parts (``None`` when they are ``None``)."""
    return None if parts[0] is None else functools.reduce(operator.add, parts)


def _prepare_dask_block(model, X_block, y_block):
    if not np.isfinite(X_block).all():
        raise ValueError("Input X contains NaN or infinity.")
    if not np.isfinite(y_block).all():
        raise ValueError("Input y contains NaN or infinity.")
    block = model.prepare_block(X_block, y_block)
    block.sample_sums = _sums_one_thread
    return block


def _active_client():
    """The active ``distributed`` client, or None (without importing distributed)."""
    if "distributed" not in sys.modules:
        return None
    from distributed import Client

    try:
        return Client.current(allow_global=True)
    except ValueError:
        return None


def _spread(n_blocks):
    """Workers for ``n_blocks`` blocks, in contiguous runs of equal length (``None`` each
    without a distributed client)."""
    client = _active_client()
    if client is None:
        return [None] * n_blocks
    workers = _worker_addresses(client)
    if not workers:  # none yet (or all lost): the scheduler places the blocks later
        return [None] * n_blocks
    return [[workers[i * len(workers) // n_blocks]] for i in range(n_blocks)]


def _worker_addresses(client):
    """The sorted addresses of the cluster's workers, asked of the scheduler now.

    ``client.scheduler_info()`` is not used: the client's periodic refresh replaces the
    returned identity with one without workers, racing with the call."""
    return sorted(client.nthreads())


def _on_workers(workers):
    """Tasks made in this context run on ``workers`` only (``None``: anywhere)."""
    if workers is None:
        return contextlib.nullcontext()
    import dask

    return dask.annotate(workers=workers, allow_other_workers=True)


def _futures(values):
    from distributed import futures_of

    return [futures_of(value) for value in values]


def _wait(persisted):
    """Wait until persisted values are in the workers' memory (distributed only)."""
    if _active_client() is not None:
        futures = [future for futures in _futures(persisted) for future in futures]
        _watched(lambda timeout: _all_done(futures, timeout), lambda: None)


# A computation of a fit on a distributed cluster that has had no worker for this long
# fails (the nanny restarts a lost worker in seconds; a cluster left with none would
# otherwise wait forever), and the client checks the cluster this often meanwhile.
NO_WORKER_TIMEOUT = 60.0
WATCH_INTERVAL = 2.0


def _all_done(futures, timeout):
    from distributed import wait

    wait(futures, timeout=timeout)
    for future in futures:
        if future.status == "error":
            future.result()  # raises the task's error
        if future.status == "cancelled":
            raise _worker_lost_error()


def compute(value):
    """``dask.compute(value)[0]``; on a distributed cluster, watched (see ``_watched``)."""
    import dask

    client = _active_client()
    if client is None:
        return dask.compute(value)[0]
    future = client.compute(value)
    _watched(lambda timeout: _all_done([future], timeout), future.cancel)
    try:
        return client.gather(future)
    except CancelledError as error:  # lost between the wait and the gather
        raise _worker_lost_error(error) from error


def _worker_lost_error(cause=None):
    return RuntimeError(
        "A dask worker was lost during the fit and the blocks of data it held could not "
        "be recomputed" + (f" ({type(cause).__name__}: {cause})" if cause else "")
        + ". The fit was abandoned and the estimator left as it was; the client is "
        "usable. Fit again once the cluster has its workers (blocks that dask can "
        "recompute from their graph, such as arrays made by dask.array, survive the "
        "loss of a worker)."
    )


def _watched(wait, cancel):
    """``wait(timeout)`` until it returns, bounded: the errors that the loss of a worker
    leaves (lost data that cannot be recomputed, a task that killed its workers) become
    one clear error, and a cluster left without workers for ``NO_WORKER_TIMEOUT``
    seconds fails the computation instead of waiting forever."""
    from distributed import KilledWorker

    client = _active_client()
    workerless_since = None
    while True:
        try:
            return wait(WATCH_INTERVAL)
        except TimeoutError:
            pass
        except (KilledWorker, CancelledError) as error:
            raise _worker_lost_error(error) from error
        if _worker_addresses(client):
            workerless_since = None
        elif workerless_since is None:
            workerless_since = time()
        elif time() - workerless_since > NO_WORKER_TIMEOUT:
            cancel()
            raise RuntimeError(
                f"The dask cluster has had no worker for {NO_WORKER_TIMEOUT:.0f} s during "
                "the fit: its workers were lost and none came back. The fit was abandoned "
                "and the estimator left as it was; the client is usable."
            )


def _holders(persisted):
    """For each persisted value, the workers of a ``distributed`` cluster holding it;
    ``None`` where unknown (a value being recomputed after its worker was lost, or no
    distributed client)."""
    client = _active_client()
    if client is None:
        return [None] * len(persisted)
    try:
        futures = [futures[0] for futures in _futures(persisted)]
        who_has = client.who_has(futures)
    except CancelledError as error:  # lost, with a worker, since the last computation
        raise _worker_lost_error(error) from error
    return [list(who_has.get(future.key, ())) or None for future in futures]


# ------------------------------------------------------------------------ engine steps
@dataclass
class EMProblem:
    """What one fit's EM runs on: the model, its executor and blocks, and the whole
    (centred) training data for the steps that need all of it at once (initialisation)."""

    model: object
    executor: object
    blocks: list
    Xc: object
    y: object


def e_step(model, executor, blocks, params, with_stats=True):
    """E-step on every block, each fused with its statistics.

    Returns the per-block :class:`BlockEStep` list, the summed statistics (``None`` when
    ``with_stats`` is false), the mean log-likelihood per sample (from the reduced sums
    only) and the latent posterior covariances (K, Lw, Lw).
    """
    plan = model.plan(params, executor.n_squared(blocks), dtype=executor.dtype(blocks))
    kept, total = executor.map_reduce(
        lambda block: model.e_step_with_stats(block, plan, with_stats), blocks
    )
    return (kept, total if with_stats else None, total.log_prob / total.n_samples,
            plan.latent_cov)


def stats_of(model, executor, blocks, esteps, latent_cov, fill=None):
    """Statistics of kept E-steps, summed (``fill``: components given every sample)."""
    _, stats = executor.map_reduce(
        lambda block, estep: (None, model.block_stats(block, estep, latent_cov, fill)),
        blocks, esteps,
    )
    return stats


def responsibilities_as_esteps(executor, blocks, resp):
    """Given responsibilities ``resp`` (K, n) as per-block E-steps, with no latent part:
    a frozen E-step."""
    bounds = np.cumsum([0] + executor.sizes(blocks))
    K = resp.shape[0]
    xp = array_namespace(resp)
    return [
        BlockEStep(log_prob=None, resp=resp[:, a:b], latent_mean=zeros(xp, (0, K, b - a), resp))
        for a, b in zip(bounds[:-1], bounds[1:], strict=True)
    ]


def m_step(model, executor, blocks, esteps, stats, latent_cov, *, raw=False):
    """The M-step from summed statistics, with emptied components refilled.

    A component whose responsibilities sum below ``EMPTY_COMPONENT_MASS`` gets the
    statistics of all samples (and keeps its negligible weight), which keeps every
    parameter finite. ``raw=True`` returns ``model.m_step_moments`` (noise unfloored).
    """
    empty = stats.mass < EMPTY_COMPONENT_MASS
    if empty.any() if isinstance(empty, np.ndarray) else bool(array_namespace(empty).any(empty)):
        stats = stats_of(model, executor, blocks, esteps, latent_cov, fill=empty)
    return model.m_step_moments(stats) if raw else model.m_step(stats)


def m_step_from_resp(model, executor, blocks, resp):
    """M-step from given responsibilities ``resp`` (K, n): a frozen E-step's M-step.

    Returns ``model.m_step_moments``: the noise is left as raw moments.
    """
    esteps = responsibilities_as_esteps(executor, blocks, resp)
    no_latent = zeros(array_namespace(resp), (resp.shape[0], 0, 0), resp)
    return m_step_from_esteps(model, executor, blocks, esteps, no_latent)


def m_step_from_esteps(model, executor, blocks, esteps, no_latent):
    """:func:`m_step_from_resp` from per-block E-steps without latent part (``esteps``);
    ``no_latent`` is their (K, 0, 0) latent covariance."""
    stats = stats_of(model, executor, blocks, esteps, no_latent)
    return m_step(model, executor, blocks, esteps, stats, no_latent, raw=True)


def unchanged_on_failure(method):
    """Decorate a fitting method so that a call that raises changes nothing.

    The estimator's attributes are put back as they were when the call began: a fitted
    model stays exactly as it was, an unfitted one unfitted. A shallow copy is enough,
    since fitting replaces attributes and never writes into the arrays they hold.
    """
    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        saved = dict(self.__dict__)
        try:
            return method(self, *args, **kwargs)
        except BaseException:  # an interrupt, too, leaves the model as it was
            self.__dict__.clear()
            self.__dict__.update(saved)
            raise
    return wrapper


# ------------------------------------------------------------------------ the EM loop
class EMMixin:
    """The EM loop of an estimator, once: initialisations, warm start, tolerance,
    ``ConvergenceWarning`` and progress messages (as :class:`sklearn.mixture.BaseMixture`).

    The estimator has the parameters ``max_iter``, ``tol``, ``n_init``, ``warm_start``,
    ``verbose`` and ``verbose_interval`` and supplies the hook
    ``_em_initial_params(problem, random_state, resp=None)`` (the parameters of the first
    M-step, from its own initial responsibilities or from ``resp`` (K, n)).
    """

    def _print(self, level, message):
        if self.verbose >= level:
            print(message)

    def _non_finite_error(self):
        """The error raised when EM reaches a non-finite log-likelihood (a hook)."""
        return ValueError(
            "EM produced a non-finite log-likelihood; the data may contain extreme values. "
            "Standardise X and y, or increase reg_covar."
        )

    def _run_em(self, problem, params, start, max_iter=None, stop=None):
        """EM from ``params`` for at most ``max_iter`` (default: the estimator's) M-steps,
        counting the one that made ``params``: the bounds, last parameters, iterations
        and convergence. ``stop(bounds, params)``, when given, is asked after each
        iteration whether to stop there (the initialisation's runs, see
        :func:`._init.best_start`)."""
        max_iter = self.max_iter if max_iter is None else max_iter
        model, executor, blocks = problem.model, problem.executor, problem.blocks
        esteps, stats, bound, latent_cov = e_step(model, executor, blocks, params,
                                                  with_stats=max_iter > 1)
        bounds = [bound]
        converged = False
        n_iter = 1
        for n_iter in range(2, max_iter + 1):
            params = m_step(model, executor, blocks, esteps, stats, latent_cov)
            esteps, stats, bound, latent_cov = e_step(
                model, executor, blocks, params, with_stats=n_iter < max_iter
            )
            bounds.append(bound)
            if not np.isfinite(bound):
                break
            change = bounds[-1] - bounds[-2]
            if n_iter % self.verbose_interval == 0:
                self._print(2, f"  Iteration {n_iter}\t time lapse {time() - start:.5f}s\t "
                               f"ll change {change:.5f}")
            if abs(change) < self.tol:
                converged = True
                break
            if stop is not None and stop(bounds, params):
                break
        if max_iter == 1 and self.tol > 0:
            converged = False
        return bounds, params, n_iter, converged

    def _start_params(self, problem, random_state):
        """The parameters a fresh initialisation's EM starts from (a hook: an estimator
        may choose among several starting points)."""
        return self._em_initial_params(problem, random_state)

    def _fit_em(self, problem, random_state, warm_params=None):
        """Run EM ``n_init`` times (once from ``warm_params`` when given); keep the best.

        Sets ``converged_``, ``n_iter_``, ``lower_bounds_`` and ``lower_bound_``, warns
        when the best run did not converge, and returns its parameters.
        """
        n_init = 1 if warm_params is not None else self.n_init
        best = None
        for init in range(n_init):
            self._print(1, f"Initialization {init}")
            start = time()
            if warm_params is not None:
                params = warm_params
            else:
                params = self._start_params(problem, random_state)
            bounds, params, n_iter, converged = self._run_em(problem, params, start)
            self._print(
                1, f"Initialization {'converged' if converged else 'did not converge'}. "
                   f"time lapse {time() - start:.5f}s\t lower bound {bounds[-1]:.5f}"
            )
            if not np.isfinite(bounds[-1]):
                raise self._non_finite_error()
            if best is None or bounds[-1] > best[0][-1]:
                best = (bounds, params, n_iter, converged)

        bounds, params, n_iter, converged = best
        if not converged and self.tol > 0 and self.max_iter > 1:
            warnings.warn(
                "Best performing initialization did not converge. Try different init "
                "parameters, or increase max_iter, tol, or check for degenerate data.",
                ConvergenceWarning,
                stacklevel=3,
            )
        self.converged_ = converged
        self.n_iter_ = n_iter
        self.lower_bounds_ = bounds
        self.lower_bound_ = bounds[-1]
        return params

    def _fit_frozen(self, problem, resp, random_state):
        """The frozen E-step: parameters from the given responsibilities ``resp`` (K, n)
        by one M-step (and the latent initialisation), and their log-likelihood."""
        params = self._em_initial_params(problem, random_state, resp=resp)
        _, _, bound, _ = e_step(problem.model, problem.executor, problem.blocks, params,
                                with_stats=False)
        if not np.isfinite(bound):
            raise self._non_finite_error()
        self.converged_ = True
        self.n_iter_ = 1
        self.lower_bounds_ = [bound]
        self.lower_bound_ = bound
        return params
