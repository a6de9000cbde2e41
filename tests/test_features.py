"""Tests of gllim_sk.features.HOGPyramid (the p-HOG transformer)."""

import pickle
import sys

import numpy as np
import pytest
from skimage.color import rgb2gray
from skimage.feature import hog
from skimage.transform import resize
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVR
from sklearn.utils._param_validation import InvalidParameterError
from sklearn.utils.estimator_checks import (
    check_do_not_raise_errors_in_init_or_set_params,
    check_estimator_cloneable,
    check_estimator_repr,
    check_get_params_invariance,
    check_mixin_order,
    check_no_attributes_set_in_init,
    check_param_validation,
    check_parameters_default_constructible,
    check_set_params,
    check_valid_tag_types,
)

from gllim_sk.features import HOGPyramid


@pytest.fixture(scope="module")
def rgb_images():
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(7, 48, 48, 3), dtype=np.uint8)


def reference_phog(image_rgb_uint8, scales=(64, 32, 16)):
    """p-HOG of one RGB uint8 image, written directly with scikit-image."""
    gray = rgb2gray(image_rgb_uint8.astype(np.float64) / 255.0)
    parts = []
    for size in scales:
        scaled = resize(gray, (size, size), anti_aliasing=True)
        parts.append(
            hog(scaled, orientations=8, pixels_per_cell=(8, 8), cells_per_block=(2, 2),
                block_norm="L2-Hys")
        )
    return np.concatenate(parts)


def test_default_size_is_1888(rgb_images):
    hog_pyramid = HOGPyramid().fit(rgb_images)
    features = hog_pyramid.transform(rgb_images)
    assert features.shape == (7, 1888)
    assert hog_pyramid.n_output_features_ == 1888
    assert hog_pyramid.feature_sizes_.tolist() == [1568, 288, 32]


def test_matches_direct_skimage_computation(rgb_images):
    features = HOGPyramid(dtype=np.float64).fit_transform(rgb_images)
    expected = np.array([reference_phog(im) for im in rgb_images])
    np.testing.assert_allclose(features, expected, rtol=1e-12, atol=1e-12)


def test_output_dtype(rgb_images):
    f32 = HOGPyramid().fit_transform(rgb_images)
    f64 = HOGPyramid(dtype="float64").fit_transform(rgb_images)
    assert f32.dtype == np.float32
    assert f64.dtype == np.float64
    np.testing.assert_array_equal(f32, f64.astype(np.float32))
    # L2-Hys normalised histograms: non-negative, bounded by the 0.2 clipping threshold
    # renormalised, so at most 1.
    assert f64.min() >= 0.0 and f64.max() <= 1.0


def test_custom_configuration_sizes():
    images = np.zeros((2, 40, 40), dtype=np.uint8)
    hog_pyramid = HOGPyramid(scales=[48, 24], orientations=9, pixels_per_cell=6,
                             cells_per_block=3).fit(images)
    # 48 px / 6 = 8 cells -> 6 blocks per side; 24 px -> 4 cells -> 2 blocks per side.
    expected = [6 * 6 * 9 * 9, 2 * 2 * 9 * 9]
    assert hog_pyramid.feature_sizes_.tolist() == expected
    assert hog_pyramid.transform(images).shape == (2, sum(expected))
    assert len(hog_pyramid.get_feature_names_out()) == sum(expected)


def test_deterministic_and_independent_of_parallelism(rgb_images):
    reference = HOGPyramid(n_jobs=1).fit_transform(rgb_images)
    np.testing.assert_array_equal(reference, HOGPyramid(n_jobs=1).fit_transform(rgb_images))
    for n_jobs, batch_size in [(2, 1), (2, 3), (2, "auto"), (1, 2)]:
        other = HOGPyramid(n_jobs=n_jobs, batch_size=batch_size).fit_transform(rgb_images)
        np.testing.assert_array_equal(reference, other)


