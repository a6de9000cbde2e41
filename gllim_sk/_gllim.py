"""GLLiMRegressor: Gaussian Locally-Linear Mapping, a mixture of linear inverse regressions."""

import dataclasses
from contextlib import ExitStack, contextmanager
from numbers import Integral, Real
from time import time

import numpy as np
from sklearn.base import BaseEstimator, RegressorMixin, clone
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_is_fitted

from . import _dask, _engine, _init
from . import _gllim_math as gm
from ._compat import (
    Interval,
    StrOptions,
    _fit_context,
    array_device,
    array_namespace,
    computes_with_numpy,
    linalg_errors,
    move_estimator_to,
    to_numpy,
)
from ._engine import unchanged_on_failure
from ._gllim_math import LATENT_NOISE_FLOOR
from ._head import MixtureHeadMixin
from ._init import scale_of_variances, variance_scale
from ._inputs import InputsMixin
from ._kernels import (
    as_dtype,
    centred_features,
    centred_training_data,
    move_like,
    namespace_converter,
    own_contiguous,
    take_rows,
)
from ._mixtures import (
    PredictiveMixture,
    gaussian_or_t_log_density,
    mahalanobis_logdet,
)
from ._online import OnlineEMMixin
from ._predict import PredictiveMixin, _as_dtype, _input_namespace, _total  # noqa: F401

__all__ = ["GLLiMRegressor", "move_model"]


