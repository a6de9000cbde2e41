"""Tests of :class:`gllim_sk.StudentGLLiMRegressor` against independent computations.

References: scipy's multivariate t on the dense joint (y, x) of each component (the
t with 2 alpha_k degrees of freedom and shape V_k / alpha_k, V_k the joint covariance of
the Gaussian GLLiM with the same parameters), an EM step of the Student model written
here from its definition with dense matrices, the conditional t written from the
standard conditioning formula, and data drawn from known Student parameters.
"""

import warnings

import numpy as np
import pytest
from numpy.testing import assert_allclose
from scipy.optimize import brentq
from scipy.special import digamma, logsumexp
from scipy.stats import multivariate_t
from sklearn.utils.estimator_checks import parametrize_with_checks

from gllim_sk import GLLiMRegressor, StudentGLLiMRegressor, _init
from gllim_sk._student import inverse_digamma


def relative_floors(X, y, reg_covar):
    """The floors added for ``reg_covar`` (relative): times the mean variance of the
    features for Sigma, of the targets for Gamma."""
    return reg_covar * np.var(X, axis=0).mean(), reg_covar * np.var(y, axis=0).mean()

COVARIANCE_TYPES = ("full", "diag", "spherical", "tied", "tied_diag", "tied_spherical")
pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")


# --------------------------------------------------------------------------- references
def student_joint_terms(ref, p, alpha, X, y):
    """(n, K) log pi_k + log t([y; x]) and (n, K) squared distances under V_k."""
    means, covs = ref.joint_gaussians(p)
    Z = np.hstack([y, X])
    terms, delta = [], []
    for k in range(len(alpha)):
        t = multivariate_t(means[k], covs[k] / alpha[k], df=2 * alpha[k])
        terms.append(np.log(p["pi"][k]) + t.logpdf(Z))
        d = Z - means[k]
        delta.append(np.einsum("ni,ni->n", d, np.linalg.solve(covs[k], d.T).T))
    return np.column_stack(terms), np.column_stack(delta)


def student_em_step(ref, p, alpha, X, y, covariance_type, target_covariance_type, reg):
    """One dense Student EM step (E-step under p, alpha; then the M-step), Lw = 0, with
    the relative floors of ``reg``."""
    n, D = X.shape
    L = y.shape[1]
    dim = L + D
    terms, delta = student_joint_terms(ref, p, alpha, X, y)
    resp = np.exp(terms - logsumexp(terms, axis=1, keepdims=True))
    u = (alpha + dim / 2) / (1 + delta / 2)
    K = resp.shape[1]
    nk = resp.sum(axis=0)
    c, Gamma = np.zeros((K, L)), np.zeros((K, L, L))
    A, b, Sigma = np.zeros((K, D, L)), np.zeros((K, D)), np.zeros((K, D, D))
    new_alpha = np.zeros(K)
    for k in range(K):
        w = resp[:, k] * u[:, k]
        c[k] = w @ y / w.sum()
        yc = y - c[k]
        Gamma[k] = (w * yc.T) @ yc / nk[k]
        Y1 = np.hstack([y, np.ones((n, 1))])
        coef = np.linalg.solve((w * Y1.T) @ Y1, (w * Y1.T) @ X).T
        A[k], b[k] = coef[:, :L], coef[:, L]
        R = X - Y1 @ coef.T
        Sigma[k] = (w * R.T) @ R / nk[k]
        target = digamma(alpha[k] + dim / 2) - resp[:, k] @ np.log1p(delta[:, k] / 2) / nk[k]
        new_alpha[k] = brentq(lambda a, t=target: digamma(a) - t, 1e-8, 1e8, xtol=1e-14)
    pi = nk / n
    noise_floor, target_floor = relative_floors(X, y, reg)
    return {
        "pi": pi, "c": c, "A": A, "Aw": np.zeros((K, D, 0)), "b": b,
        "Gamma": ref.reduce_covariance(Gamma, target_covariance_type, pi, target_floor),
        "Sigma": ref.reduce_covariance(Sigma, covariance_type, pi, noise_floor),
    }, new_alpha


