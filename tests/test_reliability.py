"""Regression tests of issue #11: changes of settings between fits, odd inputs, damaged
files. Each case has the documented behaviour or a clear error."""

import warnings

import numpy as np
import pytest
import scipy.sparse as sp
from numpy.testing import assert_allclose, assert_array_equal
from sklearn.base import clone
from test_datasets import aflw_home, biwi_home  # noqa: F401 (fixtures)

from gllim_sk import GLLiMRegressor, StudentGLLiMRegressor
from gllim_sk._files import atomic_write
from gllim_sk.datasets import load_aflw2000, load_biwi

COVARIANCE_TYPES = ["full", "diag", "spherical", "tied", "tied_diag", "tied_spherical"]


def _issue_data():
    """The data of the issue's reproductions."""
    rng = np.random.default_rng(0)
    y = rng.uniform(-1, 1, (200, 2))
    X = np.tanh(y @ rng.normal(size=(2, 10))) + 0.05 * rng.normal(size=(200, 10))
    return X, y


# --------------------------------------------------------------------------- warm start
# The rule: a warm start continues from the previous parameters when they fit the new
# data and settings; otherwise the fit is exactly a fresh one.


def _assert_same_fit(model, fresh, X):
    assert_allclose(model.lower_bounds_, fresh.lower_bounds_, rtol=1e-10)
    assert_allclose(model.predict(X), fresh.predict(X), rtol=1e-8, atol=1e-10)
    assert model.weights_.shape == fresh.weights_.shape
    assert model.inverse_coef_.shape == fresh.inverse_coef_.shape
    assert model.latent_coef_.shape == fresh.latent_coef_.shape
    assert np.shape(model.noise_covariances_) == np.shape(fresh.noise_covariances_)
    assert np.shape(model.target_covariances_) == np.shape(fresh.target_covariances_)


def test_warm_start_with_more_components_starts_afresh():
    X, y = _issue_data()
    model = GLLiMRegressor(n_components=3, warm_start=True, random_state=0).fit(X, y)
    model.set_params(n_components=5).fit(X, y)
    fresh = GLLiMRegressor(n_components=5, random_state=0).fit(X, y)
    _assert_same_fit(model, fresh, X)
    assert model.weights_.shape == (5,)
    assert model.inverse_predict(y).shape == X.shape
    assert_allclose(model.bic(X, y), fresh.bic(X, y), rtol=1e-10)


def test_warm_start_with_fewer_targets_starts_afresh():
    X, y = _issue_data()
    model = GLLiMRegressor(n_components=3, warm_start=True, random_state=0).fit(X, y)
    model.fit(X, y[:, :1])
    assert model.n_targets_ == 1
    assert model.predict(X).shape == (200, 1)
    _assert_same_fit(model, GLLiMRegressor(n_components=3, random_state=0).fit(X, y[:, :1]), X)


def test_warm_start_from_1d_to_2d_targets_starts_afresh():
    X, y = _issue_data()
    model = GLLiMRegressor(n_components=3, warm_start=True, random_state=0).fit(X, y[:, 0])
    model.fit(X, y)
    assert model.predict(X).shape == (200, 2)
    _assert_same_fit(model, GLLiMRegressor(n_components=3, random_state=0).fit(X, y), X)


def test_warm_start_with_latent_factors_starts_afresh():
    X, y = _issue_data()
    model = GLLiMRegressor(n_components=3, warm_start=True, random_state=0).fit(X, y)
    model.set_params(n_latent=2).fit(X, y)
    assert model.latent_coef_.shape == (3, 10, 2)
    _assert_same_fit(model, GLLiMRegressor(n_components=3, n_latent=2, random_state=0).fit(X, y),
                     X)


@pytest.mark.parametrize("setting", [
    {"covariance_type": "full"}, {"covariance_type": "tied_spherical"},
    {"target_covariance_type": "diag"}, {"target_covariance_type": "tied"},
])
def test_warm_start_with_other_covariance_types_starts_afresh(setting):
    X, y = _issue_data()
    model = GLLiMRegressor(n_components=3, warm_start=True, random_state=0).fit(X, y)
    model.set_params(**setting).fit(X, y)
    _assert_same_fit(model, GLLiMRegressor(n_components=3, random_state=0, **setting).fit(X, y),
                     X)


