"""Choosing the number of components (and of latent factors) for the user.

:class:`ComponentSelector` fits a GLLiM for every ``n_components`` (and ``n_latent``) of
a grid and chooses among them by BIC, AIC or the *slope heuristic* of Birgé and Massart
(Probability Theory and Related Fields 138, 2007), in the data-driven slope estimation
form of Baudry, Maugis and Michel ("Slope heuristics: overview and implementation",
Statistics and Computing 22, 2012; the "capushe" approach used by xLLiM's BLLiM). The
heuristic needs no constant of its own: the penalty is read off the data as twice the
slope at which the log-likelihood of the most complex models keeps growing with their
number of parameters.
"""

from itertools import product
from numbers import Integral

import numpy as np
from scipy.stats import theilslopes
from sklearn.base import BaseEstimator, MetaEstimatorMixin, RegressorMixin, clone
from sklearn.utils.validation import check_is_fitted

from ._compat import HasMethods, Interval, StrOptions, _fit_context
from ._gllim import GLLiMRegressor, _total

__all__ = ["ComponentSelector", "slope_heuristic"]


def slope_heuristic(log_likelihood, n_parameters, min_points=None):
    """Data-driven slope estimation: the penalty constant and the model it selects.

    For models ``m`` with maximised log-likelihoods ``LL_m`` and ``D_m`` free
    parameters, the contrast ``-LL_m`` of the most complex models decreases linearly in
    ``D_m`` with slope ``-kappa_min``; the selected model minimises
    ``-LL_m + 2 kappa_min D_m``. The slope is estimated (Theil-Sen, robust to a model
    whose EM stopped in a poor local optimum) on the ``k`` most complex models for
    every ``k`` from ``min_points`` to all of them; the model selected most often over
    these fits (the longest plateau) is returned, with the slope of its fits.

    Parameters
    ----------
    log_likelihood : array-like of shape (n_models,)
        Maximised log-likelihoods (totals over the samples).
    n_parameters : array-like of shape (n_models,)
        Numbers of free parameters.
    min_points : int, default=None
        Fewest models in a slope fit (default ``max(3, n_models // 3)``).

    Returns
    -------
    best : int
        Index of the selected model.
    kappa : float
        Estimated minimal penalty per parameter (the penalty used is ``2 kappa D``).
    selections : ndarray of shape (n_fits,)
        The model selected by each fit, from the most complex ``min_points`` models to
        all of them.

    Examples
    --------
    >>> import numpy as np
    >>> from gllim_sk.model_selection import slope_heuristic
    >>> D = np.arange(1, 11) * 10.0
    >>> LL = np.minimum(D, 30) * 50 + 0.5 * D  # true model at D = 30, then slope 1/2
    >>> best, kappa, _ = slope_heuristic(LL, D)
    >>> int(best), float(kappa)
    (2, 0.5)
    """
    ll = np.asarray(log_likelihood, dtype=float)
    dim = np.asarray(n_parameters, dtype=float)
    if ll.ndim != 1 or ll.shape != dim.shape or ll.size < 3:
        raise ValueError("log_likelihood and n_parameters must be 1-D of the same length >= 3.")
    if not (np.all(np.isfinite(ll)) and np.all(np.isfinite(dim))):
        raise ValueError("log_likelihood and n_parameters must be finite.")
    if np.unique(dim).size < 3:
        raise ValueError("The slope heuristic needs models of at least 3 different sizes.")
    n = ll.size
    if min_points is None:
        min_points = max(3, n // 3)
    if not isinstance(min_points, Integral) or not 2 <= min_points <= n:
        raise ValueError(f"min_points must be an integer in [2, {n}], got {min_points!r}.")
    order = np.argsort(dim, kind="stable")[::-1]  # most complex first
    selections, kappas = [], []
    for k in range(min_points, n + 1):
        idx = order[:k]
        if np.unique(dim[idx]).size < 2:
            continue
        slope = theilslopes(-ll[idx], dim[idx])[0]
        kappa = max(-slope, 0.0)
        selections.append(int(np.argmin(-ll + 2.0 * kappa * dim)))
        kappas.append(kappa)
    selections = np.asarray(selections)
    kappas = np.asarray(kappas)
    # The longest plateau: the model selected by the most fits (ties: the simpler one).
    values, counts = np.unique(selections, return_counts=True)
    top = values[counts == counts.max()]
    best = int(top[np.argmin(dim[top])])
    return best, float(np.median(kappas[selections == best])), selections


class ComponentSelector(MetaEstimatorMixin, RegressorMixin, BaseEstimator):
    """Fit GLLiM over a grid of ``n_components`` (and ``n_latent``) and keep the best.

    Every candidate is fitted on the same data; the table of log-likelihoods, numbers
    of parameters, BIC, AIC and slope-heuristic criterion is kept in ``results_``, and
    the chosen model predicts. Being a regressor itself, the selector is the last step
    of a :class:`~sklearn.pipeline.Pipeline`; dask arrays are fitted as GLLiM fits them
    (EM on the workers, the criteria reduced there).

    Parameters
    ----------
    estimator : GLLiMRegressor or StudentGLLiMRegressor, default=None
        The model whose ``n_components`` and ``n_latent`` vary (default
        ``GLLiMRegressor()``); its other parameters are kept.
    n_components : int or sequence of int, default=(1, 2, 3, 4, 5, 6, 8, 10, 12)
        Candidate numbers of components.
    n_latent : int or sequence of int, default=(0,)
        Candidate numbers of latent factors.
    criterion : {"slope", "bic", "aic"}, default="slope"
        How the model is chosen. "slope" needs at least three candidates of different
        sizes.
    random_state : int, RandomState instance or None, default=None
        If not None, overrides the estimator's ``random_state`` for every candidate.

    Attributes
    ----------
    results_ : dict of ndarray
        One entry per candidate: ``n_components``, ``n_latent``, ``n_parameters``,
        ``log_likelihood`` (total), ``bic``, ``aic``, ``slope_criterion``
        (``-2 LL + 4 kappa D``, on the BIC's scale).
    slope_kappa_ : float
        The slope heuristic's minimal penalty per parameter.
    best_index_ : int
        Index of the chosen candidate in ``results_``.
    best_params_ : dict
        Its ``n_components`` and ``n_latent``.
    best_estimator_ : estimator
        The chosen fitted model.
    n_features_in_ : int

    Examples
    --------
    >>> import numpy as np
    >>> from gllim_sk.model_selection import ComponentSelector
    >>> rng = np.random.default_rng(0)
    >>> y = rng.uniform(-1, 1, (600, 1))
    >>> X = np.hstack([np.sin(3 * y), y**2]) + 0.01 * rng.normal(size=(600, 2))
    >>> sel = ComponentSelector(n_components=[1, 2, 4, 8], criterion="bic",
    ...                         random_state=0).fit(X, y)
    >>> sorted(sel.results_)[:3]
    ['aic', 'bic', 'log_likelihood']
    """

    _parameter_constraints: dict = {
        "estimator": [None, HasMethods(["fit", "bic"])],
        "n_components": ["array-like", Interval(Integral, 1, None, closed="left")],
        "n_latent": ["array-like", Interval(Integral, 0, None, closed="left")],
        "criterion": [StrOptions({"slope", "bic", "aic"})],
        "random_state": ["random_state"],
    }

    def __init__(self, estimator=None, *, n_components=(1, 2, 3, 4, 5, 6, 8, 10, 12),
                 n_latent=(0,), criterion="slope", random_state=None):
        self.estimator = estimator
        self.n_components = n_components
        self.n_latent = n_latent
        self.criterion = criterion
        self.random_state = random_state

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        tags.target_tags.single_output = True
        return tags

    def _grid(self):
        grid = []
        for name in ("n_components", "n_latent"):
            values = np.atleast_1d(np.asarray(getattr(self, name)))
            if values.ndim != 1 or values.size == 0 or not np.issubdtype(values.dtype,
                                                                          np.integer):
                raise ValueError(f"{name} must be a non-empty sequence of integers.")
            low = 1 if name == "n_components" else 0
            if values.min() < low:
                raise ValueError(f"{name} values must be >= {low}.")
            grid.append(sorted({int(v) for v in values}))
        return list(product(*grid))

    @_fit_context(prefer_skip_nested_validation=False)
    def fit(self, X, y):
        """Fit every candidate on (X, y) and choose one."""
        base = GLLiMRegressor() if self.estimator is None else self.estimator
        if not hasattr(base, "bic"):
            raise TypeError("estimator must be a GLLiM estimator (with bic).")
        grid = self._grid()
        if self.criterion == "slope" and len(grid) < 3:
            raise ValueError("criterion='slope' needs at least 3 candidate models.")
        models, ll, dims, bic = [], [], [], []
        for K, Lw in grid:
            params = {"n_components": K, "n_latent": Lw}
            if self.random_state is not None:
                params["random_state"] = self.random_state
            model = clone(base).set_params(**params).fit(X, y)
            p = model._n_parameters()
            log_density = model.joint_log_density(X, y)
            total = float(_total(log_density))  # computes a dask sum on the workers
            models.append(model)
            dims.append(p)
            ll.append(total)
            bic.append(-2.0 * total + p * np.log(log_density.shape[0]))
        ll, dims, bic = np.array(ll), np.array(dims, dtype=float), np.array(bic)
        aic = -2.0 * ll + 2.0 * dims
        if np.unique(dims).size >= 3:
            best_slope, kappa, _ = slope_heuristic(ll, dims)
        else:
            best_slope, kappa = None, np.nan
        slope_crit = -2.0 * ll + 4.0 * kappa * dims
        if self.criterion == "slope":
            if best_slope is None:
                raise ValueError("criterion='slope' needs candidates of 3 different sizes.")
            best = best_slope
        else:
            best = int(np.argmin(bic if self.criterion == "bic" else aic))
        results = {
            "n_components": np.array([g[0] for g in grid]),
            "n_latent": np.array([g[1] for g in grid]),
            "n_parameters": dims.astype(int), "log_likelihood": ll, "bic": bic, "aic": aic,
            "slope_criterion": slope_crit,
        }
        self.results_ = results
        self.slope_kappa_ = kappa
        self.best_index_ = int(best)
        self.best_params_ = {"n_components": grid[best][0], "n_latent": grid[best][1]}
        self.best_estimator_ = models[best]
        self.n_features_in_ = models[best].n_features_in_
        if hasattr(models[best], "feature_names_in_"):
            self.feature_names_in_ = models[best].feature_names_in_
        return self

    def predict(self, X, **kwargs):
        """Predict with the chosen model (keywords go to its ``predict``)."""
        check_is_fitted(self)
        return self.best_estimator_.predict(X, **kwargs)

    def score(self, X, y, sample_weight=None):
        """R^2 of the chosen model."""
        check_is_fitted(self)
        return self.best_estimator_.score(X, y, sample_weight=sample_weight)

    def plot(self, ax=None):
        """Plot the criteria against the number of parameters, the slope fit marked.

        Parameters
        ----------
        ax : array of two matplotlib Axes, default=None
            Where to draw (default: a new figure with two panels).

        Returns
        -------
        ax : array of two Axes
        """
        check_is_fitted(self)
        import matplotlib.pyplot as plt

        if ax is None:
            _, ax = plt.subplots(1, 2, figsize=(10, 4))
        r = self.results_
        D, ll = r["n_parameters"], r["log_likelihood"]
        ax[0].plot(D, -ll, "o", label="-log-likelihood")
        if np.isfinite(self.slope_kappa_):
            order = np.argsort(D)
            top = order[len(order) // 3:]
            intercept = np.median(-ll[top] + self.slope_kappa_ * D[top])
            ax[0].plot(D[order], intercept - self.slope_kappa_ * D[order], "--",
                       label=f"slope -kappa, kappa = {self.slope_kappa_:.3g}")
        ax[0].set_xlabel("number of parameters")
        ax[0].legend()
        labels = [f"{k}" if lw == 0 else f"{k}/{lw}"
                  for k, lw in zip(r["n_components"], r["n_latent"], strict=True)]
        x = np.arange(len(labels))
        for key in ("bic", "aic", "slope_criterion"):
            if np.all(np.isfinite(r[key])):
                ax[1].plot(x, r[key], "o-", label=key)
        ax[1].axvline(self.best_index_, color="k", lw=0.8, ls=":")
        ax[1].set_xticks(x, labels)
        ax[1].set_xlabel("n_components" + ("/n_latent" if np.any(r["n_latent"]) else ""))
        ax[1].legend()
        return ax

