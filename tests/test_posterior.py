"""Tests of the posterior tools: merged modes and importance sampling.

References are computed here independently: mixture moments from their definition,
Runnalls' cost from dense determinants, scipy's multivariate normal and t densities,
and exact posteriors on a fine grid.
"""

import warnings

import numpy as np
import pytest
from numpy.testing import assert_allclose
from scipy.stats import kstest, multivariate_normal, multivariate_t, norm, t

from gllim_sk import GLLiMRegressor
from gllim_sk._mixtures import PredictiveMixture
from gllim_sk.posterior import (
    importance_sampling,
    merge_mixture,
    mixture_log_density,
    row_uniforms,
    sample_mixture,
    sample_mixture_rows,
)

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")


def random_mixtures(rng, n, K, L, per_sample_cov=False):
    weights = rng.dirichlet(np.ones(K), size=n)
    means = rng.normal(scale=2.0, size=(n, K, L))
    shape = (n, K) if per_sample_cov else (K,)
    B = rng.normal(size=shape + (L, L))
    covs = B @ np.swapaxes(B, -1, -2) + 0.1 * np.eye(L)
    return weights, means, covs


def mixture_moments(weights, means, covs):
    """Mean and covariance of mixtures, from E[y] and E[y y'] (dense loops)."""
    n, K, L = means.shape
    covs = np.broadcast_to(covs, (n, K, L, L))
    mean = np.zeros((n, L))
    second = np.zeros((n, L, L))
    for i in range(n):
        for k in range(K):
            mean[i] += weights[i, k] * means[i, k]
            second[i] += weights[i, k] * (covs[i, k] + np.outer(means[i, k], means[i, k]))
    return mean, second - mean[:, :, None] * mean[:, None, :]


# --------------------------------------------------------------------------- merging
@pytest.mark.parametrize("per_sample_cov", [False, True])
@pytest.mark.parametrize("n_keep", [1, 2, 3, 5])
def test_merge_preserves_mixture_mean_and_covariance(n_keep, per_sample_cov, kernels):
    rng = np.random.default_rng(n_keep)
    weights, means, covs = random_mixtures(rng, 30, 7, 2, per_sample_cov)
    w2, m2, c2 = merge_mixture(weights, means, covs, n_keep)
    assert w2.shape == (30, n_keep) and m2.shape == (30, n_keep, 2)
    assert c2.shape == (30, n_keep, 2, 2)
    assert_allclose(w2.sum(axis=1), 1.0, rtol=1e-12)
    assert np.all(np.diff(w2, axis=1) <= 0)  # largest first
    mean, cov = mixture_moments(weights, means, covs)
    mean2, cov2 = mixture_moments(w2, m2, c2)
    assert_allclose(mean2, mean, atol=1e-10)
    assert_allclose(cov2, cov, atol=1e-9)
    for c in c2.reshape(-1, 2, 2):  # merged covariances stay SPD
        assert np.linalg.eigvalsh(c).min() > 0


def runnalls_cost_dense(w1, m1, P1, w2, m2, P2):
    w = w1 + w2
    m = (w1 * m1 + w2 * m2) / w
    P = (w1 * (P1 + np.outer(m1 - m, m1 - m)) + w2 * (P2 + np.outer(m2 - m, m2 - m))) / w
    return 0.5 * (w * np.log(np.linalg.det(P)) - w1 * np.log(np.linalg.det(P1))
                  - w2 * np.log(np.linalg.det(P2))), (w, m, P)


def greedy_reference(comps, n_keep):
    """Runnalls' greedy merging written out: all pairs, dense determinants; the kept
    components (weight, mean, covariance) heaviest first."""
    while len(comps) > n_keep:
        best = min(
            ((a, b) for a in range(len(comps)) for b in range(a + 1, len(comps))),
            key=lambda ab: runnalls_cost_dense(*comps[ab[0]], *comps[ab[1]])[0],
        )
        merged = runnalls_cost_dense(*comps[best[0]], *comps[best[1]])[1]
        comps = [c for j, c in enumerate(comps) if j not in best] + [merged]
    return sorted(comps, key=lambda c: -c[0])


def test_merge_follows_runnalls_greedy_order(kernels):
    """Reference: a greedy loop over all pairs with dense determinants."""
    rng = np.random.default_rng(3)
    weights, means, covs = random_mixtures(rng, 5, 6, 2)
    w2, m2, c2 = merge_mixture(weights, means, covs, 2)
    for i in range(5):
        comps = greedy_reference([(weights[i, k], means[i, k], covs[k]) for k in range(6)], 2)
        assert_allclose(w2[i], [c[0] for c in comps], rtol=1e-10)
        assert_allclose(m2[i], [c[1] for c in comps], rtol=1e-10, atol=1e-12)
        assert_allclose(c2[i], [c[2] for c in comps], rtol=1e-10, atol=1e-12)