def test_warm_start_with_other_features_starts_afresh():
    X, y = _issue_data()
    model = GLLiMRegressor(n_components=3, warm_start=True, random_state=0).fit(X, y)
    model.fit(X[:, :6], y)
    assert model.n_features_in_ == 6
    _assert_same_fit(model, GLLiMRegressor(n_components=3, random_state=0).fit(X[:, :6], y),
                     X[:, :6])


def test_warm_start_continues_across_1d_and_one_column_targets():
    # The same structure: EM continues, and the output shape follows the new y.
    X, y = _issue_data()
    model = GLLiMRegressor(n_components=3, warm_start=True, random_state=0, max_iter=3,
                           tol=0).fit(X, y[:, 0])
    previous = model.lower_bound_
    model.fit(X, y[:, :1])
    assert_allclose(model.lower_bounds_[0], previous, rtol=1e-10)
    assert model.predict(X).shape == (200, 1)


def test_warm_start_after_a_fresh_start_continues():
    # After restarting for new settings, the next fit with those settings continues.
    X, y = _issue_data()
    model = GLLiMRegressor(n_components=3, warm_start=True, random_state=0, max_iter=3,
                           tol=0).fit(X, y)
    model.set_params(n_components=4).fit(X, y)
    previous = model.lower_bound_
    model.fit(X, y)
    assert_allclose(model.lower_bounds_[0], previous, rtol=1e-10)


# --------------------------------------------------------------------------- odd inputs


def test_sparse_targets_get_scikit_learn_sparse_error():
    X, y = _issue_data()
    with pytest.raises(TypeError, match="Sparse data was passed for y"):
        GLLiMRegressor().fit(X, sp.csr_matrix(y))
    with pytest.raises(TypeError, match="Sparse data was passed"):
        GLLiMRegressor().fit(sp.csr_matrix(X), y)


@pytest.mark.parametrize("scale", [1e-8, 1e8])
@pytest.mark.parametrize("covariance_type, n_latent", [
    *((kind, 0) for kind in COVARIANCE_TYPES), ("diag", 2), ("full", 2),
])
def test_feature_scale_does_not_change_the_fit(covariance_type, n_latent, scale):
    # reg_covar is relative to the data's scale, so rescaled features give the same
    # predictions (the issue: at 1e-8 the fit predicted the training mean).
    X, y = _issue_data()
    kwargs = dict(n_components=3, covariance_type=covariance_type, n_latent=n_latent,
                  random_state=0)
    reference = GLLiMRegressor(**kwargs).fit(X, y)
    scaled = GLLiMRegressor(**kwargs).fit(X * scale, y)
    assert_allclose(scaled.predict(X * scale), reference.predict(X), rtol=1e-6, atol=1e-8)
    mean_baseline = np.abs(y - y.mean(axis=0)).mean()
    assert np.abs(scaled.predict(X * scale) - y).mean() < 0.3 * mean_baseline


