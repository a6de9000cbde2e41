"""GLLiMRegressor under scikit-learn's Array API dispatch (torch on the CPU, array-api-strict).

With dispatch on, a fit on torch tensors or array-api-strict arrays must run in that
namespace and give the numpy fit's numbers (float64), and float32 must stay close to
float64. scikit-learn's own array-API estimator checks run in ``test_gllim.py``
(``parametrize_with_checks``); the CUDA ones skip on machines without a GPU.

The torch tests run on the device named by the environment variable
``GLLIM_SK_TEST_DEVICE`` (default ``cpu``; ``cuda`` on a GPU machine), and are skipped when
torch cannot use it.
"""

import os
import warnings

import numpy as np
import pytest
import sklearn
from numpy.testing import assert_allclose

from gllim_sk import GLLiMRegressor

COVARIANCE_TYPES = ("full", "diag", "spherical", "tied", "tied_diag", "tied_spherical")

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
TORCH_DEVICE = os.environ.get("GLLIM_SK_TEST_DEVICE", "cpu")


def torch_on_device():
    """torch, skipping the test when it is missing or cannot use ``TORCH_DEVICE``."""
    torch = pytest.importorskip("torch")
    try:
        torch.zeros(1, device=TORCH_DEVICE)
    except (RuntimeError, AssertionError) as exc:
        pytest.skip(f"torch cannot use device {TORCH_DEVICE!r}: {exc}")
    return torch


def tensor(torch, a, dtype=None):
    """``a`` as a torch tensor on ``TORCH_DEVICE``."""
    return torch.asarray(a, dtype=dtype, device=TORCH_DEVICE)


def host(t):
    """A torch tensor's values as a numpy array."""
    return t.cpu().numpy()


