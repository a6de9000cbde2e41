"""The estimators' predictions: every one a thin consumer of the predictive hook.

An estimator supplies ``_predictive_mixture(X, *, feature_noise_var=None,
feature_noise_cov=None, method="predict")``, the predictive mixture p(y | x) of a block of
rows (a :class:`~gllim_sk._mixtures.PredictiveMixture`: log-weights, means, scale
matrices and, for t components, degrees of freedom), and ``_target_log_prior(y)``, the
terms log pi_k + log p(y | k) (K, n) of centred targets. :class:`PredictiveMixin` makes
every prediction from them: ``predict`` (with std and covariance), ``predict_mixture``,
``predict_modes``, the densities, ``component_posterior`` and ``sample_y``; on numpy,
dask blocks and Array API namespaces alike (as scikit-learn's ``BaseMixture`` builds its
public methods on ``_estimate_weighted_log_prob``).
"""

from numbers import Integral

import numpy as np
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_is_fitted

from . import _dask
from . import _gllim_math as gm
from ._compat import array_namespace, einsum, permute
from ._compat import input_namespace as _input_namespace
from ._kernels import _as_dtype, _total, as_dtype, centred_block, host_result_like  # noqa: F401
from ._mixtures import mixture_log_density, sample_mixture_rows, stream_key
from .posterior import merge_mixture