def draw_student(ref, p, alpha, n, rng):
    """(X, y) from the Student GLLiM: u ~ Gamma(alpha), then the Gaussian model / u."""
    K, D, L = p["A"].shape
    z = rng.choice(K, size=n, p=p["pi"])
    u = rng.gamma(alpha[z])
    X, y = np.empty((n, D)), np.empty((n, L))
    for k in range(K):
        idx = np.flatnonzero(z == k)
        s = 1 / np.sqrt(u[idx])[:, None]
        yk = p["c"][k] + s * rng.multivariate_normal(np.zeros(L), p["Gamma"][k], idx.size)
        e = s * rng.multivariate_normal(np.zeros(D), p["Sigma"][k], idx.size)
        y[idx] = yk
        X[idx] = yk @ p["A"][k].T + p["b"][k] + e
    return X, y


def student_predictive(ref, p, alpha, X):
    """Gating weights, means, covariances and mean of p(y | x) by t conditioning.

    For a t with df nu, location mu and shape S, partitioned (y, x): x is t(nu, mu_x,
    S_xx); y | x is t with df nu + D, location mu_y + S_yx S_xx^-1 (x - mu_x) and shape
    (nu + d_x) / (nu + D) (S_yy - S_yx S_xx^-1 S_xy), d_x = (x - mu_x)' S_xx^-1 (x - mu_x).
    """
    means, covs = ref.joint_gaussians(p)
    K, L = p["c"].shape
    n, D = X.shape
    log_terms, comp_means, comp_covs = [], [], []
    for k in range(K):
        nu = 2 * alpha[k]
        S = covs[k] / alpha[k]
        mu_y, mu_x = means[k, :L], means[k, L:]
        S_xx, S_yx, S_yy = S[L:, L:], S[:L, L:], S[:L, :L]
        log_terms.append(np.log(p["pi"][k]) + multivariate_t(mu_x, S_xx, df=nu).logpdf(X))
        gain = np.linalg.solve(S_xx, S_yx.T).T
        d = X - mu_x
        d_x = np.einsum("ni,ni->n", d, np.linalg.solve(S_xx, d.T).T)
        comp_means.append(mu_y + d @ gain.T)
        shape = ((nu + d_x) / (nu + D))[:, None, None] * (S_yy - gain @ S_yx.T)
        comp_covs.append(shape * (nu + D) / (nu + D - 2))
    log_terms = np.column_stack(log_terms)
    weights = np.exp(log_terms - logsumexp(log_terms, axis=1, keepdims=True))
    comp_means = np.stack(comp_means, axis=1)
    comp_covs = np.stack(comp_covs, axis=1)
    return weights, comp_means, comp_covs, np.einsum("nk,nkl->nl", weights, comp_means)


def heavy_tailed_data(ref, seed, n=300, D=5, L=2, K=3, alpha=2.0):
    rng = np.random.default_rng(seed)
    p = ref.random_params(rng, K, D, L)
    return (*draw_student(ref, p, np.full(K, alpha), n, rng), p)


@pytest.fixture(scope="module")
def dense_ref(gllim_ref):
    from conftest import reduce_covariance

    gllim_ref.reduce_covariance = reduce_covariance
    return gllim_ref


# --------------------------------------------------------------------------- the math
def test_inverse_digamma_inverts_scipy_digamma():
    x = np.logspace(-3, 5, 200)
    assert_allclose(inverse_digamma(digamma(x)), x, rtol=1e-12)


# --------------------------------------------------------------------------- densities, E-step
@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_joint_density_and_estep_match_scipy_multivariate_t(dense_ref, covariance_type):
    X, y, _ = heavy_tailed_data(dense_ref, 0)
    model = StudentGLLiMRegressor(3, covariance_type=covariance_type, max_iter=8,
                                  random_state=0).fit(X, y)
    p = dense_ref.dense_params(model)
    alpha = model.dof_ / 2
    terms, delta = student_joint_terms(dense_ref, p, alpha, X, y)
    assert_allclose(model.joint_log_density(X, y), logsumexp(terms, axis=1), rtol=1e-9)
    resp = np.exp(terms - logsumexp(terms, axis=1, keepdims=True))
    assert_allclose(model.component_posterior(X, y), resp, atol=1e-9)
    dim = X.shape[1] + y.shape[1]
    u = (alpha + dim / 2) / (1 + delta / 2)
    assert_allclose(model.outlier_weights(X, y), (resp * u / alpha).sum(axis=1), rtol=1e-8)
    # The mean log-likelihood recorded for the fitted parameters is this density's.
    assert_allclose(model.lower_bound_, logsumexp(terms, axis=1).mean(), rtol=1e-9)