def test_gray_layouts_and_dtypes_agree():
    rng = np.random.default_rng(1)
    gray = rng.integers(0, 256, size=(3, 32, 32), dtype=np.uint8)
    hog_pyramid = HOGPyramid(dtype=np.float64).fit(gray)
    base = hog_pyramid.transform(gray)
    np.testing.assert_array_equal(base, hog_pyramid.transform(gray[..., None]))
    np.testing.assert_allclose(base, hog_pyramid.transform(gray / 255.0), atol=1e-12)
    np.testing.assert_array_equal(base, hog_pyramid.transform(list(gray)))
    # RGB images are described by their luminance (rgb2gray).
    rgb = rng.integers(0, 256, size=(3, 32, 32, 3), dtype=np.uint8)
    np.testing.assert_array_equal(hog_pyramid.transform(rgb),
                                  hog_pyramid.transform(rgb2gray(rgb / 255.0)))


def test_any_image_size_after_fit(rgb_images):
    hog_pyramid = HOGPyramid().fit(rgb_images)
    for shape in [(2, 64, 64, 3), (2, 100, 80, 3), (2, 20, 20)]:
        images = np.full(shape, 128, dtype=np.uint8)
        assert hog_pyramid.transform(images).shape == (2, 1888)


def test_orientation_bins_follow_feature_names():
    # Vertical stripes vary along x only: the gradient is horizontal (orientation 0) in
    # every cell, so all the energy of each cell falls in bin 0.
    x = np.arange(64)
    stripes = (0.5 + 0.5 * np.sin(2 * np.pi * x / 16))[None, :].repeat(64, axis=0)
    hog_pyramid = HOGPyramid(scales=[64], dtype=np.float64).fit(stripes[None])
    features = hog_pyramid.transform(stripes[None])[0]
    names = hog_pyramid.get_feature_names_out()
    in_bin0 = np.array([name.endswith("_orient0") for name in names])
    assert features[in_bin0].sum() > 0.99 * features.sum()
    # Rotating by 90 degrees moves the energy to the vertical-gradient bin (90 degrees
    # out of [0, 180) in 8 bins: bin 4).
    rotated = hog_pyramid.transform(stripes.T[None])[0]
    in_bin4 = np.array([name.endswith("_orient4") for name in names])
    assert rotated[in_bin4].sum() > 0.99 * rotated.sum()


def test_feature_names(rgb_images):
    hog_pyramid = HOGPyramid().fit(rgb_images)
    names = hog_pyramid.get_feature_names_out()
    assert names.shape == (1888,)
    assert len(set(names)) == 1888
    assert names[0] == "hog64_block0_0_cell0_0_orient0"
    assert names[1567] == "hog64_block6_6_cell1_1_orient7"
    assert names[1568] == "hog32_block0_0_cell0_0_orient0"
    assert names[-1] == "hog16_block0_0_cell1_1_orient7"


def test_input_not_modified(rgb_images):
    images = rgb_images.copy()
    HOGPyramid().fit_transform(images)
    np.testing.assert_array_equal(images, rgb_images)
    floats = rgb_images / 255.0
    floats_copy = floats.copy()
    HOGPyramid().fit_transform(floats)
    np.testing.assert_array_equal(floats, floats_copy)


@pytest.mark.parametrize(
    ("images", "message"),
    [
        (np.zeros((64, 64)), "shape \\(n_images, height, width\\)"),
        (np.zeros((1, 2, 64, 64, 3)), "shape \\(n_images, height, width\\)"),
        (np.zeros((2, 3, 64, 64)), "channels"),
        (np.zeros((2, 64, 64, 2)), "channels"),
        (np.zeros((0, 64, 64, 3)), "empty"),
        (np.full((1, 8, 8), np.nan), "NaN"),
        (np.full((1, 8, 8), 2.0), "\\[0, 1\\]"),
        ([np.zeros((8, 8)), np.zeros((9, 9))], "same shape"),
    ],
)
def test_bad_image_layouts_raise_clear_errors(images, message):
    with pytest.raises(ValueError, match=message):
        HOGPyramid().fit(images)
    fitted = HOGPyramid().fit(np.zeros((1, 16, 16)))
    with pytest.raises(ValueError, match=message):
        fitted.transform(images)


def test_bad_dtype_raises():
    with pytest.raises(TypeError, match="dtype"):
        HOGPyramid().fit(np.zeros((1, 8, 8), dtype=complex))


