"""Tests of the partially-latent (hybrid) GLLiM, ``GLLiMRegressor(n_latent > 0)``.

Within component k, x = A_k y + A^w_k w + b_k + e with w ~ N(0, I_Lw), so
p(x | y, k) = N(A_k y + b_k, Sigma_k + A^w_k A^w_k^T). The references are dense
brute-force computations from ``conftest.py``: the joint (y, x) mixture with w
integrated out, and an exact EM step (latent posterior, augmented least
squares) written from the model's definition. Prediction against dense
conditioning for ``n_latent > 0`` is in ``test_gllim.py`` (parametrised over
``n_latent``).
"""

import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal

from gllim_sk import GLLiMRegressor

COVARIANCE_TYPES = ("full", "diag", "spherical", "tied", "tied_diag", "tied_spherical")

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")


def hybrid_data(ref, seed, n_samples=150, n_features=8, n_targets=2, n_components=2,
                n_latent=2):
    rng = np.random.default_rng(seed)
    params = ref.random_params(rng, n_components, n_features, n_targets, n_latent=n_latent)
    X, y, _ = ref.sample(params, n_samples, rng)
    return X, y, params


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
@pytest.mark.parametrize("n_latent", [1, 2, 5])
def test_em_log_likelihood_never_decreases(gllim_ref, n_latent, covariance_type, seed):
    target_covariance_type = ("full", "diag", "spherical", "tied")[(seed + n_latent) % 4]
    X, y, _ = hybrid_data(gllim_ref, seed, n_latent=n_latent)
    model = GLLiMRegressor(2, covariance_type=covariance_type,
                           target_covariance_type=target_covariance_type, n_latent=n_latent,
                           reg_covar=1e-9, max_iter=30, tol=0, random_state=seed)
    model.fit(X, y)
    lb = np.asarray(model.lower_bounds_)
    assert lb.shape == (30,)
    assert np.all(np.isfinite(lb))
    assert np.all(np.diff(lb) >= -1e-8 * np.abs(lb[1:])), np.diff(lb).min()
    # the reported bound is the exact log-likelihood, w integrated out
    expected = gllim_ref.joint_log_density(gllim_ref.dense_params(model), X, y).mean()
    assert_allclose(lb[-1], expected, rtol=1e-9)


@pytest.mark.parametrize("n_latent", [1, 3])
@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_em_iteration_matches_reference(gllim_ref, covariance_type, n_latent, em_threading):
    # Parameters after 4 iterations = exact EM step (reference) from those after 3.
    X, y, _ = hybrid_data(gllim_ref, seed=2, n_latent=n_latent)
    kwargs = dict(covariance_type=covariance_type, target_covariance_type="full",
                  n_latent=n_latent, reg_covar=1e-4, tol=0, random_state=0)
    before = gllim_ref.dense_params(GLLiMRegressor(2, max_iter=3, **kwargs).fit(X, y))
    after = GLLiMRegressor(2, max_iter=4, **kwargs).fit(X, y)
    resp = gllim_ref.responsibilities(before, X, y)
    noise_reg, target_reg = gllim_ref.relative_floors(X, y, 1e-4)
    expected = gllim_ref.m_step(X, y, resp, covariance_type, "full", noise_reg, previous=before,
                                target_reg_covar=target_reg)
    got = gllim_ref.dense_params(after)
    for name in ("pi", "c", "Gamma", "A", "Aw", "b", "Sigma"):
        assert_allclose(got[name], expected[name], rtol=1e-6, atol=1e-8, err_msg=name)
    assert_allclose(after.component_posterior(X, y),
                    gllim_ref.responsibilities(got, X, y), rtol=1e-7, atol=1e-10)


def test_latent_coefficients_start_away_from_zero(gllim_ref):
    # A^w = 0 is a fixed point of EM; a one-iteration fit must already have
    # a non-zero latent part (initialised from the residuals).
    X, y, _ = hybrid_data(gllim_ref, seed=3)
    model = GLLiMRegressor(2, n_latent=2, max_iter=1, tol=0, random_state=0).fit(X, y)
    assert model.latent_coef_.shape == (2, 8, 2)
    assert np.all(np.linalg.norm(model.latent_coef_, axis=1) > 1e-3)


def test_n_latent_zero_is_the_default_model():
    rng = np.random.default_rng(4)
    X, y = rng.normal(size=(100, 6)), rng.normal(size=(100, 2))
    a = GLLiMRegressor(2, random_state=0, max_iter=10).fit(X, y)
    b = GLLiMRegressor(2, n_latent=0, random_state=0, max_iter=10).fit(X, y)
    assert a.latent_coef_.shape == (2, 6, 0)
    assert_array_equal(a.predict(X), b.predict(X))
    assert_array_equal(a.lower_bounds_, b.lower_bounds_)


