"""Choosing K on data drawn from known GLLiM models."""

import numpy as np
import pytest
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from gllim_sk import GLLiMRegressor
from gllim_sk.model_selection import ComponentSelector, slope_heuristic


def draw_gllim(K, n, D=5, L=2, seed=0):
    """Samples of a GLLiM with K well-separated components (in y and in x)."""
    rng = np.random.default_rng(seed)
    centres = 6.0 * rng.normal(size=(K, L))
    z = rng.integers(K, size=n)
    y = centres[z] + 0.5 * rng.normal(size=(n, L))
    A = rng.normal(size=(K, D, L))
    b = 5.0 * rng.normal(size=(K, D))
    X = np.einsum("ndl,nl->nd", A[z], y) + b[z] + 0.1 * rng.normal(size=(n, D))
    return X, y


def test_slope_heuristic_on_a_known_contrast():
    # LL grows fast up to the true size, then by exactly 0.7 per parameter.
    D = np.arange(1, 16) * 7.0
    rng = np.random.default_rng(0)
    LL = 40 * np.minimum(D, 35.0) + 0.7 * D + rng.normal(scale=0.5, size=D.size)
    best, kappa, selections = slope_heuristic(LL, D)
    assert D[best] == 35.0
    assert kappa == pytest.approx(0.7, abs=0.1)
    assert selections.size == D.size - 5 + 1  # fits on the 5 most complex models, ..., all
    with pytest.raises(ValueError, match="at least 3"):
        slope_heuristic([1.0, 2.0, 3.0], [1, 1, 2])


@pytest.mark.parametrize("true_K", [2, 3, 4])
def test_selector_finds_the_true_K(true_K):
    X, y = draw_gllim(true_K, 1500, seed=true_K)
    sel = ComponentSelector(GLLiMRegressor(n_init=2), n_components=range(1, 10),
                            random_state=0).fit(X, y)
    assert sel.best_params_["n_components"] == true_K
    r = sel.results_
    assert int(r["n_components"][np.argmin(r["bic"])]) == true_K
    assert np.all(np.diff(r["n_parameters"]) > 0)
    assert sel.best_estimator_.n_components == true_K
    # The log-likelihoods are those of the fitted models on the data.
    K = true_K
    again = GLLiMRegressor(n_components=K, n_init=2, random_state=0).fit(X, y)
    total = again.joint_log_density(X, y).sum()
    assert r["log_likelihood"][K - 1] == pytest.approx(total, rel=1e-8)


def test_selector_in_a_pipeline_with_latent_grid_and_plot():
    import matplotlib

    matplotlib.use("Agg")
    X, y = draw_gllim(3, 900, seed=7)
    pipe = make_pipeline(StandardScaler(), ComponentSelector(
        n_components=[1, 2, 3, 4, 5], n_latent=[0, 1], criterion="bic", random_state=0))
    pipe.fit(X, y)
    sel = pipe[-1]
    assert len(sel.results_["bic"]) == 10
    assert sel.best_params_["n_components"] == 3
    assert pipe.predict(X[:4]).shape == (4, 2)
    assert pipe.score(X, y) > 0.9
    ax = sel.plot()
    assert len(ax) == 2


def test_selector_on_dask():
    da = pytest.importorskip("dask.array")
    X, y = draw_gllim(3, 1200, seed=3)
    ref = ComponentSelector(n_components=[1, 2, 3, 4, 5, 6], random_state=0).fit(X, y)
    lazy = ComponentSelector(n_components=[1, 2, 3, 4, 5, 6], random_state=0).fit(
        da.from_array(X, chunks=400), da.from_array(y, chunks=400))
    assert lazy.best_params_ == ref.best_params_
    assert np.allclose(lazy.results_["bic"], ref.results_["bic"], rtol=1e-6)


def test_selector_errors():
    X, y = draw_gllim(2, 200)
    with pytest.raises(ValueError, match="at least 3 candidate"):
        ComponentSelector(n_components=[1, 2]).fit(X, y)
    with pytest.raises(ValueError, match="n_components values must be >= 1"):
        ComponentSelector(n_components=[0, 1, 2]).fit(X, y)


def test_selector_check_estimator():
    from sklearn.utils.estimator_checks import check_estimator

    check_estimator(ComponentSelector(n_components=[1, 2, 3], criterion="bic", random_state=0))
