"""GLLiM beyond one machine: model selection on a real dask cluster.

Every test starts a real ``distributed.LocalCluster`` (fixtures in ``conftest.py``) and
shuts it down; the results are compared with the same computation run serially.
"""

import numpy as np
import pytest
from joblib import parallel_backend
from numpy.testing import assert_allclose
from sklearn.model_selection import GridSearchCV, KFold

from gllim_sk import GLLiMRegressor

pytest.importorskip("distributed")

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")


def make_data(ref, seed=0, n_samples=300, n_features=8, n_targets=2, n_components=3,
              n_latent=0):
    rng = np.random.default_rng(seed)
    params = ref.random_params(rng, n_components, n_features, n_targets, n_latent=n_latent)
    X, y, _ = ref.sample(params, n_samples, rng)
    return X, y


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
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        register_ray()
        with parallel_backend("ray"):
            parallel = _grid_search(n_jobs=-1).fit(X, y)
    finally:
        ray.shutdown()
    _assert_same_search(serial, parallel)