def test_merge_drops_zero_weight_components_and_follows_the_greedy_order_in_4d(kernels):
    """Rows with different numbers of zero weights (grouped internally), 4-D components:
    the positive components follow the dense greedy reference; zero weights stay 0."""
    rng = np.random.default_rng(4)
    n, K, L = 8, 7, 4
    weights, means, covs = random_mixtures(rng, n, K, L, per_sample_cov=True)
    for i in range(n):  # row i has min(i, K - 1) zero weights
        weights[i, rng.permutation(K)[: min(i, K - 1)]] = 0.0
    weights /= weights.sum(axis=1, keepdims=True)
    w2, m2, c2 = merge_mixture(weights, means, covs, 3)
    for i in range(n):
        comps = greedy_reference([(weights[i, k], means[i, k], covs[i, k]) for k in range(K)
                                  if weights[i, k] > 0], 3)
        kept = len(comps)
        assert_allclose(w2[i, :kept], [c[0] for c in comps], rtol=1e-10)
        assert_allclose(m2[i, :kept], [c[1] for c in comps], rtol=1e-10, atol=1e-12)
        assert_allclose(c2[i, :kept], [c[2] for c in comps], rtol=1e-10, atol=1e-12)
        assert np.all(w2[i, kept:] == 0.0)


def test_merge_keeps_everything_when_asked_for_more_and_handles_zero_weights(kernels):
    rng = np.random.default_rng(0)
    weights, means, covs = random_mixtures(rng, 4, 3, 1)
    w2, m2, c2 = merge_mixture(weights, means, covs, 10)
    order = np.argsort(-weights, axis=1)
    assert_allclose(w2, np.take_along_axis(weights, order, axis=1))
    weights[:, 0] = 0.0
    weights /= weights.sum(axis=1, keepdims=True)
    w3, m3, c3 = merge_mixture(weights, means, covs, 2)
    assert np.all(np.isfinite(m3)) and np.all(np.isfinite(c3))
    mean, cov = mixture_moments(weights, means, covs)
    assert_allclose(mixture_moments(w3, m3, c3)[1], cov, atol=1e-10)


def test_merge_rejects_bad_shapes():
    w, m, c = random_mixtures(np.random.default_rng(0), 3, 4, 2)
    with pytest.raises(ValueError, match="covariances must have shape"):
        merge_mixture(w, m, c[:, :1, :1], 2)
    with pytest.raises(ValueError, match="n_components"):
        merge_mixture(w, m, c, 0)
    with pytest.raises(ValueError, match="non-negative"):
        merge_mixture(-w, m, c, 2)
    with pytest.raises(ValueError, match="must be finite"):
        merge_mixture(w, m, np.full_like(c, np.inf), 2)


def test_merge_of_point_masses_keeps_all_the_mass(kernels):
    """Zero covariances (the issue's example): the two nearby point masses merge, with
    the moments of their pair; nothing is lost."""
    w2, m2, c2 = merge_mixture([[0.3, 0.25, 0.45]], [[[-1.0], [-1.1], [2.0]]],
                               np.zeros((3, 1, 1)), 2)
    pair_mean = (0.3 * -1.0 + 0.25 * -1.1) / 0.55
    pair_var = (0.3 * (-1.0 - pair_mean) ** 2 + 0.25 * (-1.1 - pair_mean) ** 2) / 0.55
    assert_allclose(w2, [[0.55, 0.45]], rtol=1e-12)
    assert_allclose(m2[0, :, 0], [pair_mean, 2.0], rtol=1e-12)
    assert_allclose(c2[0, :, 0, 0], [pair_var, 0.0], atol=1e-15)
    # Mixed rows: a singular component among regular ones, moments preserved exactly.
    rng = np.random.default_rng(4)
    weights, means, covs = random_mixtures(rng, 6, 5, 2, per_sample_cov=True)
    covs[:, 1] = 0.0
    covs[:3, 2] = np.outer([1.0, 2.0], [1.0, 2.0])  # rank one
    w3, m3, c3 = merge_mixture(weights, means, covs, 2)
    mean, cov = mixture_moments(weights, means, covs)
    assert_allclose(w3.sum(axis=1), 1.0, rtol=1e-12)
    assert_allclose(mixture_moments(w3, m3, c3)[0], mean, atol=1e-10)
    assert_allclose(mixture_moments(w3, m3, c3)[1], cov, atol=1e-9)


def test_merge_of_tiny_unnormalised_weights_keeps_their_proportions(kernels):
    """Weights below 1e-300 (unnormalised likelihoods, exp(-700)) used to be floored to
    1e-300 each: the merged mixture had the wrong total and the wrong mean."""
    rng = np.random.default_rng(5)
    weights, means, covs = random_mixtures(rng, 4, 4, 2, per_sample_cov=True)
    scale = np.exp(-720.0)  # 2e-313: subnormal
    w1, m1, c1 = merge_mixture(weights * scale, means, covs, 1)
    mean, cov = mixture_moments(weights, means, covs)
    assert_allclose(w1[:, 0], weights.sum(axis=1) * scale, rtol=1e-6)
    assert_allclose(m1[:, 0], mean, atol=1e-6)
    assert_allclose(c1[:, 0], cov, atol=1e-6)
    w2 = merge_mixture(weights * scale, means, covs, 2)[0]
    assert_allclose(w2 / scale, merge_mixture(weights, means, covs, 2)[0], rtol=1e-6)


