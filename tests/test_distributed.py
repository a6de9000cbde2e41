"""GLLiM beyond one machine: exact EM and lazy prediction over dask arrays, and model
selection on a cluster.

The tests start a real ``distributed.LocalCluster`` (fixtures in ``conftest.py``, threads
or worker processes) and shut it down; every result is compared with the same
computation in memory with numpy.
"""

import numpy as np
import pytest
from joblib import parallel_backend
from numpy.testing import assert_allclose
from sklearn.model_selection import GridSearchCV, KFold

from gllim_sk import GLLiMRegressor

da = pytest.importorskip("dask.array")
distributed = pytest.importorskip("distributed")

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")


def make_data(ref, seed=0, n_samples=300, n_features=8, **kwargs):
    return ref.draw(seed, n_samples=n_samples, n_features=n_features, **kwargs)


COVARIANCE_TYPES = ("full", "diag", "spherical", "tied", "tied_diag", "tied_spherical")


def as_dask(X, y, x_chunks=(170, 4), y_chunks=(250, -1)):
    """Row blocks of unequal sizes, and X split across columns too (fit realigns them)."""
    return da.from_array(X, chunks=x_chunks), da.from_array(y, chunks=y_chunks)


def assert_same_fit(numpy_fit, dask_fit, X):
    a, b = np.asarray(numpy_fit.lower_bounds_), np.asarray(dask_fit.lower_bounds_)
    assert a.shape == b.shape
    assert_allclose(b, a, rtol=1e-10, atol=0)
    assert_allclose(dask_fit.predict(X), numpy_fit.predict(X), rtol=0, atol=1e-8)
    assert dask_fit.n_iter_ == numpy_fit.n_iter_
    assert dask_fit.converged_ == numpy_fit.converged_


def test_dask_fit_without_a_client_uses_the_default_scheduler(gllim_ref):
    # First in this module: no module-scoped cluster of the tests below is running yet.
    assert distributed.client._get_global_client() is None
    X, y = make_data(gllim_ref)
    Xd, yd = as_dask(X, y)
    kw = dict(n_components=3, random_state=0, max_iter=20, tol=0)
    assert_same_fit(GLLiMRegressor(**kw).fit(X, y), GLLiMRegressor(**kw).fit(Xd, yd), X)


@pytest.mark.parametrize("n_latent", [0, 2])
@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_dask_em_trajectory_equals_numpy(gllim_ref, dask_client, covariance_type, n_latent):
    X, y = make_data(gllim_ref, n_latent=n_latent)
    resp = np.random.default_rng(1).dirichlet(np.ones(3), size=len(X))
    kw = dict(n_components=3, covariance_type=covariance_type, n_latent=n_latent,
              resp_init=resp, max_iter=12, tol=0)
    numpy_fit = GLLiMRegressor(**kw).fit(X, y)
    before = _tasks_executed(dask_client)
    dask_fit = GLLiMRegressor(**kw).fit(*as_dask(X, y))
    assert _tasks_executed(dask_client) > before, "EM did not run on the workers"
    assert_same_fit(numpy_fit, dask_fit, X)


@pytest.mark.parametrize("covariance_type", ["diag", "full"])
def test_dask_latent_init_of_a_nearly_empty_component(gllim_ref, dask_client,
                                                      covariance_type):
    # Component 2 owns (almost) no sample: its latent PCA uses its most responsible rows,
    # gathered across blocks. Only the initial parameters are compared: EM from such a
    # start is ill-conditioned enough that summing in another order (as the in-memory
    # threaded chunks also do) moves later iterations by ~1e-9.
    X, y = make_data(gllim_ref, n_latent=2)
    resp = np.random.default_rng(1).dirichlet(np.ones(3), size=len(X))
    resp[:, 2] *= 1e-3
    kw = dict(n_components=3, covariance_type=covariance_type, n_latent=2, resp_init=resp,
              max_iter=1, tol=0)
    numpy_fit = GLLiMRegressor(**kw).fit(X, y)
    dask_fit = GLLiMRegressor(**kw).fit(*as_dask(X, y))
    for name in ("latent_coef_", "noise_covariances_", "inverse_coef_"):
        assert_allclose(getattr(dask_fit, name), getattr(numpy_fit, name), rtol=1e-10,
                        atol=1e-12, err_msg=name)
    assert_allclose(dask_fit.lower_bound_, numpy_fit.lower_bound_, rtol=1e-10)