def standardised_data(n_samples=300, n_features=10, n_targets=2, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.uniform(-1.0, 1.0, size=(n_samples, n_targets))
    X = np.tanh(y @ rng.normal(size=(n_targets, 8))) @ rng.normal(size=(8, n_features))
    X += 0.1 * rng.standard_normal(X.shape)
    X = (X - X.mean(0)) / X.std(0)
    y = (y - y.mean(0)) / y.std(0)
    return X, y, rng.dirichlet(np.ones(3), size=n_samples)


@pytest.mark.parametrize("n_latent", [0, 2])
@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_torch_float64_fit_equals_numpy_fit(cross_layout, covariance_type, n_latent):
    torch = torch_on_device()
    X, y, resp = standardised_data()
    kwargs = dict(covariance_type=covariance_type, n_latent=n_latent, resp_init=resp,
                  max_iter=15, tol=0, random_state=0)
    reference = GLLiMRegressor(3, **kwargs).fit(X, y)
    X_t, y_t = tensor(torch, X), tensor(torch, y)
    with sklearn.config_context(array_api_dispatch=True):
        model = GLLiMRegressor(3, **kwargs).fit(X_t, y_t)
        mean, std = model.predict(X_t[:60], return_std=True)
        _, cov = model.predict(X_t[:60], return_cov=True)
        weights, means, covariances = model.predict_mixture(X_t[:60])
        outputs = {
            "predict": mean, "std": std, "cov": cov, "weights": weights, "means": means,
            "covariances": covariances,
            "posterior_x": model.component_posterior(X_t[:60]),
            "posterior_y": model.component_posterior(y=y_t[:60]),
            "posterior_xy": model.component_posterior(X_t[:60], y_t[:60]),
            "joint": model.joint_log_density(X_t[:60], y_t[:60]),
            "conditional": model.conditional_log_density(X_t[:60], y_t[:60]),
            "inverse": model.inverse_predict(y_t[:60]),
            "sample": model.sample_y(X_t[:5], n_samples=2, random_state=0),
        }
        bic, aic = model.bic(X_t, y_t), model.aic(X_t, y_t)
    for name, value in outputs.items():
        assert isinstance(value, torch.Tensor), name
        assert value.dtype == torch.float64, name
    expected = {
        "predict": reference.predict(X[:60]),
        "std": reference.predict(X[:60], return_std=True)[1],
        "cov": reference.predict(X[:60], return_cov=True)[1],
        "posterior_x": reference.component_posterior(X[:60]),
        "posterior_y": reference.component_posterior(y=y[:60]),
        "posterior_xy": reference.component_posterior(X[:60], y[:60]),
        "joint": reference.joint_log_density(X[:60], y[:60]),
        "conditional": reference.conditional_log_density(X[:60], y[:60]),
        "inverse": reference.inverse_predict(y[:60]),
        "sample": reference.sample_y(X[:5], n_samples=2, random_state=0),
    }
    expected["weights"], expected["means"], expected["covariances"] = (
        reference.predict_mixture(X[:60]))
    assert_allclose(model.lower_bounds_, reference.lower_bounds_, rtol=1e-10)
    assert_allclose(host(outputs["predict"]), expected["predict"], rtol=1e-8, atol=1e-8)
    for name, value in expected.items():
        assert_allclose(host(outputs[name]), value, rtol=1e-7, atol=1e-8, err_msg=name)
    assert_allclose([bic, aic], [reference.bic(X, y), reference.aic(X, y)], rtol=1e-10)
    # Fitted attributes live in the namespace of the data, with the numpy fit's values.
    for name in ("weights_", "target_covariances_", "inverse_coef_", "noise_covariances_",
                 "forward_coef_", "feature_mean_"):
        value = getattr(model, name)
        assert isinstance(value, torch.Tensor), name
        assert_allclose(host(value), getattr(reference, name), rtol=1e-8, atol=1e-9,
                        err_msg=name)
    # Latent loadings are identified up to a rotation (the two libraries' singular vectors
    # may differ in sign): compare W W'.
    W, W_ref = host(model.latent_coef_), reference.latent_coef_
    assert_allclose(W @ W.transpose(0, 2, 1), W_ref @ W_ref.transpose(0, 2, 1), rtol=1e-8,
                    atol=1e-10)


@pytest.mark.parametrize("n_latent", [0, 2])
@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_float32_predictions_close_to_float64(covariance_type, n_latent):
    torch = torch_on_device()
    X, y, resp = standardised_data(seed=1)
    kwargs = dict(covariance_type=covariance_type, n_latent=n_latent, resp_init=resp,
                  max_iter=3, tol=0, random_state=0)
    with sklearn.config_context(array_api_dispatch=True):
        model64 = GLLiMRegressor(3, **kwargs).fit(tensor(torch, X), tensor(torch, y))
        expected = host(model64.predict(tensor(torch, X[:100])))
        model32 = GLLiMRegressor(3, **kwargs).fit(
            tensor(torch, X, dtype=torch.float32), tensor(torch, y, dtype=torch.float32))
        got = model32.predict(tensor(torch, X[:100], dtype=torch.float32))
        got_same_model = model64.predict(tensor(torch, X[:100], dtype=torch.float32))
    assert got.dtype == torch.float32
    scale = np.abs(expected).max()
    assert np.abs(host(got) - expected).max() <= 1e-4 * scale
    assert np.abs(host(got_same_model) - expected).max() <= 1e-4 * scale


@pytest.mark.parametrize("n_latent", [0, 1])
@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_array_api_strict_fit_equals_numpy_fit(cross_layout, covariance_type, n_latent):
    xp = pytest.importorskip("array_api_strict")
    X, y, resp = standardised_data(n_samples=120, n_features=6)
    kwargs = dict(covariance_type=covariance_type, n_latent=n_latent, resp_init=resp,
                  max_iter=8, tol=0, random_state=0)
    reference = GLLiMRegressor(3, **kwargs).fit(X, y)
    with sklearn.config_context(array_api_dispatch=True):
        model = GLLiMRegressor(3, **kwargs).fit(xp.asarray(X), xp.asarray(y))
        mean, std = model.predict(xp.asarray(X[:40]), return_std=True)
        joint = model.joint_log_density(xp.asarray(X[:40]), xp.asarray(y[:40]))
    assert isinstance(mean, type(xp.asarray(1.0)))
    assert_allclose(model.lower_bounds_, reference.lower_bounds_, rtol=1e-10)
    assert_allclose(np.asarray(mean), reference.predict(X[:40]), rtol=1e-8, atol=1e-8)
    ref_mean, ref_std = reference.predict(X[:40], return_std=True)
    assert_allclose(np.asarray(std), ref_std, rtol=1e-8, atol=1e-10)
    assert_allclose(np.asarray(joint), reference.joint_log_density(X[:40], y[:40]), rtol=1e-9)


def test_kmeans_initialisation_and_warm_start_with_torch():
    torch = torch_on_device()
    X, y, _ = standardised_data(seed=2)
    reference = GLLiMRegressor(3, n_latent=1, max_iter=10, random_state=0).fit(X, y)
    with sklearn.config_context(array_api_dispatch=True):
        X_t, y_t = tensor(torch, X), tensor(torch, y)
        model = GLLiMRegressor(3, n_latent=1, max_iter=10, random_state=0).fit(X_t, y_t)
        assert_allclose(model.lower_bounds_, reference.lower_bounds_, rtol=1e-9)
        model.set_params(warm_start=True, max_iter=3).fit(X_t, y_t)
        reference.set_params(warm_start=True, max_iter=3).fit(X, y)
        assert_allclose(model.lower_bounds_, reference.lower_bounds_, rtol=1e-9)
        assert isinstance(model.weights_, torch.Tensor)


def test_model_moves_back_to_numpy():
    torch = torch_on_device()
    from gllim_sk import move_model

    X, y, resp = standardised_data(seed=3)
    with sklearn.config_context(array_api_dispatch=True):
        model = GLLiMRegressor(3, resp_init=resp, max_iter=5).fit(tensor(torch, X),
                                                                  tensor(torch, y))
        on_device = host(model.predict(tensor(torch, X[:20])))
        with pytest.raises(ValueError, match=r"fitted on torch arrays.*move_model"):
            model.predict(X[:20])
    # With dispatch off, numpy input is refused by a message, not an operand-type error.
    with pytest.raises(ValueError, match=r"dispatch is off.*move_model\(model, X\)"):
        model.predict(X[:20])
    moved = move_model(model, X)
    assert isinstance(moved.weights_, np.ndarray)
    assert isinstance(moved._params.A, np.ndarray)  # the internal parameters move too
    assert isinstance(model.weights_, torch.Tensor)  # the original is not changed
    prediction = moved.predict(X[:20])
    assert isinstance(prediction, np.ndarray)
    assert_allclose(prediction, on_device, rtol=1e-12)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert_allclose(moved.predict(X[:20], return_std=True)[0], on_device, rtol=1e-12)


@pytest.mark.parametrize("covariance_type", ["full", "diag"])
def test_torch_singular_covariance_is_the_clear_error_of_numpy(covariance_type):
    # As tests/test_reliability.py on numpy: reg_covar=0 with identical rows.
    torch = torch_on_device()
    X, y, _ = standardised_data(n_samples=100)
    X = np.vstack([X, np.repeat(X[:1], 100, axis=0)])
    y = np.vstack([y, np.repeat(y[:1], 100, axis=0)])
    model = GLLiMRegressor(3, covariance_type=covariance_type, reg_covar=0, random_state=0)
    with pytest.raises(ValueError, match="singular covariance.*reg_covar > 0"):
        model.fit(X, y)
    with sklearn.config_context(array_api_dispatch=True):
        with pytest.raises(ValueError, match="singular covariance.*reg_covar > 0"):
            model.fit(tensor(torch, X), tensor(torch, y))


def test_a_moved_model_predicts_without_changing():
    """move_model moves the internal parameters too; a prediction changes nothing."""
    torch = torch_on_device()
    from gllim_sk import move_model

    X, y, resp = standardised_data(seed=4)
    model = GLLiMRegressor(3, resp_init=resp, max_iter=5).fit(X, y)
    moved = move_model(model, tensor(torch, X[:1]))
    assert isinstance(moved._params.A, torch.Tensor)
    before = dict(vars(moved))
    with sklearn.config_context(array_api_dispatch=True):
        prediction = host(moved.predict(tensor(torch, X[:20])))
    assert all(vars(moved)[name] is value for name, value in before.items())
    assert_allclose(prediction, model.predict(X[:20]), rtol=1e-12)


def test_every_prediction_returns_the_input_kind():
    torch = torch_on_device()
    X, y, resp = standardised_data(seed=5)
    reference = GLLiMRegressor(3, resp_init=resp, max_iter=5).fit(X, y)
    with sklearn.config_context(array_api_dispatch=True):
        model = GLLiMRegressor(3, resp_init=resp, max_iter=5).fit(tensor(torch, X),
                                                                  tensor(torch, y))
        X_t = tensor(torch, X[:30])
        outputs = {
            "predict_modes": model.predict_modes(X_t, n_modes=2),
            "predict_mixture": model.predict_mixture(X_t),
            "predict": model.predict(X_t, return_std=True, return_cov=True),
            "sample_y": (model.sample_y(X_t, 3, random_state=0),),
            "conditional_log_density": (model.conditional_log_density(X_t, tensor(torch, y[:30])),),
            "component_posterior": (model.component_posterior(X_t),),
        }
    for name, values in outputs.items():
        for value in values:
            assert isinstance(value, torch.Tensor), name
    modes = reference.predict_modes(X[:30], n_modes=2)
    for got, expected in zip(outputs["predict_modes"], modes, strict=True):
        assert_allclose(host(got), expected, rtol=1e-9, atol=1e-12)


def test_partial_fit_names_what_to_move():
    torch = torch_on_device()
    from gllim_sk import move_model

    X, y, resp = standardised_data(seed=6)
    model = GLLiMRegressor(3, resp_init=resp, max_iter=5).fit(X, y)
    with sklearn.config_context(array_api_dispatch=True):
        # A numpy model given torch input: the input must be numpy (moving cannot help).
        with pytest.raises(TypeError, match="Pass numpy arrays to partial_fit") as info:
            model.partial_fit(tensor(torch, X), tensor(torch, y))
        assert "move_model" not in str(info.value)
        on_device = GLLiMRegressor(3, resp_init=resp, max_iter=5).fit(tensor(torch, X),
                                                                      tensor(torch, y))
    with pytest.raises(TypeError, match=r"fitted on torch arrays: move it to numpy"):
        on_device.partial_fit(X, y)
    move_model(on_device, X).partial_fit(X, y)  # what the message says works


def test_student_refusals_suggest_numpy_not_moving():
    torch = torch_on_device()
    from gllim_sk import StudentGLLiMRegressor, move_model

    X, y, resp = standardised_data(seed=7)
    model = StudentGLLiMRegressor(3, resp_init=resp, max_iter=5).fit(X, y)
    with sklearn.config_context(array_api_dispatch=True):
        for call in (lambda: model.predict(tensor(torch, X)),
                     lambda: model.joint_log_density(tensor(torch, X), tensor(torch, y)),
                     lambda: model.outlier_weights(tensor(torch, X), tensor(torch, y))):
            with pytest.raises(ValueError, match="numpy arrays only") as info:
                call()
            assert "move" not in str(info.value)
    with pytest.raises(ValueError, match="cannot be moved"):
        move_model(model, tensor(torch, X))


def test_array_api_solves_catch_linear_algebra_errors_only(monkeypatch):
    """A failed Cholesky falls back to the eigen-decomposition; an out-of-memory error
    (any other error) surfaces."""
    torch_on_device()
    import torch as torch_module
    from sklearn.externals import array_api_compat

    from gllim_sk import _gllim_math as gm
    torch = array_api_compat.array_namespace(torch_module.zeros(1))
    S = tensor(torch_module, np.stack([np.eye(3), np.diag([1.0, 2.0, 3.0])]),
               torch_module.float64)
    M = tensor(torch_module, np.ones((2, 3, 1)), torch_module.float64)
    expected = host(gm._cholesky_with_floor_xp(torch, S, 1e-9))
    solved = host(gm._solve_scaled_moments(S, M))
    real_cholesky = torch.linalg.cholesky
    calls = []

    def failing(error):
        def cholesky(a, *args, **kwargs):
            calls.append(error)
            if len(calls) == 1:
                raise error
            return real_cholesky(a, *args, **kwargs)
        return cholesky

    monkeypatch.setattr(torch.linalg, "cholesky", failing(torch_module.linalg.LinAlgError("x")))
    assert_allclose(host(gm._cholesky_with_floor_xp(torch, S, 1e-9)), expected, atol=1e-8)
    calls.clear()
    assert_allclose(host(gm._solve_scaled_moments(S, M)), solved, rtol=1e-8)
    for error in (torch_module.OutOfMemoryError("CUDA out of memory"), MemoryError()):
        calls.clear()
        monkeypatch.setattr(torch.linalg, "cholesky", failing(error))
        with pytest.raises(type(error)):
            gm._cholesky_with_floor_xp(torch, S, 1e-9)
        calls.clear()
        with pytest.raises(type(error)):
            gm._solve_scaled_moments(S, M)


def test_move_model_keeps_feature_names_on_the_host():
    torch = torch_on_device()
    pd = pytest.importorskip("pandas")
    from gllim_sk import move_model

    X, y, resp = standardised_data(seed=8)
    frame = pd.DataFrame(X, columns=[f"f{i}" for i in range(X.shape[1])])
    model = GLLiMRegressor(3, resp_init=resp, max_iter=5).fit(frame, y)
    moved = move_model(model, tensor(torch, X[:1]))
    assert isinstance(moved.weights_, torch.Tensor)
    assert list(moved.feature_names_in_) == list(frame.columns)
    back = move_model(moved, X)
    assert_allclose(back.predict(frame), model.predict(frame), rtol=1e-12)
