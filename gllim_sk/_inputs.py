"""The estimators' checks of what users pass: training data, responsibilities, inputs
of a fitted model (their namespace and device included) and observation noise.

:class:`InputsMixin` holds them for :class:`~gllim_sk.GLLiMRegressor` (and its Student
variant, which narrows the namespace check to numpy). Every refusal names the problem
and, where there is one, the way out.
"""

import numpy as np
from sklearn import get_config
from sklearn.utils.validation import check_array, check_is_fitted, validate_data

from ._compat import array_device, array_namespace, computes_with_numpy, to_numpy
from ._kernels import input_in_namespace, training_precision, validated_array
from ._mixtures import check_noise_matrix, check_noise_variances
from ._predict import _input_namespace


def _array_kind(a, plural=False):
    """'torch array on cpu', 'numpy arrays', ...: the library and device of ``a``."""
    kind = f"{type(a).__module__.split('.')[0]} array{'s' if plural else ''}"
    if isinstance(a, np.ndarray) or not hasattr(a, "__dlpack__"):
        return kind
    return f"{kind} on {array_device(a)}"


class InputsMixin:
    """Validation of the data, responsibilities and settings given to a GLLiM estimator."""

    def _check_sizes(self, n_samples, n_features, n_targets):
        """The checks of the training data's shape (numpy or dask arrays)."""
        n, D, L = n_samples, n_features, n_targets
        if L > D:
            raise ValueError(
                f"y has {L} columns but X has only {D} features: GLLiM regresses a "
                "low-dimensional target from high-dimensional features (n_targets <= "
                "n_features)."
            )
        if L + self.n_latent > D:
            raise ValueError(
                f"n_targets + n_latent = {L} + {self.n_latent} exceeds n_features = {D}."
            )
        if self.n_components > n:
            raise ValueError(
                f"n_components={self.n_components} must be <= n_samples={n}."
            )

    @staticmethod
    def _check_spread(name, spread):
        """With ``reg_covar=0``, refuse constant columns (``spread``: max - min per column)."""
        constant = np.flatnonzero(spread == 0)
        if constant.size:
            raise ValueError(
                f"{name} has constant column(s) {constant[:10].tolist()}: with "
                "reg_covar=0 their variance is zero and the likelihood infinite. "
                "Set reg_covar > 0 (the default is 1e-6) or drop those columns."
            )

    def _validate_training_data(self, X, y):
        if y is not None:
            # validate_data accepts sparse y for multi-output; GLLiM's targets are dense.
            check_array(y, accept_sparse=False, ensure_2d=False, dtype=None,
                        ensure_all_finite=False, ensure_min_samples=0, input_name="y")
        xp = _input_namespace(X)
        y = input_in_namespace(y, xp, X)  # y follows X to its namespace and device
        X, y = validate_data(
            self, X, y, dtype=[xp.float64, xp.float32], multi_output=True, y_numeric=True,
            ensure_min_samples=2,
        )
        xp = array_namespace(X)
        y = validated_array(y, xp)
        self._y_ndim = y.ndim
        y2 = xp.reshape(y, (-1, 1)) if y.ndim == 1 else y
        self._check_sizes(*X.shape, y2.shape[1])
        if self.reg_covar == 0:
            for name, values in (("X", X), ("y", y2)):
                self._check_spread(name, to_numpy(xp.max(values, axis=0)
                                                  - xp.min(values, axis=0)))
        return training_precision(X, y2)

    def _check_resp(self, resp, n_samples, name="resp_init"):
        """Validated responsibilities (n_samples, n_components), rows normalised (numpy)."""
        resp = to_numpy(resp)
        if np.ndim(resp) != 2:
            raise ValueError(
                f"{name} must be a 2-D array of shape (n_samples, n_components), got "
                f"an array with {np.ndim(resp)} dimension(s)."
            )
        resp = check_array(resp, dtype=np.float64, input_name=name)
        if resp.shape != (n_samples, self.n_components):
            raise ValueError(
                f"{name} has shape {resp.shape}; expected (n_samples, n_components) = "
                f"({n_samples}, {self.n_components})."
            )
        if (resp < 0).any():
            raise ValueError(f"{name} has negative entries; responsibilities are >= 0.")
        totals = resp.sum(axis=1, keepdims=True)
        if (totals <= 0).any():
            raise ValueError(f"{name} has rows that sum to 0; each row needs mass.")
        return resp / totals

    def _check_namespace(self, X, method):
        """Refuse X of another namespace or device than the fitted attributes, saying how
        to bring the two together (scikit-learn's check names a private function, and
        with dispatch off it checks nothing)."""
        fitted_numpy = isinstance(self.weights_, np.ndarray)
        X_numpy = computes_with_numpy(X)  # dispatch off, or numpy arrays
        if fitted_numpy and X_numpy:
            return
        if not (fitted_numpy or X_numpy):
            if (array_namespace(X) is array_namespace(self.weights_)
                    and array_device(X) == array_device(self.weights_)):
                return
        # The first sentence is scikit-learn's (its estimator checks look for it).
        same = (f"Inputs passed to {type(self).__name__}.{method}() must use the same "
                "namespace and the same device as those passed to fit(): ")
        move = "move the model to the namespace and device of X with gllim_sk.move_model(model, X)."
        if fitted_numpy:
            raise ValueError(
                f"{same}the model was fitted on numpy arrays, and X is a "
                f"{_array_kind(X)}. Pass numpy arrays, or {move}"
            )
        fitted = _array_kind(self.weights_, plural=True)
        if get_config()["array_api_dispatch"]:
            got, how = f"a {_array_kind(X)}", ""
        else:
            got = "read as numpy (Array API dispatch is off)"
            how = " with sklearn.set_config(array_api_dispatch=True)"
        raise ValueError(
            f"{same}the model was fitted on {fitted}, and X is {got}. Pass {fitted}{how}, "
            f"or {move}"
        )

    def _check_X(self, X, method="predict"):
        check_is_fitted(self)
        self._check_namespace(X, method)
        xp = _input_namespace(X)
        X = validate_data(self, X, dtype=[xp.float64, xp.float32], reset=False)
        return X, X.dtype

    def _check_y(self, y, n_samples=None):
        xp = _input_namespace(self.weights_)
        y = input_in_namespace(y, xp, self.weights_)
        y = check_array(y, ensure_2d=False, dtype=xp.float64, input_name="y")
        xp = array_namespace(y)
        if y.ndim == 1:
            y = xp.reshape(y, (-1, 1))
        if y.ndim != 2 or y.shape[1] != self.n_targets_:
            raise ValueError(
                f"y has shape {y.shape}; expected {self.n_targets_} target column(s)."
            )
        if n_samples is not None and y.shape[0] != n_samples:
            raise ValueError(
                f"X and y have inconsistent numbers of samples: {n_samples} and {y.shape[0]}."
            )
        return y - xp.asarray(self.target_mean_, device=array_device(y))

    def _check_feature_noise(self, n_samples, feature_noise_var, feature_noise_cov):
        """Validated observation noise: (variances (1 or n, D) or None, covariances (D, D) or
        (n, D, D) or None)."""
        if feature_noise_var is None and feature_noise_cov is None:
            return None, None
        if feature_noise_var is not None and feature_noise_cov is not None:
            raise ValueError("Give feature_noise_var or feature_noise_cov, not both.")
        D = self.n_features_in_
        if feature_noise_var is not None:
            var = np.asarray(feature_noise_var, dtype=np.float64)
            if var.ndim == 0:
                var = np.full((1, D), float(var))
            elif var.ndim == 1 and var.shape == (D,):
                var = var[None]
            elif var.shape != (n_samples, D):
                raise ValueError(
                    f"feature_noise_var must be a scalar, ({D},) or (n_samples, {D}) = "
                    f"({n_samples}, {D}); got shape {var.shape}."
                )
            return check_noise_variances(var, "feature_noise_var", positive=False), None
        cov = check_noise_matrix(feature_noise_cov, D, "feature_noise_cov", definite=False,
                                 n_samples=n_samples)
        return None, cov

    def _structure(self, n_features, n_targets):
        """The settings that shape the parameters: a warm start needs all of them equal."""
        return {
            "n_components": self.n_components, "n_latent": self.n_latent,
            "covariance_type": self.covariance_type,
            "target_covariance_type": self.target_covariance_type,
            "n_features": n_features, "n_targets": n_targets,
        }

    def _check_structure_unchanged(self, method):
        """Raise when a setting that shapes the parameters changed since the fit: ``method``
        continues the fitted parameters, which cannot take the new setting."""
        fitted = self._fitted_structure
        changed = [f"{name}={getattr(self, name)!r} (fitted with {fitted[name]!r})"
                   for name in ("n_components", "n_latent", "covariance_type",
                                "target_covariance_type")
                   if getattr(self, name) != fitted[name]]
        if changed:
            raise ValueError(
                f"{method} continues the fitted model, but {', '.join(changed)} changed "
                f"since the fit. Call fit to start over with the new settings, or set them "
                f"back."
            )

    def _can_warm_start(self, n_features, n_targets):
        """Whether ``fit`` continues from the previous parameters (see ``warm_start``)."""
        return (
            self.warm_start and hasattr(self, "_params")
            and getattr(self, "_fitted_structure", None)
            == self._structure(n_features, n_targets)
        )
