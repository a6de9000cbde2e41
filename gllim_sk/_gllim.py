"""GLLiMRegressor: Gaussian Locally-Linear Mapping, a mixture of linear inverse regressions."""

import dataclasses
import functools
from contextlib import contextmanager, nullcontext
from numbers import Integral, Real
from time import time

import numpy as np
from sklearn.base import BaseEstimator, RegressorMixin
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_array, check_is_fitted, validate_data

from . import _dask, _engine, _init
from . import _gllim_math as gm
from ._compat import (
    Interval,
    StrOptions,
    _fit_context,
    _is_numpy_namespace,
    array_device,
    array_namespace,
    check_same_namespace,
    einsum,
    get_namespace,
    move_to,
    permute,
    swap_last,
    to_numpy,
)
from ._init import scale_of_variances, variance_scale
from .posterior import (
    PosteriorMixin,
    gaussian_or_t_log_density,
    mahalanobis_logdet,
    mixture_log_density,
    sample_mixture_rows,
    stream_key,
)

__all__ = ["GLLiMRegressor"]

# Smallest noise variance of the latent model, relative to the feature's variance.
LATENT_NOISE_FLOOR = 1e-5
# Online EM re-seeds a component whose weight falls below this fraction of 1/K.
DEAD_COMPONENT_WEIGHT = 0.1
def _input_namespace(*arrays):
    """The namespace the inputs are computed in: numpy unless Array API dispatch is on
    and they are arrays of another library."""
    xp, is_array_api = get_namespace(*arrays)
    if not is_array_api or _is_numpy_namespace(xp):
        return np
    return xp


def _input_array(a):
    """``a`` as an array (lists and data frames become numpy arrays)."""
    if hasattr(a, "__array_namespace__") or hasattr(a, "__dlpack__"):
        return a
    return np.asarray(a)


def _as_dtype(a, dtype):
    xp = array_namespace(a)
    return a.astype(dtype, copy=False) if xp is np else xp.astype(a, dtype)


def _total(a):
    """The sum of ``a`` (numpy's scalar for numpy arrays, a float otherwise)."""
    xp = array_namespace(a)
    return a.sum() if xp is np else float(xp.sum(xp.astype(a, xp.float64)))


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


def unchanged_on_failure(method):
    """Decorate a fitting method so that a call that raises changes nothing.

    The estimator's attributes are put back as they were when the call began: a fitted
    model stays exactly as it was, an unfitted one unfitted. A shallow copy is enough,
    since fitting replaces attributes and never writes into the arrays they hold.
    """
    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        saved = dict(self.__dict__)
        try:
            return method(self, *args, **kwargs)
        except BaseException:  # an interrupt, too, leaves the model as it was
            self.__dict__.clear()
            self.__dict__.update(saved)
            raise
    return wrapper


# Largest squared norm of a row that online EM takes: its statistics hold products of
# two squared norms, which stay finite in float64 below it.
MAX_SQUARED_NORM = float(np.sqrt(np.finfo(np.float64).max))


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