class GLLiMRegressor(MixtureHeadMixin, PredictiveMixin, OnlineEMMixin, InputsMixin,
                     _engine.EMMixin, RegressorMixin, BaseEstimator):
    r"""Gaussian Locally-Linear Mapping: a mixture of K linear inverse regressions.

    GLLiM models the *low-dimensional* target ``y`` (L values) as the input of K affine
    maps into the *high-dimensional* feature space (D values), and predicts by inverting
    the joint Gaussian mixture (Lathuilière et al., CVPR 2017, eqs. (1)-(4); Deleforge,
    Forbes and Horaud, Statistics and Computing 2015)::

        p(Z = k) = pi_k,   p(y | Z = k) = N(c_k, Gamma_k),
        x = A_k y + A^w_k w + b_k + e_k,   w ~ N(0, I_Lw),   e_k ~ N(0, Sigma_k).

    With ``n_latent = Lw > 0`` the features also depend on Lw latent factors that no
    target explains (identity, lighting, ...): the partially-latent ("hybrid") GLLiM.
    The prediction is the conditional mean of the forward mixture
    ``p(y | x) = sum_k nu_k(x) N(y; A*_k x + b*_k, Sigma*_k)``.

    Parameters are estimated by EM in scikit-learn's :class:`~sklearn.mixture.GaussianMixture`
    order. Every step is written as a few matrix products batched over components, and
    prediction uses the Woodbury identity, so for the diagonal noise family no D x D matrix
    is ever formed: one EM iteration costs O(n D K (L + Lw)).

    Parameters
    ----------
    n_components : int, default=1
        Number of affine components K.
    covariance_type : str, default="diag"
        One of "diag", "full", "spherical", "tied", "tied_diag", "tied_spherical".
        Structure of the noise covariances Sigma_k: one full, diagonal or isotropic matrix
        per component, or one shared by all components ("tied" is a shared full matrix).
        "full" and "tied" cost O(D^2) memory and O(n D^2) time and are meant for small D.
    target_covariance_type : {"full", "diag", "spherical", "tied"}, default="full"
        Structure of the target covariances Gamma_k.
    n_latent : int, default=0
        Number of latent factors Lw of the partially-latent model (0: plain GLLiM).
    reg_covar : float, default=1e-6
        Regularisation of the covariances, relative to the scale of the data: after each
        M-step, ``reg_covar`` times the mean variance of the training features is added to
        the diagonal of every Sigma_k, and ``reg_covar`` times the mean variance of the
        training targets to the diagonal of every Gamma_k. Being relative, the floor
        follows the units of X and y: rescaling either rescales the fit, and features of
        tiny or huge scale need no standardisation (features whose scales differ by many
        orders of magnitude still do, since the floor follows their mean variance). It
        keeps the variances of components that fall on identical samples or constant
        columns positive; ``reg_covar=0`` is refused when X or y has a constant column,
        and a fit whose covariances become singular raises an error that says so.
    max_iter : int, default=100
        Number of EM iterations (M-step + E-step) per initialisation.
    tol : float, default=1e-3
        EM stops when the mean log-likelihood per sample changes by less than ``tol``.
        ``tol=0`` runs exactly ``max_iter`` iterations.
    n_init : int, default=1
        Number of initialisations; the one with the highest final likelihood is kept.
    init_candidates : int, default=10
        Starting partitions tried per initialisation. Each (drawn by ``init_params``,
        with its own k-means seeding) starts EM on a random subset of the samples
        (``1 / init_candidates`` of them, at least 100 per component, and more than
        ``n_features`` with ``covariance_type="full"`` or ``n_latent > 0``, where each
        component has a D x D covariance to estimate) until it converges (``tol``, at
        most 100 iterations) or its prediction has settled (checked every 5 iterations
        once the likelihood creeps); the one whose conditional mean E[y | x]
        predicts the targets of as many other samples best (the sum over targets of
        R^2) continues on all samples (of runs that predict as well, the one of higher
        likelihood). One partition of ``y`` often leads EM to a poor
        local optimum when components overlap in ``y``; the best of several finds the
        optimum far more often, for about the cost of one more run (measured in
        ``benchmarks/bench_init.py``). Prediction, not likelihood, chooses: on real
        features the likelihood of (x, y) can favour partitions that follow clusters
        of the features over the targets. Fewer partitions are tried when there are
        fewer than ``init_candidates`` times that many samples per component, and one
        (the single start of ``init_params``) below twice that many, with
        ``resp_init`` or with ``n_components=1``; ``init_candidates=1`` asks for it.
        :meth:`partial_fit`'s first call starts the same way on its batch.
    init_params : {"kmeans", "kmeans_joint", "random"}, default="kmeans"
        How initial responsibilities are made: "kmeans" runs k-means on ``y`` followed by
        up to 20 EM iterations of a Gaussian mixture on ``y`` with covariances of type
        ``target_covariance_type`` (the paper's choice; it is GLLiM's own EM without
        features); "kmeans_joint" runs k-means on the standardised joint ``[y, X]``;
        "random" draws random responsibilities.
    resp_init : array-like of shape (n_samples, n_components), default=None
        Initial responsibilities, overriding ``init_params`` (rows are normalised). The
        deep model warm-starts the mixture through it.
    random_state : int, RandomState instance or None, default=None
        Seeds the initialisation (k-means, GMM, random responsibilities, latent PCA).
    warm_start : bool, default=False
        If True, ``fit`` continues EM from the previous fit's (or :meth:`partial_fit`'s)
        parameters (with their feature and target means as the centres), ignoring
        ``n_init``, ``init_params`` and ``resp_init``, as
        :class:`~sklearn.mixture.GaussianMixture` does. It does so only when those
        parameters fit the new call: the same ``n_components``, ``n_latent``,
        ``covariance_type``, ``target_covariance_type``, number of features and number of
        targets (a 1-D y and a one-column y count as the same). When any of
        these changed, ``fit`` starts afresh, exactly as with ``warm_start=False``.
    verbose : int, default=0
        1 prints initialisation and convergence messages; 2 also prints the log-likelihood
        every ``verbose_interval`` iterations with timings.
    verbose_interval : int, default=10
        Iterations between two progress lines at ``verbose=2``.
    learning_offset : float, default=2.0
        Online EM (:meth:`partial_fit`): a positive value that downweights the first
        batches; the step size of the t-th update is
        ``(learning_offset + t) ** -learning_decay`` (the names of scikit-learn's online
        :class:`~sklearn.decomposition.LatentDirichletAllocation`). The second batch
        gets a step of 0.46 against 0.19 with LDA's 10, so that the first batch's
        statistics, gathered under the starting parameters, fade sooner: one pass over
        40 batches of 1,000 reached a median 0.95 of the batch fit's held-out gain
        against 0.79 with 10, and 200,000 samples in batches of 2,000 ended higher on
        each of 5 seeds (``benchmarks/bench_scale.py --part online``).
    learning_decay : float, default=0.7
        Online EM: the rate at which the step size decreases, in (0.5, 1] (stochastic
        approximation converges there).

    Attributes
    ----------
    weights_ : ndarray of shape (n_components,)
        Mixing weights pi_k.
    target_means_ : ndarray of shape (n_components, n_targets)
        Target means c_k.
    target_covariances_ : ndarray
        Target covariances Gamma_k; shape (K, L, L) for "full", (K, L) for "diag",
        (K,) for "spherical", (L, L) for "tied".
    inverse_coef_ : ndarray of shape (n_components, n_features, n_targets)
        Target loadings A_k of the inverse maps.
    latent_coef_ : ndarray of shape (n_components, n_features, n_latent)
        Latent loadings A^w_k (width 0 when ``n_latent=0``).
    inverse_intercept_ : ndarray of shape (n_components, n_features)
        Intercepts b_k of the inverse maps.
    noise_covariances_ : ndarray
        Noise covariances Sigma_k; shape (K, D, D) for "full", (K, D) for "diag", (K,)
        for "spherical", (D, D) for "tied", (D,) for "tied_diag" and () for
        "tied_spherical".
    forward_means_ : ndarray of shape (n_components, n_features)
        c*_k = A_k c_k + b_k, the centres of the components in feature space.
    forward_coef_ : ndarray of shape (n_components, n_targets, n_features)
        A*_k of eq. (3).
    forward_intercept_ : ndarray of shape (n_components, n_targets)
        b*_k of eq. (3).
    forward_covariances_ : ndarray of shape (n_components, n_targets, n_targets)
        Sigma*_k of eq. (3), the covariance of y given x within component k.
    feature_mean_ : ndarray of shape (n_features,)
        Mean of the training features; computations run on features centred by it.
    target_mean_ : ndarray of shape (n_targets,)
        Mean of the training targets; computations run on targets centred by it.
    lower_bounds_ : list of float
        ``lower_bounds_[i]`` is the mean over samples of log p(x_n, y_n) under the
        parameters after M-step ``i + 1`` of the best initialisation; ``lower_bounds_[0]``
        belongs to the parameters made from the initial responsibilities.
    lower_bound_ : float
        The last entry of ``lower_bounds_``: the mean log-likelihood of the fitted model.
    n_iter_ : int
        Number of EM iterations (M-steps) of the best initialisation (>= 1).
    converged_ : bool
        Whether the best initialisation reached ``tol``.
    n_features_in_ : int
        Number of features D.
    feature_names_in_ : ndarray of shape (`n_features_in_`,)
        Feature names, when X has string column names.
    n_targets_ : int
        Number of targets L.
    n_batch_iter_ : int
        Number of online EM updates made by :meth:`partial_fit` (its first call, which
        initialises, counts as 1).

    Notes
    -----
    Numpy fits run in float64. Predictions, standard deviations, covariances and samples
    come back in the dtype of ``X`` (float32 in, float32 out), which keeps the precision of
    the float32 input itself.

    With scikit-learn's Array API dispatch on (``sklearn.set_config(
    array_api_dispatch=True)`` and ``SCIPY_ARRAY_API=1``), torch tensors, CuPy arrays and
    other Array API arrays are fitted and predicted in their library and on their device,
    and the fitted attributes live there (in float64); float32 data keep float32 for the
    products over samples and float64 for their sums and the parameters. Move a fitted
    model to the namespace and device of an array ``X`` with
    :func:`gllim_sk.move_model` (``move_model(model, X)``). See the user guide.

    With ``n_latent > 0``, every noise variance is kept above 1e-5 times the variance of
    its feature (eigenvalues of full noise: above 1e-5 times the mean feature variance).
    Without it, a variance driven to zero by the latent factors (a Heywood case of factor
    analysis) makes the latent posterior ill-conditioned and the likelihood inexact.

    EM uses the threads BLAS may use (limit them with threadpoolctl or
    ``OMP_NUM_THREADS``): small fits run on one thread, middle-sized ones let BLAS thread
    the matrix products, and large ones (from about n=2000, D=100, K=10) split the samples
    into chunks that run in parallel Python threads, each on one BLAS thread. Every way
    gives the same result up to rounding.

    ``fit`` accepts dask arrays: EM then runs exactly (the same iterations as in memory,
    to rounding) with the samples left in blocks where dask's workers hold them; only the
    sufficient statistics reach the client, and the random subset of the starting runs
    (``init_candidates``) when their EM needs at most about 512 MiB there. k-means
    initialises on the targets (on all of them up to 100,000 rows, else on a uniform
    random sample of 100,000). The per-sample methods (``predict``,
    ``predict_mixture``, ``predict_modes``, ``component_posterior``, the densities,
    ``sample_y``, ``inverse_predict``) return lazy dask arrays for dask inputs, computed
    block by block of rows; ``score``,
    ``bic`` and ``aic`` reduce their sums on the workers. :meth:`partial_fit` runs
    online EM on a stream of batches.

    A component whose total responsibility falls below 1e-8 samples during EM keeps a
    negligible weight and receives the moments of the whole training set, so that it
    stays finite and well conditioned instead of collapsing onto single points.

    The number of free parameters used by :meth:`bic` and :meth:`aic` is
    ``(K - 1) + K L + n(Gamma) + K D L + K D + n(Sigma) + K (D Lw - Lw (Lw - 1) / 2)``,
    where the last term counts the latent loadings up to rotation.

    References
    ----------
    S. Lathuilière, R. Juge, P. Mesejo, R. Muñoz-Salinas, R. Horaud. Deep Mixture of
    Linear Inverse Regressions Applied to Head-Pose Estimation. CVPR 2017.

    A. Deleforge, F. Forbes, R. Horaud. High-Dimensional Regression with Gaussian
    Mixtures and Partially-Latent Response Variables. Statistics and Computing, 2015.

    Examples
    --------
    >>> import numpy as np
    >>> from gllim_sk import GLLiMRegressor
    >>> rng = np.random.default_rng(0)
    >>> y = rng.uniform(-1, 1, size=(300, 1))
    >>> X = np.hstack([np.sin(3 * y), np.cos(3 * y), y**2]) + 0.01 * rng.normal(size=(300, 3))
    >>> model = GLLiMRegressor(n_components=4, random_state=0).fit(X, y)
    >>> y_hat, y_std = model.predict(X[:2], return_std=True)
    >>> y_hat.shape, y_std.shape
    ((2, 1), (2, 1))
    >>> bool(np.abs(model.predict(X) - y).mean() < 0.05)
    True
    """

    _parameter_constraints: dict = {
        "n_components": [Interval(Integral, 1, None, closed="left")],
        "covariance_type": [StrOptions(set(gm.NOISE_STRUCTURES))],
        "target_covariance_type": [StrOptions(set(gm.TARGET_STRUCTURES))],
        "n_latent": [Interval(Integral, 0, None, closed="left")],
        "reg_covar": [Interval(Real, 0.0, None, closed="left")],
        "max_iter": [Interval(Integral, 1, None, closed="left")],
        "tol": [Interval(Real, 0.0, None, closed="left")],
        "n_init": [Interval(Integral, 1, None, closed="left")],
        "init_candidates": [Interval(Integral, 1, None, closed="left")],
        "init_params": [StrOptions({"kmeans", "kmeans_joint", "random"})],
        "resp_init": ["array-like", None],
        "random_state": ["random_state"],
        "warm_start": ["boolean"],
        "verbose": ["verbose"],
        "verbose_interval": [Interval(Integral, 1, None, closed="left")],
        "learning_offset": [Interval(Real, 0.0, None, closed="neither")],
        "learning_decay": [Interval(Real, 0.5, 1.0, closed="right")],
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
    ):
        self.n_components = n_components
        self.covariance_type = covariance_type
        self.target_covariance_type = target_covariance_type
        self.n_latent = n_latent
        self.reg_covar = reg_covar
        self.max_iter = max_iter
        self.tol = tol
        self.n_init = n_init
        self.init_candidates = init_candidates
        self.init_params = init_params
        self.resp_init = resp_init
        self.random_state = random_state
        self.warm_start = warm_start
        self.verbose = verbose
        self.verbose_interval = verbose_interval
        self.learning_offset = learning_offset
        self.learning_decay = learning_decay

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        tags.target_tags.single_output = True
        tags.array_api_support = True
        return tags

    # ------------------------------------------------------------------ validation

    @contextmanager
    def _singular_covariances_reported(self):
        """Report singular covariances (reg_covar=0 on identical samples) by one clear
        error instead of a cascade of RuntimeWarnings and a bare LinAlgError."""
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            try:
                yield
            except linalg_errors() as error:  # numpy's, torch's...: not out-of-memory
                raise self._non_finite_error() from error

    def _non_finite_error(self):
        """The error for a non-finite log-likelihood or a singular covariance."""
        if self.reg_covar == 0:
            return ValueError(
                "EM reached a singular covariance: with reg_covar=0, a component whose "
                "samples are identical, or share a value of a feature or target, has zero "
                "variance. Set reg_covar > 0 (the default is 1e-6, relative to the data's "
                "variance)."
            )
        return ValueError(
            "EM reached a singular or non-finite covariance; the data may contain extreme "
            "values or many identical samples. Standardise X and y, or increase reg_covar."
        )

    # ------------------------------------------------------------------ fitting
    # The EM model class; a variant estimator (StudentGLLiMRegressor) names its subclass.
    _em_model_class = gm.GLLiMModel

    def _em_model(self, var_floor=None, *, fitted=False):
        """The :class:`~gllim_sk._gllim_math.GLLiMModel` of this estimator's settings, or
        with ``fitted=True`` of the settings of the last fit: the fitted parameters are
        stored in that model's structures, and ``set_params`` only matters at the next
        fit."""
        settings = self._fitted_structure if fitted else self.get_params(deep=False)
        # The floors of the fit in progress (or the last one): reg_covar is relative.
        noise_reg, target_reg = getattr(self, "_reg_floors", (self.reg_covar,) * 2)
        return self._em_model_class(settings["covariance_type"],
                                    settings["target_covariance_type"],
                                    noise_reg, var_floor, target_reg_covar=target_reg)

    def _initial_resp(self, Xc, y, random_state, init_params=None):
        """Initial responsibilities, (n_components, n_samples), as a numpy array (computed
        on the host: features of another namespace are copied there only for
        ``init_params="kmeans_joint"``); ``init_params`` overrides the estimator's."""
        if self.resp_init is not None:
            return np.ascontiguousarray(self._check_resp(self.resp_init, Xc.shape[0]).T)
        init_params = self.init_params if init_params is None else init_params
        if init_params == "kmeans_joint":
            Xc = to_numpy(Xc)
        return _init.initial_resp(init_params, Xc, to_numpy(y), self.n_components,
                                  self.target_covariance_type, self.reg_covar, random_state)

    def _n_candidates(self, n_samples, min_rows):
        """Starting partitions tried per initialisation (one when they would all agree;
        fewer than ``init_candidates`` on few samples, see :func:`._init.candidate_count`)."""
        if self.resp_init is not None or self.n_components == 1:
            return 1
        return _init.candidate_count(self.init_candidates, n_samples, self.n_components,
                                     min_rows)

    def _start_params(self, problem, random_state):
        """The parameters EM starts from: with one candidate, the first M-step from the
        starting partition; with several, the parameters of the best of EM runs from as
        many starting partitions on a random subset of the samples, by how well they
        predict the targets of other samples (see :mod:`._init`). Online EM starts from
        them too, on its first batch."""
        n = sum(problem.executor.sizes(problem.blocks))
        min_rows = _init.candidate_min_rows(problem.Xc.shape[1], self.covariance_type,
                                            self.n_latent)
        n_candidates = self._n_candidates(n, min_rows)
        if n_candidates == 1:
            return self._em_initial_params(problem, random_state)
        rows, held_out = _init.candidate_rows(n, n_candidates, self.n_components,
                                              random_state, min_rows)
        with ExitStack() as stack:
            subset = self._rows_problem(problem, rows, stack)
            scored = self._rows_problem(problem, held_out, stack)
            target_var = _init.target_variances(scored.executor, scored.blocks)
            (bounds, params, n_iter, _), score = _init.best_start(
                lambda i: self._em_initial_params(
                    subset, random_state, init_params=_init.candidate_kind(self.init_params, i)),
                # The runs on the subset are the initialisation's, whatever max_iter
                # (which counts the iterations on all samples).
                lambda params, settled: self._run_em(
                    subset, params, time(), max_iter=_init.CANDIDATE_MAX_ITER, stop=settled),
                lambda params: _init.prediction_score(scored.model, scored.executor,
                                                      scored.blocks, params, target_var),
                n_candidates,
            )
        self._print(1, f"  best of up to {n_candidates} starts: score {score:.5f} on "
                       f"{len(held_out)} other samples, lower bound {bounds[-1]:.5f} after "
                       f"{n_iter} iteration(s) on {len(rows)} samples")
        return params

    def _rows_problem(self, problem, rows, stack):
        """The EM problem of the samples ``rows`` of ``problem``, in the data's namespace
        (a dask subset stays on the workers unless it is small, see
        :func:`._dask.subset_rows`); its executor is entered on ``stack``."""
        Xc, y = problem.Xc, problem.y
        work = len(rows) * Xc.shape[1] * self.n_components * (y.shape[1] + 2 + self.n_latent)
        if _dask.any_dask_array(Xc):
            Xc, y = _dask.subset_rows(Xc, y, rows, self.n_components)
        else:
            Xc, y = take_rows(Xc, rows), take_rows(y, rows)
        if _dask.any_dask_array(Xc):
            executor = _engine.DaskExecutor()
        else:
            stack.enter_context(problem.executor.subproblem())
            executor = _engine.make_executor(len(rows), work, array_namespace(Xc))
        stack.enter_context(executor)
        model = problem.model
        return _engine.EMProblem(model, executor, executor.blocks(model, Xc, y), Xc, y)

    def _em_initial_params(self, problem, random_state, resp=None, init_params=None):
        """The first M-step, from the initial responsibilities (or ``resp`` (K, n)) of
        ``init_params`` (default: the estimator's)."""
        if _dask.any_dask_array(problem.Xc):  # made block by block, where the blocks live
            return _dask.initial_params(self, problem, random_state, init_params)
        if resp is None:
            # k-means and the GMM on y are tiny: their OpenMP threads only spin. They run
            # with numpy, whatever the namespace of the data.
            with problem.executor.serial():
                resp = self._initial_resp(problem.Xc, problem.y, random_state, init_params)
        resp = move_like(resp, problem.Xc)
        model = problem.model
        moments = _engine.m_step_from_resp(model, problem.executor, problem.blocks, resp)
        if self.n_latent == 0:
            return moments.complete(model.finalize_noise(moments.raw, moments.weights))
        # The latent PCA runs on the host (see the executor's ``host_work``).
        with problem.executor.host_work():
            return model.init_latent(problem.Xc, problem.y, resp, moments, self.n_latent,
                                     random_state)

    @_fit_context(prefer_skip_nested_validation=True)
    @unchanged_on_failure
    def fit(self, X, y):
        """Estimate the model parameters by EM.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            High-dimensional features.
        y : array-like of shape (n_samples,) or (n_samples, n_targets)
            Low-dimensional targets (n_targets <= n_features).

        Returns
        -------
        self : GLLiMRegressor
            The fitted estimator.
        """
        return self._fit(X, y)

    @_fit_context(prefer_skip_nested_validation=True)
    @unchanged_on_failure
    def _fit_frozen_estep(self, X, y, resp):
        """Fit with the E-step frozen at the responsibilities ``resp`` (n_samples, K).

        The parameters are one M-step from ``resp`` (no EM iterations); ``lower_bound_``
        is their log-likelihood. The deep model's first fits use it.
        """
        return self._fit(X, y, frozen_resp=resp)

    def _fit(self, X, y, frozen_resp=None):
        self.__dict__.pop("_online_stats", None)  # fit starts over; partial_fit continues
        if _dask.any_dask_array(X, y) and frozen_resp is None:
            return self._fit_dask(X, y)
        X, y = self._validate_training_data(X, y)
        if frozen_resp is not None:
            frozen_resp = move_like(np.ascontiguousarray(
                self._check_resp(frozen_resp, X.shape[0], name="resp").T
            ), X)
        do_warm = frozen_resp is None and self._can_warm_start(X.shape[1], y.shape[1])
        self.n_targets_ = y.shape[1]
        random_state = check_random_state(self.random_state)
        # reg_covar is relative to the data's scale (see its documentation).
        self._reg_floors = self._relative_floors(X, y)
        xp = array_namespace(X)
        # Centring both variables keeps the expanded quadratic forms free of cancellation.
        offset, y_offset, Xc, yc, centred_var = centred_training_data(
            X, y, (self.feature_mean_, self.target_mean_) if do_warm else None,
            with_variance=self.n_latent > 0)
        # The latent model's likelihood goes through (I + W' Sigma^-1 W)^-1, whose
        # conditioning degrades as a noise variance approaches zero (a Heywood case, which
        # factor analysis can reach): a floor relative to each feature's variance keeps it
        # well conditioned.
        var_floor = None if centred_var is None else LATENT_NOISE_FLOOR * centred_var
        model = self._em_model(var_floor)
        work = X.shape[0] * X.shape[1] * self.n_components * (y.shape[1] + 2 + self.n_latent)
        with (_engine.make_executor(X.shape[0], work, xp) as executor,
              self._singular_covariances_reported()):
            problem = _engine.EMProblem(model, executor, executor.blocks(model, Xc, yc),
                                        Xc, yc)
            if frozen_resp is not None:
                params = self._fit_frozen(problem, frozen_resp, random_state)
            else:
                params = self._fit_em(problem, random_state,
                                      warm_params=self._params if do_warm else None)
        self.feature_mean_ = offset
        self.target_mean_ = y_offset
        self._set_params_from(params)
        return self

    def _relative_floors(self, X, y):
        """The noise and target floors: ``reg_covar`` times the data's variance scales."""
        return self.reg_covar * variance_scale(X), self.reg_covar * variance_scale(y)

    def _fit_dask(self, X, y):
        """EM over dask arrays: the blocks stay on dask's workers (see ``_fit``)."""
        import dask

        X, y, self._y_ndim = _dask.check_training_arrays(self, X, y)
        if self.reg_covar == 0:
            for name, spread in _dask.column_spreads(X, y):
                self._check_spread(name, spread)
        if hasattr(self, "feature_names_in_"):
            del self.feature_names_in_
        do_warm = self._can_warm_start(X.shape[1], y.shape[1])
        self.n_features_in_ = X.shape[1]
        self.n_targets_ = y.shape[1]
        random_state = check_random_state(self.random_state)
        offsets = ((self.feature_mean_, self.target_mean_) if do_warm
                   else dask.compute(X.mean(axis=0), y.mean(axis=0)))
        Xc, yc = X - offsets[0], y - offsets[1]
        with _engine.DaskExecutor() as executor, self._singular_covariances_reported():
            blocks = executor.blocks(self._em_model(), Xc, yc)
            # The floors of _fit, from the columns' variances reduced on the workers.
            variances = [_dask.column_variances(executor, blocks, name) for name in ("Xc", "y")]
            self._reg_floors = tuple(self.reg_covar * scale_of_variances(v) for v in variances)
            var_floor = LATENT_NOISE_FLOOR * variances[0] if self.n_latent > 0 else None
            problem = _engine.EMProblem(self._em_model(var_floor), executor, blocks, Xc, yc)
            params = self._fit_em(problem, random_state,
                                  warm_params=self._params if do_warm else None)
        self.feature_mean_, self.target_mean_ = offsets
        self._set_params_from(params)
        return self

    def _set_params_from(self, params):
        """Store the internal parameters and the settings that shaped them (see
        ``_structure``), and derive the public and forward attributes."""
        self._fitted_structure = self._structure(self.n_features_in_, self.n_targets_)
        model = self._em_model(fitted=True)
        self._params = params
        self._forward = model.forward(params)
        offset = self.feature_mean_
        y_offset = self.target_mean_
        self.weights_ = params.weights
        self.target_means_ = params.c + y_offset
        self.target_covariances_ = model.target.public(params.gamma)
        self.inverse_coef_ = own_contiguous(params.A)
        self.latent_coef_ = own_contiguous(params.W)
        self.inverse_intercept_ = params.b + offset - params.A @ y_offset
        self.noise_covariances_ = model.noise.public(params.noise)
        fwd = self._forward
        self.forward_means_ = fwd.means_x + offset
        self.forward_coef_ = fwd.coef
        self.forward_intercept_ = fwd.intercept + y_offset - fwd.coef @ offset
        self.forward_covariances_ = fwd.cov

    def __getstate__(self):
        # Plain dicts of arrays only, so that a pickle (or the deep model's checkpoint)
        # holds none of the core's private classes.
        state = dict(super().__getstate__())
        for name in ("_params", "_forward", "_online_stats"):
            if name in state:
                state[name] = dataclasses.asdict(state[name])
        return state

    def __setstate__(self, state):
        state = dict(state)
        for name, cls in (("_params", gm.Params), ("_forward", gm.Forward)):
            if isinstance(state.get(name), dict):
                state[name] = cls(**state[name])
        super().__setstate__(state)
        if hasattr(self, "_params") and not hasattr(self, "_fitted_structure"):
            # Pickled before the fitted settings were recorded, when predictions used the
            # settings of the moment: those are the ones pickled with the model.
            self._fitted_structure = self._structure(self.n_features_in_, self.n_targets_)
        if isinstance(state.get("_online_stats"), dict):
            self._online_stats = self._em_model(fitted=True).stats_type(
                **state["_online_stats"])

    # ------------------------------------------------------------------ prediction
    def _core(self):
        """The internal parameters and forward caches, in the namespace and on the device
        of the public attributes. :func:`move_model` moves them with the attributes; a
        model whose public attributes were moved another way gets copies here (the
        estimator is not changed by a prediction)."""
        xp = array_namespace(self.weights_)
        params, forward = self._params, self._forward
        if (array_namespace(params.weights) is not xp
                or array_device(params.weights) != array_device(self.weights_)):
            device = array_device(self.weights_)

            # To numpy through the arrays' own namespace: scikit-learn's move_to reads
            # it with dispatch off (numpy), which cannot convert a CUDA tensor.
            convert = namespace_converter(xp, device)

            def move(obj):
                fields = {name: (None if value is None else convert(value))
                          for name, value in vars(obj).items()}
                return type(obj)(**fields)

            params, forward = move(params), move(forward)
        return params, forward

    def __sklearn_array_api_convert__(self, converter):
        """A copy whose arrays, those of the internal parameters included, are converted
        by ``converter`` (the hook of scikit-learn's conversion of estimators, which
        :func:`move_model` uses)."""
        def convert(value):
            if isinstance(value, np.ndarray) and value.dtype.kind in "OUS":
                return value  # feature names stay numpy
            if hasattr(value, "__dlpack__") or isinstance(value, (np.ndarray, np.generic)):
                return converter(value)
            if dataclasses.is_dataclass(value) and not isinstance(value, type):
                return type(value)(**{name: convert(v) for name, v in vars(value).items()})
            return value

        new = clone(self)
        for name, value in vars(self).items():
            setattr(new, name, convert(value))
        return new

    def _noisy_forward_terms(self, X, method, feature_noise_var, feature_noise_cov,
                             out=None):
        """With observation noise: unnormalised log gating terms log pi_k p(x | k) (K, n),
        component means (n, K, L) and covariances (n, K, L, L) of p(y | x) (written into
        the arrays ``out``, if given); the dtype of X. ``None`` when no noise is given.
        numpy inputs only."""
        if feature_noise_var is None and feature_noise_cov is None:
            return None
        X, dtype = self._check_X(X, method)
        if not computes_with_numpy(X):
            raise ValueError(
                "feature_noise_var and feature_noise_cov need numpy inputs; move the model "
                "and the data to numpy (see the user guide) to use observation noise."
            )
        noise_var, noise_cov = self._check_feature_noise(X.shape[0], feature_noise_var,
                                                         feature_noise_cov)
        Xc = X.astype(np.float64) - self.feature_mean_
        params, _ = self._core()
        log_terms, means, covs = self._em_model(fitted=True).noisy_forward_terms(
            params, Xc, noise_var, noise_cov, offset=self.target_mean_, out=out
        )
        return log_terms, means, covs, dtype

    def _predictive_mixture(self, X, *, feature_noise_var=None, feature_noise_cov=None,
                            method="predict", out=None):
        """The predictive hook: the mixture p(y | x) of the rows of X (see
        :mod:`._predict`), Gaussian components with covariances (K, L, L), or (n, K, L,
        L) with observation noise; in the namespace of the model. ``method`` names the
        public method in error messages. ``out``: arrays (n, K, L) and (n, K, L, L)
        that per-row means and covariances may be written into (a hint: the mixture's
        own arrays say where they are)."""
        noisy = self._noisy_forward_terms(X, method, feature_noise_var, feature_noise_cov,
                                          out)
        if noisy is not None:
            log_terms, means, covs, dtype = noisy
            log_nu = log_terms - gm.logsumexp(log_terms, axis=0, keepdims=True)
            return PredictiveMixture(log_nu.T, means, covs, None, dtype)
        X, dtype = self._check_X(X, method)
        xp = array_namespace(X)
        _, forward = self._core()
        Xc = centred_features(X, self.feature_mean_)
        log_nu, means = self._em_model(fitted=True).forward_mixture(Xc, forward)
        # (numpy keeps the float64 mean; other namespaces compute in the dtype of X)
        return PredictiveMixture(log_nu, means + as_dtype(self.target_mean_, dtype),
                                 xp.astype(forward.cov, means.dtype), None, dtype)

    def _target_log_prior(self, y):
        """log pi_k + log N(y; c_k, Gamma_k), (K, n), for centred targets y."""
        xp = array_namespace(y)
        params, _ = self._core()
        with np.errstate(divide="ignore"):
            log_w = xp.log(params.weights)
        return log_w[:, None] + gm.target_log_density(y, params.c, params.gamma)

    def _noisy_joint_terms(self, X, y, method, feature_noise_var, feature_noise_cov):
        """log pi_k + log p(x + e, y | k) (n, K) with observation noise e, or None."""
        noisy = self._noisy_forward_terms(X, method, feature_noise_var, feature_noise_cov)
        if noisy is None:
            return None
        log_terms, means, covs, _ = noisy
        y = self._check_y(y, means.shape[0]) + self.target_mean_
        delta, logdet = mahalanobis_logdet(y[:, None, :] - means, covs)
        return log_terms.T + gaussian_or_t_log_density(delta, logdet, y.shape[1])

    # ------------------------------------------------------------------ model selection
    def _n_parameters(self):
        # The fitted shapes, not the parameters: set_params after fit must not change them.
        K, D, Lw = self.latent_coef_.shape
        return self._em_model(fitted=True).n_parameters(K, D, self.n_targets_, Lw)


