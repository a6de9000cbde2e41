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

Three parts: the math (functions of distances and responsibilities, which know nothing
of the EM engine); :class:`StudentGLLiMModel`, the EM steps as a variant of the Gaussian
:class:`~gllim_sk._gllim_math.GLLiMModel` that the engine drives; and the estimator
:class:`StudentGLLiMRegressor`.
"""

import dataclasses
import warnings
from dataclasses import dataclass
from numbers import Real

import numpy as np
from scipy.special import betaln, digamma, gammaln, polygamma
from sklearn.utils.validation import check_is_fitted

from . import _dask, _engine
from . import _gllim_math as gm
from ._compat import Interval, computes_with_numpy
from ._gllim import GLLiMRegressor
from ._mixtures import PredictiveMixture, mahalanobis_logdet

# The degrees of freedom are kept in [2 ALPHA_MIN, 2 ALPHA_MAX]: beyond the upper bound
# the t is a Gaussian for every practical purpose and a larger alpha only rescales
# Gamma_k and Sigma_k (by about alpha, through the weights u); below the lower bound a
# component has stopped describing data.
ALPHA_MIN = 1e-2
ALPHA_MAX = 1e4
# Smallest E[u | y, x, k] used in the statistics (see StudentGLLiMModel.e_step).
MIN_SAMPLE_WEIGHT = 1e-20


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
    # log Gamma(alpha + p/2) - log Gamma(alpha) through betaln: no cancellation for
    # large alpha.
    return (gammaln(0.5 * dim) - betaln(alpha, 0.5 * dim) - 0.5 * dim * np.log(2.0 * np.pi)
            - 0.5 * logdet - (alpha + 0.5 * dim) * np.log1p(0.5 * delta))


def expected_weight(delta, alpha, dim):
    """E[u | y, x, k] = (alpha + p/2) / (1 + delta/2)."""
    return (alpha + 0.5 * dim) / (1.0 + 0.5 * delta)


def mean_log_weight_to_alpha(mean_log_u):
    """The closed-form M-step of alpha_k (the rate of u is fixed to 1).

    ``mean_log_u`` (K,) is sum_n r_nk E[log u_nk] / sum_n r_nk with E[log u] =
    digamma(alpha_old + p/2) - log(1 + delta/2) from the E-step of the previous alphas;
    alpha_new = digamma^-1(mean_log_u). Returns the new alphas, clipped to
    [ALPHA_MIN, ALPHA_MAX], and a boolean mask of the components the clipping held.
    """
    low, high = digamma(ALPHA_MIN), digamma(ALPHA_MAX)
    mean_log_u = np.where(np.isfinite(mean_log_u), mean_log_u, high)
    clipped = (mean_log_u < low) | (mean_log_u > high)
    alpha = inverse_digamma(np.clip(mean_log_u, low, high))
    return np.clip(alpha, ALPHA_MIN, ALPHA_MAX), clipped


# ------------------------------------------------------------------------ the EM model
@dataclass
class StudentParams(gm.Params):
    """GLLiM parameters and the Gamma shapes alpha_k (K,) of the weights u."""

    alpha: np.ndarray | None = None


@dataclass
class StudentEStepPlan(gm.EStepPlan):
    """The Gaussian plan without constants (it gives -delta/2), and the t's constants."""

    log_weights: np.ndarray | None = None  # (K,) log pi_k
    logdet: np.ndarray | None = None  # (K,) log|V_k| of the Gaussian joint covariance
    alpha: np.ndarray | None = None  # (K,)
    dim: int = 0  # p = L + D


@dataclass
class StudentBlockEStep(gm.BlockEStep):
    """A block's E-step; ``sample_weight`` holds E[u | k] and ``log_u`` E[log u | k]."""

    log_u: np.ndarray | None = None  # (K, n)


@dataclass
class StudentStats(gm.SufficientStats):
    """Statistics of the Student M-step: the sums of r that divide the covariances and
    the sums of r E[log u] that update alpha (``None`` for the first M-step, u = 1)."""

    cov_mass: np.ndarray | None = None  # (K,) sums of r (after filling empty components)
    log_u_sum: np.ndarray | None = None  # (K,) sums of r E[log u]