@pytest.mark.parametrize(
    ("params", "error", "message"),
    [
        ({"scales": [64, 8]}, ValueError, "scale 8 is too small"),
        ({"scales": [32], "pixels_per_cell": 12, "cells_per_block": 3}, ValueError,
         "at least 36 pixels"),
        ({"scales": []}, ValueError, "non-empty"),
        ({"scales": [32.5]}, ValueError, "integers"),
        ({"orientations": 0}, InvalidParameterError, "orientations"),
        ({"block_norm": "L3"}, InvalidParameterError, "block_norm"),
        ({"dtype": np.int32}, InvalidParameterError, "dtype"),
        ({"batch_size": 0}, InvalidParameterError, "batch_size"),
    ],
)
def test_bad_parameters(params, error, message):
    with pytest.raises(error, match=message):
        HOGPyramid(**params).fit(np.zeros((1, 16, 16)))


def test_transform_before_fit_raises(rgb_images):
    with pytest.raises(NotFittedError):
        HOGPyramid().transform(rgb_images)
    with pytest.raises(NotFittedError):
        HOGPyramid().get_feature_names_out()


def test_clone_params_and_pickle(rgb_images):
    hog_pyramid = HOGPyramid(scales=(32, 16), orientations=6, n_jobs=2)
    params = hog_pyramid.get_params()
    assert params["scales"] == (32, 16) and params["orientations"] == 6
    cloned = clone(hog_pyramid)
    assert cloned.get_params() == params
    hog_pyramid.fit(rgb_images)
    restored = pickle.loads(pickle.dumps(hog_pyramid))
    np.testing.assert_array_equal(hog_pyramid.transform(rgb_images),
                                  restored.transform(rgb_images))
    assert not hasattr(clone(hog_pyramid), "n_output_features_")


def test_tags_describe_image_input():
    tags = HOGPyramid().__sklearn_tags__()
    assert not tags.input_tags.two_d_array
    assert tags.input_tags.three_d_array
    assert tags.transformer_tags.preserves_dtype == []
    assert tags.requires_fit


@pytest.mark.parametrize(
    "check",
    [
        check_parameters_default_constructible,
        check_no_attributes_set_in_init,
        check_get_params_invariance,
        check_set_params,
        check_estimator_cloneable,
        check_estimator_repr,
        check_do_not_raise_errors_in_init_or_set_params,
        check_valid_tag_types,
        check_mixin_order,
        check_param_validation,
    ],
    ids=lambda check: check.__name__,
)
def test_sklearn_checks_that_do_not_need_tabular_data(check):
    # check_estimator feeds 2-D tabular data, which an image transformer rightly
    # rejects; these are the API checks that apply to it.
    check("HOGPyramid", HOGPyramid())


def test_pipeline_with_scaler_and_svr():
    # Half-plane images whose boundary direction is the target: HOG sees gradient
    # orientations, so a scaled-HOG SVR must recover the angle on unseen images.
    rng = np.random.default_rng(2)
    n = 120
    angle = rng.uniform(0.0, 80.0, size=n)
    centre = rng.uniform(12.0, 20.0, size=(n, 2))
    rows, cols = np.mgrid[0:32, 0:32]
    theta = np.deg2rad(angle)[:, None, None]
    side = (cols - centre[:, 0, None, None]) * np.cos(theta) + (
        rows - centre[:, 1, None, None]
    ) * np.sin(theta)
    images = np.where(side > 0, 200, 30).astype(np.uint8)
    pipe = make_pipeline(HOGPyramid(scales=(32, 16)), StandardScaler(), SVR(C=100.0))
    search = GridSearchCV(pipe, {"hogpyramid__orientations": [4, 8]}, cv=2)
    search.fit(images[:90], angle[:90])
    predictions = search.predict(images[90:])
    assert predictions.shape == (30,)
    error = np.mean(np.abs(predictions - angle[90:]))
    baseline = np.mean(np.abs(angle[90:] - angle[:90].mean()))
    assert error < 0.3 * baseline


def test_missing_scikit_image_gives_install_hint(monkeypatch):
    # A None entry in sys.modules makes the import fail as if the package were absent.
    monkeypatch.setitem(sys.modules, "skimage.feature", None)
    images = np.zeros((2, 16, 16), dtype=np.uint8)
    with pytest.raises(ImportError, match=r"gllim_sk\[image\]"):
        HOGPyramid().fit(images)