def test_merge_refuses_what_has_no_moments_to_merge(kernels):
    w, m, c = random_mixtures(np.random.default_rng(0), 3, 4, 2)
    negative = c.copy()
    negative[1] = -negative[1]
    with pytest.raises(ValueError, match="positive semi-definite"):
        merge_mixture(w, m, negative, 2)
    skew = c.copy()
    skew[0, 0, 1] += 1.0
    with pytest.raises(ValueError, match="symmetric"):
        merge_mixture(w, m, skew, 2)
    empty = w.copy()
    empty[1] = 0.0
    with pytest.raises(ValueError, match="sum to 0"):
        merge_mixture(empty, m, c, 2)
    # Weights that do not sum to 1 keep their total.
    w2, _, _ = merge_mixture(3.0 * w, m, c, 2)
    assert_allclose(w2.sum(axis=1), 3.0, rtol=1e-12)


def ambiguous_features(y, rng=None, noise=0.03):
    y = np.asarray(y, dtype=float).reshape(-1)
    clean = np.column_stack([y**2, np.cos(2.5 * y), 2.0 * np.maximum(y - 0.5, 0.0)])
    if rng is None:
        return clean
    return clean + rng.normal(scale=noise, size=clean.shape)


@pytest.fixture(scope="module")
def ambiguous_model():
    rng = np.random.default_rng(0)
    y = rng.uniform(-1.0, 1.0, 1500)
    return GLLiMRegressor(n_components=8, random_state=0).fit(ambiguous_features(y, rng), y)


def test_predict_modes_finds_both_answers_of_an_ambiguous_problem(ambiguous_model):
    """In the band |y| < 0.5 the features are even in y: two modes, at y and -y."""
    y_true = np.array([-0.4, -0.3, 0.25, 0.35, 0.45])
    weights, means, covs = ambiguous_model.predict_modes(ambiguous_features(y_true), n_modes=2)
    assert weights.shape == (5, 2) and means.shape == (5, 2, 1) and covs.shape == (5, 2, 1, 1)
    modes = np.sort(means[:, :, 0], axis=1)
    assert_allclose(modes[:, 0], -np.abs(y_true), atol=0.08)
    assert_allclose(modes[:, 1], np.abs(y_true), atol=0.08)
    assert np.all(weights > 0.25)  # both answers carry real mass
    # The mean of predict sits between the modes, far from both.
    mean = ambiguous_model.predict(ambiguous_features(y_true))
    assert np.all(np.abs(mean) < 0.6 * np.abs(y_true))
    # Outside the band one answer dominates: the heaviest mode is the truth.
    y_out = np.array([-0.8, 0.8, 0.9])
    w_out, m_out, _ = ambiguous_model.predict_modes(ambiguous_features(y_out), n_modes=2)
    heaviest = m_out[:, 0, 0]
    assert_allclose(heaviest, y_out, atol=0.08)


# --------------------------------------------------------------------------- densities
def test_mixture_log_density_matches_scipy():
    rng = np.random.default_rng(1)
    weights, means, covs = random_mixtures(rng, 3, 4, 2, per_sample_cov=True)
    dof = rng.uniform(2.5, 10.0, size=(3, 4))
    y = rng.normal(scale=2.0, size=(3, 5, 2))
    got_t = mixture_log_density(y, np.log(weights), means, covs, dof)
    got_n = mixture_log_density(y, np.log(weights), means, covs)
    for i in range(3):
        ref_t = np.log(sum(weights[i, k] * multivariate_t(means[i, k], covs[i, k], df=dof[i, k])
                           .pdf(y[i]) for k in range(4)))
        ref_n = np.log(sum(weights[i, k] * multivariate_normal(means[i, k], covs[i, k])
                           .pdf(y[i]) for k in range(4)))
        assert_allclose(got_t[i], ref_t, rtol=1e-10)
        assert_allclose(got_n[i], ref_n, rtol=1e-10)


def test_mixture_log_density_far_from_the_origin_and_narrow():
    """Narrow 4-D components far from the origin (the distances are computed by
    expanding the quadratic form: it must not cancel), shared scales (K, L, L)."""
    rng = np.random.default_rng(5)
    n, K, L = 2, 3, 4
    weights = rng.dirichlet(np.ones(K), size=n)
    means = 1e4 + rng.normal(scale=1e-3, size=(n, K, L))
    B = rng.normal(size=(K, L, L))
    covs = 1e-8 * (B @ np.swapaxes(B, 1, 2) + 0.1 * np.eye(L))
    y = means[:, :1] + rng.normal(scale=1e-4, size=(n, 6, L))
    got = mixture_log_density(y, np.log(weights), means, covs)
    for i in range(n):
        ref = np.log(sum(weights[i, k] * multivariate_normal(means[i, k], covs[k]).pdf(y[i])
                         for k in range(K)))
        assert_allclose(got[i], ref, rtol=1e-9)


