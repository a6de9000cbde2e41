"""A dask fit survives the loss of a worker: a real LocalCluster of two worker processes,
one of them killed by its pid (SIGKILL; the nanny restarts it) during an exact-EM fit.

Blocks that dask can recompute from their graph (arrays made by dask.array) are
recomputed and the fit ends with the in-memory result; blocks that cannot be recomputed
(data scattered to the lost worker) make the fit fail at once with an error that says a
worker was lost. Either way the fit never hangs, the estimator is left as it was, and the
client stays usable.
"""

import os
import signal
import threading

import numpy as np
import pytest
from numpy.testing import assert_allclose
from sklearn.exceptions import NotFittedError

from gllim_sk import GLLiMRegressor, _engine

distributed = pytest.importorskip("distributed")
da = pytest.importorskip("dask.array")
pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")

# No fit here takes more than a few seconds; one still running after this has hung.
FIT_DEADLINE = 180


@pytest.fixture
def client(dask_process_client):
    """conftest's two worker processes (this module's own cluster), both up: a worker
    killed by an earlier test is back."""
    dask_process_client.wait_for_workers(2, timeout=60)
    return dask_process_client


def data(n=8000, n_features=16, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.uniform(-1, 1, size=(n, 2))
    X = np.tanh(y @ rng.normal(size=(2, n_features))) + 0.1 * rng.normal(size=(n, n_features))
    return X, y


def kill_worker_at_estep(monkeypatch, client, victim, at_call):
    """Kill the worker ``victim`` (SIGKILL to its pid) when the fit starts its
    ``at_call``-th E-step: the blocks it holds are lost in the middle of EM."""
    pids = client.run(os.getpid)
    e_step, calls = _engine.e_step, []

    def killing_e_step(*args, **kwargs):
        calls.append(1)
        if len(calls) == at_call:
            os.kill(pids[victim], signal.SIGKILL)
        return e_step(*args, **kwargs)

    monkeypatch.setattr(_engine, "e_step", killing_e_step)
    return calls


def fit_with_deadline(model, X, y, client):
    """``model.fit(X, y)`` in a thread with the client current; fails the test if it
    has not returned within FIT_DEADLINE seconds. Returns the error it raised, if any."""
    outcome = {}

    def run():
        try:
            with client.as_current():
                model.fit(X, y)
        except Exception as error:  # handed to the test
            outcome["error"] = error

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(FIT_DEADLINE)
    if thread.is_alive():
        pytest.fail(f"the dask fit hung: still running {FIT_DEADLINE} s after a worker was lost")
    return outcome.get("error")


# With one start the worker dies during EM on the workers; with several, during the
# starting runs, which run on the client on a gathered subset (between two computations).
@pytest.mark.parametrize("init_candidates", [1, 10])
def test_lost_worker_blocks_are_recomputed_and_the_fit_is_exact(client, monkeypatch,
                                                                 init_candidates):
    X, y = data()
    kw = dict(n_components=4, random_state=0, max_iter=25, tol=0,
              init_candidates=init_candidates)
    in_memory = GLLiMRegressor(**kw).fit(X, y)
    Xd, yd = da.from_array(X, chunks=(1000, -1)), da.from_array(y, chunks=(1000, -1))
    victim = sorted(client.nthreads())[0]
    calls = kill_worker_at_estep(monkeypatch, client, victim, at_call=20)
    model = GLLiMRegressor(**kw)
    error = fit_with_deadline(model, Xd, yd, client)
    assert error is None, error
    assert len(calls) > 20  # the worker was killed in the middle of the fit
    assert victim not in client.nthreads()
    assert model.n_iter_ == in_memory.n_iter_
    assert_allclose(model.lower_bounds_, in_memory.lower_bounds_, rtol=1e-10)
    assert_allclose(model.predict(X[:200]), in_memory.predict(X[:200]), rtol=1e-8, atol=1e-10)
    assert client.submit(sum, [1, 2]).result(timeout=30) == 3  # the client is usable


@pytest.mark.parametrize("init_candidates", [1, 10])
def test_lost_scattered_blocks_fail_clearly_and_change_nothing(client, monkeypatch,
                                                               init_candidates):
    X, y = data(n=4000)
    victim = sorted(client.nthreads())[0]
    # Blocks scattered to one worker exist nowhere else: dask cannot recompute them.
    futures = [client.scatter(X[i : i + 1000], workers=[victim]) for i in range(0, 4000, 1000)]
    Xd = da.concatenate([da.from_delayed(f, shape=(1000, X.shape[1]), dtype=float)
                         for f in futures])
    yd = da.from_array(y, chunks=(1000, -1))
    kill_worker_at_estep(monkeypatch, client, victim, at_call=20)
    model = GLLiMRegressor(4, random_state=0, max_iter=25, tol=0,
                           init_candidates=init_candidates)
    error = fit_with_deadline(model, Xd, yd, client)
    assert isinstance(error, RuntimeError)
    assert "worker was lost" in str(error)
    with pytest.raises(NotFittedError):
        model.predict(X[:5])
    assert client.submit(sum, [1, 2]).result(timeout=30) == 3
