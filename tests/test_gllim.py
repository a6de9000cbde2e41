"""Tests of :class:`gllim_sk.GLLiMRegressor` against independent computations.

The reference values come from dense, brute-force computations written in
``conftest.py`` (the ``gllim_ref`` fixture): Gaussian conditioning of the dense
joint (y, x) mixture, scipy's multivariate normal densities, and an EM step
written directly from the model's definition. Nothing here calls the package's
private helpers.
"""

import pickle
import warnings

import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal
from sklearn.base import clone
from sklearn.exceptions import ConvergenceWarning, NotFittedError
from sklearn.linear_model import LinearRegression
from sklearn.model_selection import GridSearchCV, KFold, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils._param_validation import InvalidParameterError
from sklearn.utils.estimator_checks import parametrize_with_checks

from gllim_sk import GLLiMRegressor

COVARIANCE_TYPES = ("full", "diag", "spherical", "tied", "tied_diag", "tied_spherical")
TARGET_COVARIANCE_TYPES = ("full", "diag", "spherical", "tied")

# With tol=0 or few iterations a ConvergenceWarning is expected; the tests that
# are about the warning use pytest.warns, which records regardless of this filter.
pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")


def make_data(ref, seed=0, n_samples=200, n_features=6, n_targets=2, n_components=3,
              n_latent=0):
    """Data drawn from random true GLLiM parameters, and those parameters."""
    rng = np.random.default_rng(seed)
    params = ref.random_params(rng, n_components, n_features, n_targets, n_latent=n_latent)
    X, y, _ = ref.sample(params, n_samples, rng)
    return X, y, params


def random_resp(n_samples, n_components, seed=0):
    return np.random.default_rng(seed).dirichlet(np.ones(n_components), size=n_samples)


def assert_params_close(p, q, rtol=1e-6, atol=1e-8):
    for name in ("pi", "c", "Gamma", "A", "Aw", "b", "Sigma"):
        assert_allclose(p[name], q[name], rtol=rtol, atol=atol, err_msg=name)