def test_sample_mixture_moments():
    rng = np.random.default_rng(2)
    weights, means, covs = random_mixtures(rng, 2, 3, 2)
    dof = np.array([5.0, 8.0, 30.0])
    draws = sample_mixture(weights, means, covs, 200_000, rng, dof)
    mean, cov = mixture_moments(weights, means, covs * (dof / (dof - 2))[:, None, None])
    assert_allclose(draws.mean(axis=1), mean, atol=0.05)
    emp = np.einsum("nsl,nsm->nlm", draws - mean[:, None], draws - mean[:, None]) / 200_000
    assert_allclose(emp, cov, rtol=0.08, atol=0.05)


def test_row_uniforms_do_not_depend_on_the_blocks():
    key = (12345, 678)
    whole = row_uniforms(key, 0, 50, 7)
    assert whole.shape == (50, 7)
    parts = np.vstack([row_uniforms(key, start, stop - start, 7)
                       for start, stop in ((0, 13), (13, 14), (14, 50))])
    assert_allclose(parts, whole, rtol=0, atol=0)
    assert not np.allclose(row_uniforms((12345, 679), 0, 50, 7), whole)
    many = row_uniforms(key, 10**9, 2000, 25).ravel()  # far along the stream
    assert 0.0 < many.min() and many.max() < 1.0
    assert kstest(many, "uniform").pvalue > 1e-3


@pytest.mark.parametrize("dof", [None, np.array([2.5, 4.0])])
def test_sample_mixture_rows_follows_the_mixture(dof):
    # One row, a two-component 1-D mixture: its draws against the mixture's exact CDF.
    weights = np.array([[0.3, 0.7]])
    means = np.array([[[-2.0], [1.5]]])
    scales = np.array([[[0.5]], [[2.0]]])
    draws = sample_mixture_rows(weights, means, scales, 20_000, (7, 11), 0, dof)[0, :, 0]
    sd = np.sqrt(scales[:, 0, 0])

    def cdf(v):
        if dof is None:
            parts = [norm.cdf(v, means[0, k, 0], sd[k]) for k in range(2)]
        else:
            parts = [t.cdf(v, dof[k], means[0, k, 0], sd[k]) for k in range(2)]
        return weights[0, 0] * parts[0] + weights[0, 1] * parts[1]

    assert kstest(draws, cdf).pvalue > 1e-3
    wrong = (lambda v: norm.cdf(v, 0.45, 2.0)) if dof is None else (
        lambda v: 0.3 * norm.cdf(v, -2.0, sd[0]) + 0.7 * norm.cdf(v, 1.5, sd[1]))
    assert kstest(draws, wrong).pvalue < 1e-6  # the test can tell the t from the Gaussian


# --------------------------------------------------------------------------- importance sampling
NOISE = 0.03


def uniform_log_prior(Y):
    return np.where(np.all(np.abs(Y) <= 1.0, axis=1), 0.0, -np.inf)


def forward(Y):
    return ambiguous_features(Y[:, 0])


def exact_posterior_mean_on_grid(x):
    grid = np.linspace(-1.0, 1.0, 40001)
    fx = ambiguous_features(grid)
    log_post = -0.5 * ((fx - x) ** 2).sum(axis=1) / NOISE**2
    w = np.exp(log_post - log_post.max())
    w /= w.sum()
    mean = w @ grid
    return mean, w @ (grid - mean) ** 2


@pytest.fixture(scope="module")
def coarse_problem():
    """A deliberately coarse GLLiM (K=3) of the ambiguous toy, and noisy test inputs."""
    rng = np.random.default_rng(5)
    y = rng.uniform(-1.0, 1.0, 1000)
    model = GLLiMRegressor(n_components=3, random_state=0).fit(ambiguous_features(y, rng), y)
    y_test = rng.uniform(-1.0, 1.0, 25)
    return model, ambiguous_features(y_test, rng)


@pytest.mark.parametrize("n_imis_steps", [0, 4])
def test_importance_sampling_is_closer_to_the_exact_posterior(coarse_problem, n_imis_steps):
    model, X_test = coarse_problem
    res = importance_sampling(model, X_test, forward, uniform_log_prior,
                              noise_covariance=NOISE**2, n_draws=2000,
                              n_imis_steps=n_imis_steps, random_state=0)
    exact = np.array([exact_posterior_mean_on_grid(x) for x in X_test])
    err_gllim = np.abs(model.predict(X_test) - exact[:, 0])
    err_is = np.abs(res.mean[:, 0] - exact[:, 0])
    assert_allclose(res.proposal_mean[:, 0], model.predict(X_test), atol=1e-10)
    assert err_is.mean() < 0.5 * err_gllim.mean()
    assert np.median(err_is) < 0.02
    # Posterior variance too.
    assert np.median(np.abs(res.covariance[:, 0, 0] - exact[:, 1])) < 0.01
    total = 2000 + n_imis_steps * 200
    assert res.samples.shape == (25, total, 1) and res.weights.shape == (25, total)
    assert_allclose(res.weights.sum(axis=1), 1.0)
    ess = res.effective_sample_size
    assert np.all((ess >= 1.0) & (ess <= total + 1e-9))
    assert np.median(ess) > 0.05 * total


