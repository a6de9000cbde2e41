"""Tests of gllim_sk.metrics: angle errors, scorers and results tables."""

import numpy as np
import pytest
from sklearn.dummy import DummyRegressor
from sklearn.linear_model import Ridge
from sklearn.metrics import mean_absolute_error
from sklearn.model_selection import GridSearchCV, KFold, cross_val_score

from gllim_sk.metrics import (
    angle_error_scorer,
    angle_errors,
    format_results_table,
    get_angle_scorer,
    mean_angle_error,
)

Y_TRUE = np.array([[10.0, 20.0, 0.0], [0.0, -30.0, 5.0], [-5.0, 60.0, -10.0]])
Y_PRED = np.array([[12.0, 20.0, 1.0], [0.0, -24.0, 2.0], [-9.0, 51.0, -10.0]])


def test_angle_errors_by_hand():
    # |diff|: pitch 2, 0, 4 -> 2; yaw 0, 6, 9 -> 5; roll 1, 3, 0 -> 4/3.
    errors = angle_errors(Y_TRUE, Y_PRED)
    assert list(errors) == ["pitch", "yaw", "roll", "mean"]
    assert errors["pitch"] == pytest.approx(2.0)
    assert errors["yaw"] == pytest.approx(5.0)
    assert errors["roll"] == pytest.approx(4.0 / 3.0)
    assert errors["mean"] == pytest.approx((2.0 + 5.0 + 4.0 / 3.0) / 3.0)
    assert all(isinstance(value, float) for value in errors.values())


def test_angle_errors_agree_with_sklearn_mae():
    rng = np.random.default_rng(0)
    y_true, y_pred = rng.normal(0, 30, (50, 3)), rng.normal(0, 30, (50, 3))
    errors = angle_errors(y_true, y_pred)
    per_angle = mean_absolute_error(y_true, y_pred, multioutput="raw_values")
    np.testing.assert_allclose([errors["pitch"], errors["yaw"], errors["roll"]], per_angle)
    assert errors["mean"] == pytest.approx(mean_absolute_error(y_true, y_pred))
    assert mean_angle_error(y_true, y_pred) == pytest.approx(mean_absolute_error(y_true, y_pred))


def test_wrap():
    y_true = np.array([[179.0, -170.0, 10.0], [0.0, 90.0, -180.0]])
    y_pred = np.array([[-179.0, 170.0, 10.0], [350.0, -90.0, 180.0]])
    # Wrapped differences: 2, 20, 0 / 10, 180, 0.
    wrapped = angle_errors(y_true, y_pred, wrap=True)
    assert wrapped["pitch"] == pytest.approx(6.0)
    assert wrapped["yaw"] == pytest.approx(100.0)
    assert wrapped["roll"] == pytest.approx(0.0)
    plain = angle_errors(y_true, y_pred)
    assert plain["pitch"] == pytest.approx((358.0 + 350.0) / 2)
    assert mean_angle_error(y_true, y_pred, wrap=True) == pytest.approx((6 + 100 + 0) / 3)
    # Small differences are untouched by wrapping.
    assert angle_errors(Y_TRUE, Y_PRED, wrap=True) == angle_errors(Y_TRUE, Y_PRED)


def test_custom_angle_names_and_single_angle():
    errors = angle_errors(Y_TRUE[:, :2], Y_PRED[:, :2], angle_names=("tilt", "pan"))
    assert errors == {"tilt": 2.0, "pan": 5.0, "mean": 3.5}
    single = angle_errors(Y_TRUE[:, 1], Y_PRED[:, 1], angle_names=["yaw"])
    assert single == {"yaw": 5.0, "mean": 5.0}
    assert mean_angle_error(Y_TRUE[:, 1], Y_PRED[:, 1]) == 5.0


def test_inputs_not_modified():
    y_true, y_pred = Y_TRUE.copy(), Y_PRED.copy()
    angle_errors(y_true, y_pred, wrap=True)
    np.testing.assert_array_equal(y_true, Y_TRUE)
    np.testing.assert_array_equal(y_pred, Y_PRED)


@pytest.mark.parametrize(
    ("y_true", "y_pred", "message"),
    [
        (Y_TRUE[:, :2], Y_PRED[:, :2], "shape \\(n_samples, 3\\)"),
        (Y_TRUE, Y_PRED[:, 0], "y_pred must have shape"),
        (Y_TRUE[0], Y_PRED[0], "y_true must have shape"),
        (Y_TRUE, Y_PRED[:2], "different numbers of samples: 3 and 2"),
        (Y_TRUE[:0], Y_PRED[:0], "empty"),
        (np.where(Y_TRUE > 50, np.nan, Y_TRUE), Y_PRED, "y_true contains NaN"),
        (Y_TRUE, np.where(Y_PRED > 50, np.inf, Y_PRED), "y_pred contains NaN or infinity"),
        ([["a", "b", "c"]], [[1, 2, 3]], "numeric"),
    ],
)
def test_angle_errors_validation(y_true, y_pred, message):
    with pytest.raises(ValueError, match=message):
        angle_errors(y_true, y_pred)


