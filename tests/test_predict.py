"""Every prediction is made from the one predictive hook, ``_predictive_mixture``.

An estimator whose hook returns a mixture chosen here (Student-t components, whose
covariance exists for one and not for the other) must predict exactly that mixture's
moments, densities, draws, modes and importance weights: the references are computed
here from the mixture's definition, scipy's densities and brute force.
"""

import numpy as np
import pytest
from numpy.testing import assert_allclose
from scipy.stats import kstest, multivariate_t, t

from gllim_sk import GLLiMRegressor
from gllim_sk._mixtures import PredictiveMixture
from gllim_sk.posterior import importance_sampling

WEIGHTS = np.array([0.3, 0.7])
DOF = np.array([5.0, 1.5])  # the second component has no covariance


def fixed_mixture(n):
    """Per row n: two 1-D t components at -1 - 0.1 n and 2 + 0.1 n."""
    rows = np.arange(n)
    means = np.stack([-1.0 - 0.1 * rows, 2.0 + 0.1 * rows], axis=1)[:, :, None]
    scales = np.array([[[0.25]], [[0.5]]])
    return PredictiveMixture(np.log(np.tile(WEIGHTS, (n, 1))), means, scales, DOF,
                             np.float64)


class FixedHook(GLLiMRegressor):
    """A GLLiM estimator whose predictive mixture is :func:`fixed_mixture`."""

    def _predictive_mixture(self, X, *, feature_noise_var=None, feature_noise_cov=None,
                            method="predict"):
        X, _ = self._check_X(X, method)
        return fixed_mixture(X.shape[0])


@pytest.fixture(scope="module")
def model():
    rng = np.random.default_rng(0)
    y = rng.uniform(-1, 1, (100, 1))
    X = np.hstack([y, y**2]) + 0.01 * rng.normal(size=(100, 2))
    return FixedHook(2, random_state=0).fit(X, y), X[:4]


def test_point_predictions_are_the_hooks_moments(model):
    model, X = model
    means = fixed_mixture(4).means[:, :, 0]
    assert_allclose(model.predict(X)[:, 0], means @ WEIGHTS, rtol=1e-12)
    mean, std = model.predict(X, return_std=True)
    assert np.all(std == np.inf)  # a component without covariance
    weights, mix_means, covs = model.predict_mixture(X)
    assert_allclose(weights, np.tile(WEIGHTS, (4, 1)), rtol=1e-12)
    assert_allclose(mix_means, fixed_mixture(4).means, rtol=1e-12)
    assert_allclose(covs[..., 0, 0], [0.25 * 5 / 3, np.inf])
    assert_allclose(model.component_posterior(X), np.tile(WEIGHTS, (4, 1)), rtol=1e-12)


def test_densities_and_draws_are_the_hooks(model):
    model, X = model
    y = np.array([-1.2, 0.0, 2.5, 7.0])
    means = fixed_mixture(4).means[:, :, 0]
    expected = [np.log(sum(WEIGHTS[k] * multivariate_t(means[i, k], [[0.25, 0.5][k]],
                                                        df=DOF[k]).pdf(y[i])
                           for k in range(2)))
                for i in range(4)]
    assert_allclose(model.conditional_log_density(X, y), expected, rtol=1e-10)
    draws = model.sample_y(X[:1], 20_000, random_state=0)[0, 0]

    def cdf(v):
        return sum(WEIGHTS[k] * t.cdf(v, DOF[k], means[0, k], np.sqrt([0.25, 0.5][k]))
                   for k in range(2))

    assert kstest(draws, cdf).pvalue > 1e-3


def test_modes_and_importance_sampling_consume_the_hook(model):
    model, X = model
    # Merging needs covariances: the t component without one is refused, by name.
    with pytest.raises(ValueError, match="at most 2 degrees of freedom"):
        model.predict_modes(X)
    means = fixed_mixture(1).means[0, :, 0]

    def proposal_density(Y):  # the hook's mixture of row 0, by scipy
        return np.log(sum(WEIGHTS[k] * t.pdf(Y[:, 0], DOF[k], means[k], np.sqrt([0.25, 0.5][k]))
                          for k in range(2)))

    # With the proposal as the prior and a flat likelihood, every weight is the same:
    # the sampler's proposal density is the hook's mixture.
    res = importance_sampling(model, X[:1], lambda Y: np.hstack([Y, Y**2]), proposal_density,
                              log_likelihood=lambda x, fx: np.zeros(len(x)), n_draws=4000,
                              random_state=0)
    assert_allclose(res.proposal_mean[:, 0], [means @ WEIGHTS], rtol=1e-12)
    assert np.ptp(res.log_weights) < 1e-9
    assert_allclose(res.effective_sample_size, [4000.0], rtol=1e-9)