def test_importance_sampling_with_a_student_proposal():
    """The Student model's t mixture is a valid proposal too: corrected means beat its own."""
    from gllim_sk import StudentGLLiMRegressor

    rng = np.random.default_rng(6)
    y = rng.uniform(-1.0, 1.0, 1000)
    model = StudentGLLiMRegressor(n_components=3, random_state=0).fit(
        ambiguous_features(y, rng), y)
    X_test = ambiguous_features(rng.uniform(-1.0, 1.0, 15), rng)
    res = importance_sampling(model, X_test, forward, uniform_log_prior,
                              noise_covariance=NOISE**2, n_draws=2000, random_state=0)
    exact = np.array([exact_posterior_mean_on_grid(x)[0] for x in X_test])
    assert_allclose(res.proposal_mean[:, 0], model.predict(X_test), rtol=1e-8, atol=1e-10)
    assert (np.abs(res.mean[:, 0] - exact).mean()
            < 0.5 * np.abs(model.predict(X_test) - exact).mean())
    modes = model.predict_modes(X_test, n_modes=2)
    assert modes[2].shape == (15, 2, 1, 1) and np.all(np.isfinite(modes[2]))


def test_importance_sampling_with_full_noise_and_callable_likelihood(coarse_problem):
    model, X_test = coarse_problem
    X_test = X_test[:5]
    kw = dict(n_draws=500, random_state=1)
    a = importance_sampling(model, X_test, forward, uniform_log_prior,
                            noise_covariance=NOISE**2 * np.eye(3), **kw)
    b = importance_sampling(model, X_test, forward, uniform_log_prior,
                            noise_covariance=np.full(3, NOISE**2), **kw)

    def loglik(x, fx):
        return multivariate_normal(np.zeros(3), NOISE**2 * np.eye(3)).logpdf(x - fx)

    c = importance_sampling(model, X_test, forward, uniform_log_prior, log_likelihood=loglik,
                            **kw)
    assert_allclose(a.log_weights, b.log_weights, rtol=1e-10)
    assert_allclose(a.log_weights, c.log_weights, rtol=1e-10)
    # A dask X is computed first: the same draws and weights as in memory.
    da = pytest.importorskip("dask.array")
    d = importance_sampling(model, da.from_array(X_test, chunks=2), forward,
                            uniform_log_prior, noise_covariance=NOISE**2 * np.eye(3), **kw)
    assert_allclose(d.log_weights, a.log_weights, rtol=1e-10)


def test_importance_sampling_rows_outside_the_prior_warn_and_stay_finite(coarse_problem):
    model, X_test = coarse_problem
    with pytest.warns(RuntimeWarning, match="no draw with positive posterior density"):
        res = importance_sampling(model, X_test[:3], forward,
                                  lambda Y: np.full(Y.shape[0], -np.inf),
                                  noise_covariance=NOISE**2, n_draws=50, random_state=0)
    assert np.all(np.isfinite(res.mean)) and np.all(res.effective_sample_size == 0)
    assert_allclose(res.mean[:, 0], model.predict(X_test[:3]), atol=1e-10)


def test_importance_sampling_validates_its_inputs(coarse_problem):
    model, X_test = coarse_problem
    with pytest.raises(ValueError, match="exactly one of"):
        importance_sampling(model, X_test, forward, uniform_log_prior)
    with pytest.raises(ValueError, match="forward_model returned an array of shape"):
        importance_sampling(model, X_test, lambda Y: Y, uniform_log_prior,
                            noise_covariance=1.0, n_draws=10)
    with pytest.raises(ValueError, match="positive variances"):
        importance_sampling(model, X_test, forward, uniform_log_prior,
                            noise_covariance=[1.0, -1.0, 1.0], n_draws=10)
    with pytest.raises(ValueError, match="n_draws"):
        importance_sampling(model, X_test, forward, uniform_log_prior,
                            noise_covariance=1.0, n_draws=1)
    X_copy = X_test.copy()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        importance_sampling(model, X_test, forward, uniform_log_prior, noise_covariance=1.0,
                            n_draws=20, random_state=0)
    np.testing.assert_array_equal(X_test, X_copy)  # inputs are not modified


def test_importance_sampling_refuses_infinite_log_densities(coarse_problem):
    model, X_test = coarse_problem

    def loglik(x, fx):
        out = -0.5 * ((x - fx) ** 2).sum(axis=1) / NOISE**2
        out[0] = np.inf
        return out

    with pytest.raises(ValueError, match=r"log_likelihood returned \+inf"):
        importance_sampling(model, X_test[:2], forward, uniform_log_prior,
                            log_likelihood=loglik, n_draws=20, random_state=0)

    def prior(Y):
        out = uniform_log_prior(Y)
        out[3] = np.inf
        return out

    with pytest.raises(ValueError, match=r"log_prior returned \+inf"):
        importance_sampling(model, X_test[:2], forward, prior, noise_covariance=NOISE**2,
                            n_draws=20, random_state=0)