def n_free_parameters(covariance_type, target_covariance_type, K, D, L, n_latent=0):
    """Free parameter count, derived here from the model's definition.

    weights K - 1; target means K L; Gamma_k: full K L(L+1)/2, diag K L,
    spherical K, tied L(L+1)/2; A_k K D L; b_k K D; Sigma_k: full K D(D+1)/2,
    diag K D, spherical K, tied D(D+1)/2, tied_diag D, tied_spherical 1;
    latent A^w_k: K (D Lw - Lw(Lw-1)/2), since A^w_k and A^w_k R give the same
    model for any orthogonal R (the Lw(Lw-1)/2 rotation angles are not identifiable).
    """
    gamma = {"full": K * L * (L + 1) // 2, "diag": K * L, "spherical": K,
             "tied": L * (L + 1) // 2}[target_covariance_type]
    sigma = {"full": K * D * (D + 1) // 2, "diag": K * D, "spherical": K,
             "tied": D * (D + 1) // 2, "tied_diag": D, "tied_spherical": 1}[covariance_type]
    latent = K * (D * n_latent - n_latent * (n_latent - 1) // 2)
    return (K - 1) + K * L + gamma + K * D * L + K * D + sigma + latent


# --------------------------------------------------------------------------- EM


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("target_covariance_type", TARGET_COVARIANCE_TYPES)
@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_em_log_likelihood_never_decreases(gllim_ref, covariance_type, target_covariance_type,
                                           seed):
    # A tiny reg_covar: the floor added after the M-step is not part of the EM
    # maximisation, so a large one could legitimately cost a little likelihood.
    X, y, _ = make_data(gllim_ref, seed=seed, n_samples=150, n_features=5)
    model = GLLiMRegressor(3, covariance_type=covariance_type,
                           target_covariance_type=target_covariance_type, reg_covar=1e-9,
                           max_iter=25, tol=0, init_params="random", random_state=seed)
    model.fit(X, y)
    lb = np.asarray(model.lower_bounds_)
    assert lb.shape == (25,)
    assert np.all(np.isfinite(lb))
    assert np.all(np.diff(lb) >= -1e-8 * np.abs(lb[1:])), np.diff(lb).min()
    assert model.lower_bound_ == lb[-1]


@pytest.mark.parametrize("target_covariance_type", TARGET_COVARIANCE_TYPES)
@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_lower_bound_is_mean_joint_log_likelihood(gllim_ref, covariance_type,
                                                  target_covariance_type):
    X, y, _ = make_data(gllim_ref, seed=3, n_samples=150, n_features=5)
    model = GLLiMRegressor(3, covariance_type=covariance_type,
                           target_covariance_type=target_covariance_type, max_iter=20,
                           random_state=0).fit(X, y)
    expected = gllim_ref.joint_log_density(gllim_ref.dense_params(model), X, y).mean()
    assert_allclose(model.lower_bounds_[-1], expected, rtol=1e-9, atol=1e-9)
    assert_allclose(model.lower_bound_, expected, rtol=1e-9, atol=1e-9)
    assert_allclose(model.joint_log_density(X, y).mean(), expected, rtol=1e-9)


@pytest.mark.parametrize("target_covariance_type", TARGET_COVARIANCE_TYPES)
@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_first_m_step_from_resp_init(gllim_ref, covariance_type, target_covariance_type,
                                     em_threading):
    # max_iter=1: the parameters are the M-step of resp_init and lower_bounds_[0]
    # is their log-likelihood.
    X, y, _ = make_data(gllim_ref, seed=4, n_samples=120, n_features=5)
    resp = random_resp(len(X), 3, seed=4)
    model = GLLiMRegressor(3, covariance_type=covariance_type,
                           target_covariance_type=target_covariance_type, reg_covar=1e-3,
                           resp_init=resp, max_iter=1, tol=0).fit(X, y)
    noise_reg, target_reg = gllim_ref.relative_floors(X, y, 1e-3)
    expected = gllim_ref.m_step(X, y, resp, covariance_type, target_covariance_type, noise_reg,
                                target_reg_covar=target_reg)
    assert model.n_iter_ == 1
    assert_allclose(model.lower_bounds_[0],
                    gllim_ref.joint_log_density(expected, X, y).mean(), rtol=1e-9)
    assert_params_close(gllim_ref.dense_params(model), expected)


@pytest.mark.parametrize("target_covariance_type", ["full", "spherical", "tied"])
@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_em_iteration_matches_reference(gllim_ref, covariance_type, target_covariance_type,
                                        em_threading):
    # Parameters after 4 iterations = reference M-step of the brute-force E-step
    # of the parameters after 3 iterations.
    X, y, _ = make_data(gllim_ref, seed=5, n_samples=150, n_features=5)
    resp = random_resp(len(X), 3, seed=5)
    kwargs = dict(covariance_type=covariance_type, target_covariance_type=target_covariance_type,
                  reg_covar=1e-4, resp_init=resp, tol=0)
    before = gllim_ref.dense_params(GLLiMRegressor(3, max_iter=3, **kwargs).fit(X, y))
    after = GLLiMRegressor(3, max_iter=4, **kwargs).fit(X, y)
    noise_reg, target_reg = gllim_ref.relative_floors(X, y, 1e-4)
    expected = gllim_ref.m_step(X, y, gllim_ref.responsibilities(before, X, y), covariance_type,
                                target_covariance_type, noise_reg, target_reg_covar=target_reg)
    assert_params_close(gllim_ref.dense_params(after), expected)


def test_component_posterior_xy_is_exact_e_step(gllim_ref):
    X, y, _ = make_data(gllim_ref, seed=6)
    model = GLLiMRegressor(3, max_iter=10, random_state=0).fit(X, y)
    p = gllim_ref.dense_params(model)
    assert_allclose(model.component_posterior(X, y), gllim_ref.responsibilities(p, X, y),
                    rtol=1e-7, atol=1e-10)


# ------------------------------------------------ prediction vs dense conditioning


def _fitted_small(ref, covariance_type, target_covariance_type="full", n_latent=0, seed=7):
    X, y, _ = make_data(ref, seed=seed, n_samples=200, n_features=6, n_latent=n_latent)
    model = GLLiMRegressor(3, covariance_type=covariance_type,
                           target_covariance_type=target_covariance_type, n_latent=n_latent,
                           max_iter=15, random_state=0).fit(X, y)
    X_new, y_new, _ = make_data(ref, seed=seed + 100, n_samples=40, n_features=6,
                                n_latent=n_latent)
    return model, X_new, y_new


@pytest.mark.parametrize("n_latent", [0, 2])
@pytest.mark.parametrize("target_covariance_type", ["full", "diag", "tied"])
@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_forward_parameters_match_conditioning(gllim_ref, covariance_type,
                                               target_covariance_type, n_latent):
    model, X_new, _ = _fitted_small(gllim_ref, covariance_type, target_covariance_type,
                                    n_latent)
    p = gllim_ref.dense_params(model)
    cond = gllim_ref.condition_on_x(p, X_new)
    K, D, L = model.inverse_coef_.shape
    assert model.latent_coef_.shape == (K, D, n_latent)
    assert_allclose(model.forward_means_, np.einsum("kdl,kl->kd", p["A"], p["c"]) + p["b"],
                    rtol=1e-9, atol=1e-10)
    assert_allclose(model.forward_coef_, cond.coef, rtol=1e-6, atol=1e-9)
    assert_allclose(model.forward_intercept_, cond.intercept, rtol=1e-6, atol=1e-8)
    assert_allclose(model.forward_covariances_, cond.covs, rtol=1e-6, atol=1e-10)


@pytest.mark.parametrize("n_latent", [0, 2])
@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_predict_matches_conditioning(gllim_ref, covariance_type, n_latent):
    model, X_new, y_new = _fitted_small(gllim_ref, covariance_type, n_latent=n_latent)
    cond = gllim_ref.condition_on_x(gllim_ref.dense_params(model), X_new)
    assert_allclose(model.predict(X_new), cond.mean, rtol=1e-6, atol=1e-8)
    mean, std = model.predict(X_new, return_std=True)
    assert_allclose(mean, cond.mean, rtol=1e-6, atol=1e-8)
    assert_allclose(std, np.sqrt(np.einsum("nll->nl", cond.cov)), rtol=1e-5, atol=1e-8)
    mean, cov = model.predict(X_new, return_cov=True)
    assert_allclose(mean, cond.mean, rtol=1e-6, atol=1e-8)
    assert_allclose(cov, cond.cov, rtol=1e-5, atol=1e-8)
    weights, means, covs = model.predict_mixture(X_new)
    assert_allclose(weights, cond.weights, rtol=1e-6, atol=1e-10)
    assert_allclose(means, cond.means, rtol=1e-6, atol=1e-8)
    assert_allclose(covs, cond.covs, rtol=1e-6, atol=1e-10)
    assert_allclose(model.component_posterior(X_new), cond.weights, rtol=1e-6, atol=1e-10)


@pytest.mark.parametrize("n_latent", [0, 2])
@pytest.mark.parametrize("covariance_type", ["full", "diag", "tied_spherical"])
def test_densities_and_inverse_map_match_brute_force(gllim_ref, covariance_type, n_latent):
    model, X_new, y_new = _fitted_small(gllim_ref, covariance_type, "diag", n_latent)
    p = gllim_ref.dense_params(model)
    joint = gllim_ref.joint_log_density(p, X_new, y_new)
    cond = gllim_ref.condition_on_x(p, X_new)
    assert_allclose(model.joint_log_density(X_new, y_new), joint, rtol=1e-8)
    # log p(y | x) = log p(x, y) - log p(x)
    assert_allclose(model.conditional_log_density(X_new, y_new), joint - cond.log_px,
                    rtol=1e-7, atol=1e-8)
    post_y = gllim_ref.target_posterior(p, y_new)
    assert_allclose(model.component_posterior(y=y_new), post_y, rtol=1e-7, atol=1e-10)
    expected = np.einsum("nk,nkd->nd", post_y,
                         np.einsum("kdl,nl->nkd", p["A"], y_new) + p["b"])
    assert_allclose(model.inverse_predict(y_new), expected, rtol=1e-7, atol=1e-8)


def test_component_posterior_needs_an_argument(gllim_ref):
    model, X_new, _ = _fitted_small(gllim_ref, "diag")
    with pytest.raises((ValueError, TypeError)):
        model.component_posterior()


@pytest.mark.parametrize("n_latent", [0, 1])
def test_sample_y_moments(gllim_ref, n_latent):
    model, X_new, _ = _fitted_small(gllim_ref, "diag", n_latent=n_latent)
    X_new = X_new[:3]
    samples = model.sample_y(X_new, n_samples=20000, random_state=0)
    assert samples.shape == (3, 2, 20000)
    mean, cov = model.predict(X_new, return_cov=True)
    emp_mean = samples.mean(axis=2)
    emp_cov = np.einsum("nls,nms->nlm", samples - emp_mean[..., None],
                        samples - emp_mean[..., None]) / samples.shape[2]
    std = np.sqrt(np.einsum("nll->nl", cov))
    assert np.all(np.abs(emp_mean - mean) < 5 * std / np.sqrt(20000))
    assert_allclose(emp_cov, cov, atol=0.05 * std.max() ** 2)
    # reproducible with the same random_state, different with another
    assert_array_equal(model.sample_y(X_new, 5, random_state=1),
                       model.sample_y(X_new, 5, random_state=1))
    assert not np.allclose(model.sample_y(X_new, 5, random_state=1),
                           model.sample_y(X_new, 5, random_state=2))


@pytest.mark.parametrize("n_latent", [0, 2])
@pytest.mark.parametrize("target_covariance_type", TARGET_COVARIANCE_TYPES)
@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_bic_aic(gllim_ref, covariance_type, target_covariance_type, n_latent):
    X, y, _ = make_data(gllim_ref, seed=8, n_samples=100, n_features=5)
    model = GLLiMRegressor(2, covariance_type=covariance_type,
                           target_covariance_type=target_covariance_type, n_latent=n_latent,
                           max_iter=3, random_state=0).fit(X, y)
    X_new, y_new, _ = make_data(gllim_ref, seed=9, n_samples=50, n_features=5)
    log_lik = gllim_ref.joint_log_density(gllim_ref.dense_params(model), X_new, y_new).sum()
    k = n_free_parameters(covariance_type, target_covariance_type, 2, 5, 2, n_latent)
    assert_allclose(model.bic(X_new, y_new), -2 * log_lik + k * np.log(50), rtol=1e-9)
    assert_allclose(model.aic(X_new, y_new), -2 * log_lik + 2 * k, rtol=1e-9)


# ------------------------------------------------------- statistical behaviour


def test_predictions_approach_oracle(gllim_ref):
    rng = np.random.default_rng(10)
    true = gllim_ref.random_params(rng, 3, 10, 2, separation=4.0)
    X, y, _ = gllim_ref.sample(true, 3000, rng)
    X_test, y_test, _ = gllim_ref.sample(true, 2000, rng)
    oracle = gllim_ref.condition_on_x(true, X_test).mean
    model = GLLiMRegressor(3, n_init=2, random_state=0).fit(X, y)
    rmse_model = np.sqrt(np.mean((model.predict(X_test) - y_test) ** 2))
    rmse_oracle = np.sqrt(np.mean((oracle - y_test) ** 2))
    assert rmse_model <= 1.1 * rmse_oracle, (rmse_model, rmse_oracle)
    # the fitted log-likelihood on new data is close to the true parameters' one
    true_ll = gllim_ref.joint_log_density(true, X_test, y_test).mean()
    assert model.joint_log_density(X_test, y_test).mean() >= true_ll - 0.02 * abs(true_ll)


def test_single_component_is_closed_form_inverse_regression(gllim_ref):
    X, y, _ = make_data(gllim_ref, seed=11, n_samples=300, n_features=7, n_components=1)
    reg = 1e-6
    model = GLLiMRegressor(1, covariance_type="diag", reg_covar=reg).fit(X, y)
    # ordinary least squares of x on [y, 1]
    Y1 = np.hstack([y, np.ones((len(y), 1))])
    coef, *_ = np.linalg.lstsq(Y1, X, rcond=None)
    A, b = coef[:-1].T, coef[-1]
    noise_reg, target_reg = gllim_ref.relative_floors(X, y, reg)
    s = np.mean((X - Y1 @ coef) ** 2, axis=0) + noise_reg
    c = y.mean(axis=0)
    G = np.cov(y.T, bias=True) + target_reg * np.eye(2)
    assert_allclose(model.inverse_coef_[0], A, rtol=1e-6, atol=1e-9)
    assert_allclose(model.inverse_intercept_[0], b, rtol=1e-6, atol=1e-9)
    assert_allclose(model.noise_covariances_[0], s, rtol=1e-6)
    assert_allclose(model.target_covariances_[0], G, rtol=1e-6)
    # forward map of the linear-Gaussian inverse regression, eq. (3)
    S_star = np.linalg.inv(np.linalg.inv(G) + A.T @ (A / s[:, None]))
    A_star = S_star @ (A.T / s)
    b_star = S_star @ (np.linalg.solve(G, c) - A.T @ (b / s))
    assert_allclose(model.predict(X), X @ A_star.T + b_star, rtol=1e-6, atol=1e-8)
    assert_allclose(model.predict(X, return_cov=True)[1], np.broadcast_to(S_star, (300, 2, 2)),
                    rtol=1e-6, atol=1e-10)
    # one component: EM is at its fixed point after the first M-step
    assert_allclose(model.lower_bounds_, model.lower_bounds_[0], rtol=1e-10)


def test_single_component_full_noise_is_least_squares(gllim_ref):
    # With K=1 and full covariances the joint Gaussian of (y, x) is unconstrained,
    # so E[y | x] is the ordinary least-squares regression of y on x.
    X, y, _ = make_data(gllim_ref, seed=12, n_samples=300, n_features=5, n_components=1)
    model = GLLiMRegressor(1, covariance_type="full", reg_covar=1e-12).fit(X, y)
    expected = LinearRegression().fit(X, y).predict(X)
    assert_allclose(model.predict(X), expected, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("covariance_type", ["diag", "spherical", "full", "tied_diag"])
def test_far_apart_components_stay_exact(gllim_ref, covariance_type):
    # Components 100x further apart than their noise: the expanded quadratic
    # forms of the E-step must not lose the small differences.
    rng = np.random.default_rng(15)
    true = gllim_ref.random_params(rng, 3, 6, 2)
    true["b"] *= 100.0
    true["Sigma"] *= 1e-2
    X, y, z = gllim_ref.sample(true, 300, rng)
    resp = 0.97 * np.eye(3)[z] + 0.01
    model = GLLiMRegressor(3, covariance_type=covariance_type, resp_init=resp, max_iter=1,
                           reg_covar=1e-12).fit(X, y)
    p = gllim_ref.dense_params(model)
    noise_reg, target_reg = gllim_ref.relative_floors(X, y, 1e-12)
    expected = gllim_ref.m_step(X, y, resp, covariance_type, "full", noise_reg,
                                target_reg_covar=target_reg)
    assert_params_close(p, expected, rtol=1e-6, atol=1e-9)
    assert_allclose(model.joint_log_density(X, y), gllim_ref.joint_log_density(p, X, y),
                    rtol=1e-9)
    X_new, _, _ = gllim_ref.sample(true, 100, rng)
    assert_allclose(model.predict(X_new), gllim_ref.condition_on_x(p, X_new).mean,
                    rtol=1e-8, atol=1e-9)


@pytest.mark.parametrize("covariance_type", ["diag", "full"])
def test_translation_equivariance(gllim_ref, covariance_type):
    # Shifting X and y by constants shifts the intercepts and the predictions and
    # leaves the likelihood unchanged. Targets far from 0 (1e5) must not lose
    # precision: computations in centred coordinates keep errors near 1e-10 here.
    X, y, _ = make_data(gllim_ref, seed=16, n_samples=300)
    resp = random_resp(len(X), 3, seed=16)
    kwargs = dict(covariance_type=covariance_type, resp_init=resp, max_iter=5, tol=0)
    base = GLLiMRegressor(3, **kwargs).fit(X, y)
    for shift_x, shift_y in [(1e5, 0.0), (0.0, 1e5), (-3e4, 2e4)]:
        moved = GLLiMRegressor(3, **kwargs).fit(X + shift_x, y + shift_y)
        assert_allclose(moved.predict(X + shift_x) - shift_y, base.predict(X), atol=1e-7,
                        err_msg=f"shift X {shift_x}, y {shift_y}")
        assert_allclose(moved.lower_bounds_, base.lower_bounds_, rtol=1e-9,
                        err_msg=f"shift X {shift_x}, y {shift_y}")


# --------------------------------------------------------- scikit-learn API


@parametrize_with_checks(
    [
        GLLiMRegressor(),
        GLLiMRegressor(n_components=2, n_latent=1, covariance_type="tied"),
        GLLiMRegressor(n_components=2, covariance_type="full", target_covariance_type="diag"),
        GLLiMRegressor(n_components=2, covariance_type="tied_spherical",
                       target_covariance_type="tied", init_params="random"),
    ]
)
def test_sklearn_compatible(estimator, check):
    if "cuda" in str(check):
        # scikit-learn runs its CUDA checks whenever torch was built with CUDA.
        torch = pytest.importorskip("torch")
        if not torch.cuda.is_available():
            pytest.skip("no CUDA device")
    check(estimator)


def _regression_data(n=120, D=6, L=2, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.uniform(-2, 2, size=(n, L))
    W = rng.normal(size=(L, D))
    X = np.tanh(y) @ W + 0.1 * rng.normal(size=(n, D))
    return X, y


def test_pipeline_gridsearch_and_cross_val():
    X, y = _regression_data()
    pipe = make_pipeline(StandardScaler(), GLLiMRegressor(2, random_state=0))
    pipe.fit(X, y)
    assert pipe.predict(X).shape == y.shape
    assert pipe.score(X, y) > 0.5
    search = GridSearchCV(GLLiMRegressor(random_state=0), {"n_components": [1, 2, 3]}, cv=3)
    search.fit(X, y)
    assert search.best_params_["n_components"] in (1, 2, 3)
    assert np.all(np.isfinite(search.cv_results_["mean_test_score"]))
    scores = cross_val_score(GLLiMRegressor(2, random_state=0), X, y,
                             cv=KFold(3, shuffle=True, random_state=0))
    assert scores.shape == (3,)
    assert np.all(scores > 0.5)


def test_clone_and_pickle_give_identical_predictions():
    X, y = _regression_data()
    model = GLLiMRegressor(2, n_latent=1, random_state=0).fit(X, y)
    restored = pickle.loads(pickle.dumps(model))
    assert_array_equal(restored.predict(X), model.predict(X))
    assert_array_equal(restored.predict(X, return_cov=True)[1],
                       model.predict(X, return_cov=True)[1])
    cloned = clone(model)
    assert not hasattr(cloned, "weights_")
    assert_array_equal(cloned.fit(X, y).predict(X), model.predict(X))


# ---------------------------------------------------------------- behaviours


def test_tol_zero_runs_exactly_max_iter():
    X, y = _regression_data()
    model = GLLiMRegressor(2, tol=0, max_iter=7, random_state=0).fit(X, y)
    assert model.n_iter_ == 7
    assert len(model.lower_bounds_) == 7
    assert not model.converged_


def test_convergence_warning_when_not_converged():
    X, y = _regression_data()
    with pytest.warns(ConvergenceWarning):
        model = GLLiMRegressor(3, tol=1e-12, max_iter=3, init_params="random",
                               random_state=0).fit(X, y)
    assert not model.converged_
    assert model.n_iter_ == 3


def test_converges_without_warning():
    X, y = _regression_data()
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        model = GLLiMRegressor(2, tol=1e-3, max_iter=500, random_state=0).fit(X, y)
    assert model.converged_
    assert 1 <= model.n_iter_ < 500
    assert len(model.lower_bounds_) == model.n_iter_
    # the stopping rule: the last change of the lower bound is below tol
    assert abs(model.lower_bounds_[-1] - model.lower_bounds_[-2]) < 1e-3


def test_n_init_keeps_the_best_lower_bound(gllim_ref):
    X, y, _ = make_data(gllim_ref, seed=13, n_samples=200, n_components=4)
    singles = [GLLiMRegressor(4, init_params="random", max_iter=30, random_state=s)
               .fit(X, y).lower_bound_ for s in range(6)]
    best = GLLiMRegressor(4, init_params="random", n_init=6, max_iter=30, random_state=0)
    best.fit(X, y)
    assert best.lower_bound_ >= np.median(singles) - 1e-10
    # the kept parameters are the ones the reported bound belongs to
    expected = gllim_ref.joint_log_density(gllim_ref.dense_params(best), X, y).mean()
    assert_allclose(best.lower_bound_, expected, rtol=1e-9)


def test_warm_start_continues():
    # The second fit starts from the first one's parameters: its first bound is
    # theirs (no new initialisation) and every further M-step continues the same
    # EM path as one long cold fit.
    X, y = _regression_data()
    kwargs = dict(tol=0, random_state=0, init_params="random")
    warm = GLLiMRegressor(3, max_iter=5, warm_start=True, **kwargs).fit(X, y)
    first_bound = warm.lower_bound_
    warm.fit(X, y)
    assert_allclose(warm.lower_bounds_[0], first_bound, rtol=1e-10)
    cold = GLLiMRegressor(3, max_iter=9, **kwargs).fit(X, y)
    assert_allclose(warm.lower_bounds_, cold.lower_bounds_[4:], rtol=1e-8)
    assert_allclose(warm.predict(X), cold.predict(X), rtol=1e-6, atol=1e-8)
    # without warm_start, a second fit starts again from scratch
    again = clone(cold).fit(X, y)
    assert_allclose(again.lower_bounds_, cold.lower_bounds_, rtol=1e-12)


@pytest.mark.parametrize("init_params", ["kmeans", "kmeans_joint", "random"])
def test_random_state_reproducible(init_params):
    X, y = _regression_data()
    a = GLLiMRegressor(3, init_params=init_params, max_iter=10, random_state=1).fit(X, y)
    b = GLLiMRegressor(3, init_params=init_params, max_iter=10, random_state=1).fit(X, y)
    assert_array_equal(a.predict(X), b.predict(X))
    assert_array_equal(a.weights_, b.weights_)
    assert np.isfinite(a.lower_bound_)


@pytest.mark.parametrize("target_covariance_type", ["full", "diag", "spherical", "tied"])
def test_kmeans_init_mixture_on_y_matches_gaussian_mixture(target_covariance_type):
    # The "kmeans" initialisation refines k-means labels by EM on a Gaussian mixture of y,
    # run through GLLiM's own EM steps with no features. Run to convergence, it must land
    # on the mixture scikit-learn's GaussianMixture finds from the same labels.
    from sklearn.mixture import GaussianMixture

    from gllim_sk import _init

    rng = np.random.default_rng(3)
    centres = np.array([[0.0, 0.0], [4.0, 1.0], [1.0, 5.0]])
    y = np.concatenate([c + rng.normal(size=(150, 2)) * [1.0, 0.5] for c in centres])
    labels = np.repeat(np.arange(3), 150)
    reg = 1e-6 * y.var(axis=0).mean()  # the mixture's floor is relative to y's variance
    one_hot = np.eye(3)[labels]
    means = one_hot.T @ y / one_hot.sum(0)[:, None]
    covs = np.stack([np.cov(y[labels == k].T, bias=True) + reg * np.eye(2) for k in range(3)])
    if target_covariance_type == "diag":
        covs = covs * np.eye(2)
    elif target_covariance_type == "spherical":
        covs = np.trace(covs, axis1=1, axis2=2)[:, None, None] / 2 * np.eye(2)
    elif target_covariance_type == "tied":
        covs = np.broadcast_to(np.einsum("k,kij->ij", one_hot.mean(0), covs - reg * np.eye(2))
                               + reg * np.eye(2), covs.shape)
    precisions = np.linalg.inv(covs)
    precisions = {"full": precisions, "diag": np.einsum("kii->ki", precisions),
                  "spherical": precisions[:, 0, 0], "tied": precisions[0]}[target_covariance_type]
    reference = GaussianMixture(
        3, covariance_type=target_covariance_type, reg_covar=reg, tol=1e-12, max_iter=1000,
        weights_init=one_hot.mean(0), means_init=means, precisions_init=precisions,
    ).fit(y)

    resp = _init.refine_by_target_mixture(y, np.ascontiguousarray(one_hot.T),
                                          target_covariance_type, reg, 1000, 1e-12)
    assert_allclose(resp.T, reference.predict_proba(y), atol=1e-5)


def test_em_threads_follow_blas_limits():
    # Middle-sized and large fits split the samples over the threads BLAS may use; a
    # threadpoolctl limit of 1 (or too few samples, or a small problem) keeps EM serial,
    # with one BLAS thread's product orientation when BLAS has one thread.
    from threadpoolctl import threadpool_info, threadpool_limits

    from gllim_sk import _engine

    big = 1e12
    assert _engine._em_parallelism(100_000, 1.0) == (1, 1)
    assert _engine._em_parallelism(10, big)[0] == 1
    with threadpool_limits(limits=1, user_api="blas"):
        assert _engine._em_parallelism(100_000, big) == (1, 1)
    with threadpool_limits(limits=2, user_api="blas"):
        n_threads = max(lib["num_threads"] for lib in threadpool_info()
                        if lib["user_api"] == "blas")
        assert _engine._em_parallelism(100_000, big) == ((2, 1) if n_threads >= 2 else (1, 1))


def test_one_dimensional_target():
    X, y = _regression_data(L=1)
    y1 = y.ravel()
    model = GLLiMRegressor(2, random_state=0).fit(X, y1)
    assert model.n_targets_ == 1
    pred = model.predict(X)
    assert pred.shape == (len(X),)
    mean, std = model.predict(X, return_std=True)
    assert mean.shape == std.shape == (len(X),)
    mean, cov = model.predict(X, return_cov=True)
    assert_allclose(np.reshape(cov, len(X)), std**2, rtol=1e-8)
    assert model.sample_y(X[:4], n_samples=3, random_state=0).shape == (4, 3)
    # the same as fitting the (n, 1) column
    model2 = GLLiMRegressor(2, random_state=0).fit(X, y)
    assert model2.predict(X).shape == (len(X), 1)
    assert_allclose(model2.predict(X)[:, 0], pred, rtol=1e-10)


def test_float32_input():
    X, y = _regression_data()
    model64 = GLLiMRegressor(2, random_state=0).fit(X, y)
    model32 = GLLiMRegressor(2, random_state=0).fit(X.astype(np.float32), y.astype(np.float32))
    pred = model32.predict(X.astype(np.float32))
    assert pred.dtype == np.float32
    assert np.all(np.isfinite(pred))
    assert_allclose(pred, model64.predict(X), rtol=1e-3, atol=1e-3 * np.abs(y).max())


def test_inputs_are_not_modified():
    X, y = _regression_data()
    resp = random_resp(len(X), 2)
    copies = X.copy(), y.copy(), resp.copy()
    model = GLLiMRegressor(2, resp_init=resp, max_iter=5).fit(X, y)
    model.predict(X, return_cov=True)
    model.sample_y(X, 2, random_state=0)
    model.conditional_log_density(X, y)
    model.joint_log_density(X, y)
    model.component_posterior(X, y)
    model.inverse_predict(y)
    model.bic(X, y)
    for before, after in zip(copies, (X, y, resp), strict=True):
        assert_array_equal(before, after)
    assert model.resp_init is resp


def test_non_contiguous_input_gives_same_fit():
    X, y = _regression_data()
    Xf = np.asfortranarray(X)
    Xs = np.hstack([X, X])[:, ::2]  # a strided view with X's values
    Xs[:, :] = X
    a = GLLiMRegressor(2, random_state=0, max_iter=10).fit(X, y)
    for other in (Xf, Xs):
        b = GLLiMRegressor(2, random_state=0, max_iter=10).fit(other, y)
        assert_allclose(b.predict(other), a.predict(X), rtol=1e-10, atol=1e-12)


# ----------------------------------------------------------------- bad input


@pytest.mark.parametrize("where", ["X", "y"])
@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_non_finite_input_is_rejected(where, value):
    X, y = _regression_data()
    X, y = X.copy(), y.copy()
    (X if where == "X" else y)[3, 1] = value
    with pytest.raises(ValueError, match="(?i)nan|inf"):
        GLLiMRegressor().fit(X, y)


def test_non_finite_input_at_predict_time_is_rejected():
    X, y = _regression_data()
    model = GLLiMRegressor(max_iter=3).fit(X, y)
    bad = X.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="(?i)nan"):
        model.predict(bad)
    bad_y = y.copy()
    bad_y[0, 0] = np.inf
    with pytest.raises(ValueError, match="(?i)inf"):
        model.conditional_log_density(X, bad_y)


def test_wrong_shapes_are_rejected():
    X, y = _regression_data()
    model = GLLiMRegressor(max_iter=3)
    with pytest.raises(ValueError, match="(?i)2d|2-d|reshape"):
        model.fit(X[:, 0], y)
    with pytest.raises(ValueError):
        model.fit(X, y[:, :, None])
    with pytest.raises(ValueError, match="(?i)inconsistent|samples"):
        model.fit(X, y[:-1])
    model.fit(X, y)
    with pytest.raises(ValueError, match="(?i)features"):
        model.predict(X[:, :-1])
    with pytest.raises(ValueError, match="(?i)target"):
        model.conditional_log_density(X, y[:, :1])
    with pytest.raises(ValueError, match="(?i)target"):
        model.inverse_predict(np.hstack([y, y]))


def test_more_targets_than_features_is_rejected():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="(?i)target"):
        GLLiMRegressor().fit(rng.normal(size=(50, 2)), rng.normal(size=(50, 3)))


def test_more_components_than_samples_is_rejected():
    X, y = _regression_data(n=5)
    with pytest.raises(ValueError, match="(?i)n_components|samples"):
        GLLiMRegressor(6).fit(X, y)


def test_predict_before_fit_raises():
    X, _ = _regression_data()
    with pytest.raises(NotFittedError):
        GLLiMRegressor().predict(X)


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_constant_feature_is_handled(covariance_type):
    X, y = _regression_data()
    X = X.copy()
    X[:, 2] = 3.0
    model = GLLiMRegressor(2, covariance_type=covariance_type, random_state=0).fit(X, y)
    mean, cov = model.predict(X, return_cov=True)
    assert np.all(np.isfinite(mean)) and np.all(np.isfinite(cov))
    assert np.all(np.isfinite(model.lower_bounds_))
    assert model.score(X, y) > 0.5


def test_duplicated_data_gives_the_same_fit():
    # Every moment in EM is a responsibility-weighted mean, so fitting each row
    # twice (with the same initial responsibilities) must give the same model.
    X, y = _regression_data()
    resp = random_resp(len(X), 2)
    a = GLLiMRegressor(2, resp_init=resp, max_iter=10, tol=0).fit(X, y)
    b = GLLiMRegressor(2, resp_init=np.vstack([resp, resp]), max_iter=10, tol=0).fit(
        np.vstack([X, X]), np.vstack([y, y]))
    assert_allclose(b.predict(X), a.predict(X), rtol=1e-8, atol=1e-10)
    assert_allclose(b.lower_bounds_, a.lower_bounds_, rtol=1e-9)


def test_many_identical_rows_are_handled():
    X, y = _regression_data()
    X, y = X.copy(), y.copy()
    X[:60], y[:60] = X[0], y[0]
    model = GLLiMRegressor(3, random_state=0).fit(X, y)
    mean, cov = model.predict(X, return_cov=True)
    assert np.all(np.isfinite(mean)) and np.all(np.isfinite(cov))
    assert np.all(np.isfinite(model.lower_bounds_))


@pytest.mark.parametrize("target_covariance_type", TARGET_COVARIANCE_TYPES)
def test_constant_target_is_handled(target_covariance_type):
    X, y = _regression_data()
    y = y.copy()
    y[:, 1] = 5.0
    model = GLLiMRegressor(2, target_covariance_type=target_covariance_type,
                           random_state=0).fit(X, y)
    mean, std = model.predict(X, return_std=True)
    assert np.all(np.isfinite(mean)) and np.all(np.isfinite(std))
    assert_allclose(mean[:, 1], 5.0, atol=1e-3)


def test_component_that_empties_is_handled(gllim_ref, em_threading):
    # Component 2 starts with (almost) no responsibility: its weight underflows
    # during EM. Everything must stay finite.
    X, y, _ = make_data(gllim_ref, seed=14, n_samples=150, n_components=2)
    resp = np.zeros((150, 3))
    resp[:, 0] = np.linspace(0, 1, 150)
    resp[:, 1] = 1 - resp[:, 0]
    resp[:, 2] = 1e-300
    resp /= resp.sum(axis=1, keepdims=True)
    model = GLLiMRegressor(3, resp_init=resp, max_iter=30, tol=0).fit(X, y)
    for name in ("weights_", "target_means_", "target_covariances_", "inverse_coef_",
                 "inverse_intercept_", "noise_covariances_", "forward_coef_",
                 "forward_intercept_", "forward_covariances_"):
        assert np.all(np.isfinite(getattr(model, name))), name
    assert np.all(np.isfinite(model.lower_bounds_))
    lb = np.asarray(model.lower_bounds_)
    assert np.all(np.diff(lb) >= -1e-8 * np.abs(lb[1:]))
    mean, cov = model.predict(X, return_cov=True)
    assert np.all(np.isfinite(mean)) and np.all(np.isfinite(cov))
    assert np.all(np.isfinite(model.conditional_log_density(X, y)))


@pytest.mark.parametrize(
    "make_bad",
    [
        lambda r: r[:-1],  # wrong number of rows
        lambda r: r[:, :1],  # wrong number of columns
        lambda r: r[:, :, None],  # wrong dimension
        lambda r: np.where(np.arange(r.size).reshape(r.shape) == 3, -0.5, r),  # negative
        lambda r: np.where(np.arange(r.size).reshape(r.shape) == 3, np.nan, r),  # NaN
    ],
    ids=["rows", "columns", "ndim", "negative", "nan"],
)
def test_bad_resp_init_is_rejected(make_bad):
    X, y = _regression_data()
    with pytest.raises(ValueError, match="(?i)resp_init"):
        GLLiMRegressor(2, resp_init=make_bad(random_resp(len(X), 2))).fit(X, y)


@pytest.mark.parametrize(
    "params",
    [
        {"covariance_type": "bogus"},
        {"target_covariance_type": "tied_diag"},
        {"n_components": 0},
        {"n_components": 1.5},
        {"n_latent": -1},
        {"reg_covar": -1.0},
        {"max_iter": 0},
        {"tol": -1.0},
        {"n_init": 0},
        {"init_params": "kmeans++"},
        {"verbose_interval": 0},
    ],
    ids=lambda p: next(iter(p)),
)
def test_invalid_parameters_are_rejected(params):
    X, y = _regression_data()
    with pytest.raises(InvalidParameterError, match=next(iter(params))):
        GLLiMRegressor(**params).fit(X, y)