class PredictiveMixin:
    """Predictions of a fitted GLLiM estimator, all made from ``_predictive_mixture``."""

    # Whether the component covariances depend on the sample without observation noise
    # (the Student model's do): ``predict_mixture`` then returns them per sample.
    _per_sample_covariances = False

    def _shape_out(self, a):
        """Drop the target axis for models fitted on 1-D y."""
        return a[:, 0] if self._y_ndim == 1 else a

    def _in_model_namespace(self, a, dtype):
        """A numpy result in the namespace and on the device of the fitted model (that
        of the inputs under Array API dispatch), in ``dtype``."""
        return host_result_like(a, self.weights_, dtype, _input_namespace(self.weights_))

    @_dask.blockwise(shared=_dask.SHARED_NOISE)
    def predict(self, X, return_std=False, return_cov=False, *, feature_noise_var=None,
                feature_noise_cov=None):
        """Predict the conditional mean E[y | x] of the forward mixture (eq. 4).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Features.
        return_std : bool, default=False
            Also return the standard deviation of each target under p(y | x).
        return_cov : bool, default=False
            Also return the full covariance of the predictive mixture.
        feature_noise_var : float or array-like of shape (n_features,) or \
(n_samples, n_features), default=None
            Variances of known measurement noise on the features, shared or per sample:
            the forward mixture then uses Sigma_k + S instead of Sigma_k (see the user
            guide, "Observation noise").
        feature_noise_cov : array-like of shape (n_features, n_features) or \
(n_samples, n_features, n_features), default=None
            A full noise covariance S shared by all samples, or one per sample
            (instead of ``feature_noise_var``).

        Returns
        -------
        y_mean : ndarray of shape (n_samples,) or (n_samples, n_targets)
            Predictive means (1-D when the model was fitted on 1-D y).
        y_std : ndarray of the same shape as y_mean
            Only with ``return_std=True``.
        y_cov : ndarray of shape (n_samples, n_targets, n_targets)
            Only with ``return_cov=True``.
        """
        mixture = self._predictive_mixture(X, feature_noise_var=feature_noise_var,
                                           feature_noise_cov=feature_noise_cov)
        xp = mixture.xp
        if not (return_std or return_cov):
            mean = einsum(xp, "nk,nkl->nl", xp.exp(mixture.log_weights), mixture.means)
            return _as_dtype(self._shape_out(mean), mixture.dtype)
        mean, cov = mixture.moments()
        out = [self._shape_out(mean)]
        if return_std:
            var = einsum(xp, "nll->nl", cov)
            var = xp.maximum(var, xp.zeros_like(var))
            out.append(self._shape_out(xp.sqrt(var)))
        if return_cov:
            out.append(cov)
        return tuple(_as_dtype(a, mixture.dtype) for a in out)

    def predict_mixture(self, X, *, feature_noise_var=None, feature_noise_cov=None):
        """Return the predictive mixture p(y | x) for each sample.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Features.
        feature_noise_var, feature_noise_cov : array-like, default=None
            Known observation noise on the features, as in :meth:`predict` (the
            Student model takes none).

        Returns
        -------
        weights : ndarray of shape (n_samples, n_components)
            Posterior component weights nu*_k(x).
        means : ndarray of shape (n_samples, n_components, n_targets)
            Component means A*_k x + b*_k.
        covariances : ndarray of shape (n_components, n_targets, n_targets)
            Component covariances Sigma*_k (they do not depend on x); with observation
            noise, and for the Student model (whose t components have covariance
            ``inf`` where it does not exist), they do, and the shape is (n_samples,
            n_components, n_targets, n_targets). On a dask X the weights and means are
            lazy dask arrays, and the covariances an in-memory array (a dask array when
            they depend on x).
        """
        if (feature_noise_var is not None or feature_noise_cov is not None
                or self._per_sample_covariances):
            # The covariances depend on the sample: on dask arrays, per row block.
            return self._per_sample_mixture(X, feature_noise_var=feature_noise_var,
                                            feature_noise_cov=feature_noise_cov)
        return self._shared_covariance_mixture(X)

    def _mixture_outputs(self, X, feature_noise_var, feature_noise_cov):
        mixture = self._predictive_mixture(X, feature_noise_var=feature_noise_var,
                                           feature_noise_cov=feature_noise_cov,
                                           method="predict_mixture")
        xp, dtype = mixture.xp, mixture.dtype
        return (_as_dtype(xp.exp(mixture.log_weights), dtype), _as_dtype(mixture.means, dtype),
                _as_dtype(mixture.covariances(), dtype))

    @_dask.blockwise(shared=_dask.SHARED_NOISE)
    def _per_sample_mixture(self, X, *, feature_noise_var=None, feature_noise_cov=None):
        return self._mixture_outputs(X, feature_noise_var, feature_noise_cov)

    # The covariances (K, L, L) do not depend on the sample: the dask path returns them
    # once, as an in-memory array.
    @_dask.blockwise(constant_outputs=(2,), shared=_dask.SHARED_NOISE)
    def _shared_covariance_mixture(self, X):
        return self._mixture_outputs(X, None, None)

    @_dask.blockwise(shared=_dask.SHARED_NOISE)
    def predict_modes(self, X, n_modes=2, *, feature_noise_var=None, feature_noise_cov=None):
        """Posterior modes: the predictive mixture of each sample merged into ``n_modes``.

        Components are merged greedily by Runnalls' Kullback-Leibler bound, preserving
        weights, means and covariances (:func:`gllim_sk.posterior.merge_mixture`). In an
        ambiguous inverse problem, where several targets explain the same features, the
        merged components sit at the different answers while :meth:`predict` averages
        them.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Features.
        n_modes : int, default=2
            Largest number of modes M to return.
        feature_noise_var, feature_noise_cov : array-like, default=None
            Known observation noise, as in :meth:`predict_mixture`.

        Returns
        -------
        weights : ndarray of shape (n_samples, M')
            Mode weights, largest first (``M' = min(M, n_components)``).
        means : ndarray of shape (n_samples, M', n_targets)
            Mode locations.
        covariances : ndarray of shape (n_samples, M', n_targets, n_targets)
            Spread of each mode.

        Notes
        -----
        Each sample's modes depend on that sample alone: on a dask array of features the
        three outputs are lazy dask arrays, merged block by block of rows. Under Array API
        dispatch they come back in the namespace and on the device of ``X``, as every
        prediction does (the merging itself runs on the host).
        """
        mixture = self._predictive_mixture(X, feature_noise_var=feature_noise_var,
                                           feature_noise_cov=feature_noise_cov,
                                           method="predict_modes")
        cpu = mixture.to_numpy()
        out = merge_mixture(np.exp(cpu.log_weights), cpu.means, cpu.covariances(), n_modes)
        return tuple(self._in_model_namespace(a, mixture.dtype) for a in out)

    @_dask.blockwise(shared=_dask.SHARED_NOISE)
    def component_posterior(self, X=None, y=None, *, feature_noise_var=None,
                            feature_noise_cov=None):
        """Posterior probabilities of the components.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features), default=None
            Features.
        y : array-like of shape (n_samples,) or (n_samples, n_targets), default=None
            Targets.
        feature_noise_var, feature_noise_cov : array-like, default=None
            Known observation noise on X, as in :meth:`predict`.

        Returns
        -------
        resp : ndarray of shape (n_samples, n_components)
            p(Z = k | x) when only X is given (the forward weights nu*_k(x)),
            p(Z = k | y) when only y is given (prior-only responsibilities), and the
            E-step responsibilities p(Z = k | x, y) of eq. (5) when both are.
        """
        check_is_fitted(self)
        if X is None and y is None:
            raise ValueError("component_posterior needs X, y or both.")
        if y is None:
            log_nu = self._predictive_mixture(X, feature_noise_var=feature_noise_var,
                                              feature_noise_cov=feature_noise_cov,
                                              method="component_posterior").log_weights
            return array_namespace(log_nu).exp(log_nu)
        if X is None:
            logp = self._target_log_prior(self._check_y(y))
            xp = array_namespace(logp)
            return xp.exp(logp - gm.logsumexp(logp, axis=0, keepdims=True)).T
        terms = self._noisy_joint_terms(X, y, "component_posterior", feature_noise_var,
                                        feature_noise_cov)
        if terms is not None:
            return np.exp(terms - gm.logsumexp(terms, axis=1, keepdims=True))
        return self._joint_estep(X, y).resp.T

    def _joint_estep(self, X, y):
        X, _ = self._check_X(X, "joint_log_density")
        y = self._check_y(y, X.shape[0])
        params, _ = self._core()
        Xc, y = centred_block(X, y, self.feature_mean_)
        model = self._em_model(fitted=True)
        block = model.prepare_block(Xc, y)
        return model.e_step(block, model.plan(params, block.n_sq, dtype=Xc.dtype))

    @_dask.blockwise(shared=_dask.SHARED_NOISE)
    def joint_log_density(self, X, y, *, feature_noise_var=None, feature_noise_cov=None):
        """Log-density log p(x, y) of each pair under the fitted joint model.

        With ``feature_noise_var`` or ``feature_noise_cov`` (as in :meth:`predict`), the
        density of the noisy observation x + e, e ~ N(0, S), together with y.

        Returns
        -------
        log_density : ndarray of shape (n_samples,)
        """
        terms = self._noisy_joint_terms(X, y, "joint_log_density", feature_noise_var,
                                        feature_noise_cov)
        if terms is not None:
            return gm.logsumexp(terms, axis=1)
        return self._joint_estep(X, y).log_prob

    @_dask.blockwise(shared=_dask.SHARED_NOISE)
    def conditional_log_density(self, X, y, *, feature_noise_var=None,
                                feature_noise_cov=None):
        """Conditional log-density log p(y | x) of each pair under the forward mixture.

        ``feature_noise_var`` and ``feature_noise_cov`` add known observation noise, as in
        :meth:`predict`.

        Returns
        -------
        log_density : ndarray of shape (n_samples,)
        """
        mixture = self._predictive_mixture(X, feature_noise_var=feature_noise_var,
                                           feature_noise_cov=feature_noise_cov,
                                           method="conditional_log_density")
        xp, log_nu, means, covs = mixture.xp, mixture.log_weights, mixture.means, mixture.scales
        y = xp.astype(self._check_y(y, log_nu.shape[0]), means.dtype)
        target_mean = as_dtype(self.target_mean_, y.dtype)
        if mixture.dof is not None or covs.ndim == 4:
            # t components or per-sample covariances (observation noise): numpy only.
            return mixture_log_density(y[:, None, :] + target_mean, log_nu, means, covs,
                                       mixture.dof)[:, 0]
        cov_inv, logdet, inv_chol = gm.spd_inverse_and_logdet(covs)
        diff = y[:, None, :] - (means - target_mean)  # both centred
        z = einsum(xp, "kij,nkj->nki", inv_chol, diff)
        log_comp = -0.5 * (y.shape[1] * gm.LOG_2PI + logdet[None, :]
                           + einsum(xp, "nki,nki->nk", z, z))
        return gm.logsumexp(log_nu + log_comp, axis=1)

    def sample_y(self, X, n_samples=1, random_state=None, *, feature_noise_var=None,
                 feature_noise_cov=None):
        """Draw targets from the predictive mixture p(y | x).

        ``feature_noise_var`` and ``feature_noise_cov`` add known observation noise, as in
        :meth:`predict`.

        Parameters
        ----------
        X : array-like of shape (n_samples_X, n_features)
            Features.
        n_samples : int, default=1
            Number of draws per row of X.
        random_state : int, RandomState instance or None, default=None
            Seed of the draws: it keys a counter-based generator (see the notes).

        Returns
        -------
        y_samples : ndarray of shape (n_samples_X, n_targets, n_samples)
            Draws; shape (n_samples_X, n_samples) for a model fitted on 1-D y (as
            :meth:`sklearn.gaussian_process.GaussianProcessRegressor.sample_y`).

        Notes
        -----
        The draws of row ``i`` of X are made from its own stretch of a counter-based
        stream (numpy's Philox) keyed by ``random_state`` (an int seed gives a fixed
        key; a ``RandomState`` gives one draw of its state): a row's draws depend on the
        seed, on the row and on its index, not on the other rows. On a dask array the
        draws are therefore made block by block on the workers, lazily, and equal the
        in-memory draws for the same seed whatever the row blocks. With Array API inputs
        they are made with numpy on the host and returned in the namespace and on the
        device of ``X``.
        """
        if not isinstance(n_samples, Integral) or isinstance(n_samples, bool) or n_samples < 1:
            raise ValueError(f"n_samples must be a positive integer, got {n_samples!r}.")
        key = stream_key(check_random_state(random_state))
        draws = self._sample_rows(X, n_samples, key, feature_noise_var=feature_noise_var,
                                  feature_noise_cov=feature_noise_cov)
        return draws[:, 0, :] if self._y_ndim == 1 else draws

    @_dask.blockwise(shared=_dask.SHARED_NOISE, row_offset="first_row")
    def _sample_rows(self, X, n_samples, key, *, first_row=0, feature_noise_var=None,
                     feature_noise_cov=None):
        """Draws (n, L, n_samples) for the rows of X, which start at row ``first_row``."""
        mixture = self._predictive_mixture(X, feature_noise_var=feature_noise_var,
                                           feature_noise_cov=feature_noise_cov,
                                           method="sample_y")
        cpu = mixture.to_numpy()
        draws = sample_mixture_rows(np.exp(cpu.log_weights), cpu.means, cpu.scales,
                                    n_samples, key, first_row, cpu.dof)  # (n, s, L)
        return self._in_model_namespace(np.transpose(draws, (0, 2, 1)), mixture.dtype)

    @_dask.blockwise()
    def inverse_predict(self, y):
        """The learned inverse map E[x | y] = sum_k p(Z = k | y) (A_k y + b_k).

        On a dask array of targets the result is a lazy dask array, computed block by
        block of rows.

        Parameters
        ----------
        y : array-like of shape (n_samples,) or (n_samples, n_targets)
            Targets.

        Returns
        -------
        X_mean : ndarray of shape (n_samples, n_features)
        """
        resp = self.component_posterior(y=y)
        y = self._check_y(y)
        xp = array_namespace(y)
        n, L = y.shape
        K = self.weights_.shape[0]  # fitted, whatever set_params did since
        params, _ = self._core()
        ry = xp.reshape(resp[:, :, None] * y[:, None, :], (n, K * L))
        A_stack = xp.reshape(permute(xp, self.inverse_coef_, (0, 2, 1)), (K * L, -1))
        return ry @ A_stack + resp @ (params.b + self.feature_mean_)  # y is centred

    def score(self, X, y, sample_weight=None):
        """The coefficient of determination R^2 of :meth:`predict` on (X, y).

        scikit-learn's :func:`~sklearn.metrics.r2_score`, averaged uniformly over the
        targets (as :meth:`sklearn.base.RegressorMixin.score`). When X, y or
        ``sample_weight`` is a dask array, the sums it needs are reduced where the
        blocks live and only they reach the client.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Features.
        y : array-like of shape (n_samples,) or (n_samples, n_targets)
            True targets.
        sample_weight : array-like of shape (n_samples,), default=None
            Sample weights.

        Returns
        -------
        score : float
        """
        if not _dask.any_dask_array(X, y, sample_weight):
            return super().score(X, y, sample_weight=sample_weight)
        return _dask.r2_score(y, self.predict(X), sample_weight)

    # ------------------------------------------------------------------ model selection
    def bic(self, X, y):
        """Bayesian information criterion of the joint model on (X, y); lower is better.

        Returns
        -------
        bic : float
        """
        log_density = self.joint_log_density(X, y)
        return (-2.0 * _total(log_density)
                + self._n_parameters() * np.log(log_density.shape[0]))

    def aic(self, X, y):
        """Akaike information criterion of the joint model on (X, y); lower is better.

        Returns
        -------
        aic : float
        """
        return -2.0 * _total(self.joint_log_density(X, y)) + 2.0 * self._n_parameters()