def test_dask_latent_init_without_gram_matrices(gllim_ref, dask_client, monkeypatch):
    # Above a memory budget the latent PCA's leading directions come from a subspace
    # iteration over the blocks instead of D x D Gram matrices: the same loadings, to the
    # iteration's accuracy.
    from gllim_sk import _dask

    X, y = make_data(gllim_ref, n_samples=600, n_features=30, n_latent=2)
    resp = np.random.default_rng(1).dirichlet(np.ones(3), size=len(X))
    kw = dict(n_components=3, n_latent=2, resp_init=resp, max_iter=1, tol=0, random_state=0)
    numpy_fit = GLLiMRegressor(**kw).fit(X, y)
    monkeypatch.setattr(_dask, "LATENT_GRAM_MAX_FLOATS", 0)
    dask_fit = GLLiMRegressor(**kw).fit(*as_dask(X, y, x_chunks=(170, -1)))

    def outer(model):  # W W' does not depend on the loadings' signs and rotation
        return np.einsum("kdl,kel->kde", model.latent_coef_, model.latent_coef_)

    assert_allclose(outer(dask_fit), outer(numpy_fit), rtol=0,
                    atol=1e-6 * np.abs(outer(numpy_fit)).max())
    assert_allclose(dask_fit.lower_bound_, numpy_fit.lower_bound_, rtol=1e-8)


@pytest.mark.parametrize("init_params", ["kmeans", "kmeans_joint"])
def test_dask_kmeans_init_equals_numpy(gllim_ref, dask_client, init_params):
    # Up to dask's KMEANS_MAX_SAMPLES rows, k-means runs on all the targets as in memory.
    X, y = make_data(gllim_ref)
    kw = dict(n_components=3, init_params=init_params, random_state=0, n_init=2)
    assert_same_fit(GLLiMRegressor(**kw).fit(X, y), GLLiMRegressor(**kw).fit(*as_dask(X, y)),
                    X)


def test_dask_warm_start_continues_as_in_memory(gllim_ref, dask_client):
    X, y = make_data(gllim_ref)
    kw = dict(n_components=3, random_state=0, max_iter=4, tol=0, warm_start=True)
    numpy_fit, dask_fit = GLLiMRegressor(**kw), GLLiMRegressor(**kw)
    for _ in range(2):
        numpy_fit.fit(X, y)
        dask_fit.fit(*as_dask(X, y))
    assert_same_fit(numpy_fit, dask_fit, X)


def _record_gathered_sizes(client, monkeypatch):
    """The list to which every later ``client.gather`` appends the size of its result
    (until ``monkeypatch.undo()``)."""
    import dask.sizeof

    gathered = []
    gather = client.gather

    def recording_gather(futures, *args, **kwargs):
        result = gather(futures, *args, **kwargs)
        gathered.append(dask.sizeof.sizeof(result))
        return result

    monkeypatch.setattr(client, "gather", recording_gather)
    return gathered


def test_dask_fit_on_worker_processes_never_gathers_features(gllim_ref, dask_process_client,
                                                             monkeypatch):
    from gllim_sk import _dask

    X, y = make_data(gllim_ref, n_samples=2000, n_features=60, n_latent=1)
    y = y[:, 0]  # 1-D targets
    Xd, yd = as_dask(X, y, x_chunks=(400, -1), y_chunks=(500,))
    # Subsets for the starting runs larger than this stay on the workers too.
    monkeypatch.setattr(_dask, "CLIENT_SUBSET_MAX_BYTES", 0)
    gathered = _record_gathered_sizes(dask_process_client, monkeypatch)
    kw = dict(n_components=3, n_latent=1, random_state=0, max_iter=15)
    dask_fit = GLLiMRegressor(**kw).fit(Xd, yd)
    monkeypatch.undo()
    assert len(gathered) >= dask_fit.n_iter_
    # Statistics and targets come back; no block of features does.
    assert max(gathered) < X[:400].nbytes / 4
    assert_same_fit(GLLiMRegressor(**kw).fit(X, y), dask_fit, X)


