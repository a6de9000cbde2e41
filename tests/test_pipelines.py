"""Tests of gllim_sk.pipelines: the torch-free baselines of Table 1."""

import pickle

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.model_selection import GridSearchCV, GroupKFold, GroupShuffleSplit

from gllim_sk import GLLiMRegressor
from gllim_sk.datasets import make_head_poses
from gllim_sk.features import HOGPyramid
from gllim_sk.metrics import angle_error_scorer, angle_errors
from gllim_sk.pipelines import make_hog_ir, make_hog_svr, make_mean_pose_baseline


@pytest.fixture(scope="module")
def heads():
    """Synthetic "biwi" heads split by person: no subject in both train and test."""
    data = make_head_poses(480, distribution="biwi", image_size=64, n_subjects=16,
                           random_state=0)
    splitter = GroupShuffleSplit(n_splits=1, test_size=0.25, random_state=0)
    train, test = next(splitter.split(data.images, data.target, groups=data.subject))
    return data, train, test


def test_mean_pose_baseline_predicts_the_constant():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(5, 16, 16, 3), dtype=np.uint8)
    angles = rng.normal(0, 20, size=(5, 3))
    model = make_mean_pose_baseline().fit(images, angles)
    np.testing.assert_array_equal(model.predict(images), np.zeros((5, 3)))
    gray = rng.random((2, 16, 16))
    np.testing.assert_array_equal(model.predict(gray), np.zeros((2, 3)))
    shifted = make_mean_pose_baseline(constant=[1.0, -2.0, 3.0]).fit(images, angles)
    np.testing.assert_array_equal(shifted.predict(images[:2]), [[1.0, -2.0, 3.0]] * 2)
    # Its score is the mean absolute angle, the "(0, 0, 0)" row of the paper.
    assert -angle_error_scorer(model, images, angles) == pytest.approx(np.abs(angles).mean())


def test_mean_pose_baseline_errors():
    model = make_mean_pose_baseline()
    with pytest.raises(ValueError, match="channels"):
        model.fit(np.zeros((4, 3, 16, 16)), np.zeros((4, 3)))
    with pytest.raises(ValueError, match="shape \\(n_images, height, width\\)"):
        model.fit(np.zeros((4, 16)), np.zeros((4, 3)))
    with pytest.raises(ValueError, match="Constant target value"):
        make_mean_pose_baseline(constant=[0.0, 0.0]).fit(np.zeros((4, 8, 8)), np.zeros((4, 3)))


def test_hog_svr_structure_and_parameters():
    model = make_hog_svr(C=3.0, epsilon=0.2, kernel="linear", scales=(32, 16), n_jobs=2)
    assert list(model.named_steps) == ["hog", "scaler", "svr"]
    assert isinstance(model.named_steps["hog"], HOGPyramid)
    assert model.named_steps["hog"].scales == (32, 16)
    assert model.named_steps["hog"].n_jobs == 2
    svr = model.named_steps["svr"]
    assert svr.n_jobs == 2
    assert (svr.estimator.C, svr.estimator.epsilon, svr.estimator.kernel) == (3.0, 0.2, "linear")
    model.set_params(svr__estimator__C=7.0, hog__orientations=9)
    assert clone(model).get_params()["svr__estimator__C"] == 7.0
    assert clone(model).get_params()["hog__orientations"] == 9


def test_hog_ir_structure_and_parameters():
    model = make_hog_ir()
    assert list(model.named_steps) == ["hog", "gllim"]
    gllim = model.named_steps["gllim"]
    assert isinstance(gllim, GLLiMRegressor)
    assert (gllim.n_components, gllim.n_latent) == (50, 4)
    model = make_hog_ir(3, n_latent=0, covariance_type="spherical", random_state=1, n_jobs=2)
    gllim = model.named_steps["gllim"]
    assert (gllim.n_components, gllim.n_latent, gllim.covariance_type, gllim.random_state) == (
        3, 0, "spherical", 1)
    assert model.named_steps["hog"].n_jobs == 2


def test_fitted_pipelines_pickle(heads):
    data, train, test = heads
    for model in (make_mean_pose_baseline(), make_hog_svr(scales=(32, 16))):
        model.fit(data.images[train[:60]], data.target[train[:60]])
        restored = pickle.loads(pickle.dumps(model))
        np.testing.assert_array_equal(model.predict(data.images[test[:5]]),
                                      restored.predict(data.images[test[:5]]))


def test_baselines_beat_the_mean_pose_on_unseen_subjects(heads):
    data, train, test = heads
    assert not set(data.subject[train]) & set(data.subject[test])
    X_train, y_train = data.images[train], data.target[train]
    X_test, y_test = data.images[test], data.target[test]

    mean_pose = angle_errors(y_test, make_mean_pose_baseline().fit(X_train, y_train)
                             .predict(X_test))
    hog_svr = angle_errors(y_test, make_hog_svr().fit(X_train, y_train).predict(X_test))
    hog_ir_model = make_hog_ir(3, n_latent=4, random_state=0).fit(X_train, y_train)
    hog_ir = angle_errors(y_test, hog_ir_model.predict(X_test))

    # A wide margin with 360 training images of 12 people (measured: 0.52 to 0.58 of
    # the mean pose's error for data seeds 0 to 2): at most 70% of it on average, at
    # most 65% on yaw (the widest angle), and better on pitch. Roll varies little on the
    # "biwi" distribution.
    for errors in (hog_svr, hog_ir):
        assert errors["mean"] < 0.7 * mean_pose["mean"], (errors, mean_pose)
        assert errors["yaw"] < 0.65 * mean_pose["yaw"], (errors, mean_pose)
        assert errors["pitch"] < mean_pose["pitch"], (errors, mean_pose)


def test_hog_svr_grid_search_with_angle_scorer(heads):
    data, train, _ = heads
    subset = train[:150]
    search = GridSearchCV(
        make_hog_svr(scales=(32, 16)),
        {"svr__estimator__C": [0.01, 100.0]},
        scoring=angle_error_scorer,
        cv=GroupKFold(n_splits=3),
    )
    search.fit(data.images[subset], data.target[subset], groups=data.subject[subset])
    # C=0.01 is nearly the constant median predictor; C=100 learns the pose.
    assert search.best_params_ == {"svr__estimator__C": 100.0}
    scores = search.cv_results_["mean_test_score"]
    assert scores[1] > scores[0]
    assert -search.best_score_ > 0