def test_noise_covariance_is_checked_as_the_estimators_check_theirs(coarse_problem):
    """The same decisions as feature_noise_cov / feature_noise_var of the estimators."""
    model, X_test = coarse_problem
    skew = np.eye(3) * NOISE**2
    skew[0, 1] = 1e-4
    nan = np.full((3, 3), np.nan)
    for value, match in ((skew, "symmetric"), (nan, "finite"), (-1.0, "positive"),
                         ([np.nan, 1.0, 1.0], "finite")):
        with pytest.raises(ValueError, match=f"noise_covariance must .*{match}"):
            importance_sampling(model, X_test[:2], forward, uniform_log_prior,
                                noise_covariance=value, n_draws=10)
    with pytest.raises(ValueError, match="feature_noise_cov must be a symmetric"):
        model.predict(X_test[:2], feature_noise_cov=skew)
    with pytest.raises(ValueError, match="feature_noise_cov must be finite"):
        model.predict(X_test[:2], feature_noise_cov=nan)
    with pytest.raises(ValueError, match="feature_noise_var must hold non-negative"):
        model.predict(X_test[:2], feature_noise_var=-1.0)
    # Positive semi-definite is enough for known noise, not for a likelihood.
    singular = np.diag([NOISE**2, NOISE**2, 0.0])
    model.predict(X_test[:2], feature_noise_cov=singular)
    with pytest.raises(ValueError, match="noise_covariance must be positive definite"):
        importance_sampling(model, X_test[:2], forward, uniform_log_prior,
                            noise_covariance=singular, n_draws=10)


class _FixedProposal:
    """Any estimator's predictive hook: a fixed mixture of t components."""

    def __init__(self, mixture):
        self.mixture = mixture

    def _predictive_mixture(self, X):
        return self.mixture


def test_importance_sampling_with_t_components_of_at_most_two_degrees_of_freedom():
    """dof <= 2: no covariance. IMIS still runs (its metric uses the t's scale), the
    corrected moments are those of the weighted draws, and a row without a valid draw
    keeps the proposal's mean with an infinite covariance (as predict's std is inf)."""
    n, K = 3, 2
    means = np.array([[[-0.5], [0.5]]] * n)
    log_w = np.log(np.full((n, K), 0.5))
    scales = np.full((K, 1, 1), 0.2)
    dof = np.array([1.5, 2.0])
    model = _FixedProposal(PredictiveMixture(log_w, means, scales, dof, np.float64))
    X = np.array([[0.3, 0.09], [-0.4, 0.16], [50.0, 0.0]])

    def F(Y):
        return np.hstack([Y, Y**2])

    def loglik(x, fx):  # the third row has no draw with positive density
        out = -0.5 * ((x - fx) ** 2).sum(axis=1) / 0.05**2
        return np.where(x[:, 0] > 10, -np.inf, out)

    with pytest.warns(RuntimeWarning, match="1 of 3 rows"):
        res = importance_sampling(model, X, F, uniform_log_prior, log_likelihood=loglik,
                                  n_draws=2000, n_imis_steps=3, random_state=0)
    assert_allclose(res.mean[:2, 0], [0.3, -0.4], atol=0.02)
    assert np.all(res.covariance[:2, 0, 0] > 0) and np.all(res.covariance[:2] < 0.01)
    assert_allclose(res.mean[2], [0.0], atol=1e-12)  # the proposal's mean
    assert res.covariance[2, 0, 0] == np.inf
    assert_allclose(res.proposal_mean[:, 0], 0.0, atol=1e-12)


# --------------------------------------------------------------------------- observation noise
NOISE_COVARIANCE_TYPES = ("full", "diag", "spherical", "tied", "tied_diag", "tied_spherical")


def noisy_reference(ref, p, X, noise):
    """Dense conditioning with Sigma_k + S, S given per sample (n, D, D)."""
    out = []
    for i in range(X.shape[0]):
        q = dict(p, Sigma=p["Sigma"] + noise[i])
        out.append(ref.condition_on_x(q, X[i : i + 1]))
    weights = np.concatenate([o.weights for o in out])
    means = np.concatenate([o.means for o in out])
    covs = np.stack([o.covs for o in out])
    mean = np.concatenate([o.mean for o in out])
    cov = np.concatenate([o.cov for o in out])
    return weights, means, covs, mean, cov


@pytest.mark.parametrize("n_latent", [0, 2])
@pytest.mark.parametrize("kind", ["shared_var", "per_sample_var", "shared_cov",
                                  "per_sample_cov"])
