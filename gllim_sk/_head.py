"""The public interface a deep model's alternation needs from its mixture head."""

import numpy as np
from sklearn.utils.validation import check_is_fitted

from . import _gllim_math as gm
from ._compat import to_numpy

__all__ = ["MixtureHeadMixin"]


class MixtureHeadMixin:
    """Methods of the GLLiM estimators that :class:`~gllim_sk.deep.DeepGLLiMRegressor`
    calls on its mixture head: a fit with the E-step frozen, the per-sample weights and
    the noise precision of the network's loss, and the fitted model as plain arrays
    for its checkpoints."""

    def fit_frozen_estep(self, X, y, resp):
        """Fit with the component responsibilities frozen at ``resp``.

        The parameters are one M-step from ``resp`` (no EM iterations: the partition
        of the samples is the given one); ``lower_bound_`` is their mean
        log-likelihood. A deep model whose features change between fits keeps the
        partition of its targets this way (see the user guide's deep section).
        :class:`StudentGLLiMRegressor` also estimates the scale weights and degrees of
        freedom by EM with the partition held.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
        y : array-like of shape (n_samples,) or (n_samples, n_targets)
        resp : array-like of shape (n_samples, n_components)
            Responsibilities (rows are normalised).

        Returns
        -------
        self

        Examples
        --------
        >>> import numpy as np
        >>> from gllim_sk import GLLiMRegressor
        >>> rng = np.random.default_rng(0)
        >>> y = rng.uniform(-1, 1, (100, 1))
        >>> X = np.hstack([y, -y, y**2]) + 0.01 * rng.normal(size=(100, 3))
        >>> resp = np.column_stack([y[:, 0] < 0, y[:, 0] >= 0]).astype(float)
        >>> model = GLLiMRegressor(2).fit_frozen_estep(X, y, resp)
        >>> model.weights_.round(2).tolist() == resp.mean(axis=0).round(2).tolist()
        True
        """
        return self._fit_frozen_estep(X, y, resp)

    def expected_scale(self, X, y):
        """E[u | x, y, Z = k]: the weight of each pair in each component's M-step.

        All ones for the Gaussian model; :class:`StudentGLLiMRegressor` returns the
        expected scale of its t components, small for pairs that no component explains.
        A network trained on the negative log-likelihood of the model weights the
        squared residual of sample n under component k by ``r_nk * expected_scale_nk``.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
        y : array-like of shape (n_samples,) or (n_samples, n_targets)

        Returns
        -------
        scale : ndarray of shape (n_samples, n_components)
        """
        check_is_fitted(self)
        X, _ = self._check_X(X, "expected_scale")
        self._check_y(y, X.shape[0])
        return np.ones((X.shape[0], self.weights_.shape[0]))

    def noise_precision(self):
        """The noise precisions Sigma_k^-1 of the fitted model, in dense form.

        Returns
        -------
        precision : ndarray of shape (n_components, n_features) or \
(n_components, n_features, n_features)
            Diagonals for the diagonal covariance types ("diag", "spherical",
            "tied_diag", "tied_spherical"), full matrices for "full" and "tied".
        """
        check_is_fitted(self)
        K, D, _ = self.inverse_coef_.shape
        model = self._em_model(fitted=True)
        params, _ = self._core()
        prec = to_numpy(model.noise.precision(params.noise))
        return np.array(np.broadcast_to(prec, (K, D) + (D,) * model.noise.dense_quadratic))

    _FITTED_SCALARS = ("n_features_in_", "n_targets_", "lower_bound_", "n_iter_", "converged_")
    _FITTED_ARRAYS = ("weights_", "target_means_", "target_covariances_", "inverse_coef_",
                      "latent_coef_", "inverse_intercept_", "noise_covariances_",
                      "feature_mean_", "target_mean_", "lower_bounds_")

    def get_fitted_arrays(self):
        """The fitted model as public attributes: a dict of numpy arrays and numbers.

        With :meth:`get_params` it is all that :meth:`set_fitted_arrays` needs to
        rebuild the model (e.g. from a file read with ``torch.load(weights_only=True)``
        or ``numpy.load``), without pickling.

        Returns
        -------
        arrays : dict
        """
        check_is_fitted(self)
        out = {name: to_numpy(getattr(self, name)) for name in self._FITTED_ARRAYS
               if name != "lower_bounds_"}
        out["lower_bounds_"] = np.asarray(self.lower_bounds_, dtype=np.float64)
        for name in self._FITTED_SCALARS:
            out[name] = getattr(self, name)
        out["y_ndim"] = self._y_ndim  # predictions are 1-D for a model fitted on 1-D y
        return out

    def set_fitted_arrays(self, arrays):
        """Rebuild the fitted model from :meth:`get_fitted_arrays` (numpy only).

        The estimator's parameters must be those of the fit (the covariance types shape
        the arrays).

        Parameters
        ----------
        arrays : dict

        Returns
        -------
        self
        """
        missing = [n for n in self._FITTED_ARRAYS + self._FITTED_SCALARS if n not in arrays]
        if missing:
            raise ValueError(f"arrays lacks the fitted attributes {missing}.")
        a = {name: np.asarray(arrays[name], dtype=np.float64) for name in self._FITTED_ARRAYS}
        K, D, L = a["inverse_coef_"].shape
        Lw = a["latent_coef_"].shape[2]
        if (int(arrays["n_features_in_"]), int(arrays["n_targets_"])) != (D, L) or \
                Lw != self.n_latent or K != self.n_components:
            raise ValueError(
                f"the arrays describe K={K}, D={D}, L={L}, Lw={Lw}, which do not match "
                f"the estimator's n_components={self.n_components}, n_latent={self.n_latent}."
            )
        model = self._em_model()
        gamma = model.target.from_public(a["target_covariances_"], K, L)
        noise = model.noise.from_public(a["noise_covariances_"], K, D)
        A, y_offset, offset = a["inverse_coef_"], a["target_mean_"], a["feature_mean_"]
        params = self._restored_params(
            weights=a["weights_"], c=a["target_means_"] - y_offset, gamma=np.array(gamma),
            A=A, W=a["latent_coef_"], b=a["inverse_intercept_"] - offset + A @ y_offset,
            noise=np.array(noise), arrays=arrays)
        self.n_features_in_, self.n_targets_ = D, L
        self.feature_mean_, self.target_mean_ = offset, y_offset
        self.lower_bounds_ = [float(v) for v in a["lower_bounds_"]]
        self.lower_bound_ = float(arrays["lower_bound_"])
        self.n_iter_ = int(arrays["n_iter_"])
        self.converged_ = bool(arrays["converged_"])
        self._y_ndim = int(arrays.get("y_ndim", 2))
        self._set_params_from(params)
        return self

    def _restored_params(self, arrays, **fields):
        return gm.Params(**fields)