class GLLiMRegressor(PosteriorMixin, _engine.EMMixin, RegressorMixin, BaseEstimator):
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
        with its own k-means seeding; with "kmeans", partitions of ``y`` alternate with
        partitions of the joint ``[y, X]``) runs up to 10 EM iterations on a random
        subset of the samples (``1 / init_candidates`` of them, at least 100 per
        component), and EM continues on all samples from the one of highest
        likelihood. One partition of ``y`` often leads EM to a poor local optimum when
        components overlap in ``y`` or in ``X``; the short runs find the optimum far
        more often, at a fraction of the cost of ``n_init`` full runs (measured in
        ``benchmarks/bench_init.py``). ``init_candidates=1`` starts from one partition
        of ``init_params`` (there is one only with ``resp_init`` or
        ``n_components=1``). :meth:`partial_fit`'s first call starts the same way on its
        batch.
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
    learning_offset : float, default=10.0
        Online EM (:meth:`partial_fit`): a positive value that downweights the first
        batches; the step size of the t-th update is
        ``(learning_offset + t) ** -learning_decay`` (the names of scikit-learn's online
        :class:`~sklearn.decomposition.LatentDirichletAllocation`).
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
    model to another namespace or device with
    ``sklearn.utils._array_api.move_estimator_to(model, xp, device)``. See the user guide.

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
    sufficient statistics reach the client. k-means initialises on the targets (on all
    of them up to 100,000 rows, else on a uniform random sample of 100,000). The
    per-sample methods (``predict``, ``predict_mixture``, ``predict_modes``,
    ``component_posterior``, the densities, ``sample_y``, ``inverse_predict``) return
    lazy dask arrays for dask inputs, computed block by block of rows; ``score``,
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
        learning_offset=10.0,
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
        if xp is not np:  # y follows X to its namespace and device
            y = move_to(_input_array(y), xp=xp, device=array_device(X))
        X, y = validate_data(
            self, X, y, dtype=[xp.float64, xp.float32], multi_output=True, y_numeric=True,
            ensure_min_samples=2,
        )
        xp = array_namespace(X)
        y = np.asarray(y) if xp is np else y
        self._y_ndim = y.ndim
        y2 = xp.reshape(y, (-1, 1)) if y.ndim == 1 else y
        self._check_sizes(*X.shape, y2.shape[1])
        if self.reg_covar == 0:
            for name, values in (("X", X), ("y", y2)):
                self._check_spread(name, to_numpy(xp.max(values, axis=0)
                                                  - xp.min(values, axis=0)))
        if xp is np:  # numpy fits run in float64
            return X.astype(np.float64, copy=False), y2.astype(np.float64, copy=False)
        return X, xp.astype(y2, X.dtype)

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

    @contextmanager
    def _singular_covariances_reported(self):
        """Report singular covariances (reg_covar=0 on identical samples) by one clear
        error instead of a cascade of RuntimeWarnings and a bare LinAlgError."""
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            try:
                yield
            except Exception as error:
                # Each namespace has its own LinAlgError (numpy's; torch.linalg's, whose
                # class is torch._C._LinAlgError): matched by name, importing no library.
                if not any(cls.__name__.lstrip("_") == "LinAlgError"
                           for cls in type(error).__mro__):
                    raise
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

    def _check_X(self, X, method="predict"):
        check_is_fitted(self)
        check_same_namespace(X, self, attribute="weights_", method=method)
        xp = _input_namespace(X)
        X = validate_data(self, X, dtype=[xp.float64, xp.float32], reset=False)
        return X, X.dtype

    def _check_y(self, y, n_samples=None):
        xp = _input_namespace(self.weights_)
        if xp is not np:
            y = move_to(_input_array(y), xp=xp, device=array_device(self.weights_))
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

    def _n_candidates(self):
        """Starting partitions tried per initialisation (one when they would all agree)."""
        if self.resp_init is not None or self.n_components == 1:
            return 1
        return self.init_candidates

    def _start_params(self, problem, random_state):
        """The parameters EM starts from: with one candidate, the first M-step from the
        starting partition; with several, the parameters of the best (by likelihood) of
        short EM runs from as many starting partitions, on a random subset of the
        samples (see :mod:`._init`). Online EM starts from them too, on its first batch."""
        n_candidates = self._n_candidates()
        if n_candidates == 1:
            return self._em_initial_params(problem, random_state)
        kinds = _init.candidate_kinds(self.init_params, n_candidates)
        # The short runs are the initialisation's, whatever max_iter (which counts the
        # iterations on all samples).
        short = _init.CANDIDATE_MAX_ITER
        n = sum(problem.executor.sizes(problem.blocks))
        rows = _init.candidate_rows(n, n_candidates, self.n_components, random_state)
        if rows is None:
            return self._best_short_run(problem, random_state, kinds, short)
        Xc, y = problem.Xc, problem.y
        work = len(rows) * Xc.shape[1] * self.n_components * (y.shape[1] + 2 + self.n_latent)
        if _dask.any_dask_array(Xc):  # the subset stays on the workers too
            Xc, y = _dask.take_rows(Xc, rows), _dask.take_rows(y, rows)
            executor = _engine.DaskExecutor()
        else:
            xp = array_namespace(Xc)
            if xp is np:
                Xc, y = Xc[rows], y[rows]
            else:
                index = xp.asarray(rows, device=array_device(Xc))
                Xc, y = xp.take(Xc, index, axis=0), xp.take(y, index, axis=0)
            executor = _engine.make_executor(len(rows), work, xp)
        model = problem.model
        with executor:
            subset = _engine.EMProblem(model, executor, executor.blocks(model, Xc, y), Xc, y)
            return self._best_short_run(subset, random_state, kinds, short)

    def _best_short_run(self, problem, random_state, kinds, max_iter):
        bounds, params, n_iter, _ = _init.best_start(
            lambda i: self._em_initial_params(problem, random_state, init_params=kinds[i]),
            lambda params: self._run_em(problem, params, time(), max_iter=max_iter),
            len(kinds),
        )
        self._print(1, f"  best of {len(kinds)} starts: lower bound {bounds[-1]:.5f} after "
                       f"{n_iter} iteration(s) on {problem.Xc.shape[0]} samples")
        return params

    def _em_initial_params(self, problem, random_state, resp=None, init_params=None):
        """The first M-step, from the initial responsibilities (or ``resp`` (K, n)) of
        ``init_params`` (default: the estimator's)."""
        if _dask.any_dask_array(problem.Xc):  # made block by block, where the blocks live
            return _dask.initial_params(self, problem, random_state, init_params)
        xp = array_namespace(problem.Xc)
        if resp is None:
            # k-means and the GMM on y are tiny: their OpenMP threads only spin. They run
            # with numpy, whatever the namespace of the data.
            with problem.executor.serial():
                resp = self._initial_resp(problem.Xc, problem.y, random_state, init_params)
        if xp is not np:
            resp = xp.asarray(resp, dtype=xp.float64, device=array_device(problem.Xc))
        model = problem.model
        params, raw, _ = _engine.m_step_from_resp(model, problem.executor, problem.blocks,
                                                  resp)
        if self.n_latent == 0:
            params.noise = model.finalize_noise(raw, params.weights)
            return params
        # Off numpy the latent PCA runs on the host, beside the array library's own
        # threads: BLAS on one thread there avoids oversubscribing the cores.
        with problem.executor.serial() if xp is not np else nullcontext():
            return model.init_latent(problem.Xc, problem.y, resp, params, raw,
                                     self.n_latent, random_state)

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
            frozen_resp = np.ascontiguousarray(
                self._check_resp(frozen_resp, X.shape[0], name="resp").T
            )
            xp = array_namespace(X)
            if xp is not np:
                frozen_resp = xp.asarray(frozen_resp, device=array_device(X))
        do_warm = frozen_resp is None and self._can_warm_start(X.shape[1], y.shape[1])
        self.n_targets_ = y.shape[1]
        random_state = check_random_state(self.random_state)
        # reg_covar is relative to the data's scale (see its documentation).
        self._reg_floors = self._relative_floors(X, y)
        xp = array_namespace(X)
        if xp is np:
            offset = self.feature_mean_ if do_warm else X.mean(axis=0)
            y_offset = self.target_mean_ if do_warm else y.mean(axis=0)
            # Centring both variables keeps the expanded quadratic forms free of
            # cancellation.
            Xc = X - offset
            yc = y - y_offset
            centred_var = Xc.var(axis=0) if self.n_latent > 0 else None
        else:
            # Means and centring in float64 whatever the dtype of the data.
            X64, y64 = xp.astype(X, xp.float64), xp.astype(y, xp.float64)
            offset = self.feature_mean_ if do_warm else xp.mean(X64, axis=0)
            y_offset = self.target_mean_ if do_warm else xp.mean(y64, axis=0)
            Xc, yc = xp.astype(X64 - offset, X.dtype), xp.astype(y64 - y_offset, X.dtype)
            centred_var = xp.var(X64 - offset, axis=0) if self.n_latent > 0 else None
            del X64, y64
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
        if _input_namespace(X, y) is not np or (
                hasattr(self, "weights_") and _input_namespace(self.weights_) is not np):
            raise TypeError(
                "partial_fit runs on numpy arrays only (online EM keeps its statistics on "
                "the host); under Array API dispatch, fit takes arrays of other libraries. "
                "Pass numpy arrays, or move the model to numpy with "
                "sklearn.utils._array_api.move_estimator_to."
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
        xp = array_namespace(params.A)
        contiguous = np.ascontiguousarray if xp is np else (lambda a: xp.asarray(a, copy=True))
        self.inverse_coef_ = contiguous(params.A)
        self.latent_coef_ = contiguous(params.W)
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
        of the public attributes (moved there once when the model was moved, e.g. by
        ``sklearn.utils._array_api.move_estimator_to``)."""
        xp = array_namespace(self.weights_)
        params, forward = self._params, self._forward
        if (array_namespace(params.weights) is not xp
                or array_device(params.weights) != array_device(self.weights_)):
            device = array_device(self.weights_)

            # To numpy through the arrays' own namespace: scikit-learn's move_to reads
            # it with dispatch off (numpy), which cannot convert a CUDA tensor.
            convert = (to_numpy if xp is np
                       else lambda value: move_to(value, xp=xp, device=device))

            def move(obj):
                fields = {name: (None if value is None else convert(value))
                          for name, value in vars(obj).items()}
                return type(obj)(**fields)

            params, forward = move(params), move(forward)
            self._params, self._forward = params, forward
        return params, forward

    def _check_feature_noise(self, n_samples, feature_noise_var, feature_noise_cov):
        """Validated observation noise: (variances (1 or n, D) or None, covariance or None)."""
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
            if not np.all(np.isfinite(var)) or (var < 0).any():
                raise ValueError("feature_noise_var must hold finite, non-negative variances.")
            return var, None
        cov = np.asarray(feature_noise_cov, dtype=np.float64)
        if cov.shape != (D, D):
            raise ValueError(f"feature_noise_cov must have shape ({D}, {D}); got {cov.shape}.")
        if not np.all(np.isfinite(cov)) or not np.allclose(cov, cov.T, rtol=1e-10,
                                                             atol=1e-12 * np.abs(cov).max()):
            raise ValueError("feature_noise_cov must be a finite symmetric matrix.")
        if np.linalg.eigvalsh(cov).min() < -1e-10 * max(np.abs(cov).max(), 1e-300):
            raise ValueError("feature_noise_cov must be positive semi-definite.")
        return None, 0.5 * (cov + cov.T)

    def _noisy_forward_terms(self, X, method, feature_noise_var, feature_noise_cov):
        """With observation noise: unnormalised log gating terms log pi_k p(x | k) (K, n),
        component means (n, K, L) and covariances (n, K, L, L) of p(y | x); the dtype of
        X. ``None`` when no noise is given. numpy inputs only."""
        if feature_noise_var is None and feature_noise_cov is None:
            return None
        X, dtype = self._check_X(X, method)
        if array_namespace(X) is not np:
            raise ValueError(
                "feature_noise_var and feature_noise_cov need numpy inputs; move the model "
                "and the data to numpy (see the user guide) to use observation noise."
            )
        noise_var, noise_cov = self._check_feature_noise(X.shape[0], feature_noise_var,
                                                         feature_noise_cov)
        Xc = X.astype(np.float64) - self.feature_mean_
        params, _ = self._core()
        log_terms, means, covs = self._em_model(fitted=True).noisy_forward_terms(
            params, Xc, noise_var, noise_cov
        )
        return log_terms, means + self.target_mean_, covs, dtype

    def _mixture(self, X, method="predict", feature_noise_var=None, feature_noise_cov=None):
        """Log gating weights (n, K), component means (n, K, L) and covariances ((K, L, L),
        or (n, K, L, L) with observation noise) of p(y | x); the dtype of X."""
        noisy = self._noisy_forward_terms(X, method, feature_noise_var, feature_noise_cov)
        if noisy is not None:
            log_terms, means, covs, dtype = noisy
            log_nu = log_terms - gm.logsumexp(log_terms, axis=0, keepdims=True)
            return log_nu.T, means, covs, dtype
        X, dtype = self._check_X(X, method)
        xp = array_namespace(X)
        _, forward = self._core()
        if xp is np:
            Xc = X.astype(np.float64) - self.feature_mean_
        else:
            Xc = X - xp.astype(self.feature_mean_, dtype)
        log_nu, means = self._em_model(fitted=True).forward_mixture(Xc, forward)
        target_mean = self.target_mean_ if xp is np else xp.astype(self.target_mean_, dtype)
        return log_nu, means + target_mean, xp.astype(forward.cov, means.dtype), dtype

    def _noisy_joint_terms(self, X, y, method, feature_noise_var, feature_noise_cov):
        """log pi_k + log p(x + e, y | k) (n, K) with observation noise e, or None."""
        noisy = self._noisy_forward_terms(X, method, feature_noise_var, feature_noise_cov)
        if noisy is None:
            return None
        log_terms, means, covs, _ = noisy
        y = self._check_y(y, means.shape[0]) + self.target_mean_
        delta, logdet = mahalanobis_logdet(y[:, None, :] - means, covs)
        return log_terms.T + gaussian_or_t_log_density(delta, logdet, y.shape[1])

    def _shape_out(self, a):
        """Drop the target axis for models fitted on 1-D y."""
        return a[:, 0] if self._y_ndim == 1 else a

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
        feature_noise_cov : array-like of shape (n_features, n_features), default=None
            A full noise covariance S shared by all samples (instead of
            ``feature_noise_var``).

        Returns
        -------
        y_mean : ndarray of shape (n_samples,) or (n_samples, n_targets)
            Predictive means (1-D when the model was fitted on 1-D y).
        y_std : ndarray of the same shape as y_mean
            Only with ``return_std=True``.
        y_cov : ndarray of shape (n_samples, n_targets, n_targets)
            Only with ``return_cov=True``.
        """
        log_nu, means, covs, dtype = self._mixture(X, "predict", feature_noise_var,
                                                   feature_noise_cov)
        xp = array_namespace(means)
        nu = xp.exp(log_nu)
        mean = einsum(xp, "nk,nkl->nl", nu, means)
        out = [self._shape_out(mean)]
        if return_std or return_cov:
            if covs.ndim == 4:  # per-sample covariances (observation noise)
                second = einsum(xp, "nk,nklm->nlm", nu, covs)
            else:
                second = einsum(xp, "nk,klm->nlm", nu, covs)
            second += einsum(xp, "nk,nkl,nkm->nlm", nu, means, means)
            cov = second - mean[:, :, None] * mean[:, None, :]
            cov = 0.5 * (cov + swap_last(xp, cov))
            if return_std:
                var = einsum(xp, "nll->nl", cov)
                var = xp.maximum(var, xp.zeros_like(var))
                out.append(self._shape_out(xp.sqrt(var)))
            if return_cov:
                out.append(cov)
        out = [_as_dtype(a, dtype) for a in out]
        return out[0] if len(out) == 1 else tuple(out)

    def predict_mixture(self, X, *, feature_noise_var=None, feature_noise_cov=None):
        """Return the predictive mixture p(y | x) for each sample.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Features.
        feature_noise_var : float or array-like of shape (n_features,) or \
(n_samples, n_features), default=None
            Variances of known measurement noise on the features, shared or per sample:
            the forward mixture then uses Sigma_k + S instead of Sigma_k (see the user
            guide, "Observation noise").
        feature_noise_cov : array-like of shape (n_features, n_features), default=None
            A full noise covariance S shared by all samples (instead of
            ``feature_noise_var``).

        Returns
        -------
        weights : ndarray of shape (n_samples, n_components)
            Posterior component weights nu*_k(x).
        means : ndarray of shape (n_samples, n_components, n_targets)
            Component means A*_k x + b*_k.
        covariances : ndarray of shape (n_components, n_targets, n_targets)
            Component covariances Sigma*_k (they do not depend on x); with observation
            noise they do, and the shape is (n_samples, n_components, n_targets,
            n_targets). On a dask X the weights and means are lazy dask arrays, and the
            covariances an in-memory array (a dask array with observation noise).
        """
        if feature_noise_var is not None or feature_noise_cov is not None:
            # The covariances depend on the sample: on dask arrays, per row block.
            return self._noisy_predict_mixture(X, feature_noise_var=feature_noise_var,
                                               feature_noise_cov=feature_noise_cov)
        return self._predict_mixture(X)

    @_dask.blockwise(shared=_dask.SHARED_NOISE)
    def _noisy_predict_mixture(self, X, *, feature_noise_var=None, feature_noise_cov=None):
        return self._predict_mixture(X, feature_noise_var=feature_noise_var,
                                     feature_noise_cov=feature_noise_cov)

    # The covariances (K, L, L) do not depend on the sample: the dask path returns them
    # once, as an in-memory array.
    @_dask.blockwise(constant_outputs=(2,), shared=_dask.SHARED_NOISE)
    def _predict_mixture(self, X, *, feature_noise_var=None, feature_noise_cov=None):
        log_nu, means, covs, dtype = self._mixture(X, "predict_mixture", feature_noise_var,
                                                   feature_noise_cov)
        xp = array_namespace(means)
        return (
            _as_dtype(xp.exp(log_nu), dtype),
            _as_dtype(means, dtype),
            _as_dtype(covs, dtype),
        )

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
            log_nu = self._mixture(X, "component_posterior", feature_noise_var,
                                   feature_noise_cov)[0]
            return array_namespace(log_nu).exp(log_nu)
        if X is None:
            y = self._check_y(y)
            xp = array_namespace(y)
            params, _ = self._core()
            with np.errstate(divide="ignore"):
                log_w = xp.log(params.weights)
            logp = log_w[:, None] + gm.target_log_density(y, params.c, params.gamma)
            return xp.exp(logp - gm.logsumexp(logp, axis=0, keepdims=True)).T
        terms = self._noisy_joint_terms(X, y, "component_posterior", feature_noise_var,
                                        feature_noise_cov)
        if terms is not None:
            return np.exp(terms - gm.logsumexp(terms, axis=1, keepdims=True))
        return self._joint_estep(X, y).resp.T

    def _joint_estep(self, X, y):
        X, _ = self._check_X(X, "joint_log_density")
        y = self._check_y(y, X.shape[0])
        xp = array_namespace(X)
        params, _ = self._core()
        if xp is np:
            Xc = X.astype(np.float64) - self.feature_mean_
        else:
            Xc, y = X - xp.astype(self.feature_mean_, X.dtype), xp.astype(y, X.dtype)
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
        log_nu, means, covs, _ = self._mixture(X, "conditional_log_density", feature_noise_var,
                                               feature_noise_cov)
        xp = array_namespace(means)
        y = xp.astype(self._check_y(y, log_nu.shape[0]), means.dtype)
        target_mean = self.target_mean_ if xp is np else xp.astype(self.target_mean_, y.dtype)
        if covs.ndim == 4:  # per-sample covariances (observation noise), numpy only
            return mixture_log_density(y[:, None, :] + target_mean, log_nu, means, covs)[:, 0]
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
        if not isinstance(n_samples, Integral) or n_samples < 1:
            raise ValueError(f"n_samples must be a positive integer, got {n_samples!r}.")
        key = stream_key(check_random_state(random_state))
        draws = self._sample_rows(X, n_samples, key, feature_noise_var=feature_noise_var,
                                  feature_noise_cov=feature_noise_cov)
        return draws[:, 0, :] if self._y_ndim == 1 else draws

    @_dask.blockwise(shared=_dask.SHARED_NOISE, row_offset="first_row")
    def _sample_rows(self, X, n_samples, key, *, first_row=0, feature_noise_var=None,
                     feature_noise_cov=None):
        """Draws (n, L, n_samples) for the rows of X, which start at row ``first_row``."""
        log_nu, means, scales, dof, dtype = self._predictive_components(
            X, feature_noise_var=feature_noise_var, feature_noise_cov=feature_noise_cov)
        draws = sample_mixture_rows(np.exp(log_nu), means, scales, n_samples, key,
                                    first_row, dof)  # (n, s, L)
        draws = np.transpose(draws, (0, 2, 1))
        xp = _input_namespace(self.weights_)
        if xp is np:
            return draws.astype(dtype, copy=False)
        return xp.asarray(draws, dtype=dtype, device=array_device(self.weights_))

    def _predictive_components(self, X, *, feature_noise_var=None, feature_noise_cov=None):
        """Log gating weights (n, K), means (n, K, L), covariances ((K, L, L) or
        (n, K, L, L)) of p(y | x) as float64 numpy arrays, ``None`` degrees of freedom
        (Gaussian components) and the dtype of X."""
        log_nu, means, covs, dtype = self._mixture(X, "sample_y", feature_noise_var,
                                                   feature_noise_cov)
        return to_numpy(log_nu), to_numpy(means), to_numpy(covs), None, dtype

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
    def _n_parameters(self):
        # The fitted shapes, not the parameters: set_params after fit must not change them.
        K, D, Lw = self.latent_coef_.shape
        return self._em_model(fitted=True).n_parameters(K, D, self.n_targets_, Lw)

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

    # ------------------------------------------------------------------ the deep head's interface
    # What a deep model's alternation needs from its mixture head (DeepGLLiMRegressor
    # calls these and nothing private): a fit with the E-step frozen, the per-sample
    # weights and the noise precision of its network loss, and the fitted model as
    # plain arrays for its checkpoints.

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
        gamma = a["target_covariances_"]
        gamma = {"full": lambda g: g, "diag": lambda g: g[:, :, None] * np.eye(L),
                 "spherical": lambda g: g[:, None, None] * np.eye(L),
                 "tied": lambda g: np.broadcast_to(g, (K, L, L))}[
                     self.target_covariance_type](gamma)
        cov = a["noise_covariances_"]
        if self.covariance_type in ("full", "tied"):
            noise = np.linalg.cholesky(cov if cov.ndim == 3 else cov[None])
        else:
            noise = np.broadcast_to(cov[:, None] if self.covariance_type == "spherical"
                                    else cov, (K, D))
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