def test_hybrid_predictions_near_oracle(gllim_ref):
    # Strong latent structure: x depends on 3 hidden factors no target explains.
    rng = np.random.default_rng(5)
    true = gllim_ref.random_params(rng, 2, 20, 2, n_latent=3, separation=4.0,
                                   noise=(0.05, 0.2), latent_scale=1.5)
    X, y, _ = gllim_ref.sample(true, 3000, rng)
    X_test, y_test, _ = gllim_ref.sample(true, 2000, rng)
    oracle = gllim_ref.condition_on_x(true, X_test).mean
    rmse_oracle = np.sqrt(np.mean((oracle - y_test) ** 2))
    hybrid = GLLiMRegressor(2, n_latent=3, random_state=0, max_iter=200).fit(X, y)
    rmse_hybrid = np.sqrt(np.mean((hybrid.predict(X_test) - y_test) ** 2))
    assert rmse_hybrid <= 1.1 * rmse_oracle, (rmse_hybrid, rmse_oracle)
    true_ll = gllim_ref.joint_log_density(true, X_test, y_test).mean()
    assert hybrid.joint_log_density(X_test, y_test).mean() >= true_ll - 0.02 * abs(true_ll)
    # the latent part is what makes the diagonal-noise model fit such data
    plain = GLLiMRegressor(2, n_latent=0, random_state=0, max_iter=200).fit(X, y)
    rmse_plain = np.sqrt(np.mean((plain.predict(X_test) - y_test) ** 2))
    assert rmse_plain > 1.5 * rmse_hybrid, (rmse_plain, rmse_hybrid)
    assert (hybrid.joint_log_density(X_test, y_test).mean()
            > plain.joint_log_density(X_test, y_test).mean() + 1.0)


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_every_method_works_with_latent(gllim_ref, covariance_type):
    X, y, _ = hybrid_data(gllim_ref, seed=6, n_latent=2)
    model = GLLiMRegressor(2, covariance_type=covariance_type, n_latent=2, max_iter=10,
                           random_state=0).fit(X, y)
    n = len(X)
    mean, std = model.predict(X, return_std=True)
    _, cov = model.predict(X, return_cov=True)
    assert mean.shape == std.shape == (n, 2) and cov.shape == (n, 2, 2)
    assert_allclose(std**2, np.einsum("nll->nl", cov), rtol=1e-8)
    weights, means, covs = model.predict_mixture(X)
    assert weights.shape == (n, 2) and means.shape == (n, 2, 2) and covs.shape == (2, 2, 2)
    assert_allclose(weights.sum(axis=1), 1.0, rtol=1e-12)
    assert model.sample_y(X[:5], n_samples=4, random_state=0).shape == (5, 2, 4)
    assert model.inverse_predict(y).shape == (n, 8)
    for values in (model.conditional_log_density(X, y), model.joint_log_density(X, y),
                   [model.bic(X, y), model.aic(X, y), model.score(X, y)]):
        assert np.all(np.isfinite(values))


def test_too_many_latent_factors_is_rejected():
    rng = np.random.default_rng(7)
    X, y = rng.normal(size=(60, 5)), rng.normal(size=(60, 2))
    with pytest.raises(ValueError, match="n_latent"):
        GLLiMRegressor(n_latent=4).fit(X, y)
    GLLiMRegressor(n_latent=3, max_iter=2).fit(X, y)  # L + Lw = D is allowed


@pytest.mark.parametrize("reg_covar", [1e-9, 1e-6])
@pytest.mark.parametrize("covariance_type", ["diag", "full"])
def test_log_likelihood_exact_when_noise_reaches_the_floor(gllim_ref, covariance_type,
                                                           reg_covar):
    # With Lw=5 latent factors in D=8 the residual PCA can explain a feature of a
    # component completely, so its noise variance sits at reg_covar. The reported
    # log-likelihood must still be the exact one of the fitted parameters.
    X, y, _ = hybrid_data(gllim_ref, 1, n_latent=5)
    model = GLLiMRegressor(2, covariance_type=covariance_type, n_latent=5, reg_covar=reg_covar,
                           max_iter=1, tol=0, random_state=1).fit(X, y)
    p = gllim_ref.dense_params(model)
    expected = gllim_ref.joint_log_density(p, X, y)
    assert_allclose(model.lower_bounds_[0], expected.mean(), rtol=1e-8)
    assert_allclose(model.joint_log_density(X, y), expected, rtol=1e-8, atol=1e-8)
    X_new, _, _ = hybrid_data(gllim_ref, 2, n_samples=50, n_latent=5)
    assert_allclose(model.predict(X_new), gllim_ref.condition_on_x(p, X_new).mean, rtol=1e-6,
                    atol=1e-8)