def test_dask_starting_runs_on_a_small_subset_run_on_the_client(gllim_ref, dask_client,
                                                                monkeypatch):
    from gllim_sk import _dask

    X, y = make_data(gllim_ref, n_samples=2000, n_features=6)
    Xd, yd = as_dask(X, y, x_chunks=(400, -1), y_chunks=(400, -1))
    kw = dict(n_components=3, random_state=0, max_iter=5, tol=0, init_candidates=4)
    numpy_fit = GLLiMRegressor(**kw).fit(X, y)
    counts = {}
    for limit in (0, _dask.CLIENT_SUBSET_MAX_BYTES):
        monkeypatch.setattr(_dask, "CLIENT_SUBSET_MAX_BYTES", limit)
        gathered = _record_gathered_sizes(dask_client, monkeypatch)
        dask_fit = GLLiMRegressor(**kw).fit(Xd, yd)
        monkeypatch.undo()
        counts[limit] = len(gathered)
        # Same starts chosen and the same EM, wherever the starting runs ran.
        assert_same_fit(numpy_fit, dask_fit, X)
    # Left on the workers, every iteration of every starting run is a round trip; the
    # gathered subsets (held out and run on) cost one each.
    assert counts[_dask.CLIENT_SUBSET_MAX_BYTES] + 4 * 5 < counts[0]


def test_block_placement_sees_every_worker_whatever_the_client_cache(dask_client,
                                                                     monkeypatch):
    from gllim_sk import _engine

    workers = sorted(dask_client.nthreads())
    assert len(workers) == 2
    # The client's periodic refresh keeps an identity without workers; placement must not
    # read that cache (it raced with it, and placed blocks on a worker of an empty list).
    monkeypatch.setattr(dask_client, "scheduler_info", lambda *a, **k: {"workers": {}})
    assert _engine._spread(4) == [[workers[0]], [workers[0]], [workers[1]], [workers[1]]]


def test_block_placement_without_workers_leaves_it_to_the_scheduler():
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=0, processes=False, dashboard_address=":0",
                                  silence_logs=40) as cluster, \
            distributed.Client(cluster, set_as_default=False) as client, \
            client.as_current():
        from gllim_sk import _engine

        assert _engine._spread(3) == [None, None, None]


def test_dask_predictions_are_lazy_and_exact(gllim_ref, dask_client):
    X, y = make_data(gllim_ref, n_latent=1)
    model = GLLiMRegressor(n_components=3, n_latent=1, random_state=0).fit(X, y)
    Xd, yd = as_dask(X, y)
    before = _tasks_executed(dask_client)
    mean, std, cov = model.predict(Xd, return_std=True, return_cov=True)
    weights, means, covariances = model.predict_mixture(Xd.astype(np.float32))
    joint = model.joint_log_density(Xd, yd)
    conditional = model.conditional_log_density(Xd, y)  # numpy y is aligned on X's blocks
    posterior = model.component_posterior(Xd, yd)
    assert _tasks_executed(dask_client) == before, "something was computed eagerly"
    bic = model.bic(Xd, yd)  # a number: the sum of the lazy densities, computed
    for lazy in (mean, std, cov, weights, means, joint, conditional, posterior):
        assert isinstance(lazy, da.Array)
        assert lazy.chunks[0] == Xd.chunks[0]
    expected = model.predict(X, return_std=True, return_cov=True)
    for lazy, exact in zip((mean, std, cov), expected, strict=True):
        assert_allclose(lazy.compute(), exact, rtol=1e-12, atol=1e-12)
    expected = model.predict_mixture(X.astype(np.float32))
    assert weights.dtype == np.float32 and means.dtype == np.float32
    assert_allclose(weights.compute(), expected[0])
    assert_allclose(means.compute(), expected[1])
    assert_allclose(covariances, expected[2])
    assert_allclose(joint.compute(), model.joint_log_density(X, y), rtol=1e-12)
    assert_allclose(conditional.compute(), model.conditional_log_density(X, y), rtol=1e-12)
    assert_allclose(posterior.compute(), model.component_posterior(X, y), atol=1e-12)
    assert_allclose(float(bic), model.bic(X, y), rtol=1e-12)