@pytest.mark.parametrize("covariance_type", NOISE_COVARIANCE_TYPES)
def test_observation_noise_matches_dense_conditioning(gllim_ref, covariance_type, kind,
                                                      n_latent, kernels):
    rng = np.random.default_rng(0)
    p = gllim_ref.random_params(rng, 3, 6, 2, n_latent=n_latent)
    X, y, _ = gllim_ref.sample(p, 300, rng)
    model = GLLiMRegressor(3, covariance_type=covariance_type, n_latent=n_latent,
                           max_iter=10, random_state=0).fit(X, y)
    dense = gllim_ref.dense_params(model)
    Xq = X[:12]
    if kind == "shared_var":
        var = rng.uniform(0.01, 0.5, 6)
        kwargs = dict(feature_noise_var=var)
        S = np.broadcast_to(np.diag(var), (12, 6, 6))
    elif kind == "per_sample_var":
        var = rng.uniform(0.01, 0.5, (12, 6))
        kwargs = dict(feature_noise_var=var)
        S = var[:, :, None] * np.eye(6)
    elif kind == "shared_cov":
        B = rng.normal(scale=0.3, size=(6, 6))
        kwargs = dict(feature_noise_cov=B @ B.T)
        S = np.broadcast_to(B @ B.T, (12, 6, 6))
    else:  # a full covariance per sample, one of them singular (rank 2)
        B = rng.normal(scale=0.3, size=(12, 6, 6))
        B[3, :, 2:] = 0.0
        S = B @ np.swapaxes(B, 1, 2)
        kwargs = dict(feature_noise_cov=S)
    weights, means, covs, mean, cov = noisy_reference(gllim_ref, dense, Xq, S)
    w, m, c = model.predict_mixture(Xq, **kwargs)
    assert c.shape == (12, 3, 2, 2)
    assert_allclose(w, weights, atol=1e-9)
    assert_allclose(m, means, rtol=1e-8, atol=1e-9)
    assert_allclose(c, covs, rtol=1e-8, atol=1e-12)
    y_hat, y_cov = model.predict(Xq, return_cov=True, **kwargs)
    assert_allclose(y_hat, mean, rtol=1e-8, atol=1e-9)
    assert_allclose(y_cov, cov, rtol=1e-7, atol=1e-10)
    # log p(y | x) of the noisy mixture, from the dense components.
    ref_logp = np.log(np.einsum("nk,nk->n", weights, np.array([
        [multivariate_normal(means[i, k], covs[i, k]).pdf(y[i]) for k in range(3)]
        for i in range(12)])))
    assert_allclose(model.conditional_log_density(Xq, y[:12], **kwargs), ref_logp, rtol=1e-8)
    # The joint density of (x + e, y) and the responsibilities, from the dense joint.
    ref_joint, ref_resp = [], []
    for i in range(12):
        q = dict(dense, Sigma=dense["Sigma"] + S[i])
        ref_joint.append(gllim_ref.joint_log_density(q, Xq[i : i + 1], y[i : i + 1])[0])
        ref_resp.append(gllim_ref.responsibilities(q, Xq[i : i + 1], y[i : i + 1])[0])
    assert_allclose(model.joint_log_density(Xq, y[:12], **kwargs), ref_joint, rtol=1e-8)
    assert_allclose(model.component_posterior(Xq, y[:12], **kwargs), ref_resp, atol=1e-9)
    assert_allclose(model.component_posterior(Xq, **kwargs), weights, atol=1e-9)
    # Zero noise is the noiseless model.
    w0, m0, c0 = model.predict_mixture(Xq, feature_noise_var=0.0)
    w1, m1, c1 = model.predict_mixture(Xq)
    assert_allclose(w0, w1, atol=1e-10)
    assert_allclose(m0, m1, rtol=1e-9, atol=1e-10)
    assert_allclose(c0, np.broadcast_to(c1, c0.shape), rtol=1e-9)
    assert_allclose(model.joint_log_density(Xq, y[:12], feature_noise_var=0.0),
                    model.joint_log_density(Xq, y[:12]), rtol=1e-9)


def test_observation_noise_widens_the_posterior_and_is_validated(gllim_ref):
    rng = np.random.default_rng(1)
    p = gllim_ref.random_params(rng, 2, 5, 1)
    X, y, _ = gllim_ref.sample(p, 200, rng)
    model = GLLiMRegressor(2, random_state=0).fit(X, y[:, 0])
    _, std0 = model.predict(X[:20], return_std=True)
    _, std1 = model.predict(X[:20], return_std=True, feature_noise_var=1.0)
    assert std0.shape == std1.shape == (20,)
    assert np.median(std1) > np.median(std0)
    draws = model.sample_y(X[:2], n_samples=50_000, random_state=0, feature_noise_var=1.0)
    mean, std = model.predict(X[:2], return_std=True, feature_noise_var=1.0)
    assert_allclose(draws.mean(axis=1), mean, atol=0.03 * std.max())
    modes = model.predict_modes(X[:2], n_modes=1, feature_noise_var=1.0)[1][:, 0, 0]
    assert_allclose(modes, mean, rtol=1e-8, atol=1e-10)  # one mode: the mean
    with pytest.raises(ValueError, match="not both"):
        model.predict(X, feature_noise_var=1.0, feature_noise_cov=np.eye(5))
    with pytest.raises(ValueError, match="feature_noise_var must be"):
        model.predict(X[:3], feature_noise_var=np.ones((4, 5)))
    with pytest.raises(ValueError, match="non-negative"):
        model.predict(X[:3], feature_noise_var=-1.0)
    with pytest.raises(ValueError, match="positive semi-definite"):
        model.predict(X[:3], feature_noise_cov=-np.eye(5))
    var = np.ones((3, 5))
    model.predict(X[:3], feature_noise_var=var)
    assert_allclose(var, 1.0)  # not modified