@pytest.mark.parametrize("scale", [1e-8, 1e8])
def test_target_scale_does_not_change_the_fit(scale):
    # With latent factors, the M-step's moments mix the targets' units with the latent
    # factors' unit variance: their solve must not depend on the targets' scale.
    X, y = _issue_data()
    reference = GLLiMRegressor(3, n_latent=1, random_state=0).fit(X, y)
    scaled = GLLiMRegressor(3, n_latent=1, random_state=0).fit(X, y * scale)
    assert_allclose(scaled.predict(X) / scale, reference.predict(X), rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("where", ["X", "y"])
def test_reg_covar_zero_with_a_constant_column_is_a_clear_error(where):
    X, y = _issue_data()
    X, y = X.copy(), y.copy()
    (X if where == "X" else y)[:, 1] = 0.5
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        with pytest.raises(ValueError, match=rf"{where} has constant column\(s\) \[1\].*"
                                             r"reg_covar > 0"):
            GLLiMRegressor(n_components=3, reg_covar=0, random_state=0).fit(X, y)
    GLLiMRegressor(n_components=3, random_state=0).fit(X, y)  # the default floor copes


def test_reg_covar_zero_with_identical_rows_is_a_clear_error():
    X, y = _issue_data()
    X = np.vstack([X[:100], np.repeat(X[:1], 100, axis=0)])
    y = np.vstack([y[:100], np.repeat(y[:1], 100, axis=0)])
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        with pytest.raises(ValueError, match="singular covariance.*reg_covar > 0"):
            GLLiMRegressor(n_components=3, reg_covar=0, random_state=0).fit(X, y)
    model = GLLiMRegressor(n_components=3, random_state=0).fit(X, y)
    assert np.all(np.isfinite(model.predict(X)))


def test_inputs_are_not_modified_by_the_new_checks():
    X, y = _issue_data()
    X0, y0 = X.copy(), y.copy()
    model = GLLiMRegressor(n_components=3, warm_start=True, random_state=0).fit(X, y)
    model.set_params(n_components=2).fit(X, y)
    assert_array_equal(X, X0)
    assert_array_equal(y, y0)
    assert clone(model).get_params()["n_components"] == 2


# --------------------------------------------------------------------------- crop caches


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _no_decoding(monkeypatch):
    import gllim_sk.datasets._real as real

    def fail(path):
        raise AssertionError("the cache should have been used")

    monkeypatch.setattr(real, "_read_rgb", fail)


@pytest.mark.parametrize("damage", ["truncate", "empty"])
def test_damaged_aflw_cache_is_rebuilt(aflw_home, monkeypatch, damage):  # noqa: F811
    home, _ = aflw_home
    first = load_aflw2000(home, image_size=16)
    (cache,) = (home / "gllim_sk_cache").glob("aflw2000_16px_*.npz")
    _truncate(cache) if damage == "truncate" else cache.write_bytes(b"")
    second = load_aflw2000(home, image_size=16)
    assert_array_equal(first.images, second.images)
    assert_array_equal(first.target, second.target)
    _no_decoding(monkeypatch)  # the rebuilt cache is whole and used
    third = load_aflw2000(home, image_size=16)
    assert_array_equal(first.images, third.images)


def test_truncated_biwi_cache_is_rebuilt(biwi_home, monkeypatch):  # noqa: F811
    home, _ = biwi_home
    first = load_biwi(home, image_size=16)
    (cache,) = (home / "gllim_sk_cache").glob("biwi_16px_*.npz")
    _truncate(cache)
    second = load_biwi(home, image_size=16)
    assert_array_equal(first.images, second.images)
    assert_array_equal(first.target, second.target)
    _no_decoding(monkeypatch)
    third = load_biwi(home, image_size=16)
    assert_array_equal(first.images, third.images)


def test_interrupted_cache_write_leaves_the_previous_cache(aflw_home, monkeypatch):  # noqa: F811
    home, _ = aflw_home
    first = load_aflw2000(home, image_size=16)
    (cache,) = (home / "gllim_sk_cache").glob("aflw2000_16px_*.npz")
    before = cache.read_bytes()

    def savez_then_fail(file, **arrays):
        file.write(b"PK\x03\x04 half an archive")
        raise OSError("No space left on device")

    import gllim_sk.datasets._real as real

    monkeypatch.setattr(real.np, "savez", savez_then_fail)
    monkeypatch.setattr(real, "_load_cache", lambda *args: None)  # force a rewrite
    with pytest.warns(UserWarning, match="Could not write the crop cache"):
        second = load_aflw2000(home, image_size=16)
    assert_array_equal(first.images, second.images)
    assert cache.read_bytes() == before
    assert sorted(p.name for p in cache.parent.iterdir()) == [cache.name]  # no temp files


def test_atomic_write(tmp_path):
    path = tmp_path / "file.bin"
    with atomic_write(path) as fh:
        fh.write(b"first")
    assert path.read_bytes() == b"first"
    with pytest.raises(RuntimeError, match="interrupted"):
        with atomic_write(path) as fh:
            fh.write(b"second, cut short")
            raise RuntimeError("interrupted")
    assert path.read_bytes() == b"first"
    assert [p.name for p in tmp_path.iterdir()] == ["file.bin"]


def test_atomic_write_gives_the_permissions_of_a_file_written_in_place(tmp_path):
    # The temporary file is created private (0600); the results of the examples were.
    with open(tmp_path / "reference", "w"):
        pass
    path = tmp_path / "table.md"
    with atomic_write(path, "w") as handle:
        handle.write("new")
    assert path.stat().st_mode == (tmp_path / "reference").stat().st_mode
    path.chmod(0o640)
    with atomic_write(path) as handle:
        handle.write(b"rewritten")
    assert path.stat().st_mode & 0o7777 == 0o640
    assert path.read_bytes() == b"rewritten"


def test_atomic_write_text_mode(tmp_path):
    import csv

    path = tmp_path / "table.csv"
    with atomic_write(path, "w", encoding="utf-8", newline="") as handle:
        csv.writer(handle).writerow(["angle", "é", 1.5])
    assert path.read_bytes() == "angle,é,1.5\r\n".encode()  # csv's line ends, utf-8
    with pytest.raises(KeyError):
        with atomic_write(path, "w", encoding="utf-8", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["a", "b"])
            writer.writerow([{}["missing"]])  # a row that fails half-way through the table
    assert path.read_bytes() == "angle,é,1.5\r\n".encode()
    assert [p.name for p in tmp_path.iterdir()] == ["table.csv"]
    with pytest.raises(ValueError, match="mode must be 'wb' or 'w', got 'a'"):
        with atomic_write(path, "a"):
            pass
    with pytest.raises(ValueError, match="text mode"):
        with atomic_write(path, encoding="utf-8"):
            pass
    assert [p.name for p in tmp_path.iterdir()] == ["table.csv"]


def test_save_figure_is_complete_or_leaves_the_previous_file(tmp_path):
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from gllim_sk._files import save_figure

    fig, ax = plt.subplots(figsize=(2, 1))
    ax.plot([0, 1], [1, 0])
    save_figure(fig, tmp_path / "figure.png", dpi=50)
    assert plt.imread(tmp_path / "figure.png").shape[:2] == (50, 100)  # a whole PNG
    path = tmp_path / "figure.svg"
    save_figure(fig, path)
    first = path.read_bytes()
    assert first.rstrip().endswith(b"</svg>")
    # Invalid mathtext fails while the SVG is being written: fig.savefig(path) leaves the
    # first part of the file there; save_figure leaves the previous figure.
    ax.set_title(r"$\frac$")
    with pytest.raises(ValueError, match="frac"):
        save_figure(fig, path)
    assert path.read_bytes() == first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["figure.png", "figure.svg"]
    plt.close(fig)


# --------------------------------------------------------------------------- images


def test_one_image_without_batch_axis_is_named():
    from gllim_sk._images import check_images
    from gllim_sk.features import HOGPyramid

    image = np.zeros((32, 32, 3), dtype=np.uint8)
    with pytest.raises(ValueError, match=r"one \(height, width, channels\) image without a "
                                         r"batch axis.*image\[None\]"):
        check_images(image, min_size=8)
    # Without a size floor the image was silently read as 32 grayscale 32x3 images.
    with pytest.raises(ValueError, match="without a batch axis"):
        HOGPyramid().fit(image)
    hog = HOGPyramid().fit(image[None])
    with pytest.raises(ValueError, match="without a batch axis"):
        hog.transform(image)
    assert check_images(np.zeros((5, 32, 32))).shape == (5, 32, 32, 1)  # grayscale batch
    with pytest.raises(TypeError, match="Sparse data was passed for X"):
        check_images(sp.csr_matrix(np.ones((4, 64))), name="X")


def test_hog_parameters_changed_after_fit_are_reported():
    from gllim_sk.features import HOGPyramid

    images = np.zeros((2, 32, 32), dtype=np.uint8)
    hog = HOGPyramid(scales=(32, 16)).fit(images)
    hog.set_params(orientations=9)
    with pytest.raises(ValueError, match="changed since fit.*Call fit again"):
        hog.transform(images)
    assert hog.fit(images).transform(images).shape == (2, hog.n_output_features_)


def test_set_params_after_fit_does_not_change_the_fitted_model():
    # bic counted the new n_components and inverse_predict crashed after set_params.
    X, y = _issue_data()
    model = GLLiMRegressor(n_components=3, n_latent=1, random_state=0).fit(X, y)
    bic, inverse = model.bic(X, y), model.inverse_predict(y)
    model.set_params(n_components=5, n_latent=2)
    assert model.bic(X, y) == bic
    assert_array_equal(model.inverse_predict(y), inverse)


# --------------------------------------------------------------------------- set_params
# The rule: the hyper-parameters only matter at the next fit; a fitted model predicts with
# the settings it was fitted with (the noise and target structures hold its parameters).

TARGET_COVARIANCE_TYPES = ["full", "diag", "spherical", "tied"]
ESTIMATORS = [GLLiMRegressor, StudentGLLiMRegressor]


def _fitted_outputs(model, X, y):
    """Every prediction-time output of a fitted model, by name."""
    mean, std, cov = model.predict(X, return_std=True, return_cov=True)
    weights, means, covariances = model.predict_mixture(X)
    outputs = {
        "predict": mean, "predict_std": std, "predict_cov": cov,
        "mixture_weights": weights, "mixture_means": means,
        "mixture_covariances": covariances,
        "posterior_x": model.component_posterior(X),
        "posterior_y": model.component_posterior(y=y),
        "posterior_xy": model.component_posterior(X, y),
        "joint_log_density": model.joint_log_density(X, y),
        "conditional_log_density": model.conditional_log_density(X, y),
        "sample_y": model.sample_y(X[:20], n_samples=3, random_state=0),
        "inverse_predict": model.inverse_predict(y),
        "score": model.score(X, y), "bic": model.bic(X, y), "aic": model.aic(X, y),
    }
    if isinstance(model, StudentGLLiMRegressor):
        outputs["outlier_weights"] = model.outlier_weights(X, y)
    else:  # observation noise: the Gaussian model only
        outputs["noisy_predict"] = model.predict(X, feature_noise_var=0.01)
        outputs["noisy_joint_log_density"] = model.joint_log_density(
            X, y, feature_noise_var=0.01)
    return outputs


def _assert_same_outputs(model, X, y, reference, why):
    outputs = _fitted_outputs(model, X, y)
    assert outputs.keys() == reference.keys()
    for name, value in reference.items():
        assert_allclose(outputs[name], value, rtol=1e-12, err_msg=f"{name} after {why}")


@pytest.mark.parametrize("estimator", ESTIMATORS)
@pytest.mark.parametrize(("setting", "fitted"), [
    *(("covariance_type", kind) for kind in COVARIANCE_TYPES),
    *(("target_covariance_type", kind) for kind in TARGET_COVARIANCE_TYPES),
])
def test_covariance_type_changed_after_fit_does_not_change_predictions(estimator, setting,
                                                                       fitted):
    # predict built the structure of the new setting around the fitted parameters: a
    # shape error, or silent garbage for some pairs of types.
    X, y = _issue_data()
    model = estimator(n_components=3, covariance_type="full", random_state=0)
    model.set_params(**{setting: fitted}).fit(X, y)
    reference = _fitted_outputs(model, X, y)
    kinds = COVARIANCE_TYPES if setting == "covariance_type" else TARGET_COVARIANCE_TYPES
    for other in kinds:
        if other != fitted:
            model.set_params(**{setting: other})
            _assert_same_outputs(model, X, y, reference, f"{setting}={other!r}")


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_every_shaping_setting_changed_after_fit_does_not_change_predictions(estimator):
    X, y = _issue_data()
    model = estimator(n_components=3, n_latent=1, covariance_type="diag",
                      target_covariance_type="diag", random_state=0).fit(X, y)
    reference = _fitted_outputs(model, X, y)
    model.set_params(n_components=5, n_latent=2, covariance_type="tied",
                     target_covariance_type="spherical", reg_covar=1e-2)
    _assert_same_outputs(model, X, y, reference, "set_params")
    # The new settings take effect at the next fit.
    model.fit(X, y)
    assert model.weights_.shape == (5,) and model.latent_coef_.shape == (5, 10, 2)
    assert np.shape(model.noise_covariances_) == (10, 10)


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_pickle_after_set_params_keeps_the_fitted_settings(estimator):
    import pickle

    X, y = _issue_data()
    model = estimator(n_components=3, covariance_type="full", random_state=0).fit(X, y)
    reference = _fitted_outputs(model, X, y)
    model.set_params(covariance_type="diag", target_covariance_type="diag")
    restored = pickle.loads(pickle.dumps(model))
    _assert_same_outputs(restored, X, y, reference, "set_params and a pickle round trip")
    assert restored.covariance_type == "diag"  # the settings themselves are kept too


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_model_pickled_without_fitted_settings_predicts_as_before(estimator):
    # Pickles made before the fitted settings were recorded predicted with the settings
    # pickled with them; they still do, and set_params after loading changes nothing.
    import pickle

    X, y = _issue_data()
    model = estimator(n_components=3, covariance_type="tied", random_state=0)
    model.fit(X, y)
    reference = _fitted_outputs(model, X, y)
    state = model.__getstate__()
    del state["_fitted_structure"]
    old = estimator.__new__(estimator)
    old.__setstate__(pickle.loads(pickle.dumps(state)))
    _assert_same_outputs(old, X, y, reference, "loading an old pickle")
    old.set_params(covariance_type="spherical")
    _assert_same_outputs(old, X, y, reference, "loading an old pickle and set_params")


def test_online_model_pickled_without_fitted_settings_continues():
    import pickle

    X, y = _issue_data()
    online = GLLiMRegressor(n_components=2, covariance_type="full", random_state=0)
    online.partial_fit(X[:100], y[:100])
    state = online.__getstate__()
    del state["_fitted_structure"]
    old = GLLiMRegressor.__new__(GLLiMRegressor)
    old.__setstate__(pickle.loads(pickle.dumps(state)))
    online.partial_fit(X[100:], y[100:])
    old.partial_fit(X[100:], y[100:])
    assert_allclose(old.predict(X), online.predict(X), rtol=1e-12)


def test_partial_fit_after_a_shaping_setting_changed_is_a_clear_error():
    # partial_fit continues the fitted parameters, which cannot take the new structure.
    X, y = _issue_data()
    for start in ("fit", "partial_fit"):
        model = GLLiMRegressor(n_components=2, covariance_type="diag", random_state=0)
        getattr(model, start)(X[:100], y[:100])
        before = model.predict(X)
        model.set_params(covariance_type="full", n_components=3)
        with pytest.raises(ValueError, match=r"partial_fit continues the fitted model, but "
                           r"n_components=3 \(fitted with 2\), covariance_type='full' "
                           r"\(fitted with 'diag'\) changed.*Call fit"):
            model.partial_fit(X[100:], y[100:])
        assert_array_equal(model.predict(X), before)  # the failed call changed nothing
        model.set_params(covariance_type="diag", n_components=2).partial_fit(X[100:], y[100:])
        assert model.n_batch_iter_ == (2 if start == "partial_fit" else 1)


def test_deep_noise_precision_uses_the_fitted_noise_structure():
    pytest.importorskip("torch")
    from gllim_sk.deep._deep_gllim import _noise_precision

    X, y = _issue_data()
    gllim = GLLiMRegressor(n_components=2, covariance_type="diag", random_state=0).fit(X, y)
    before = _noise_precision(gllim, "cpu").numpy()
    assert_allclose(before, 1.0 / gllim.noise_covariances_, rtol=1e-6)  # float32 tensor
    gllim.set_params(covariance_type="full")
    assert_array_equal(_noise_precision(gllim, "cpu").numpy(), before)


def test_sparse_angles_get_scikit_learn_sparse_error():
    from gllim_sk.metrics import angle_errors, mean_angle_error

    y = np.ones((5, 3))
    with pytest.raises(TypeError, match="Sparse data was passed for y_true"):
        mean_angle_error(sp.csr_matrix(y), y)
    with pytest.raises(TypeError, match="Sparse data was passed for y_pred"):
        angle_errors(y, sp.csr_matrix(y))
