"""Online (stepwise) EM: ``partial_fit`` of the GLLiM estimators.

:class:`OnlineEMMixin` blends each batch's sufficient statistics into a running average
(Cappé and Moulines, 2009) and runs the M-step of the blend, on the engine that ``fit``
uses; it re-seeds components that vanished and refuses batches too large for float64.
"""

import dataclasses

import numpy as np
from sklearn.utils import check_random_state

from . import _engine
from . import _gllim_math as gm
from ._compat import computes_with_numpy
from ._engine import unchanged_on_failure
from ._gllim_math import LATENT_NOISE_FLOOR

# Online EM re-seeds a component whose weight falls below this fraction of 1/K.
DEAD_COMPONENT_WEIGHT = 0.1
# Largest squared norm of a row that online EM takes: its statistics hold products of
# two squared norms, which stay finite in float64 below it.
MAX_SQUARED_NORM = float(np.sqrt(np.finfo(np.float64).max))


def _reseeded(esteps, component, Xc, yc, n_components):
    """The E-steps with ``component`` given responsibility 1 (and the others 0) on the
    ``n / n_components`` samples nearest, in standardised ``[x, y]``, to the sample of
    least log-likelihood (online EM's re-seeding of a vanished component)."""
    log_prob = np.concatenate([estep.log_prob for estep in esteps])
    joint = np.hstack([Xc, yc])
    spread = joint.std(axis=0)
    joint = joint / np.where(spread > 0, spread, 1.0)
    distance = ((joint - joint[np.argmin(log_prob)]) ** 2).sum(axis=1)
    taken = np.zeros(len(log_prob), dtype=bool)
    taken[np.argsort(distance)[: max(1, len(log_prob) // n_components)]] = True
    out, start = [], 0
    for estep in esteps:
        rows = taken[start : start + estep.resp.shape[1]]
        start += estep.resp.shape[1]
        resp = estep.resp.copy()
        resp[:, rows] = 0.0
        resp[component, rows] = 1.0
        out.append(dataclasses.replace(estep, resp=resp))
    return out

def _check_batch_magnitude(X, y):
    """Refuse a batch whose rows are too large for EM's statistics in float64."""
    for name, values in (("X", X), ("y", y)):
        with np.errstate(over="ignore"):
            squared = np.einsum("ij,ij->i", values, values, dtype=np.float64)
        bad = np.flatnonzero(~(squared <= MAX_SQUARED_NORM))
        if bad.size:
            raise ValueError(
                f"{name} has {bad.size} row(s) too large for EM in float64 (the first, "
                f"row {bad[0]}, has squared norm {squared[bad[0]]:.3g} > "
                f"{MAX_SQUARED_NORM:.3g}): rescale the data or drop those rows."
            )

def _all_finite(params):
    return all(value is None or np.all(np.isfinite(value))
               for value in (getattr(params, field.name)
                             for field in dataclasses.fields(params)))


class OnlineEMMixin:
    """``partial_fit`` for an estimator with the EM engine's hooks (see ``fit``)."""

    @unchanged_on_failure
    def partial_fit(self, X, y):
        """Update the model with one batch of samples by online (stepwise) EM.

        Online EM (Cappé and Moulines, 2009) keeps a running average of the sufficient
        statistics per sample: each call runs the E-step of its batch under the current
        parameters, blends the batch's statistics in with step size
        ``(learning_offset + t) ** -learning_decay`` at the t-th update, and runs the
        M-step of the blend. A component whose weight has fallen below a tenth of the
        uniform ``1 / n_components`` is re-seeded (one per call): in that batch it takes
        the ``n / n_components`` samples nearest, in standardised ``[x, y]``, to the
        sample of least likelihood, which stops a vanished component from staying wasted
        while two clusters share another. The first call on an unfitted model initialises
        from its batch as ``fit`` does (``init_params``, ``resp_init`` of the batch's size), centres
        the data by the batch's means, takes the unit of the relative ``reg_covar`` from
        the batch's variances and makes the first statistics; on a model fitted by ``fit``
        it starts from the fitted parameters (and keeps the fit's centring and floors).
        ``max_iter``, ``tol``, ``n_init`` and ``warm_start`` do not apply, and the settings
        that shape the parameters (``n_components``, ``n_latent``, ``covariance_type``,
        ``target_covariance_type``) cannot change between calls (a ``ValueError`` says so;
        ``fit`` starts over with new ones).

        Prefer :meth:`fit` (exact EM, on numpy or dask arrays) when the samples can be
        passed over repeatedly: it reaches the maximum-likelihood fit. Prefer
        ``partial_fit`` for a stream, for data read once, or when one pass must do: every
        sample is seen once, each batch costs one E-step, and one pass comes close to the
        batch fit (see the "Scaling up" page of the documentation for measured numbers).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            A batch of features.
        y : array-like of shape (n_samples,) or (n_samples, n_targets)
            Its targets.

        Returns
        -------
        self : GLLiMRegressor
            The updated estimator.
        """
        # Every call, not only the first (scikit-learn's _fit_context validates a
        # partial_fit once): set_params may have changed them since.
        self._validate_params()
        if not computes_with_numpy(X, y):
            raise TypeError(
                "partial_fit runs on numpy arrays only (online EM keeps its statistics on "
                "the host); under Array API dispatch, fit takes arrays of other libraries. "
                "Pass numpy arrays to partial_fit."
            )
        if hasattr(self, "weights_") and not isinstance(self.weights_, np.ndarray):
            raise TypeError(
                "partial_fit runs on numpy arrays only, and this model was fitted on "
                f"{type(self.weights_).__module__.split('.')[0]} arrays: move it to numpy "
                "first, with gllim_sk.move_model(model, X) for numpy X."
            )
        if hasattr(self, "_params"):
            self._check_structure_unchanged("partial_fit")
        first = not hasattr(self, "_online_stats")
        if first and not hasattr(self, "_params"):
            X, y = self._validate_training_data(X, y)
            _check_batch_magnitude(X, y)
            self.n_targets_ = y.shape[1]
            self.feature_mean_, self.target_mean_ = X.mean(axis=0), y.mean(axis=0)
            # reg_covar is relative to the variances of this first batch.
            self._reg_floors = self._relative_floors(X, y)
        else:
            X, _ = self._check_X(X)
            y = self._check_y(y, X.shape[0]) + self.target_mean_
            _check_batch_magnitude(X, y)
        Xc = X.astype(np.float64) - self.feature_mean_
        yc = y - self.target_mean_
        if first:
            self._online_var_floor = (LATENT_NOISE_FLOOR * Xc.var(axis=0)
                                      if self.n_latent > 0 else None)
        model = self._em_model(self._online_var_floor)
        work = X.shape[0] * X.shape[1] * self.n_components * (y.shape[1] + 2 + self.n_latent)
        with (_engine.make_executor(X.shape[0], work) as executor,
              self._singular_covariances_reported()):
            problem = _engine.EMProblem(model, executor, executor.blocks(model, Xc, yc), Xc, yc)
            if first and not hasattr(self, "_params"):
                self._params = self._start_params(problem, check_random_state(
                    self.random_state))
            esteps, stats, bound, latent_cov = _engine.e_step(
                model, executor, problem.blocks, self._params)
            n_batch = X.shape[0]
            step = 1.0 if first else (self.learning_offset + self.n_batch_iter_) ** (
                -self.learning_decay)
            if not first:
                # A component whose weight fell below a tenth of the uniform 1/K is
                # re-seeded: it takes the neighbourhood of the batch's worst-explained
                # sample, instead of staying wasted while other components share clusters.
                dead = np.flatnonzero(self._online_stats.resp_mass
                                      < DEAD_COMPONENT_WEIGHT / self.n_components)
                if dead.size:
                    esteps = _reseeded(esteps, dead[0], Xc, yc, self.n_components)
                    stats = _engine.stats_of(model, executor, problem.blocks, esteps,
                                             latent_cov)
            batch = stats * (1.0 / n_batch)  # statistics per sample
            blend = batch if first else self._online_stats * (1.0 - step) + batch * step
            # The M-step of the blend at the batch's scale; components that emptied get
            # the batch's moments of all samples, as in EM.
            empty = blend.mass * n_batch < gm.EMPTY_COMPONENT_MASS
            m_step_stats = blend
            if empty.any():
                filled = _engine.stats_of(model, executor, problem.blocks, esteps, latent_cov,
                                          fill=empty) * (1.0 / n_batch)
                m_step_stats = filled if first else (self._online_stats * (1.0 - step)
                                                     + filled * step)
            params = model.m_step(m_step_stats * n_batch)
        if not (_all_finite(params) and np.isfinite(bound)):
            raise ValueError(
                "Online EM produced non-finite parameters; the batch may contain extreme "
                "values. Standardise X and y, or increase reg_covar."
            )
        self._online_stats = blend
        self.n_batch_iter_ = 1 if first else self.n_batch_iter_ + 1
        self.lower_bound_ = bound  # the batch's mean log-likelihood before its update
        self._set_params_from(params)
        return self