@pytest.mark.parametrize("names", [(), ("pitch", "mean", "roll"), ("a", "a", "b"), (1, 2, 3)])
def test_bad_angle_names(names):
    with pytest.raises(ValueError, match="angle_names"):
        angle_errors(Y_TRUE, Y_PRED, angle_names=names)


def test_a_str_is_not_a_list_of_angle_names():
    # ("yaw") is the str "yaw", whose letters would silently name three angles.
    y = np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    with pytest.raises(ValueError, match=r"not the str 'pyr'.*\('pyr',\)"):
        angle_errors(y, y + 1, angle_names="pyr")
    with pytest.raises(ValueError, match="not the str 'yaw'"):
        angle_errors(y[:, 1], y[:, 1] + 1, angle_names=("yaw"))
    with pytest.raises(ValueError, match="not the str 'yaw'"):
        get_angle_scorer("yaw", angle_names="yaw")
    with pytest.raises(ValueError, match="not the str 'pyr'"):
        format_results_table({"m": [1.0, 2.0, 3.0]}, angle_names="pyr")
    assert angle_errors(y[:, 1], y[:, 1] + 1, angle_names=("yaw",)) == {"yaw": 1.0, "mean": 1.0}


def test_mean_angle_error_validation():
    with pytest.raises(ValueError, match="y_true must have shape"):
        mean_angle_error(np.zeros((2, 3, 1)), np.zeros((2, 3, 1)))
    with pytest.raises(ValueError, match="different numbers of samples"):
        mean_angle_error(Y_TRUE, Y_PRED[:1])


def test_scorers_on_a_constant_model():
    X = np.zeros((3, 1))
    model = DummyRegressor(strategy="constant", constant=[0.0, 0.0, 0.0]).fit(X, Y_TRUE)
    # |Y_TRUE| column means: pitch 5, yaw 110/3, roll 5.
    assert angle_error_scorer(model, X, Y_TRUE) == pytest.approx(-(5 + 110 / 3 + 5) / 3)
    assert get_angle_scorer()(model, X, Y_TRUE) == pytest.approx(-(5 + 110 / 3 + 5) / 3)
    assert get_angle_scorer("pitch")(model, X, Y_TRUE) == pytest.approx(-5.0)
    assert get_angle_scorer("yaw")(model, X, Y_TRUE) == pytest.approx(-110 / 3)
    assert get_angle_scorer("roll")(model, X, Y_TRUE) == pytest.approx(-5.0)
    y_wrap = np.array([[0.0, 0.0, 190.0]])
    assert get_angle_scorer("roll", wrap=True)(model, X[:1], y_wrap) == pytest.approx(-170.0)
    assert get_angle_scorer("roll")(model, X[:1], y_wrap) == pytest.approx(-190.0)
    tilt = get_angle_scorer("tilt", angle_names=("tilt", "pan"))
    model2 = DummyRegressor(strategy="constant", constant=[1.0, 0.0]).fit(X, Y_TRUE[:, :2])
    assert tilt(model2, X, Y_TRUE[:, :2]) == pytest.approx(-np.mean(np.abs(Y_TRUE[:, 0] - 1)))
    with pytest.raises(ValueError, match="angle must be 'mean' or one of"):
        get_angle_scorer("elevation")


def test_scorer_in_grid_search_matches_manual_cross_validation():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, 5))
    y = X @ rng.normal(size=(5, 3)) * 10 + rng.normal(size=(60, 3))
    cv = KFold(3, shuffle=True, random_state=0)
    search = GridSearchCV(Ridge(), {"alpha": [0.01, 1000.0]}, scoring=angle_error_scorer, cv=cv)
    search.fit(X, y)
    assert search.best_params_ == {"alpha": 0.01}
    expected = []
    for train, test in cv.split(X):
        model = Ridge(alpha=0.01).fit(X[train], y[train])
        expected.append(np.mean(np.abs(model.predict(X[test]) - y[test])))
    assert -search.best_score_ == pytest.approx(np.mean(expected))
    # Per-angle scorers in a multi-metric search.
    scoring = {name: get_angle_scorer(name) for name in ("pitch", "yaw", "roll", "mean")}
    multi = GridSearchCV(Ridge(), {"alpha": [0.01]}, scoring=scoring, refit="mean", cv=cv)
    multi.fit(X, y)
    per_angle = [-multi.cv_results_[f"mean_test_{n}"][0] for n in ("pitch", "yaw", "roll")]
    assert np.mean(per_angle) == pytest.approx(-multi.cv_results_["mean_test_mean"][0])
    scores = cross_val_score(Ridge(alpha=0.01), X, y, scoring=angle_error_scorer, cv=cv)
    np.testing.assert_allclose(-scores, expected)


