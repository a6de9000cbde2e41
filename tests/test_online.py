"""Online EM (``GLLiMRegressor.partial_fit``) against independent computations.

The reference M-step and responsibilities are the dense, brute-force ones of
``conftest.py``: a stepwise-EM update is the M-step of the previous running statistics
and the new batch's, blended with the step size, i.e. the M-step of the concatenated
batches with per-sample weights.
"""

import copy
import pickle

import numpy as np
import pytest
from numpy.testing import assert_allclose
from sklearn.base import clone
from sklearn.utils._param_validation import InvalidParameterError

from gllim_sk import GLLiMRegressor, _init

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")

COVARIANCE_TYPES = ("full", "diag", "spherical", "tied", "tied_diag", "tied_spherical")


def make_data(ref, seed=0, n_samples=1200, n_features=6, **kwargs):
    return ref.draw(seed, n_samples=n_samples, n_features=n_features, **kwargs)


def batches(X, y, size):
    return [(X[i : i + size], y[i : i + size]) for i in range(0, len(X), size)]


@pytest.mark.parametrize("init_candidates", [1, 4])
def test_first_call_is_one_em_iteration_from_the_fits_start(gllim_ref, init_candidates):
    # The first call starts as fit does on its batch (with 4 candidates on 1,200
    # samples and K=3: the single start or the best of 3 runs on subsets), without
    # iterations on the batch, and adds one EM iteration: fit with max_iter=1 (the
    # start), then one more iteration from there.
    X, y = make_data(gllim_ref)
    assert _init.candidate_count(init_candidates, len(X), 3) == init_candidates
    kw = dict(n_components=3, random_state=0, covariance_type="full", tol=0,
              init_candidates=init_candidates)
    online = GLLiMRegressor(**kw).partial_fit(X, y)
    one_more = GLLiMRegressor(**kw, max_iter=1).fit(X, y)
    one_more.set_params(warm_start=True, max_iter=2).fit(X, y)
    assert online.n_batch_iter_ == 1
    for p, q in zip(gllim_ref.dense_params(online).values(),
                    gllim_ref.dense_params(one_more).values(), strict=True):
        assert_allclose(p, q, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("covariance_type", ["full", "diag", "tied"])
def test_update_is_the_m_step_of_the_blended_statistics(gllim_ref, covariance_type):
    # Batches of different sizes: the blend weighs each sample of a batch by
    # (step or 1 - step) / batch size.
    X, y = make_data(gllim_ref, seed=1)
    (X1, y1), (X2, y2) = (X[:500], y[:500]), (X[500:800], y[500:800])
    kw = dict(n_components=3, covariance_type=covariance_type, reg_covar=1e-10,
              random_state=0, learning_offset=2.0, learning_decay=0.8, init_candidates=1)
    initial = GLLiMRegressor(**kw, max_iter=1, tol=0).fit(X1, y1)  # the initial M-step
    online = GLLiMRegressor(**kw).partial_fit(X1, y1)
    first = gllim_ref.dense_params(online)
    online.partial_fit(X2, y2)
    step = (2.0 + 1) ** -0.8
    resp1 = gllim_ref.responsibilities(gllim_ref.dense_params(initial), X1, y1)
    resp2 = gllim_ref.responsibilities(first, X2, y2)
    weights = np.concatenate([np.full(len(X1), (1 - step) / len(X1)),
                              np.full(len(X2), step / len(X2))])
    resp = np.vstack([resp1, resp2]) * weights[:, None]
    expected = gllim_ref.m_step(np.vstack([X1, X2]), np.vstack([y1, y2]), resp,
                                covariance_type, "full", 1e-10)
    got = gllim_ref.dense_params(online)
    # The reference normalises the weights by the number of rows.
    assert_allclose(got["pi"], expected["pi"] / expected["pi"].sum(), rtol=1e-8)
    for name in ("c", "Gamma", "A", "b"):
        assert_allclose(got[name], expected[name], rtol=1e-7, atol=1e-9, err_msg=name)
    if covariance_type != "tied":  # the reference pools tied noise with unnormalised pi
        assert_allclose(got["Sigma"], expected["Sigma"], rtol=1e-7, atol=1e-9)
    assert online.n_batch_iter_ == 2


@pytest.mark.parametrize("n_latent", [0, 2])
@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_stream_improves_held_out_likelihood(gllim_ref, covariance_type, n_latent):
    X, y = make_data(gllim_ref, seed=2, n_samples=3000, n_latent=n_latent)
    X_test, y_test = X[2400:], y[2400:]
    model = GLLiMRegressor(3, covariance_type=covariance_type, n_latent=n_latent,
                           random_state=0)
    stream = batches(X[:2400], y[:2400], 200)
    model.partial_fit(*stream[0])
    start = model.joint_log_density(X_test, y_test).mean()
    for batch in stream[1:]:
        model.partial_fit(*batch)
    end = model.joint_log_density(X_test, y_test).mean()
    assert model.n_batch_iter_ == len(stream)
    assert np.isfinite(end) and end > start
    assert np.all(np.isfinite(model.predict(X_test)))


def test_pickled_mid_stream_continues_identically(gllim_ref):
    X, y = make_data(gllim_ref, n_latent=1)
    stream = batches(X, y, 300)
    model = GLLiMRegressor(3, n_latent=1, covariance_type="tied", random_state=0)
    for batch in stream[:2]:
        model.partial_fit(*batch)
    copy = pickle.loads(pickle.dumps(model))
    for batch in stream[2:]:
        model.partial_fit(*batch)
        copy.partial_fit(*batch)
    assert_allclose(copy.predict(X), model.predict(X), rtol=0, atol=0)


def test_partial_fit_after_fit_continues_and_fit_starts_over(gllim_ref):
    X, y = make_data(gllim_ref)
    fitted = GLLiMRegressor(3, random_state=0).fit(X[:600], y[:600])
    before = fitted.joint_log_density(X[600:], y[600:]).mean()
    fitted.partial_fit(X[600:900], y[600:900])
    assert fitted.n_batch_iter_ == 1
    assert_allclose(fitted.feature_mean_, X[:600].mean(axis=0))  # fit's centring is kept
    assert abs(fitted.joint_log_density(X[600:], y[600:]).mean() - before) < 1.0
    refit = clone(fitted).fit(X[:600], y[:600])
    fitted.fit(X[:600], y[:600])
    assert not hasattr(fitted, "_online_stats")
    assert_allclose(fitted.predict(X), refit.predict(X))


def test_partial_fit_checks_its_input(gllim_ref):
    X, y = make_data(gllim_ref)
    model = GLLiMRegressor(3, random_state=0).partial_fit(X[:300], y[:300])
    with pytest.raises(ValueError, match="features"):
        model.partial_fit(X[300:600, :-1], y[300:600])
    with pytest.raises(ValueError, match="target column"):
        model.partial_fit(X[300:600], y[300:600, :1])
    with pytest.raises(ValueError, match="n_components=3 must be <= n_samples=2"):
        GLLiMRegressor(3).partial_fit(X[:2], y[:2])
    for bad in ({"learning_decay": 0.5}, {"learning_decay": 1.1}, {"learning_offset": 0.0}):
        with pytest.raises(InvalidParameterError):
            GLLiMRegressor(3, **bad).partial_fit(X, y)


def test_incremental_wrapper_of_dask_ml(gllim_ref, dask_client):
    da = pytest.importorskip("dask.array")
    incremental = pytest.importorskip("dask_ml.wrappers").Incremental
    X, y = make_data(gllim_ref, n_latent=1)
    y = y[:, 0]  # Incremental passes the blocks of 1-D targets only
    Xd, yd = da.from_array(X, chunks=(300, -1)), da.from_array(y, chunks=300)
    wrapped = incremental(GLLiMRegressor(3, n_latent=1, random_state=0),
                          shuffle_blocks=False).fit(Xd, yd)
    by_hand = GLLiMRegressor(3, n_latent=1, random_state=0)
    for batch in batches(X, y, 300):
        by_hand.partial_fit(*batch)
    assert wrapped.estimator_.n_batch_iter_ == 4
    lazy = wrapped.predict(Xd)
    assert isinstance(lazy, da.Array)
    assert_allclose(lazy.compute(), by_hand.predict(X), rtol=1e-12, atol=1e-12)


def test_vanished_component_is_reseeded(gllim_ref, monkeypatch):
    # The first batch gives component 2 no responsibility (it starts dead); re-seeding
    # makes it take a cluster, which the stream then fits; without re-seeding it stays
    # wasted (two clusters share a component) and the held-out likelihood stays lower.
    X, y = make_data(gllim_ref, seed=1, n_samples=4000)
    X_test, y_test = X[3000:], y[3000:]
    stream = batches(X[:3000], y[:3000], 200)
    resp = np.zeros((200, 3))
    resp[np.arange(200), (y[:200, 0] > np.median(y[:200, 0])).astype(int)] = 1.0

    def one_pass():
        model = GLLiMRegressor(3, resp_init=resp, random_state=0)
        for batch in stream:
            model.partial_fit(*batch)
        return model, model.joint_log_density(X_test, y_test).mean()

    reseeded, score = one_pass()
    monkeypatch.setattr("gllim_sk._online.DEAD_COMPONENT_WEIGHT", 0.0)
    wasted, wasted_score = one_pass()
    assert wasted.weights_.min() < 1e-3
    assert reseeded.weights_.min() > 0.1
    assert score > wasted_score + 1.0


def test_fit_with_warm_start_continues_from_partial_fit(gllim_ref):
    X, y = make_data(gllim_ref)
    online = GLLiMRegressor(3, random_state=0)
    for batch in batches(X[:900], y[:900], 300):
        online.partial_fit(*batch)
    before = online.joint_log_density(X, y).mean()
    warm = copy.deepcopy(online).set_params(warm_start=True, max_iter=1, tol=0).fit(X, y)
    # lower_bound_ is the log-likelihood of the parameters the iteration started from.
    assert_allclose(warm.lower_bound_, before, rtol=1e-10)
    assert warm.joint_log_density(X, y).mean() >= before