def test_joint_density_with_latent_factors_matches_scipy(dense_ref):
    X, y, _ = heavy_tailed_data(dense_ref, 1, D=6)
    model = StudentGLLiMRegressor(2, n_latent=2, max_iter=6, random_state=0).fit(X, y)
    p = dense_ref.dense_params(model)
    terms, _ = student_joint_terms(dense_ref, p, model.dof_ / 2, X, y)
    assert_allclose(model.joint_log_density(X, y), logsumexp(terms, axis=1), rtol=1e-9)


@pytest.mark.parametrize("target_covariance_type", ["full", "diag", "tied"])
@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_em_step_matches_dense_student_em(dense_ref, covariance_type, target_covariance_type):
    X, y, _ = heavy_tailed_data(dense_ref, 2, n=200, D=4)
    resp0 = np.random.default_rng(0).dirichlet(np.ones(3), size=200)
    kw = dict(covariance_type=covariance_type, target_covariance_type=target_covariance_type,
              resp_init=resp0, reg_covar=1e-6, tol=0.0)
    first = StudentGLLiMRegressor(3, max_iter=1, **kw).fit(X, y)
    # The first M-step uses u = 1: it is the Gaussian one, with alpha = dof_init / 2.
    gauss = GLLiMRegressor(3, max_iter=1, **kw).fit(X, y)
    for name in ("weights_", "target_means_", "inverse_coef_", "noise_covariances_"):
        assert_allclose(getattr(first, name), getattr(gauss, name), rtol=1e-10)
    assert_allclose(first.dof_, 40.0)
    second = StudentGLLiMRegressor(3, max_iter=2, **kw).fit(X, y)
    expected, alpha = student_em_step(dense_ref, dense_ref.dense_params(first), first.dof_ / 2,
                                      X, y, covariance_type, target_covariance_type, 1e-6)
    got = dense_ref.dense_params(second)
    for name in ("pi", "c", "Gamma", "A", "b", "Sigma"):
        assert_allclose(got[name], expected[name], rtol=1e-7, atol=1e-10, err_msg=name)
    assert_allclose(second.dof_ / 2, alpha, rtol=1e-8)


def student_latent_em_step(ref, p, alpha, X, y, reg):
    """One dense Student EM step with latent factors, full noise: given u, w | x, y, k is
    N(m_w, S_w / u), so E[u w w'] = u m_w m_w' + S_w enters the regression of x on
    [y, w, 1] with weights r u, and the residual covariance is divided by sum r."""
    n, D = X.shape
    L = y.shape[1]
    dim = L + D
    terms, delta = student_joint_terms(ref, p, alpha, X, y)
    resp = np.exp(terms - logsumexp(terms, axis=1, keepdims=True))
    u = (alpha + dim / 2) / (1 + delta / 2)
    K, _, Lw = p["Aw"].shape
    nk = resp.sum(axis=0)
    noise_floor, target_floor = relative_floors(X, y, reg)
    out = {name: [] for name in ("c", "Gamma", "A", "Aw", "b", "Sigma")}
    for k in range(K):
        r, w = resp[:, k], resp[:, k] * u[:, k]
        c = w @ y / w.sum()
        out["c"].append(c)
        out["Gamma"].append(((w * (y - c).T) @ (y - c)) / nk[k] + target_floor * np.eye(L))
        noise_inv = np.linalg.inv(p["Sigma"][k])
        S_w = np.linalg.inv(np.eye(Lw) + p["Aw"][k].T @ noise_inv @ p["Aw"][k])
        m_w = (X - y @ p["A"][k].T - p["b"][k]) @ (S_w @ p["Aw"][k].T @ noise_inv).T
        Z = np.hstack([y, m_w, np.ones((n, 1))])
        extra = np.zeros((L + Lw + 1, L + Lw + 1))
        extra[L : L + Lw, L : L + Lw] = r.sum() * S_w
        coef = np.linalg.solve((w * Z.T) @ Z + extra, (w * Z.T) @ X).T
        R = X - Z @ coef.T
        Aw = coef[:, L : L + Lw]
        Sigma = ((w * R.T) @ R + r.sum() * Aw @ S_w @ Aw.T) / nk[k]
        out["A"].append(coef[:, :L])
        out["Aw"].append(Aw)
        out["b"].append(coef[:, -1])
        out["Sigma"].append(Sigma + noise_floor * np.eye(D))
    return {name: np.array(v) for name, v in out.items()} | {"pi": nk / n}