def test_observation_noise_with_dask_inputs(gllim_ref):
    """Per-sample variances follow the row blocks, in predict and predict_mixture."""
    da = pytest.importorskip("dask.array")
    rng = np.random.default_rng(2)
    p = gllim_ref.random_params(rng, 2, 5, 2)
    X, y, _ = gllim_ref.sample(p, 120, rng)
    model = GLLiMRegressor(2, random_state=0).fit(X, y)
    var = rng.uniform(0.01, 0.3, (120, 5))
    lazy = model.predict(da.from_array(X, chunks=50), feature_noise_var=da.from_array(
        var, chunks=50))
    assert_allclose(lazy.compute(scheduler="synchronous"),
                    model.predict(X, feature_noise_var=var), rtol=1e-10)
    # With noise the component covariances depend on the sample: lazy, per row block.
    lazy = model.predict_mixture(da.from_array(X, chunks=50), feature_noise_var=var)
    expected = model.predict_mixture(X, feature_noise_var=var)
    for part, exact in zip(lazy, expected, strict=True):
        assert isinstance(part, da.Array) and part.chunks[0] == (50, 50, 20)
        assert_allclose(part.compute(scheduler="synchronous"), exact, rtol=1e-10)


@pytest.mark.parametrize("noise", ["scalar", "per_feature", "per_feature_dask", "covariance"])
def test_shared_observation_noise_with_dask_inputs(gllim_ref, noise):
    """A noise shared by all samples goes whole to every row block of a dask X."""
    da = pytest.importorskip("dask.array")
    rng = np.random.default_rng(3)
    p = gllim_ref.random_params(rng, 2, 5, 2)
    X, y, _ = gllim_ref.sample(p, 120, rng)
    model = GLLiMRegressor(2, random_state=0).fit(X, y)
    Q = rng.normal(size=(5, 5))
    kwargs = {
        "scalar": {"feature_noise_var": 0.2},
        "per_feature": {"feature_noise_var": rng.uniform(0.01, 0.3, 5)},
        "per_feature_dask": {"feature_noise_var": da.from_array(rng.uniform(0.01, 0.3, 5))},
        "covariance": {"feature_noise_cov": 0.05 * Q @ Q.T},
    }[noise]
    in_memory = {name: np.asarray(value) for name, value in kwargs.items()}
    Xd = da.from_array(X, chunks=50)
    mean, std = model.predict(Xd, return_std=True, **kwargs)
    expected = model.predict(X, return_std=True, **in_memory)
    assert_allclose(mean.compute(scheduler="synchronous"), expected[0], rtol=1e-10)
    assert_allclose(std.compute(scheduler="synchronous"), expected[1], rtol=1e-10)
    for method in ("joint_log_density", "conditional_log_density"):
        assert_allclose(getattr(model, method)(Xd, y, **kwargs).compute(scheduler="synchronous"),
                        getattr(model, method)(X, y, **in_memory), rtol=1e-10)
    assert_allclose(model.component_posterior(Xd, y, **kwargs).compute(scheduler="synchronous"),
                    model.component_posterior(X, y, **in_memory), rtol=1e-10, atol=1e-300)
    # Another noise gives another graph (the shared value is part of the task names).
    assert (model.predict(Xd, feature_noise_var=5.0).name
            != model.predict(Xd, feature_noise_var=0.1).name)


def test_merge_of_trusted_covariances_equals_the_checked_merge(kernels):
    """The inversion's own covariances (positive definite by construction) skip the
    checks and are factorised where merged only; singular ones fall back to the checked
    path (jittered costs): both give merge_mixture's result."""
    from gllim_sk.posterior import _merge_mixture

    rng = np.random.default_rng(7)
    weights, means, covs = random_mixtures(rng, 40, 6, 3, per_sample_cov=True)
    weights[:5, 3:] = 0.0  # rows with fewer components to merge
    weights[5:10, 1] = weights[5:10, 2]  # tied weights
    weights /= weights.sum(axis=1, keepdims=True)
    for c in (covs, np.where(np.arange(6)[None, :, None, None] == 1, 0.0, covs)):
        expected = merge_mixture(weights, means, c, 2)
        got = _merge_mixture(weights, means, c, 2, check_covariances=False)
        for a, b in zip(got, expected, strict=True):
            assert_allclose(a, b, rtol=1e-13, atol=1e-15)