class StudentGLLiMModel(gm.GLLiMModel):
    """The EM steps of the Student-t GLLiM, on the Gaussian model's hooks.

    The E-step takes the squared Mahalanobis distances delta = delta^y + delta^x from the
    Gaussian log-density without constants, turns them into t log-densities and the
    weights E[u | k]; the statistics carry r * u (through ``sample_weight``); the M-step
    divides the covariances by sum r instead of sum r u and updates alpha in closed form.
    """

    stats_type = StudentStats

    # The Gamma shape of the first E-step; the estimator sets it from ``dof_init``.
    alpha_init = 20.0

    def plan(self, params, n_sq, **kwargs):
        base = super().plan(params, n_sq, **{**kwargs, "with_const": False})
        K, D, Lw = params.W.shape
        L = params.c.shape[1]
        _, logdet_gamma = self.target_factors(params.gamma)
        logdet = self.noise.logdet(params.noise, K) + logdet_gamma
        if Lw:  # log|Sigma + W W'| = log|Sigma| + log|I + W' Sigma^-1 W|
            logdet -= np.linalg.slogdet(base.latent_cov)[1]
        with np.errstate(divide="ignore"):
            log_weights = np.log(params.weights)
        fields = {f.name: getattr(base, f.name) for f in dataclasses.fields(base)}
        return StudentEStepPlan(**fields, log_weights=log_weights, logdet=logdet,
                                alpha=params.alpha, dim=L + D)

    def e_step(self, block, plan):
        neg_half_delta, latent_mean = self.log_joint(block, plan)
        delta = np.maximum(-2.0 * neg_half_delta, 0.0)
        alpha = plan.alpha[:, None]
        log_joint = plan.log_weights[:, None] + t_log_density(
            delta, plan.logdet[:, None], alpha, plan.dim
        )
        log_prob = gm.logsumexp(log_joint, axis=0)
        log_resp = log_joint - log_prob
        # Responsibilities below e^-650 are set to 0 and the weights u kept above
        # MIN_SAMPLE_WEIGHT, so that r * u never falls into the subnormal range, where
        # the matrix products of the statistics run many times slower. Both changes are
        # far below what the sums can resolve.
        resp = np.exp(np.maximum(log_resp, -650.0))
        resp[log_resp < -650.0] = 0.0
        weight = np.maximum(expected_weight(delta, alpha, plan.dim), MIN_SAMPLE_WEIGHT)
        return StudentBlockEStep(
            log_prob=log_prob, resp=resp, latent_mean=latent_mean, sample_weight=weight,
            log_u=digamma(alpha + 0.5 * plan.dim) - np.log1p(0.5 * delta),
        )

    def block_stats(self, block, estep, latent_cov, fill=None):
        stats = super().block_stats(block, estep, latent_cov, fill)
        resp = estep.resp
        if fill is not None and fill.any():
            resp = resp.copy()
            resp[fill] = 1.0
        stats.cov_mass = resp.sum(axis=1)
        log_u = getattr(estep, "log_u", None)
        stats.log_u_sum = None if log_u is None else (resp * log_u).sum(axis=1)
        return stats

    def covariance_scale(self, stats):
        if stats.cov_mass is None:
            return None
        return stats.mass / np.maximum(stats.cov_mass, np.finfo(float).tiny)

    def m_step_moments(self, stats):
        moments = super().m_step_moments(stats)
        if stats.log_u_sum is None:  # first M-step (u = 1): the initial alpha
            alpha = np.full(moments.weights.shape, float(self.alpha_init))
        else:
            mean_log_u = stats.log_u_sum / np.maximum(stats.cov_mass, np.finfo(float).tiny)
            alpha, _ = mean_log_weight_to_alpha(mean_log_u)
        return dataclasses.replace(moments, params_type=StudentParams,
                                   fields={**moments.fields, "alpha": alpha})

    def student_forward_terms(self, Xc, fwd, alpha):
        """Gating log-weights (n, K), means (n, K, L) and distances delta_x (n, K) of the
        Student forward mixture: nu_k(x) ∝ pi_k t(x; c*_k, Gamma*_k, alpha_k)."""
        log_gauss, means = self.forward_terms(Xc, fwd)  # (K, n): Gaussian log terms
        D = Xc.shape[1]
        with np.errstate(divide="ignore"):
            log_w = np.log(fwd.weights)
        delta = -2.0 * (log_gauss - log_w[:, None]) - D * gm.LOG_2PI - fwd.logdet_x[:, None]
        delta = np.maximum(delta, 0.0)
        log_nu = log_w[:, None] + t_log_density(delta, fwd.logdet_x[:, None], alpha[:, None],
                                                D)
        log_nu -= gm.logsumexp(log_nu, axis=0, keepdims=True)
        return log_nu.T, means.transpose(2, 1, 0), delta.T