PAPER = {
    "(0, 0, 0)": [23.92, 28.50, 8.48, 20.30],
    "HOG-SVR": [8.50, 6.45, 5.04, 6.66],
    "VGG-FCL-FT": [5.65, 4.44, 2.93, 4.34],
    "VGG-IR-FT (proposed)": [4.68, 3.12, 3.07, 3.62],
}


def test_markdown_table_marks_best_per_column():
    expected = "\n".join(
        [
            "| Method | Pitch | Yaw | Roll | Mean |",
            "|:--|--:|--:|--:|--:|",
            "| (0, 0, 0) | 23.92 | 28.50 | 8.48 | 20.30 |",
            "| HOG-SVR | 8.50 | 6.45 | 5.04 | 6.66 |",
            "| VGG-FCL-FT | 5.65 | 4.44 | **2.93** | 4.34 |",
            "| VGG-IR-FT (proposed) | **4.68** | **3.12** | 3.07 | **3.62** |",
        ]
    )
    assert format_results_table(PAPER, fmt="markdown") == expected


def test_text_table_is_aligned():
    expected = "\n".join(
        [
            "Method                Pitch     Yaw   Roll    Mean",
            "(0, 0, 0)             23.92   28.50   8.48   20.30",
            "HOG-SVR                8.50    6.45   5.04    6.66",
            "VGG-FCL-FT             5.65    4.44   2.93*   4.34",
            "VGG-IR-FT (proposed)   4.68*   3.12*  3.07    3.62*",
        ]
    )
    assert format_results_table(PAPER) == expected


def test_csv_table():
    table = format_results_table({"a, b": [1, 2, 3], "c": [None, 1.5, 2]}, fmt="csv")
    assert table == 'Method,Pitch,Yaw,Roll,Mean\n"a, b",1.00,2.00,3.00,2.00\nc,,1.50,2.00,'


def test_table_accepts_angle_errors_output_and_pairs():
    errors = angle_errors(Y_TRUE, Y_PRED)
    table = format_results_table([("model", errors), ("zero", [5.0, 110 / 3, 5.0])],
                                 fmt="markdown", decimals=3)
    # The mean is computed when missing: (2 + 5 + 4/3) / 3 = 2.778.
    assert "| model | **2.000** | **5.000** | **1.333** | **2.778** |" in table
    assert "| zero | 5.000 | 36.667 | 5.000 | 15.556 |" in table


def test_table_ties_and_missing_values():
    table = format_results_table({"a": [1.004, 2, 3], "b": [1.0, None, 3]}, fmt="markdown")
    lines = table.splitlines()
    # 1.004 and 1.0 both display as 1.00: both are marked. The missing yaw shows as "/".
    assert lines[2] == "| a | **1.00** | **2.00** | **3.00** | **2.00** |"
    assert lines[3] == "| b | **1.00** | / | **3.00** | / |"


def test_table_custom_header_and_angles():
    table = format_results_table({"m": {"tilt": 1, "pan": 3}}, angle_names=("tilt", "pan"),
                                 method_header="Model", fmt="markdown", decimals=1)
    assert table.splitlines()[0] == "| Model | Tilt | Pan | Mean |"
    assert table.splitlines()[2] == "| m | **1.0** | **3.0** | **2.0** |"


@pytest.mark.parametrize(
    ("results", "kwargs", "message"),
    [
        ({}, {}, "empty"),
        ({"a": [1, 2, 3]}, {"fmt": "html"}, "fmt must be"),
        ({"a": [1, 2, 3]}, {"decimals": -1}, "decimals"),
        ({"a": [1, 2]}, {}, "must hold 3 errors"),
        ({"a": {"pitch": 1, "yaw": 2}}, {}, "lacks the angles \\['roll'\\]"),
        ({"a": [1, float("nan"), 3]}, {}, "finite numbers or None"),
        ({"a": [1, "x", 3]}, {}, "finite numbers or None"),
        ([("a", [1, 2, 3], "extra")], {}, "\\(name, errors\\) pairs"),
    ],
)
def test_table_validation(results, kwargs, message):
    with pytest.raises(ValueError, match=message):
        format_results_table(results, **kwargs)