def move_model(model, like):
    """A copy of a fitted GLLiM estimator whose arrays live where ``like`` lives.

    Under scikit-learn's Array API dispatch a model fitted on torch tensors (or CuPy
    arrays...) keeps its fitted attributes in that library and on that device, and takes
    inputs of the same kind only. ``move_model`` moves all of its arrays, the internal
    parameters included, to the namespace and device of the array ``like``: numpy (a
    model to use on the host, or to continue with ``partial_fit``) or another library.

    Parameters
    ----------
    model : fitted GLLiMRegressor
        The estimator to move; it is not changed.
    like : array
        An array of the target namespace and device (numpy for the host).

    Returns
    -------
    moved : GLLiMRegressor
        A fitted copy of ``model`` in the namespace and on the device of ``like``.

    Examples
    --------
    >>> import numpy as np
    >>> from gllim_sk import GLLiMRegressor, move_model
    >>> rng = np.random.default_rng(0)
    >>> y = rng.uniform(-1, 1, (100, 1))
    >>> X = np.hstack([y, y**2, np.sin(y)]) + 0.01 * rng.normal(size=(100, 3))
    >>> model = GLLiMRegressor(2, random_state=0).fit(X, y)
    >>> type(move_model(model, X).weights_).__name__
    'ndarray'
    """
    check_is_fitted(model)
    if isinstance(like, (np.ndarray, np.generic)):
        xp, device = np, "cpu"
    elif not model.__sklearn_tags__().array_api_support:
        raise ValueError(
            f"{type(model).__name__} computes with numpy arrays only and cannot be moved "
            f"to {type(like).__module__.split('.')[0]} arrays; pass it numpy arrays."
        )
    else:
        xp, device = array_namespace(like), array_device(like)
    return move_estimator_to(model, xp, device)
