"""A fitting call that fails changes nothing, and partial_fit validates every call.

Every fitting entry point (``fit``, ``partial_fit``, the deep model's frozen E-step fit,
dask inputs, Array API inputs, the Student model) must leave a fitted model exactly as
it was and an unfitted one unfitted (``NotFittedError``, never ``AttributeError``). The
first tests are the reproductions of issue 19, as a new user met them.
"""

import numpy as np
import pytest
import sklearn
from numpy.testing import assert_array_equal
from sklearn.exceptions import NotFittedError
from sklearn.utils._param_validation import InvalidParameterError

from gllim_sk import GLLiMRegressor, StudentGLLiMRegressor, _engine

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
ESTIMATORS = (GLLiMRegressor, StudentGLLiMRegressor)


def data(n=600, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.uniform(-1, 1, size=(n, 2))
    X = np.hstack([np.sin(2 * y), np.cos(2 * y), y**2]) + 0.05 * rng.normal(size=(n, 6))
    return X, y


def snapshot(model):
    """The model's attributes, by identity (a failed call must put back the same objects,
    not equal copies)."""
    return dict(vars(model))


def assert_unchanged(model, before):
    assert set(vars(model)) == set(before)
    for name, value in before.items():
        assert vars(model)[name] is value, name


# ------------------------------------------------------------------ the reproductions
def test_failed_student_refit_keeps_the_two_target_model():
    X, y = data()
    m = StudentGLLiMRegressor(3, random_state=0).fit(X, y)
    expected = m.predict(X[:3])
    with pytest.raises(ValueError, match="n_components=3 must be <= n_samples=2"):
        m.fit(X[:2], y[:2, 0])
    assert m.predict(X[:3]).shape == (3, 2)
    assert_array_equal(m.predict(X[:3]), expected)


def test_failed_refit_on_fewer_features_keeps_the_fitted_features():
    X, y = data()
    m = GLLiMRegressor(3, random_state=0).fit(X, y)
    with pytest.raises(ValueError, match="n_components=3 must be <= n_samples=2"):
        m.fit(X[:2, :4], y[:2])
    assert m.n_features_in_ == 6
    with pytest.raises(ValueError, match="X has 4 features, but GLLiMRegressor is expecting 6"):
        m.predict(X[:3, :4])
    assert m.predict(X[:3]).shape == (3, 2)


def test_failed_first_partial_fit_leaves_an_unfitted_model():
    X, y = data()
    m = GLLiMRegressor(2, random_state=0)
    Xb = X[100:200].copy()
    Xb[3] = 1e200
    with pytest.raises(ValueError, match="row 3"):
        m.partial_fit(Xb, y[100:200])
    assert vars(m) == vars(GLLiMRegressor(2, random_state=0))
    with pytest.raises(NotFittedError):
        m.predict(X[:3])
    # ... and the stream can start: the same as on a fresh model.
    m.partial_fit(X[100:200], y[100:200])
    fresh = GLLiMRegressor(2, random_state=0).partial_fit(X[100:200], y[100:200])
    assert_array_equal(m.predict(X[:5]), fresh.predict(X[:5]))


# ------------------------------------------------------------------ every entry point
@pytest.mark.parametrize("estimator", ESTIMATORS)
@pytest.mark.parametrize("method", ["fit", "partial_fit"])
def test_failed_call_leaves_a_fitted_model_as_it_was(estimator, method):
    X, y = data()
    m = estimator(3, random_state=0).fit(X, y)
    m.partial_fit(X[:200], y[:200])  # online statistics too
    before, predictions = snapshot(m), m.predict(X[:10])
    bad = X[200:400].copy()
    bad[7] = -1e200
    with pytest.raises(ValueError):
        getattr(m, method)(bad if method == "partial_fit" else X[:2], y[200:400]
                           if method == "partial_fit" else y[:2])
    assert_unchanged(m, before)
    assert_array_equal(m.predict(X[:10]), predictions)


@pytest.mark.parametrize("estimator", ESTIMATORS)
@pytest.mark.parametrize("method", ["fit", "partial_fit"])
def test_failed_call_leaves_an_unfitted_model_unfitted(estimator, method):
    X, y = data()
    m = estimator(3, random_state=0)
    with pytest.raises(ValueError):
        getattr(m, method)(X[:2], y[:2])
    assert vars(m) == vars(estimator(3, random_state=0))
    for call in (lambda: m.predict(X), lambda: m.predict_mixture(X),
                 lambda: m.component_posterior(X)):
        with pytest.raises(NotFittedError):
            call()


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_fit_interrupted_during_em_changes_nothing(estimator, monkeypatch):
    # A failure deep in EM (here an interrupt at the third M-step), after validation set
    # n_features_in_ and friends, must leave the earlier fit and its stream in place.
    X, y = data()
    m = estimator(3, random_state=0).fit(X, y)
    m.partial_fit(X[:100], y[:100])
    before, predictions = snapshot(m), m.predict(X[:10])
    calls = []
    m_step = _engine.m_step

    def failing_m_step(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return m_step(*args, **kwargs)

    monkeypatch.setattr(_engine, "m_step", failing_m_step)
    with pytest.raises(KeyboardInterrupt):
        m.fit(X[:, :5], y[:, 0])
    assert_unchanged(m, before)
    assert_array_equal(m.predict(X[:10]), predictions)
    monkeypatch.undo()
    # The online stream continues as if the failed fit had never been called.
    twin = estimator(3, random_state=0).fit(X, y).partial_fit(X[:100], y[:100])
    m.partial_fit(X[100:200], y[100:200])
    twin.partial_fit(X[100:200], y[100:200])
    assert_array_equal(m.predict(X[:10]), twin.predict(X[:10]))


def test_failed_frozen_estep_fit_changes_nothing():
    X, y = data()
    m = GLLiMRegressor(3, random_state=0).fit(X, y)
    before = snapshot(m)
    resp = np.full((len(X), 3), 1 / 3)
    resp[5] = -1.0
    with pytest.raises(ValueError, match="negative"):
        m._fit_frozen_estep(X, y, resp)
    assert_unchanged(m, before)


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_failed_dask_fit_changes_nothing(estimator, monkeypatch):
    da = pytest.importorskip("dask.array")
    X, y = data()
    Xd, yd = da.from_array(X, chunks=200), da.from_array(y, chunks=200)
    m = estimator(3, random_state=0, max_iter=5).fit(X, y)
    before, predictions = snapshot(m), m.predict(X[:10])
    with pytest.raises(ValueError, match="n_components=3 must be <= n_samples=2"):
        m.fit(Xd[:2, :5], yd[:2, 0])
    assert_unchanged(m, before)

    def failing(*args, **kwargs):
        raise RuntimeError("lost the cluster")

    monkeypatch.setattr(_engine, "m_step", failing)
    with pytest.raises(RuntimeError, match="lost the cluster"):
        m.fit(Xd[:, :5], yd[:, 0])
    assert_unchanged(m, before)
    assert_array_equal(m.predict(X[:10]), predictions)
    unfitted = estimator(3)
    with pytest.raises(RuntimeError, match="lost the cluster"):
        unfitted.fit(Xd, yd)
    with pytest.raises(NotFittedError):
        unfitted.predict(X)


def test_failed_array_api_fit_changes_nothing(monkeypatch):
    xpx = pytest.importorskip("array_api_strict")
    X, y = data()
    with sklearn.config_context(array_api_dispatch=True):
        Xa, ya = xpx.asarray(X), xpx.asarray(y)
        m = GLLiMRegressor(3, random_state=0, max_iter=5).fit(Xa, ya)
        before = snapshot(m)
        with pytest.raises(ValueError, match="n_components=3 must be <= n_samples=2"):
            m.fit(Xa[:2, :4], ya[:2, 0])
        assert_unchanged(m, before)

        def failing(*args, **kwargs):
            raise RuntimeError("device lost")

        monkeypatch.setattr(_engine, "m_step", failing)
        with pytest.raises(RuntimeError, match="device lost"):
            m.fit(Xa[:, :5], ya[:, 0])
        assert_unchanged(m, before)
        assert m.predict(Xa[:3, :]).shape == (3, 2)


# ------------------------------------------------------------------ partial_fit validation
def test_partial_fit_validates_parameters_on_every_call():
    X, y = data()
    m = GLLiMRegressor(2, random_state=0).partial_fit(X[:100], y[:100])
    for name, value in (("learning_offset", -10), ("learning_decay", 5.0),
                        ("n_components", "3"), ("reg_covar", -1.0)):
        m.set_params(**{name: value})
        before = snapshot(m)
        for _ in range(2):
            with pytest.raises(InvalidParameterError, match=name):
                m.partial_fit(X[100:200], y[100:200])
        assert_unchanged(m, before)
        m.set_params(**GLLiMRegressor(2, random_state=0).get_params())


def test_partial_fit_first_call_reports_an_invalid_parameter():
    X, y = data()
    with pytest.raises(InvalidParameterError, match="n_components"):
        GLLiMRegressor(n_components="3").partial_fit(X[:100], y[:100])


@pytest.mark.parametrize("where", ["X", "y"])
@pytest.mark.parametrize("value", [1e200, -1e160, np.inf, np.nan])
def test_partial_fit_refuses_non_finite_or_huge_rows(where, value):
    X, y = data()
    m = GLLiMRegressor(2, random_state=0).partial_fit(X[:100], y[:100])
    before, predictions = snapshot(m), m.predict(X[:10])
    Xb, yb = X[100:200].copy(), y[100:200].copy()
    (Xb if where == "X" else yb)[7, 0] = value
    with pytest.raises(ValueError, match=rf"{where} (has 1 row\(s\) too large|contains)"):
        m.partial_fit(Xb, yb)
    assert_unchanged(m, before)
    assert np.isfinite(m.predict(X)).all()
    assert_array_equal(m.predict(X[:10]), predictions)


def test_partial_fit_refuses_torch_tensors_clearly():
    torch = pytest.importorskip("torch")
    X, y = data()
    with sklearn.config_context(array_api_dispatch=True):
        m = GLLiMRegressor(2, random_state=0)
        with pytest.raises(TypeError, match="partial_fit runs on numpy arrays only"):
            m.partial_fit(torch.asarray(X[:100]), torch.asarray(y[:100]))
        assert vars(m) == vars(GLLiMRegressor(2, random_state=0))
        # A model fitted on tensors cannot continue online either: same error.
        fitted = GLLiMRegressor(2, random_state=0, max_iter=3).fit(torch.asarray(X),
                                                                    torch.asarray(y))
        with pytest.raises(TypeError, match="partial_fit runs on numpy arrays only"):
            fitted.partial_fit(X[:100], y[:100])