def test_em_step_with_latent_factors_matches_dense_student_em(dense_ref):
    X, y, _ = heavy_tailed_data(dense_ref, 14, n=200, D=5)
    resp0 = np.random.default_rng(1).dirichlet(np.ones(2), size=200)
    kw = dict(covariance_type="full", n_latent=2, resp_init=resp0, reg_covar=1e-6, tol=0.0,
              random_state=0)
    first = StudentGLLiMRegressor(2, max_iter=1, **kw).fit(X, y)
    second = StudentGLLiMRegressor(2, max_iter=2, **kw).fit(X, y)
    expected = student_latent_em_step(dense_ref, dense_ref.dense_params(first),
                                      first.dof_ / 2, X, y, 1e-6)
    got = dense_ref.dense_params(second)
    # W is identified up to a rotation: compare W W' (and the rest directly).
    for name in ("pi", "c", "Gamma", "A", "b", "Sigma"):
        assert_allclose(got[name], expected[name], rtol=1e-6, atol=1e-9, err_msg=name)
    assert_allclose(got["Aw"] @ np.swapaxes(got["Aw"], 1, 2),
                    expected["Aw"] @ np.swapaxes(expected["Aw"], 1, 2), rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("target_covariance_type", ["full", "spherical"])
@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_em_log_likelihood_never_decreases(dense_ref, covariance_type, target_covariance_type,
                                           seed):
    # Enough rows per component that none collapses onto L + 1 rows (a degenerate
    # maximum, where rounding in the variances at the floor dominates; see the
    # collapse test).
    X, y, _ = heavy_tailed_data(dense_ref, seed, n=300, D=5, alpha=1.5)
    model = StudentGLLiMRegressor(3, covariance_type=covariance_type,
                                  target_covariance_type=target_covariance_type,
                                  reg_covar=1e-8, max_iter=40, tol=0.0,
                                  random_state=seed).fit(X, y)
    bounds = np.asarray(model.lower_bounds_)
    assert np.all(np.isfinite(bounds))
    assert np.all(np.diff(bounds) >= -1e-9 * np.abs(bounds[1:]).max())


def test_em_log_likelihood_never_decreases_with_latent_factors(dense_ref):
    X, y, _ = heavy_tailed_data(dense_ref, 3, n=200, D=6)
    model = StudentGLLiMRegressor(2, n_latent=2, max_iter=30, tol=0.0,
                                  random_state=0).fit(X, y)
    assert np.all(np.diff(model.lower_bounds_) >= -1e-8)


# --------------------------------------------------------------------------- prediction
@pytest.mark.parametrize("covariance_type", ["diag", "full"])
def test_predictive_mixture_matches_t_conditioning(dense_ref, covariance_type):
    X, y, _ = heavy_tailed_data(dense_ref, 4)
    model = StudentGLLiMRegressor(3, covariance_type=covariance_type, max_iter=10,
                                  random_state=0).fit(X, y)
    p = dense_ref.dense_params(model)
    alpha = model.dof_ / 2
    weights, means, covs, mean = student_predictive(dense_ref, p, alpha, X[:40])
    w, m, c = model.predict_mixture(X[:40])
    assert_allclose(w, weights, atol=1e-9)
    assert_allclose(m, means, rtol=1e-8, atol=1e-9)
    assert_allclose(c, covs, rtol=1e-8, atol=1e-12)
    y_hat, y_std, y_cov = model.predict(X[:40], return_std=True, return_cov=True)
    assert_allclose(y_hat, mean, rtol=1e-8, atol=1e-9)
    second = np.einsum("nk,nklm->nlm", weights, covs) + np.einsum("nk,nkl,nkm->nlm", weights,
                                                                  means, means)
    cov = second - mean[:, :, None] * mean[:, None, :]
    assert_allclose(y_cov, cov, rtol=1e-7, atol=1e-10)
    assert_allclose(y_std, np.sqrt(np.einsum("nll->nl", cov)), rtol=1e-7)
    # log p(y | x) = log p(x, y) - log p(x), both from scipy's t.
    terms, _ = student_joint_terms(dense_ref, p, alpha, X[:40], y[:40])
    means_j, covs_j = dense_ref.joint_gaussians(p)
    L = y.shape[1]
    log_px = logsumexp(np.column_stack([
        np.log(p["pi"][k]) + multivariate_t(means_j[k, L:], covs_j[k, L:, L:] / alpha[k],
                                            df=2 * alpha[k]).logpdf(X[:40])
        for k in range(3)]), axis=1)
    assert_allclose(model.conditional_log_density(X[:40], y[:40]),
                    logsumexp(terms, axis=1) - log_px, rtol=1e-8)


def test_samples_follow_the_predictive_distribution(dense_ref):
    X, y, _ = heavy_tailed_data(dense_ref, 5)
    model = StudentGLLiMRegressor(3, max_iter=10, random_state=0).fit(X, y)
    draws = model.sample_y(X[:3], n_samples=100_000, random_state=0)  # (3, L, s)
    y_hat, y_std = model.predict(X[:3], return_std=True)
    assert_allclose(draws.mean(axis=2), y_hat, atol=0.03 * y_std.max())
    assert_allclose(draws.std(axis=2), y_std, rtol=0.05)


def test_target_posterior_uses_t_marginal(dense_ref):
    X, y, _ = heavy_tailed_data(dense_ref, 6)
    model = StudentGLLiMRegressor(3, max_iter=10, random_state=0).fit(X, y)
    p = dense_ref.dense_params(model)
    alpha = model.dof_ / 2
    terms = np.column_stack([
        np.log(p["pi"][k]) + multivariate_t(p["c"][k], p["Gamma"][k] / alpha[k],
                                            df=2 * alpha[k]).logpdf(y) for k in range(3)])
    expected = np.exp(terms - logsumexp(terms, axis=1, keepdims=True))
    assert_allclose(model.component_posterior(y=y), expected, atol=1e-10)


# --------------------------------------------------------------------------- known parameters
def test_recovers_a_known_student_gllim(dense_ref):
    """Data from known parameters (nu = 4): the fit scores like the truth on new data,
    its predictions are the oracle's, and the degrees of freedom are found."""
    rng = np.random.default_rng(7)
    K, D, L = 2, 6, 2
    p = dense_ref.random_params(rng, K, D, L, separation=4.0)
    alpha = np.array([2.0, 2.0])
    X, y = draw_student(dense_ref, p, alpha, 3000, rng)
    X_test, y_test = draw_student(dense_ref, p, alpha, 1000, rng)
    model = StudentGLLiMRegressor(K, covariance_type="diag", random_state=0,
                                  max_iter=300, tol=1e-6).fit(X, y)
    true_terms, _ = student_joint_terms(dense_ref, p, alpha, X_test, y_test)
    oracle_ll = logsumexp(true_terms, axis=1).mean()
    assert model.joint_log_density(X_test, y_test).mean() > oracle_ll - 0.05
    *_, oracle_mean = student_predictive(dense_ref, p, alpha, X_test)
    y_hat = model.predict(X_test)
    oracle_rmse = np.sqrt(np.mean((oracle_mean - y_test) ** 2))
    assert np.sqrt(np.mean((y_hat - y_test) ** 2)) < 1.05 * oracle_rmse
    assert np.sqrt(np.mean((y_hat - oracle_mean) ** 2)) < 0.15 * oracle_rmse
    assert np.all((model.dof_ > 2.5) & (model.dof_ < 7.0))


def test_large_dof_gives_the_gaussian_model(dense_ref):
    """With alpha -> inf and Gamma, Sigma = alpha times the Gaussian's, the t model is the
    Gaussian one: same gating, predictions, densities. (Sets fitted parameters directly.)"""
    rng = np.random.default_rng(8)
    p = dense_ref.random_params(rng, 3, 5, 2)
    X, y, _ = dense_ref.sample(p, 400, rng)
    gauss = GLLiMRegressor(3, random_state=0).fit(X, y)
    student = StudentGLLiMRegressor(3, random_state=0, max_iter=2).fit(X, y)
    big = 1e10
    params = student._params
    params.__dict__.update({k: v for k, v in vars(gauss._params).items()})
    params.gamma = gauss._params.gamma * big
    params.noise = gauss._params.noise * big
    params.alpha = np.full(3, big)
    student._set_params_from(params)
    w_g, m_g, c_g = gauss.predict_mixture(X[:50])
    w_s, m_s, c_s = student.predict_mixture(X[:50])
    assert_allclose(w_s, w_g, atol=1e-5)
    assert_allclose(m_s, m_g, rtol=1e-6, atol=1e-8)
    assert_allclose(c_s, np.broadcast_to(c_g, c_s.shape), rtol=1e-5)
    assert_allclose(student.joint_log_density(X, y), gauss.joint_log_density(X, y), rtol=1e-5)
    assert_allclose(student.conditional_log_density(X[:50], y[:50]),
                    gauss.conditional_log_density(X[:50], y[:50]), rtol=1e-5, atol=1e-5)


def test_on_gaussian_data_the_fit_approaches_the_gaussian_one(dense_ref):
    rng = np.random.default_rng(9)
    p = dense_ref.random_params(rng, 3, 6, 2)
    X, y, _ = dense_ref.sample(p, 2000, rng)
    X_test, y_test, _ = dense_ref.sample(p, 500, rng)
    gauss = GLLiMRegressor(3, random_state=0, tol=1e-6, max_iter=300).fit(X, y)
    student = StudentGLLiMRegressor(3, random_state=0, tol=1e-6, max_iter=300).fit(X, y)
    assert np.all(student.dof_ > 20)  # from 40; the likelihood is flat in large dof
    diff = np.sqrt(np.mean((student.predict(X_test) - gauss.predict(X_test)) ** 2))
    err = np.sqrt(np.mean((gauss.predict(X_test) - y_test) ** 2))
    assert diff < 0.1 * err


# --------------------------------------------------------------------------- robustness
def test_corrupted_rows_get_small_weights(dense_ref):
    rng = np.random.default_rng(10)
    p = dense_ref.random_params(rng, 2, 6, 2)
    X, y, _ = dense_ref.sample(p, 400, rng)
    bad = rng.choice(400, 40, replace=False)
    X_bad = X.copy()
    X_bad[bad] = 5 * X[rng.integers(0, 400, 40)]
    model = StudentGLLiMRegressor(2, random_state=0).fit(X_bad, y)
    w = model.outlier_weights(X_bad, y)
    good = np.setdiff1d(np.arange(400), bad)
    assert np.median(w[bad]) < 0.2 * np.median(w[good])
    assert np.median(w[good]) == pytest.approx(1.0, abs=0.3)


def test_collapsed_component_warns_and_stays_finite(dense_ref):
    """Three extreme, identical rows given their own component at initialisation."""
    rng = np.random.default_rng(11)
    p = dense_ref.random_params(rng, 2, 5, 2)
    X, y, _ = dense_ref.sample(p, 200, rng)
    X[:3] = 1e4
    y[:3] = 50.0
    resp = np.zeros((200, 3))
    resp[3:, :2] = rng.dirichlet(np.ones(2), size=197)
    resp[:3, 2] = 1.0
    with pytest.warns(UserWarning, match="collapsed"):
        model = StudentGLLiMRegressor(3, resp_init=resp, random_state=0).fit(X, y)
    assert np.all(np.isfinite(model.lower_bounds_))
    y_hat, y_std = model.predict(X, return_std=True)
    assert np.all(np.isfinite(y_hat)) and not np.any(np.isnan(y_std))
    assert np.all(np.isfinite(model.dof_))


# --------------------------------------------------------------------------- scikit-learn
@parametrize_with_checks(
    [
        StudentGLLiMRegressor(),
        StudentGLLiMRegressor(n_components=2, covariance_type="full",
                              target_covariance_type="diag"),
        StudentGLLiMRegressor(n_components=2, n_latent=1, covariance_type="tied"),
    ]
)
def test_sklearn_compatible(estimator, check):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        check(estimator)


def test_observation_noise_is_refused_clearly(dense_ref):
    X, y, _ = heavy_tailed_data(dense_ref, 13)
    model = StudentGLLiMRegressor(2, max_iter=3, random_state=0).fit(X, y)
    for call in (lambda: model.predict(X, feature_noise_var=1.0),
                 lambda: model.predict_mixture(X, feature_noise_var=1.0),
                 lambda: model.predict_modes(X, feature_noise_var=1.0),
                 lambda: model.sample_y(X, feature_noise_var=1.0),
                 lambda: model.conditional_log_density(X, y, feature_noise_var=1.0),
                 lambda: model.joint_log_density(X, y, feature_noise_var=1.0),
                 lambda: model.component_posterior(X, y, feature_noise_cov=np.eye(5))):
        with pytest.raises(NotImplementedError, match="not a t"):
            call()


def test_parameters_are_those_of_gllim_plus_dof_init():
    """A parameter added to GLLiMRegressor must be added to the Student model too."""
    gauss = GLLiMRegressor().get_params()
    student = StudentGLLiMRegressor().get_params()
    assert set(student) == set(gauss) | {"dof_init"}
    assert all(student[name] == value for name, value in gauss.items())
    assert set(StudentGLLiMRegressor._parameter_constraints) == set(student)


def test_parameters_and_pickling(dense_ref, tmp_path):
    import pickle

    X, y, _ = heavy_tailed_data(dense_ref, 12)
    with pytest.raises(ValueError, match="dof_init"):
        StudentGLLiMRegressor(dof_init=0.0).fit(X, y)
    # One start: its first M-step keeps the initial degrees of freedom.
    model = StudentGLLiMRegressor(2, dof_init=10.0, max_iter=1, init_candidates=1,
                                  random_state=0).fit(X, y)
    assert_allclose(model.dof_, 10.0)
    again = pickle.loads(pickle.dumps(model))
    assert_allclose(again.predict(X), model.predict(X))
    assert_allclose(again.dof_, model.dof_)
    # float32 in, float32 out; warm start continues from the fitted degrees of freedom.
    y32, std32 = model.predict(X.astype(np.float32), return_std=True)
    assert y32.dtype == std32.dtype == np.float32
    assert_allclose(y32, model.predict(X), rtol=1e-4, atol=1e-5)
    model.set_params(warm_start=True, max_iter=5).fit(X, y)
    assert model.lower_bounds_[0] >= again.lower_bound_ - 1e-9


def test_array_api_inputs_are_refused_clearly(dense_ref):
    """The Student model and observation noise compute in numpy: clear errors elsewhere."""
    import sklearn

    torch = pytest.importorskip("torch")
    X, y, _ = heavy_tailed_data(dense_ref, 15)
    with sklearn.config_context(array_api_dispatch=True):
        with pytest.raises(ValueError, match="numpy arrays only"):
            StudentGLLiMRegressor(2).fit(torch.asarray(X), torch.asarray(y))
        gauss = GLLiMRegressor(2, max_iter=3, random_state=0).fit(torch.asarray(X),
                                                                  torch.asarray(y))
        with pytest.raises(ValueError, match="need numpy inputs"):
            gauss.predict(torch.asarray(X), feature_noise_var=1.0)


# --------------------------------------------------------------------------- online EM
def student_e_step(ref, p, alpha, X, y):
    """Dense E-step: responsibilities r, weights E[u | k] and E[log u | k], all (n, K)."""
    dim = X.shape[1] + y.shape[1]
    terms, delta = student_joint_terms(ref, p, alpha, X, y)
    resp = np.exp(terms - logsumexp(terms, axis=1, keepdims=True))
    u = (alpha + dim / 2) / (1 + delta / 2)
    return resp, u, digamma(alpha + dim / 2) - np.log1p(delta / 2)


def weighted_student_m_step(X, y, resp, u, log_u, weight, floors):
    """Dense Student M-step (full covariances, Lw = 0) of samples weighted by ``weight``."""
    n, D = X.shape
    L = y.shape[1]
    r = resp * weight[:, None]
    nk = r.sum(axis=0)
    out = {name: [] for name in ("c", "Gamma", "A", "b", "Sigma")}
    alpha = []
    Y1 = np.hstack([y, np.ones((n, 1))])
    for k in range(resp.shape[1]):
        w = r[:, k] * u[:, k]
        c = w @ y / w.sum()
        out["c"].append(c)
        out["Gamma"].append((w * (y - c).T) @ (y - c) / nk[k] + floors[1] * np.eye(L))
        coef = np.linalg.solve((w * Y1.T) @ Y1, (w * Y1.T) @ X).T
        R = X - Y1 @ coef.T
        out["A"].append(coef[:, :L])
        out["b"].append(coef[:, L])
        out["Sigma"].append((w * R.T) @ R / nk[k] + floors[0] * np.eye(D))
        target = r[:, k] @ log_u[:, k] / nk[k]
        alpha.append(brentq(lambda a, t=target: digamma(a) - t, 1e-8, 1e8,
                            xtol=1e-14))
    return {name: np.array(v) for name, v in out.items()} | {"pi": nk / nk.sum()}, alpha


@pytest.mark.parametrize("init_candidates", [1, 4])
def test_partial_fit_first_call_is_one_em_iteration_from_the_fits_start(dense_ref,
                                                                        init_candidates):
    # The first call starts as fit does on its batch (with 4 candidates on 1,200
    # samples and K=3: the single start or the best of 3 runs on subsets), without
    # iterations on the batch, and adds one EM iteration.
    X, y, _ = heavy_tailed_data(dense_ref, 3, n=1200)
    assert _init.candidate_count(init_candidates, len(X), 3) == init_candidates
    kw = dict(n_components=3, random_state=0, reg_covar=1e-6, tol=0,
              init_candidates=init_candidates)
    online = StudentGLLiMRegressor(**kw).partial_fit(X, y)
    one_more = StudentGLLiMRegressor(**kw, max_iter=1).fit(X, y)
    one_more.set_params(warm_start=True, max_iter=2).fit(X, y)
    assert online.n_batch_iter_ == 1
    for p, q in zip(dense_ref.dense_params(online).values(),
                    dense_ref.dense_params(one_more).values(), strict=True):
        assert_allclose(p, q, rtol=1e-10, atol=1e-12)
    assert_allclose(online.dof_, one_more.dof_, rtol=1e-10)


def test_partial_fit_blends_the_student_statistics(dense_ref):
    # Two batches of different sizes: the update is the dense Student M-step of both
    # batches' E-steps (each under the parameters of its call), each sample weighted by
    # (1 - step) / n1 or step / n2; alpha comes from the blended r E[log u].
    X, y, _ = heavy_tailed_data(dense_ref, 4, n=500)
    (X1, y1), (X2, y2) = (X[:300], y[:300]), (X[300:], y[300:])
    kw = dict(n_components=3, covariance_type="full", random_state=0, reg_covar=1e-6,
              learning_offset=2.0, learning_decay=0.8, init_candidates=1)
    initial = StudentGLLiMRegressor(**kw, max_iter=1, tol=0).fit(X1, y1)
    online = StudentGLLiMRegressor(**kw).partial_fit(X1, y1)
    first = dense_ref.dense_params(online)
    first_alpha = online.dof_ / 2
    online.partial_fit(X2, y2)
    step = (2.0 + 1) ** -0.8
    e1 = student_e_step(dense_ref, dense_ref.dense_params(initial), initial.dof_ / 2, X1, y1)
    e2 = student_e_step(dense_ref, first, first_alpha, X2, y2)
    weight = np.concatenate([np.full(len(X1), (1 - step) / len(X1)),
                             np.full(len(X2), step / len(X2))])
    expected, alpha = weighted_student_m_step(
        X, y, *(np.vstack([a, b]) for a, b in zip(e1, e2, strict=True)), weight,
        relative_floors(X1, y1, 1e-6))
    got = dense_ref.dense_params(online)
    for name in ("pi", "c", "Gamma", "A", "b", "Sigma"):
        assert_allclose(got[name], expected[name], rtol=1e-7, atol=1e-9, err_msg=name)
    assert_allclose(online.dof_ / 2, alpha, rtol=1e-7)
