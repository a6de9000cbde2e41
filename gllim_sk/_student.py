"""The Student-t GLLiM (SLLiM): robust mixture of linear inverse regressions.

Model, per component k (Perthame, Forbes and Deleforge, JMVA 2018)::

    u ~ Gamma(alpha_k, rate 1),  y | u ~ N(c_k, Gamma_k / u),
    x | y, u ~ N(A_k y + b_k, Sigma_k / u).

Given the component, (y, x) is a multivariate t with nu_k = 2 alpha_k degrees of freedom,
location (c_k, A_k c_k + b_k) and scale V_k / alpha_k, where V_k is the covariance of the
Gaussian GLLiM with the same parameters. With p = L + D and delta the squared Mahalanobis
distance under V_k (delta = delta^y + delta^x, the distance of y to c_k under Gamma_k
plus that of x to A_k y + b_k under Sigma_k)::

    log p(y, x | k) = lgamma(alpha_k + p/2) - lgamma(alpha_k) - p/2 log(2 pi)
                      - log|V_k| / 2 - (alpha_k + p/2) log(1 + delta / 2),
    E[u | y, x, k] = (alpha_k + p/2) / (1 + delta / 2),
    E[log u | y, x, k] = digamma(alpha_k + p/2) - log(1 + delta / 2).

The math functions below know nothing of the EM engine: they take distances and
responsibilities.
"""

import numpy as np
from scipy.special import digamma, gammaln, polygamma

# The degrees of freedom are kept in [2 ALPHA_MIN, 2 ALPHA_MAX]: beyond the upper bound
# the t is a Gaussian for every practical purpose and a larger alpha only rescales
# Gamma_k and Sigma_k (by about alpha, through the weights u); below the lower bound a
# component has stopped describing data.
ALPHA_MIN = 1e-2
ALPHA_MAX = 1e4


def inverse_digamma(value, n_iter=20):
    """The x > 0 with digamma(x) = value, elementwise (scipy has no inverse).

    Newton's method on digamma, started from Minka's approximation ("Estimating a
    Dirichlet distribution", 2000); digamma is increasing and concave on (0, inf), so
    the iterates converge monotonically and a few steps reach machine precision.
    """
    value = np.asarray(value, dtype=float)
    # digamma(1) = -0.5772...: the second branch is only taken where value < -2.22.
    small = value < -2.22
    x = np.exp(np.minimum(value, 700.0)) + 0.5
    x = np.where(small, -1.0 / (np.where(small, value, -3.0) - digamma(1.0)), x)
    for _ in range(n_iter):
        step = (digamma(x) - value) / polygamma(1, x)
        x = x - step
        x = np.maximum(x, np.finfo(float).tiny)
        if np.all(np.abs(step) <= 1e-14 * x):
            break
    return x


def t_log_density(delta, logdet, alpha, dim):
    """log p of the scale-mixture t above from its distance ``delta`` (all broadcast).

    ``logdet`` is log|V| of the Gaussian covariance V, ``alpha`` the Gamma shape and
    ``dim`` the dimension p.
    """
    half = alpha + 0.5 * dim
    return (gammaln(half) - gammaln(alpha) - 0.5 * dim * np.log(2.0 * np.pi) - 0.5 * logdet
            - half * np.log1p(0.5 * delta))


def expected_weight(delta, alpha, dim):
    """E[u | y, x, k] = (alpha + p/2) / (1 + delta/2)."""
    return (alpha + 0.5 * dim) / (1.0 + 0.5 * delta)


def update_alpha(alpha, resp_mass, resp_log_term, dim):
    """The closed-form M-step of alpha_k (the rate of u is fixed to 1).

    ``resp_mass`` (K,) is sum_n r_nk and ``resp_log_term`` (K,) is
    sum_n r_nk log(1 + delta_nk / 2) with the distances of the E-step that used ``alpha``:
    alpha_new = digamma^-1(digamma(alpha + p/2) - resp_log_term / resp_mass).
    Returns the new alphas, clipped to [ALPHA_MIN, ALPHA_MAX], and a boolean mask of the
    components that the clipping held.
    """
    mass = np.maximum(resp_mass, np.finfo(float).tiny)
    target = digamma(alpha + 0.5 * dim) - resp_log_term / mass
    new = inverse_digamma(np.clip(target, digamma(ALPHA_MIN), digamma(ALPHA_MAX)))
    clipped = (target <= digamma(ALPHA_MIN)) | (target >= digamma(ALPHA_MAX))
    return np.clip(new, ALPHA_MIN, ALPHA_MAX), clipped