def test_dask_inputs_are_checked(gllim_ref, dask_client):
    X, y = make_data(gllim_ref)
    Xd, yd = as_dask(X, y)
    bad = X.copy()
    bad[123, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        GLLiMRegressor(2).fit(da.from_array(bad, chunks=100), yd)
    with pytest.raises(ValueError, match="inconsistent numbers of samples"):
        GLLiMRegressor(2).fit(Xd[:-1], yd)
    with pytest.raises(ValueError, match="resp_init has shape"):
        GLLiMRegressor(2, resp_init=np.ones((len(X), 3))).fit(Xd, yd)
    with pytest.raises(ValueError, match="negative"):
        GLLiMRegressor(2, resp_init=-np.ones((len(X), 2))).fit(Xd, yd)
    with pytest.raises(ValueError, match="resp_init contains NaN"):
        GLLiMRegressor(2, resp_init=np.full((len(X), 2), np.nan)).fit(Xd, yd)
    model = GLLiMRegressor(2, random_state=0).fit(Xd, yd)
    with pytest.raises(ValueError, match="features"):
        model.predict(Xd[:, :-1])


def _tasks_executed(client):
    return sum(client.run(lambda dask_worker: dask_worker.state.executed_count).values())


def _grid_search(n_jobs):
    return GridSearchCV(
        GLLiMRegressor(random_state=0, max_iter=30),
        {"n_components": [1, 2, 3], "n_latent": [0, 1]},
        cv=KFold(3, shuffle=True, random_state=0), n_jobs=n_jobs,
    )


def _assert_same_search(serial, parallel):
    assert parallel.best_params_ == serial.best_params_
    for key in ("mean_test_score", *(f"split{i}_test_score" for i in range(3))):
        assert_allclose(parallel.cv_results_[key], serial.cv_results_[key], rtol=1e-9)
    assert_allclose(parallel.predict(serial.best_estimator_.feature_mean_[None]),
                    serial.predict(serial.best_estimator_.feature_mean_[None]), rtol=1e-9)


@pytest.mark.parametrize("client_fixture", ["dask_client", "dask_process_client"])
def test_grid_search_on_dask_cluster_matches_serial(gllim_ref, client_fixture, request):
    client = request.getfixturevalue(client_fixture)
    X, y = make_data(gllim_ref, n_latent=1)
    serial = _grid_search(n_jobs=1).fit(X, y)
    before = _tasks_executed(client)
    with parallel_backend("dask"):
        parallel = _grid_search(n_jobs=-1).fit(X, y)
    assert _tasks_executed(client) > before, "the fits did not run on the workers"
    _assert_same_search(serial, parallel)


def test_grid_search_on_ray_matches_serial(gllim_ref):
    ray = pytest.importorskip("ray")
    from ray.util.joblib import register_ray

    X, y = make_data(gllim_ref, n_latent=1)
    serial = _grid_search(n_jobs=1).fit(X, y)
    try:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    except Exception as error:  # an environment that cannot run Ray's processes
        pytest.skip(f"a local Ray instance cannot start here: {error}")
    try:
        register_ray()
        with parallel_backend("ray"):
            parallel = _grid_search(n_jobs=-1).fit(X, y)
    finally:
        ray.shutdown()
    _assert_same_search(serial, parallel)


def test_cluster_fixtures_leave_dask_config_as_they_found_it():
    # Two module clusters closed in the order they were opened (as pytest may tear them
    # down): neither may leave dask configured for a closed client.
    import dask
    from conftest import _local_cluster_client

    before = dask.config.get("scheduler", None)
    first, second = (_local_cluster_client(processes=False) for _ in range(2))
    first_client, second_client = next(first), next(second)
    with first_client.as_current():
        assert da.ones(4, chunks=2).sum().compute() == 4
    for generator in (first, second):
        with pytest.raises(StopIteration):
            next(generator)
    assert first_client.status == second_client.status == "closed"
    assert dask.config.get("scheduler", None) == before


def test_dask_student_fit_equals_numpy(gllim_ref, dask_client):
    from gllim_sk import StudentGLLiMRegressor

    X, y = make_data(gllim_ref)
    X[:10] += 20.0  # outlying rows: the weights u matter
    resp = np.random.default_rng(1).dirichlet(np.ones(3), size=len(X))
    kw = dict(n_components=3, covariance_type="full", resp_init=resp, max_iter=8, tol=0)
    numpy_fit = StudentGLLiMRegressor(**kw).fit(X, y)
    before = _tasks_executed(dask_client)
    dask_fit = StudentGLLiMRegressor(**kw).fit(*as_dask(X, y))
    assert _tasks_executed(dask_client) > before, "EM did not run on the workers"
    assert_same_fit(numpy_fit, dask_fit, X)
    assert_allclose(dask_fit.dof_, numpy_fit.dof_, rtol=1e-10)


class _TaskCounter:
    """Counts the tasks run while it is active, on dask's local threaded scheduler (set
    explicitly: a cluster client of this module, once started, would otherwise take
    the computations, and a callback of the local schedulers would count nothing)."""

    def __init__(self):
        import dask
        from dask.callbacks import Callback

        self.tasks = 0
        counter = self

        class Counting(Callback):
            def _pretask(self, key, dsk, state):
                counter.tasks += 1

        self._contexts = [dask.config.set(scheduler="threads"), Counting()]

    def __enter__(self):
        for context in self._contexts:
            context.__enter__()
        return self

    def __exit__(self, *exc):
        for context in reversed(self._contexts):
            context.__exit__(*exc)


def _posterior_outputs(model, X, y):
    """Every per-sample prediction of ``model`` on (X, y), by name."""
    outputs = {
        "predict": model.predict(X, return_std=True, return_cov=True),
        "mixture": model.predict_mixture(X),
        "modes": model.predict_modes(X, n_modes=2),
        "inverse": (model.inverse_predict(y),),
        "posterior_y": (model.component_posterior(y=y),),
        "conditional": (model.conditional_log_density(X, y),),
        "samples": (model.sample_y(X, n_samples=3, random_state=0),),
    }
    if hasattr(model, "outlier_weights"):
        outputs["outliers"] = (model.outlier_weights(X, y),)
    return outputs


@pytest.mark.parametrize("estimator", ["gaussian", "student"])
def test_dask_posterior_methods_are_lazy_and_exact(gllim_ref, estimator):
    from gllim_sk import StudentGLLiMRegressor

    X, y = make_data(gllim_ref, n_latent=1)
    if estimator == "gaussian":
        model = GLLiMRegressor(n_components=3, n_latent=1, random_state=0).fit(X, y)
    else:
        X[:10] += 20.0  # outlying rows: small weights u
        model = StudentGLLiMRegressor(n_components=3, random_state=0, max_iter=20).fit(X, y)
    Xd, yd = as_dask(X, y)
    with _TaskCounter() as counter:
        lazy = _posterior_outputs(model, Xd, yd)
        score = model.score(Xd, yd)  # a number: computed, from the lazy predictions
    assert counter.tasks > 0
    with _TaskCounter() as counter:
        lazy = _posterior_outputs(model, Xd, yd)
    assert counter.tasks == 0, "something was computed eagerly"
    expected = _posterior_outputs(model, X, y)
    assert_allclose(score, model.score(X, y), rtol=1e-10)
    for name, exact_outputs in expected.items():
        for i, (part, exact) in enumerate(zip(lazy[name], exact_outputs, strict=True)):
            if name == "mixture" and i == 2 and estimator == "gaussian":
                assert isinstance(part, np.ndarray)  # (K, L, L), the same for every x
            else:
                assert isinstance(part, da.Array), name
                rows = yd if name in ("inverse", "posterior_y") else Xd
                assert part.chunks[0] == rows.chunks[0], name
            assert part.dtype == exact.dtype, name
            assert_allclose(np.asarray(part), exact, rtol=1e-10, atol=1e-12, err_msg=name)


def test_dask_sample_y_is_reproducible_whatever_the_blocks(gllim_ref):
    X, y = make_data(gllim_ref)
    model = GLLiMRegressor(n_components=3, random_state=0).fit(X, y[:, 0])  # 1-D y
    expected = model.sample_y(X, n_samples=4, random_state=7)
    assert expected.shape == (len(X), 4)
    for rows in (300, 64, 17):
        lazy = model.sample_y(da.from_array(X, chunks=(rows, 3)), n_samples=4, random_state=7)
        assert isinstance(lazy, da.Array) and lazy.chunks[0] == da.ones(300, chunks=rows).chunks[0]
        assert_allclose(lazy.compute(), expected, rtol=1e-10, atol=1e-12)
    Xd = da.from_array(X, chunks=50)
    assert not np.allclose(model.sample_y(Xd, 4, random_state=8).compute(), expected)
    # A RandomState gives one draw of its state, as on arrays in memory.
    assert_allclose(model.sample_y(Xd, 4, random_state=np.random.RandomState(3)).compute(),
                    model.sample_y(X, 4, random_state=np.random.RandomState(3)), rtol=1e-10)
    # The graph of another seed has other names: dask never mixes up their results.
    assert (model.sample_y(Xd, 4, random_state=1).name
            != model.sample_y(Xd, 4, random_state=2).name)
    draws32 = model.sample_y(Xd.astype(np.float32), 2, random_state=0)
    assert draws32.dtype == np.float32 and draws32.compute().dtype == np.float32


def test_dask_observation_noise_in_modes_and_samples(gllim_ref):
    X, y = make_data(gllim_ref, n_samples=120, n_features=5)
    model = GLLiMRegressor(n_components=2, random_state=0).fit(X, y)
    rng = np.random.default_rng(4)
    var = rng.uniform(0.01, 0.3, X.shape)
    Q = rng.normal(size=(5, 5))
    Xd = da.from_array(X, chunks=50)
    for lazy_noise, noise in (({"feature_noise_var": da.from_array(var, chunks=40)},
                               {"feature_noise_var": var}),
                              ({"feature_noise_cov": 0.05 * Q @ Q.T},) * 2):
        with _TaskCounter() as counter:
            modes = model.predict_modes(Xd, n_modes=1, **lazy_noise)
            samples = model.sample_y(Xd, 3, random_state=0, **lazy_noise)
        assert counter.tasks == 0
        for part, exact in zip((*modes, samples),
                               (*model.predict_modes(X, n_modes=1, **noise),
                                model.sample_y(X, 3, random_state=0, **noise)), strict=True):
            assert part.chunks[0] == Xd.chunks[0]
            assert_allclose(part.compute(), exact, rtol=1e-10, atol=1e-12)


def test_dask_student_refuses_observation_noise_at_once(gllim_ref):
    from gllim_sk import StudentGLLiMRegressor

    X, y = make_data(gllim_ref, n_samples=120, n_features=5)
    model = StudentGLLiMRegressor(n_components=2, random_state=0, max_iter=5).fit(X, y)
    Xd = da.from_array(X, chunks=50)
    for call in (lambda: model.predict(Xd, feature_noise_var=1.0),
                 lambda: model.predict_mixture(Xd, feature_noise_var=da.ones(X.shape)),
                 lambda: model.predict_modes(Xd, feature_noise_cov=np.eye(5)),
                 lambda: model.sample_y(Xd, feature_noise_var=1.0)):
        with pytest.raises(NotImplementedError, match="not a t"):
            call()


def test_dask_score_gathers_only_sums(gllim_ref, dask_client, monkeypatch):
    X, y = make_data(gllim_ref, n_samples=1200)
    model = GLLiMRegressor(n_components=3, random_state=0).fit(X, y)
    weight = np.random.default_rng(0).uniform(0.5, 2.0, len(X))
    Xd, yd = as_dask(X, y, x_chunks=(400, -1), y_chunks=(300, -1))
    gathered = _record_gathered_sizes(dask_client, monkeypatch)
    before = _tasks_executed(dask_client)
    scores = [model.score(Xd, yd), model.score(Xd, y, sample_weight=da.from_array(weight, 500))]
    monkeypatch.undo()
    assert _tasks_executed(dask_client) > before, "the score was not reduced on the workers"
    assert gathered and max(gathered) < 1000  # sums of two columns, not rows
    assert_allclose(scores, [model.score(X, y), model.score(X, y, sample_weight=weight)],
                    rtol=1e-10)
    with pytest.raises(ValueError, match="rows"):
        model.score(Xd, yd[:-1])


def test_empty_dask_input_gives_the_numpy_error(gllim_ref):
    """No rows: the same clear error as on numpy arrays, not one from dask's internals."""
    X, y = make_data(gllim_ref, n_samples=100)
    model = GLLiMRegressor(2, random_state=0).fit(X, y)
    empty = da.zeros((0, X.shape[1]), chunks=(10, -1))
    for method in (model.predict, model.sample_y, model.predict_modes):
        with pytest.raises(ValueError, match="0 sample") as numpy_error:
            method(X[:0])
        with pytest.raises(ValueError, match="0 sample") as dask_error:
            method(empty)
        assert str(dask_error.value) == str(numpy_error.value)


@pytest.mark.parametrize("n_samples", [True, 0, 2.0, -1])
def test_sample_y_refuses_a_count_that_is_no_positive_integer(gllim_ref, n_samples):
    X, y = make_data(gllim_ref, n_samples=100)
    model = GLLiMRegressor(2, random_state=0).fit(X, y)
    with pytest.raises(ValueError, match="n_samples must be a positive integer"):
        model.sample_y(X[:3], n_samples)