# ------------------------------------------------------------------------ the estimator
def _require_numpy(X):
    """The Student model computes in numpy (scipy's special functions): say so clearly."""
    if not computes_with_numpy(X):
        raise ValueError(
            "StudentGLLiMRegressor computes with numpy arrays only (scipy's special "
            "functions): pass numpy arrays (for a torch tensor, X.cpu().numpy()). "
            "GLLiMRegressor takes arrays of other libraries under Array API dispatch."
        )


class StudentGLLiMRegressor(GLLiMRegressor):
    r"""Student-t GLLiM (SLLiM): a mixture of linear inverse regressions robust to outliers.

    Each component of :class:`GLLiMRegressor` becomes a multivariate Student t
    (Perthame, Forbes and Deleforge, "Inverse regression approach to robust nonlinear
    high-to-low dimensional mapping", JMVA 2018; the ``sllim`` function of the R package
    xLLiM)::

        u ~ Gamma(alpha_k, rate 1),  y | u ~ N(c_k, Gamma_k / u),
        x | y, u ~ N(A_k y + b_k, Sigma_k / u)   (plus A^w_k w, w | u ~ N(0, I / u)).

    Given the component, (y, x) is a t with nu_k = 2 alpha_k degrees of freedom (``dof_``).
    In EM every training row gets, per component, the weight E[u | x, y, k], small for
    rows that fit no component: corrupted rows and heavy-tailed noise pull the fit far
    less than in the Gaussian model. As nu_k grows the model becomes the Gaussian GLLiM.

    The estimator shares :class:`GLLiMRegressor`'s EM engine, parameters, attributes and
    methods; it adds ``dof_init`` and ``dof_``. The conventions follow xLLiM so that fits
    can be compared: the first M-step, from the initial responsibilities, uses u = 1,
    and the initial degrees of freedom are ``dof_init = 40`` (alpha = 20).

    Parameters
    ----------
    n_components, covariance_type, target_covariance_type, n_latent, reg_covar, max_iter, \
tol, n_init, init_candidates, init_params, resp_init, random_state, warm_start, verbose, \
verbose_interval, learning_offset, learning_decay
        As in :class:`GLLiMRegressor`. ``fit`` also takes dask arrays (exact EM on the
        workers), and ``partial_fit`` runs online EM: it blends the Student statistics,
        the sums of r E[log u] that update alpha included.
    dof_init : float, default=40.0
        Initial degrees of freedom nu = 2 alpha of every component (xLLiM's default).

    Attributes
    ----------
    dof_ : ndarray of shape (n_components,)
        Fitted degrees of freedom nu_k = 2 alpha_k, kept within [0.02, 20000]: beyond
        that the t is Gaussian for every practical purpose.
    weights_, target_means_, target_covariances_, inverse_coef_, latent_coef_, \
inverse_intercept_, noise_covariances_, forward_means_, forward_coef_, \
forward_intercept_, forward_covariances_, feature_mean_, target_mean_, lower_bounds_, \
lower_bound_, n_iter_, converged_, n_features_in_, feature_names_in_, n_targets_
        As in :class:`GLLiMRegressor`. ``target_covariances_`` and ``noise_covariances_``
        are the *scale* matrices Gamma_k and Sigma_k of the t (its covariance is the scale
        divided by alpha_k - 1); ``forward_covariances_`` is Sigma*_k, computed from them.
        ``lower_bounds_`` holds mean log-likelihoods under the t model.

    Notes
    -----
    **E-step.** With delta_nk the squared Mahalanobis distance of (y_n, x_n) to component
    k under the Gaussian covariance of GLLiM with the same parameters (the distance of
    y_n to c_k under Gamma_k plus that of x_n to A_k y_n + b_k under Sigma_k, or
    Sigma_k + A^w_k A^w_k' with latent factors) and p = L + D::

        log p(y, x | k) = lgamma(alpha_k + p/2) - lgamma(alpha_k) - p/2 log(2 pi)
                          - log|Gamma_k| / 2 - log|Sigma_k| / 2 - (alpha_k + p/2) log(1 + delta/2),
        E[u | y, x, k] = (alpha_k + p/2) / (1 + delta / 2).

    **M-step.** c_k, b_k and A_k are the Gaussian M-step's with weights r * u; Gamma_k
    and Sigma_k are the r * u weighted sums of squares divided by sum_n r_nk; and
    alpha_k = digamma^-1(digamma(alpha_k_old + p/2) - sum_n r_nk log(1 + delta_nk/2) /
    sum_n r_nk), from the distances of the E-step.

    **Prediction.** The forward parameters A*_k, b*_k, Sigma*_k, c*_k, Gamma*_k are
    those of :class:`GLLiMRegressor`. The gating weights use the t marginal of x,
    nu_k(x) ∝ pi_k t(x; c*_k, Gamma*_k, alpha_k); given x and k, y is a t with
    2 alpha_k + D degrees of freedom, location A*_k x + b*_k and scale matrix
    Sigma*_k (1 + delta^x_k / 2) / (alpha_k + D/2), delta^x_k the distance of x to c*_k
    under Gamma*_k. Its covariance is that scale times (2 alpha_k + D) /
    (2 alpha_k + D - 2): it exists when 2 alpha_k + D > 2, which always holds for
    D >= 2. ``predict(return_std=True)`` returns the square root of the diagonal of the
    mixture's covariance (the weighted component covariances plus the spread of the
    component means); where a component's covariance does not exist, the standard
    deviation is ``inf``. ``predict_mixture`` returns those component covariances.

    **Collapse.** A few extreme rows can draw a component onto 2-4 points, with its
    variances at the ``reg_covar`` floor and alpha driven to a bound. Alpha is kept in
    [0.01, 10000], every covariance above the floor, so the fit stays finite; a
    ``UserWarning`` names the components that ended with fewer than L + 2 rows of
    responsibility or with alpha at its lower bound. (Alpha at its upper bound on a
    well-populated component is no failure: that component's data look Gaussian.)

    Observation noise at prediction (``feature_noise_var`` / ``feature_noise_cov`` of
    :class:`GLLiMRegressor`) is not available here: Gaussian noise added to a t is not a
    t, so the predictive has no closed form.

    Examples
    --------
    >>> import numpy as np
    >>> from gllim_sk import StudentGLLiMRegressor
    >>> rng = np.random.default_rng(0)
    >>> y = rng.uniform(-1, 1, size=(300, 1))
    >>> X = np.hstack([np.sin(3 * y), np.cos(3 * y), y**2]) + 0.01 * rng.normal(size=(300, 3))
    >>> X[:30] = 5 * X[rng.integers(0, 300, 30)]  # 10% of rows with mismatched features
    >>> model = StudentGLLiMRegressor(n_components=4, random_state=0).fit(X, y)
    >>> model.dof_.shape
    (4,)
    >>> bool(np.abs(model.predict(X[30:]) - y[30:]).mean() < 0.1)
    True
    """

    _parameter_constraints: dict = {
        **GLLiMRegressor._parameter_constraints,
        "dof_init": [Interval(Real, 2 * ALPHA_MIN, 2 * ALPHA_MAX, closed="both")],
    }

    def __init__(
        self,
        n_components=1,
        *,
        covariance_type="diag",
        target_covariance_type="full",
        n_latent=0,
        reg_covar=1e-6,
        max_iter=100,
        tol=1e-3,
        n_init=1,
        init_candidates=10,
        init_params="kmeans",
        resp_init=None,
        random_state=None,
        warm_start=False,
        verbose=0,
        verbose_interval=10,
        learning_offset=2.0,
        learning_decay=0.7,
        dof_init=40.0,
    ):
        super().__init__(
            n_components, covariance_type=covariance_type,
            target_covariance_type=target_covariance_type, n_latent=n_latent,
            reg_covar=reg_covar, max_iter=max_iter, tol=tol, n_init=n_init,
            init_candidates=init_candidates,
            init_params=init_params, resp_init=resp_init, random_state=random_state,
            warm_start=warm_start, verbose=verbose, verbose_interval=verbose_interval,
            learning_offset=learning_offset, learning_decay=learning_decay,
        )
        self.dof_init = dof_init

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.array_api_support = False  # numpy only (scipy's special functions)
        return tags

    # ------------------------------------------------------------------ fitting
    _em_model_class = StudentGLLiMModel

    def _em_model(self, var_floor=None, *, fitted=False):
        model = super()._em_model(var_floor, fitted=fitted)
        model.alpha_init = 0.5 * self.dof_init
        return model

    def _validate_training_data(self, X, y):
        _require_numpy(X)
        X, y = super()._validate_training_data(X, y)
        self._n_train_samples = X.shape[0]
        return X, y

    def _fit(self, X, y, frozen_resp=None):
        super()._fit(X, y, frozen_resp=frozen_resp)
        if _dask.any_dask_array(X):  # the dask path checks X itself (known row counts)
            self._n_train_samples = X.shape[0]
        self._warn_collapsed()
        return self

    def _set_params_from(self, params):
        super()._set_params_from(params)
        self.dof_ = 2.0 * np.asarray(params.alpha, dtype=float)

    def _warn_collapsed(self):
        alpha = self._params.alpha
        rows = self.weights_ * self._n_train_samples
        few = rows < self.n_targets_ + 2
        # alpha at ALPHA_MAX on a well-populated component only says "Gaussian".
        at_lower_bound = alpha <= ALPHA_MIN * (1 + 1e-9)
        bad = np.flatnonzero(few | at_lower_bound)
        if bad.size:
            details = ", ".join(
                f"{k} ({rows[k]:.1f} rows, dof {2 * alpha[k]:.3g})" for k in bad
            )
            warnings.warn(
                f"StudentGLLiMRegressor: component(s) {details} collapsed onto a few rows "
                "or reached the lower bound of the degrees of freedom; the fit is finite, "
                "but these components describe little data. Fewer components, a larger "
                "reg_covar or n_init > 1 usually avoid it.",
                UserWarning,
                stacklevel=3,
            )

    def _n_parameters(self):
        return super()._n_parameters() + self.weights_.shape[0]  # the fitted alphas

    def __setstate__(self, state):
        state = dict(state)
        for name, cls in (("_params", StudentParams),):
            if isinstance(state.get(name), dict):
                state[name] = cls(**state[name])
        super().__setstate__(state)

    # ------------------------------------------------------------------ prediction
    # Its component covariances depend on x (through delta^x): predict_mixture returns
    # them per sample.
    _per_sample_covariances = True

    def _predictive_mixture(self, X, *, feature_noise_var=None, feature_noise_cov=None,
                            method="predict", out=None):
        """The predictive hook (see :mod:`._predict`): t components with ``dof_[k] + D``
        degrees of freedom and scale matrices (n, K, L, L), as numpy arrays (``out`` is
        not used)."""
        self._reject_feature_noise(feature_noise_var, feature_noise_cov)
        _require_numpy(X)
        X, dtype = self._check_X(X, method)
        Xc = X.astype(np.float64) - self.feature_mean_
        alpha = self._params.alpha
        log_nu, means, delta = self._em_model(fitted=True).student_forward_terms(
            Xc, self._forward, alpha
        )
        D = Xc.shape[1]
        factor = (1.0 + 0.5 * delta) / (alpha + 0.5 * D)  # (n, K)
        scales = factor[:, :, None, None] * self._forward.cov[None]
        return PredictiveMixture(log_nu, means + self.target_mean_, scales, 2.0 * alpha + D,
                                 dtype)

    def _check_namespace(self, X, method):
        # The Student model lives in numpy only: moving it cannot help, numpy input can.
        _require_numpy(X)

    @staticmethod
    def _reject_feature_noise(feature_noise_var, feature_noise_cov):
        if feature_noise_var is not None or feature_noise_cov is not None:
            raise NotImplementedError(
                "StudentGLLiMRegressor does not take observation noise at prediction: "
                "Gaussian noise added to a Student t is not a t, and the predictive has no "
                "closed form. Use GLLiMRegressor, or importance_sampling with the noise model."
            )

    def _noisy_forward_terms(self, X, method, feature_noise_var, feature_noise_cov):
        self._reject_feature_noise(feature_noise_var, feature_noise_cov)
        return None

    def _target_log_prior(self, y):
        """log pi_k + log t(y; c_k, Gamma_k, alpha_k), (K, n), for centred y."""
        params = self._params
        delta, logdet = mahalanobis_logdet(y[None] - params.c[:, None, :],
                                           params.gamma[:, None])
        with np.errstate(divide="ignore"):
            log_w = np.log(params.weights)
        return log_w[:, None] + t_log_density(delta, logdet, params.alpha[:, None], y.shape[1])

    @_dask.blockwise()
    def outlier_weights(self, X, y):
        """How much each pair counts in the fit: sum_k p(k | x, y) E[u | x, y, k] / alpha_k.

        About 1 for a pair that its components explain as well as a typical one, close to
        0 for a pair that no component explains (an outlier).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
        y : array-like of shape (n_samples,) or (n_samples, n_targets)

        Returns
        -------
        weights : ndarray of shape (n_samples,)
        """
        estep = self._joint_estep(X, y)
        u = estep.sample_weight / self._params.alpha[:, None]
        return (estep.resp * u).sum(axis=0)

    # ------------------------------------------------------------------ the deep head's interface
    _FITTED_ARRAYS = GLLiMRegressor._FITTED_ARRAYS + ("dof_",)

    def expected_scale(self, X, y):
        """E[u | x, y, Z = k] = (alpha_k + p/2) / (1 + delta_nk / 2) of each pair.

        The weight of pair n in component k's M-step: about alpha_k (the prior mean of
        u) for a pair that the component explains as well as a typical one, small for a
        pair far from it. A network trained on this model's negative log-likelihood
        weights the squared residual of sample n under component k by
        ``r_nk * expected_scale_nk``, so that pairs that no component explains (e.g.
        wrong labels) pull the features less. Parameters and shape as
        :meth:`GLLiMRegressor.expected_scale`.
        """
        check_is_fitted(self)
        return np.ascontiguousarray(self._joint_estep(X, y).sample_weight.T)

    def _fit_frozen(self, problem, resp, random_state):
        """The frozen E-step of the t model: the partition ``resp`` (K, n) is held, and
        EM runs on the scale weights u and the degrees of freedom (without them the
        first M-step, with u = 1, would be the Gaussian model's)."""
        model, executor, blocks = problem.model, problem.executor, problem.blocks
        params = self._em_initial_params(problem, random_state, resp=resp)
        partition = _engine.responsibilities_as_esteps(executor, blocks, resp)
        bounds, converged = [], False
        for n_iter in range(1, self.max_iter + 1):
            esteps, _, bound, latent_cov = _engine.e_step(model, executor, blocks, params,
                                                          with_stats=False)
            bounds.append(bound)
            if not np.isfinite(bound):
                raise self._non_finite_error()
            if n_iter > 1 and abs(bounds[-1] - bounds[-2]) < self.tol:
                converged = True
                break
            if n_iter == self.max_iter:
                break
            for estep, held in zip(esteps, partition, strict=True):
                estep.resp = held.resp  # the t weights of this E-step, the held partition
            stats = _engine.stats_of(model, executor, blocks, esteps, latent_cov)
            params = _engine.m_step(model, executor, blocks, esteps, stats, latent_cov)
        self.converged_ = converged
        self.n_iter_ = len(bounds)
        self.lower_bounds_ = bounds
        self.lower_bound_ = bounds[-1]
        return params

    def _restored_params(self, arrays, **fields):
        alpha = 0.5 * np.asarray(arrays["dof_"], dtype=np.float64)
        return StudentParams(**fields, alpha=alpha)
