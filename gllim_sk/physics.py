"""Physical forward models, simulation designs and bounded parameter spaces.

GLLiM inverts a physical model ``x = F(y) + noise`` from a dictionary of simulations
``(y_n, F(y_n) + e_n)``. This module supplies the pieces around the regressor:

- :class:`ForwardModel`: a callable mapping parameters ``(n, L)`` to noise-free
  observations ``(n, D)``, with the parameters' names and bounds. Wrap any vectorised
  function with :class:`FunctionModel`; :class:`HapkeModel` (Hapke's bidirectional
  reflectance, 1993 and 2002 variants) and :class:`ShkuratovModel` (Shkuratov et al.'s
  photometric model) are built in.
- :func:`sample_design`: space-filling designs within the bounds from
  :mod:`scipy.stats.qmc` (Sobol, Latin hypercube, Halton) or uniform random draws.
- :func:`simulate`: a design pushed through the model with additive Gaussian noise,
  into numpy arrays or, for millions of samples, into chunked dask arrays whose blocks
  are made on the workers.
- :class:`BoundedTransformer`: a scikit-learn transformer between the bounded physical
  parameters and an unbounded (logit) or unit space; with
  :class:`~sklearn.compose.TransformedTargetRegressor` every prediction stays inside
  the bounds.
"""

from numbers import Integral, Real

import numpy as np
from scipy.stats import qmc
from sklearn.base import BaseEstimator, OneToOneFeatureMixin, TransformerMixin
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_is_fitted, validate_data

from ._compat import Interval, StrOptions, _fit_context

__all__ = [
    "BoundedTransformer",
    "ForwardModel",
    "FunctionModel",
    "HapkeModel",
    "ShkuratovModel",
    "henyey_greenstein",
    "hapke_h_function",
    "sample_design",
    "simulate",
]

_DESIGNS = ("sobol", "lhs", "halton", "random")


# --------------------------------------------------------------------- interface
class ForwardModel:
    """A vectorised physical model ``F: (n, L) parameters -> (n, D) observations``.

    Subclasses set ``names`` (L parameter names), ``bounds`` (an (L, 2) array of lower
    and upper bounds) and ``n_outputs`` (D), and implement ``_evaluate(params)`` on a
    validated float64 array. Calling the model validates the parameters (shape, finite,
    inside the bounds) and returns a new array; the input is never modified.
    """

    names: tuple = ()
    bounds: np.ndarray = np.zeros((0, 2))
    n_outputs: int = 0

    @property
    def n_params(self):
        """Number of parameters L."""
        return len(self.names)

    def _evaluate(self, params):  # pragma: no cover - abstract
        raise NotImplementedError

    def _check_params(self, params, check_bounds=True):
        params = np.asarray(params, dtype=float)
        if params.ndim == 1 and self.n_params == 1:
            params = params[:, None]
        if params.ndim != 2 or params.shape[1] != self.n_params:
            raise ValueError(
                f"{type(self).__name__} takes parameters of shape (n, {self.n_params}) "
                f"({', '.join(self.names)}); got shape {params.shape}."
            )
        if not np.all(np.isfinite(params)):
            raise ValueError("Parameters must be finite.")
        if check_bounds:
            low, high = self.bounds[:, 0], self.bounds[:, 1]
            # A relative tolerance lets values rounded onto a bound through.
            tol = 1e-9 * (high - low)
            bad = (params < low - tol) | (params > high + tol)
            if bad.any():
                col = int(np.nonzero(bad.any(axis=0))[0][0])
                raise ValueError(
                    f"{int(bad.any(axis=1).sum())} parameter rows lie outside the bounds; "
                    f"e.g. {self.names[col]} must be in [{low[col]}, {high[col]}]."
                )
            params = np.clip(params, low, high)
        return params

    def __call__(self, params):
        """Noise-free observations of shape (n, D) for parameters of shape (n, L)."""
        params = self._check_params(params)
        out = np.asarray(self._evaluate(params), dtype=float)
        if out.shape != (params.shape[0], self.n_outputs):
            raise ValueError(
                f"The model returned shape {out.shape}; expected "
                f"{(params.shape[0], self.n_outputs)}."
            )
        return out

    def log_prior(self, params):
        """Log-density (up to a constant) of the uniform prior on the bounds.

        Returns 0 inside the box and ``-inf`` outside, for parameters (m, L); suitable
        as ``log_prior`` of :func:`gllim_sk.posterior.importance_sampling`.
        """
        params = self._check_params(params, check_bounds=False)
        inside = np.all((params >= self.bounds[:, 0]) & (params <= self.bounds[:, 1]), axis=1)
        return np.where(inside, 0.0, -np.inf)

    def __repr__(self):
        return (f"{type(self).__name__}(params={list(self.names)}, "
                f"n_outputs={self.n_outputs})")


def _check_bounds(bounds, n_params=None):
    bounds = np.array(bounds, dtype=float)
    if bounds.ndim != 2 or bounds.shape[1] != 2 or (
            n_params is not None and bounds.shape[0] != n_params):
        raise ValueError(
            f"bounds must have shape (L, 2) = (n_params, [low, high]); got {bounds.shape}."
        )
    if not np.all(np.isfinite(bounds)) or not np.all(bounds[:, 0] < bounds[:, 1]):
        raise ValueError("bounds must be finite with low < high for every parameter.")
    return bounds


def _named_bounds(names, defaults, bounds):
    """(L, 2) bounds of ``names``: the defaults, replaced by those given by name."""
    bounds = dict(bounds or {})
    unknown = set(bounds) - set(names)
    if unknown:
        raise ValueError(f"bounds given for unknown parameters {sorted(unknown)}; "
                         f"parameters are {list(names)}.")
    return _check_bounds([bounds.get(n, defaults[n]) for n in names], len(names))


class FunctionModel(ForwardModel):
    """Wrap a vectorised function of parameters as a :class:`ForwardModel`.

    Parameters
    ----------
    func : callable
        ``func(params)`` maps an array of shape (n, L) to one of shape (n, n_outputs).
    bounds : array-like of shape (L, 2)
        Lower and upper bound of each parameter.
    n_outputs : int
        Number of observations D per parameter vector.
    names : sequence of str, default=None
        Parameter names (default ``y0, y1, ...``).

    Examples
    --------
    >>> import numpy as np
    >>> from gllim_sk.physics import FunctionModel
    >>> model = FunctionModel(lambda y: np.hstack([y, y**2]), [[0, 1]], 2, names=["a"])
    >>> model(np.array([[0.5]]))
    array([[0.5 , 0.25]])
    """

    def __init__(self, func, bounds, n_outputs, names=None):
        if not callable(func):
            raise TypeError("func must be a callable of an (n, L) array.")
        self.bounds = _check_bounds(bounds)
        if not isinstance(n_outputs, Integral) or n_outputs < 1:
            raise ValueError(f"n_outputs must be a positive integer, got {n_outputs!r}.")
        L = self.bounds.shape[0]
        names = tuple(f"y{i}" for i in range(L)) if names is None else tuple(names)
        if len(names) != L:
            raise ValueError(f"{len(names)} names given for {L} parameters.")
        self.func, self.n_outputs, self.names = func, int(n_outputs), names

    def _evaluate(self, params):
        return self.func(params)


# --------------------------------------------------------------------- Hapke
def hapke_h_function(x, w, variant="1993"):
    """Approximations of Chandrasekhar's H-function for isotropic scatterers.

    Parameters
    ----------
    x : array-like
        Cosines (mu or mu_0), in [0, 1].
    w : array-like
        Single-scattering albedo in [0, 1], broadcasting against ``x``.
    variant : {"1993", "2002"}
        "1993": ``H(x) = (1 + 2x) / (1 + 2 gamma x)`` with ``gamma = sqrt(1 - w)``
        (Hapke 1993, eq. 8.57; within about 4% of the exact function).
        "2002": ``H(x) = 1 / (1 - w x (r0 + (1 - 2 r0 x) / 2 ln((1 + x) / x)))`` with
        ``r0 = (1 - gamma) / (1 + gamma)`` (Hapke 2002, eq. 13; within about 1%).

    Returns
    -------
    H : ndarray

    Examples
    --------
    >>> from gllim_sk.physics import hapke_h_function
    >>> float(hapke_h_function(0.5, 0.0))
    1.0
    """
    x = np.asarray(x, dtype=float)
    w = np.asarray(w, dtype=float)
    gamma = np.sqrt(1.0 - w)
    if variant == "1993":
        return (1.0 + 2.0 * x) / (1.0 + 2.0 * gamma * x)
    if variant == "2002":
        r0 = (1.0 - gamma) / (1.0 + gamma)
        # x ln((1 + x) / x) -> 0 as x -> 0: evaluate it without 0 * inf.
        xlog = np.where(x > 0, x * np.log1p(1.0 / np.where(x > 0, x, 1.0)), 0.0)
        return 1.0 / (1.0 - w * (r0 * x + 0.5 * (1.0 - 2.0 * r0 * x) * xlog))
    raise ValueError(f"variant must be '1993' or '2002', got {variant!r}.")


def henyey_greenstein(cos_g, b, c):
    """Two-lobe Henyey-Greenstein phase function of the phase angle g.

    ``P(g) = (1 + c)/2 (1 - b^2) / (1 - 2b cos g + b^2)^1.5
    + (1 - c)/2 (1 - b^2) / (1 + 2b cos g + b^2)^1.5``: a backward lobe of weight
    ``(1 + c)/2`` and a forward lobe of weight ``(1 - c)/2``, both of asymmetry ``b`` in
    [0, 1); ``c`` in [-1, 1]. It is normalised so that its mean over the sphere is 1.
    """
    cos_g = np.asarray(cos_g, dtype=float)
    b2 = b * b
    back = (1.0 - b2) / (1.0 - 2.0 * b * cos_g + b2) ** 1.5
    fwd = (1.0 - b2) / (1.0 + 2.0 * b * cos_g + b2) ** 1.5
    return 0.5 * (1.0 + c) * back + 0.5 * (1.0 - c) * fwd


def _roughness(cos_i, cos_e, sin_i, sin_e, psi, theta_bar):
    """Hapke's (1984) macroscopic roughness: effective cosines and shadowing S.

    ``psi`` is the azimuth between the incidence and emergence planes in [0, pi] and
    ``theta_bar`` the mean slope angle (radians); all broadcast. Where
    ``theta_bar == 0`` the surface is smooth: the cosines are unchanged and S = 1.
    """
    smooth = theta_bar <= 0
    tan_t = np.tan(np.where(smooth, 1.0, theta_bar))
    chi = 1.0 / np.sqrt(1.0 + np.pi * tan_t**2)
    # Grazing cosines would make tan(x) infinite: the exponentials are then 1, the limit.
    tan_i = np.where(sin_i > 0, sin_i / np.maximum(cos_i, 1e-300), 1.0)
    tan_e = np.where(sin_e > 0, sin_e / np.maximum(cos_e, 1e-300), 1.0)
    with np.errstate(divide="ignore", over="ignore"):
        def e1(tan_x, sin_x):
            return np.where(sin_x > 0, np.exp(-2.0 / (np.pi * tan_t * tan_x)), 0.0)

        def e2(tan_x, sin_x):
            return np.where(sin_x > 0, np.exp(-1.0 / (np.pi * tan_t**2 * tan_x**2)), 0.0)

        e1_i, e1_e = e1(tan_i, sin_i), e1(tan_e, sin_e)
        e2_i, e2_e = e2(tan_i, sin_i), e2(tan_e, sin_e)

    def eta(cos_x, sin_x, e1_x, e2_x):
        return chi * (cos_x + sin_x * tan_t * e2_x / (2.0 - e1_x))

    eta_i = eta(cos_i, sin_i, e1_i, e2_i)
    eta_e = eta(cos_e, sin_e, e1_e, e2_e)
    half = np.sin(0.5 * psi) ** 2
    cos_psi = np.cos(psi)
    frac = psi / np.pi
    f_psi = np.exp(-2.0 * np.tan(np.minimum(0.5 * psi, 0.5 * np.pi - 1e-12)))
    # Case i <= e.
    den_a = 2.0 - e1_e - frac * e1_i
    mu0_a = chi * (cos_i + sin_i * tan_t * (cos_psi * e2_e + half * e2_i) / den_a)
    mu_a = chi * (cos_e + sin_e * tan_t * (e2_e - half * e2_i) / den_a)
    s_a = mu_a / eta_e * cos_i / eta_i * chi / (1.0 - f_psi + f_psi * chi * cos_i / eta_i)
    # Case e < i.
    den_b = 2.0 - e1_i - frac * e1_e
    mu0_b = chi * (cos_i + sin_i * tan_t * (e2_i - half * e2_e) / den_b)
    mu_b = chi * (cos_e + sin_e * tan_t * (cos_psi * e2_i + half * e2_e) / den_b)
    s_b = mu_b / eta_e * cos_i / eta_i * chi / (1.0 - f_psi + f_psi * chi * cos_e / eta_e)
    first = sin_i <= sin_e  # i <= e for angles in [0, pi/2]
    mu0e = np.where(first, mu0_a, mu0_b)
    mue = np.where(first, mu_a, mu_b)
    S = np.where(first, s_a, s_b)
    return (np.where(smooth, cos_i, mu0e), np.where(smooth, cos_e, mue),
            np.where(smooth, 1.0, S))


def _geometry(incidence, emergence, azimuth, phase):
    """Validated angles in radians (D,) from degrees; azimuth from phase if needed."""
    inc = np.atleast_1d(np.asarray(incidence, dtype=float))
    eme = np.atleast_1d(np.asarray(emergence, dtype=float))
    if inc.ndim != 1 or inc.shape != eme.shape or inc.size == 0:
        raise ValueError(
            f"incidence and emergence must be 1-D arrays of the same length D; got shapes "
            f"{inc.shape} and {eme.shape}."
        )
    if (azimuth is None) == (phase is None):
        raise ValueError("Give exactly one of azimuth and phase (degrees).")
    if not (np.all((inc >= 0) & (inc < 90)) and np.all((eme >= 0) & (eme < 90))):
        raise ValueError("incidence and emergence must be in [0, 90) degrees.")
    i, e = np.radians(inc), np.radians(eme)
    if azimuth is not None:
        az = np.atleast_1d(np.asarray(azimuth, dtype=float))
        if az.shape != inc.shape or not np.all(np.isfinite(az)):
            raise ValueError(f"azimuth must be {inc.shape[0]} finite angles; got {az.shape}.")
        # Only |psi| mod 360 matters: fold it into [0, 180].
        az = np.abs((az + 180.0) % 360.0 - 180.0)
        psi = np.radians(az)
        g = np.arccos(np.clip(np.cos(i) * np.cos(e) + np.sin(i) * np.sin(e) * np.cos(psi),
                              -1.0, 1.0))
    else:
        ph = np.atleast_1d(np.asarray(phase, dtype=float))
        if ph.shape != inc.shape or not np.all(np.isfinite(ph)):
            raise ValueError(f"phase must be {inc.shape[0]} finite angles; got {ph.shape}.")
        tol = 1e-7
        if np.any(ph < np.abs(inc - eme) - tol) or np.any(ph > inc + eme + tol):
            raise ValueError(
                "Each phase angle must satisfy |incidence - emergence| <= phase <= "
                "incidence + emergence (the three angles of one spherical triangle)."
            )
        g = np.radians(ph)
        den = np.sin(i) * np.sin(e)
        cos_psi = np.where(den > 0, (np.cos(g) - np.cos(i) * np.cos(e))
                           / np.where(den > 0, den, 1.0), 1.0)
        psi = np.arccos(np.clip(cos_psi, -1.0, 1.0))
    return i, e, psi, g


class HapkeModel(ForwardModel):
    r"""Hapke's bidirectional reflectance of a particulate surface.

    For each of D viewing geometries (incidence ``i``, emergence ``e``, azimuth ``psi``
    between the incidence and emergence planes, phase angle ``g``) the model returns
    the reflectance factor ``REFF = pi r / cos i`` (or, with ``quantity``, the
    bidirectional reflectance ``r`` or the radiance factor ``pi r``) of::

        r = w / (4 pi) mu0e / (mu0e + mue)
            [(1 + B(g)) P(g) + H(mu0e) H(mue) - 1] S(i, e, psi),

    (Hapke, *Theory of Reflectance and Emittance Spectroscopy*, 1993, eq. 12.55 with
    the roughness correction of Hapke, Icarus 59, 1984), where ``w`` is the
    single-scattering albedo, ``P`` the two-lobe Henyey-Greenstein phase function of
    parameters ``b`` and ``c`` (:func:`henyey_greenstein`), ``B(g) = B0 / (1 + tan(g/2)
    / h)`` the shadow-hiding opposition effect, ``H`` Chandrasekhar's function in the
    1993 or 2002 approximation (:func:`hapke_h_function`), and ``mu0e``, ``mue`` and
    ``S`` the effective cosines and shadowing of a surface whose facets have mean slope
    ``theta_bar``. The "2002" variant differs by its H-function (Hapke, Icarus 157,
    2002, eq. 13), as in the Planet-GLLiM literature.

    Parameters
    ----------
    incidence, emergence : array-like of shape (D,)
        Incidence and emergence angles in degrees, in [0, 90).
    azimuth : array-like of shape (D,), default=None
        Relative azimuth in degrees (0: backscattering side). Give it or ``phase``.
    phase : array-like of shape (D,), default=None
        Phase angles in degrees, ``|i - e| <= g <= i + e``.
    variant : {"1993", "2002"}, default="1993"
        H-function approximation.
    opposition : bool, default=False
        Whether ``B0`` and ``h`` are parameters (six parameters) rather than the
        shadow-hiding term being off (four parameters).
    quantity : {"reff", "radf", "brdf", "r"}, default="reff"
        ``"reff"``: reflectance factor ``pi r / cos i``; ``"radf"``: radiance factor
        ``pi r``; ``"brdf"``: ``r / cos i``; ``"r"``: bidirectional reflectance.
    bounds : dict, default=None
        Bounds replacing the defaults, by parameter name. Defaults: ``omega`` in
        [0, 1], ``theta_bar`` in [0, 30] degrees, ``b`` in [0, 1), ``c`` in [-1, 1],
        ``B0`` in [0, 1] and ``h`` in [0.001, 1] (with ``opposition``). A roughness of
        0 degrees is the smooth-surface model.

    Attributes
    ----------
    names : tuple of str
        ``("omega", "theta_bar", "b", "c")``, plus ``("B0", "h")`` with ``opposition``.
    bounds : ndarray of shape (L, 2)
    n_outputs : int
        D.

    Examples
    --------
    >>> import numpy as np
    >>> from gllim_sk.physics import HapkeModel
    >>> model = HapkeModel(incidence=[30, 45], emergence=[0, 20], azimuth=[0, 90])
    >>> model(np.array([[0.5, 15.0, 0.3, 0.2]])).shape
    (1, 2)
    """

    def __init__(self, incidence, emergence, azimuth=None, phase=None, *, variant="1993",
                 opposition=False, quantity="reff", bounds=None):
        if variant not in ("1993", "2002"):
            raise ValueError(f"variant must be '1993' or '2002', got {variant!r}.")
        if quantity not in ("reff", "radf", "brdf", "r"):
            raise ValueError(
                f"quantity must be 'reff', 'radf', 'brdf' or 'r', got {quantity!r}."
            )
        self.incidence_, self.emergence_, self.azimuth_, self.phase_ = _geometry(
            incidence, emergence, azimuth, phase)
        self.variant, self.opposition, self.quantity = variant, bool(opposition), quantity
        defaults = {"omega": (0.0, 1.0), "theta_bar": (0.0, 30.0), "b": (0.0, 0.999),
                    "c": (-1.0, 1.0), "B0": (0.0, 1.0), "h": (0.001, 1.0)}
        names = ("omega", "theta_bar", "b", "c") + (("B0", "h") if opposition else ())
        self.names = names
        self.bounds = _named_bounds(names, defaults, bounds)
        physical = {"omega": (0.0, 1.0), "theta_bar": (0.0, 89.0), "b": (0.0, 0.999999),
                    "c": (-1.0, 1.0), "B0": (0.0, np.inf), "h": (1e-9, np.inf)}
        for name, (low, high) in zip(names, self.bounds, strict=True):
            if low < physical[name][0] or high > physical[name][1]:
                raise ValueError(f"bounds of {name} must lie within {physical[name]}; got "
                                 f"[{low}, {high}].")
        self.n_outputs = self.incidence_.size

    def _evaluate(self, params):
        w = params[:, 0:1]
        theta = np.radians(params[:, 1:2])
        b, c = params[:, 2:3], params[:, 3:4]
        i, e, psi, g = self.incidence_, self.emergence_, self.azimuth_, self.phase_
        cos_i, cos_e, sin_i, sin_e = np.cos(i), np.cos(e), np.sin(i), np.sin(e)
        mu0e, mue, S = _roughness(cos_i, cos_e, sin_i, sin_e, psi, theta)
        P = henyey_greenstein(np.cos(g), b, c)
        if self.opposition:
            B0, h = params[:, 4:5], params[:, 5:6]
            P = P * (1.0 + B0 / (1.0 + np.tan(0.5 * g) / h))
        H = hapke_h_function(mu0e, w, self.variant) * hapke_h_function(mue, w, self.variant)
        r = w / (4.0 * np.pi) * mu0e / (mu0e + mue) * (P + H - 1.0) * S
        if self.quantity == "reff":
            return np.pi * r / cos_i
        if self.quantity == "radf":
            return np.pi * r
        if self.quantity == "brdf":
            return r / cos_i
        return r


# --------------------------------------------------------------------- Shkuratov
class ShkuratovModel(ForwardModel):
    r"""Shkuratov et al.'s photometric model of a regolith surface.

    The reflectance of a geometry of phase angle ``alpha`` and photometric latitude
    ``beta`` and longitude ``gamma`` (``cos i = cos beta cos(alpha - gamma)``,
    ``cos e = cos beta cos gamma``) is the product of a phase function and a disk
    function (Shkuratov et al., Planetary and Space Science 59, 2011, eqs. 3-5)::

        A(alpha) = A_N (exp(-mu1 alpha) + m exp(-mu2 alpha)) / (1 + m),
        D = cos(alpha/2) cos(pi / (pi - alpha) (gamma - alpha/2))
            cos(beta)^(nu alpha / (pi - alpha)) / cos(gamma),

    with ``alpha`` in radians. ``A_N`` is the normal albedo, ``mu1`` and ``mu2`` the
    slopes of the narrow and broad parts of the phase curve, ``m`` their ratio and
    ``nu`` the roughness of the disk function.

    Parameters
    ----------
    incidence, emergence : array-like of shape (D,)
        Incidence and emergence angles in degrees, in [0, 90).
    azimuth, phase : array-like of shape (D,), default=None
        Relative azimuth or phase angle in degrees; give exactly one.
    bounds : dict, default=None
        Bounds replacing the defaults by name: ``A_N`` in [0, 1], ``mu1`` in [0, 3],
        ``m`` in [0, 10], ``mu2`` in [0, 3], ``nu`` in [0, 2].

    Examples
    --------
    >>> import numpy as np
    >>> from gllim_sk.physics import ShkuratovModel
    >>> model = ShkuratovModel(incidence=[0.0], emergence=[0.0], phase=[0.0])
    >>> model(np.array([[0.3, 1.0, 0.5, 0.2, 0.4]]))  # A(0) D = A_N at opposition
    array([[0.3]])
    """

    def __init__(self, incidence, emergence, azimuth=None, phase=None, *, bounds=None):
        self.incidence_, self.emergence_, self.azimuth_, self.phase_ = _geometry(
            incidence, emergence, azimuth, phase)
        names = ("A_N", "mu1", "m", "mu2", "nu")
        defaults = {"A_N": (0.0, 1.0), "mu1": (0.0, 3.0), "m": (0.0, 10.0),
                    "mu2": (0.0, 3.0), "nu": (0.0, 2.0)}
        self.names = names
        self.bounds = _named_bounds(names, defaults, bounds)
        if np.any(self.bounds[:, 0] < 0):
            raise ValueError("Shkuratov's parameters are non-negative; got a negative bound.")
        i, e, g = self.incidence_, self.emergence_, self.phase_
        if np.any(g >= np.pi - 1e-6):
            raise ValueError("Shkuratov's disk function needs phase angles below 180 degrees.")
        cos_i, cos_e = np.cos(i), np.cos(e)
        # Photometric longitude from cos i / cos e = cos(alpha - gamma) / cos gamma
        # = cos alpha + sin alpha tan gamma; the sign follows the azimuth's side.
        with np.errstate(divide="ignore", invalid="ignore"):
            tan_gamma = np.where(np.sin(g) > 1e-12,
                                 (cos_i / cos_e - np.cos(g)) / np.sin(g), 0.0)
        gamma = np.arctan(tan_gamma)
        # Photometric longitude is measured from the emergence side: gamma in
        # [alpha - pi/2, pi/2].
        cos_beta = np.clip(cos_e / np.cos(gamma), 0.0, 1.0)
        self.longitude_, self.latitude_ = gamma, np.arccos(cos_beta)
        self.n_outputs = g.size

    def _evaluate(self, params):
        A_N, mu1, m, mu2, nu = (params[:, k:k + 1] for k in range(5))
        alpha, gamma, beta = self.phase_, self.longitude_, self.latitude_
        phase_fn = A_N * (np.exp(-mu1 * alpha) + m * np.exp(-mu2 * alpha)) / (1.0 + m)
        disk = (np.cos(0.5 * alpha) * np.cos(np.pi / (np.pi - alpha) * (gamma - 0.5 * alpha))
                / np.cos(gamma))
        disk = disk * np.cos(beta) ** (nu * alpha / (np.pi - alpha))
        return phase_fn * disk


# --------------------------------------------------------------------- designs
def sample_design(bounds, n_samples, method="sobol", random_state=None):
    """Points filling the box ``bounds`` by a quasi-random or random design.

    Parameters
    ----------
    bounds : array-like of shape (L, 2) or ForwardModel
        Lower and upper bound of each parameter (or a model whose ``bounds`` to use).
    n_samples : int
        Number of points.
    method : {"sobol", "lhs", "halton", "random"}, default="sobol"
        Scrambled Sobol sequence, Latin hypercube or scrambled Halton sequence from
        :mod:`scipy.stats.qmc`, or independent uniform draws.
    random_state : int, RandomState instance or None, default=None
        Seeds the scrambling (or the draws).

    Returns
    -------
    Y : ndarray of shape (n_samples, L)

    Notes
    -----
    Sobol points are balanced for powers of two; other sizes are the first
    ``n_samples`` points of the sequence (scipy warns about it; the warning is silenced
    here, the design is still space-filling).

    Examples
    --------
    >>> from gllim_sk.physics import sample_design
    >>> sample_design([[0, 1], [10, 20]], 4, random_state=0).shape
    (4, 2)
    """
    if isinstance(bounds, ForwardModel):
        bounds = bounds.bounds
    bounds = _check_bounds(bounds)
    if not isinstance(n_samples, Integral) or n_samples < 1:
        raise ValueError(f"n_samples must be a positive integer, got {n_samples!r}.")
    if method not in _DESIGNS:
        raise ValueError(f"method must be one of {_DESIGNS}, got {method!r}.")
    rng = check_random_state(random_state)
    L = bounds.shape[0]
    seed = np.random.default_rng(rng.randint(0, 2**31 - 1))
    if method == "random":
        unit = seed.random((n_samples, L))
    elif method == "lhs":
        unit = qmc.LatinHypercube(d=L, rng=seed).random(n_samples)
    elif method == "halton":
        unit = qmc.Halton(d=L, scramble=True, rng=seed).random(n_samples)
    else:
        import warnings

        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*balance properties.*")
            unit = qmc.Sobol(d=L, scramble=True, rng=seed).random(n_samples)
    return qmc.scale(unit, bounds[:, 0], bounds[:, 1])


def _noise_std(noise_std, n_outputs):
    std = np.asarray(noise_std, dtype=float)
    if std.ndim > 1 or (std.ndim == 1 and std.shape != (n_outputs,)):
        raise ValueError(f"noise_std must be a scalar or hold {n_outputs} values; got shape "
                         f"{std.shape}.")
    if not np.all(np.isfinite(std)) or np.any(std < 0):
        raise ValueError("noise_std must be finite and non-negative.")
    return std


def _simulate_block(model, bounds, n, method, std, relative, seed):
    rng = np.random.RandomState(seed)
    Y = sample_design(bounds, n, method, rng)
    X = model(Y)
    scale = std * np.abs(X) if relative else std
    X = X + scale * rng.standard_normal(X.shape)
    return Y, X


def simulate(model, n_samples, *, method="sobol", noise_std=0.0, relative_noise=False,
             chunks=None, random_state=None):
    """Simulations ``(Y, X = F(Y) + noise)`` of a forward model on a design.

    Parameters
    ----------
    model : ForwardModel
        The model (its ``bounds`` define the design's box).
    n_samples : int
        Number of simulations.
    method : {"sobol", "lhs", "halton", "random"}, default="sobol"
        Design (:func:`sample_design`).
    noise_std : float or array-like of shape (D,), default=0.0
        Standard deviation of the additive Gaussian noise.
    relative_noise : bool, default=False
        If True, the noise of each observation is ``noise_std`` times its noise-free
        value (a noise of "a few percent").
    chunks : int, default=None
        With an integer, return dask arrays of chunks of ``chunks`` rows; each chunk
        draws its own design (an independently scrambled sequence) and noise from its
        own seed and is simulated where dask runs it (on the workers with a
        distributed client), so nothing of size ``n_samples`` passes through the client.
    random_state : int, RandomState instance or None, default=None
        Seeds the design and the noise.

    Returns
    -------
    Y : ndarray or dask array of shape (n_samples, L)
        Parameters.
    X : ndarray or dask array of shape (n_samples, D)
        Noisy observations.

    Examples
    --------
    >>> from gllim_sk.physics import HapkeModel, simulate
    >>> model = HapkeModel([30, 45, 60], [0, 10, 30], azimuth=[0, 45, 180])
    >>> Y, X = simulate(model, 256, noise_std=0.01, random_state=0)
    >>> Y.shape, X.shape
    ((256, 4), (256, 3))
    """
    if not isinstance(model, ForwardModel):
        raise TypeError("model must be a ForwardModel (wrap a function with FunctionModel).")
    if not isinstance(n_samples, Integral) or n_samples < 1:
        raise ValueError(f"n_samples must be a positive integer, got {n_samples!r}.")
    if method not in _DESIGNS:
        raise ValueError(f"method must be one of {_DESIGNS}, got {method!r}.")
    std = _noise_std(noise_std, model.n_outputs)
    rng = check_random_state(random_state)
    if chunks is None:
        return _simulate_block(model, model.bounds, int(n_samples), method, std,
                               relative_noise, rng.randint(0, 2**31 - 1))
    if not isinstance(chunks, Integral) or chunks < 1:
        raise ValueError(f"chunks must be a positive integer, got {chunks!r}.")
    import dask
    import dask.array as da

    sizes = [min(chunks, n_samples - a) for a in range(0, n_samples, chunks)]
    seeds = rng.randint(0, 2**31 - 1, size=len(sizes))
    L, D = model.n_params, model.n_outputs
    Ys, Xs = [], []
    for size, seed in zip(sizes, seeds, strict=True):
        pair = dask.delayed(_simulate_block, nout=2, pure=True)(
            model, model.bounds, size, method, std, relative_noise, int(seed))
        Ys.append(da.from_delayed(pair[0], (size, L), dtype=float))
        Xs.append(da.from_delayed(pair[1], (size, D), dtype=float))
    return da.concatenate(Ys, axis=0), da.concatenate(Xs, axis=0)


# --------------------------------------------------------------------- bounded space
class BoundedTransformer(OneToOneFeatureMixin, TransformerMixin, BaseEstimator):
    """Map bounded parameters to an unbounded (logit) or unit space and back.

    ``transform`` sends each column from ``[low, high]`` to ``logit((y - low) / (high -
    low))`` (``space="logit"``, the real line) or to ``(y - low) / (high - low)``
    (``space="unit"``); ``inverse_transform`` maps back, and in logit space every real
    value maps back *inside* the bounds. Used as the ``transformer`` of
    :class:`~sklearn.compose.TransformedTargetRegressor`, a regressor then learns in
    the unbounded space and its predictions stay physical.

    Parameters
    ----------
    bounds : array-like of shape (L, 2), ForwardModel or None, default=None
        Lower and upper bounds; ``None`` takes each column's observed range at ``fit``.
    space : {"logit", "unit"}, default="logit"
        The target space.
    margin : float, default=1e-6
        Values are clipped to ``[low + margin (high - low), high - margin (high - low)]``
        before the logit, so that values on a bound map to finite numbers.

    Attributes
    ----------
    bounds_ : ndarray of shape (L, 2)
        Bounds used.
    n_features_in_ : int

    Examples
    --------
    >>> import numpy as np
    >>> from gllim_sk.physics import BoundedTransformer
    >>> t = BoundedTransformer(bounds=[[0, 1], [0, 30]]).fit(np.zeros((1, 2)))
    >>> z = t.transform([[0.5, 15.0]])
    >>> z
    array([[0., 0.]])
    >>> t.inverse_transform([[50.0, -50.0]]).round(6)  # far out, still inside the bounds
    array([[1., 0.]])
    """

    _parameter_constraints: dict = {
        "bounds": ["array-like", None, ForwardModel],
        "space": [StrOptions({"logit", "unit"})],
        "margin": [Interval(Real, 0.0, 0.5, closed="left")],
    }

    def __init__(self, bounds=None, *, space="logit", margin=1e-6):
        self.bounds = bounds
        self.space = space
        self.margin = margin

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = False
        return tags

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y=None):
        """Take the bounds (given, or the range of ``X``)."""
        X = validate_data(self, X, dtype=np.float64)
        if self.bounds is None:
            low, high = X.min(axis=0), X.max(axis=0)
            span = np.where(high > low, high - low, 1.0)
            # The observed range is widened a little so that the data are inside it.
            bounds = np.column_stack([low - 1e-3 * span, high + 1e-3 * span])
        else:
            src = self.bounds.bounds if isinstance(self.bounds, ForwardModel) else self.bounds
            bounds = _check_bounds(src, X.shape[1])
        self.bounds_ = bounds
        return self

    def _unit(self, X):
        low, high = self.bounds_[:, 0], self.bounds_[:, 1]
        return (X - low) / (high - low)

    def transform(self, X):
        """Map bounded values to the target space."""
        check_is_fitted(self)
        X = validate_data(self, X, dtype=np.float64, reset=False)
        u = self._unit(X)
        if self.space == "unit":
            return u
        u = np.clip(u, self.margin, 1.0 - self.margin)
        return np.log(u) - np.log1p(-u)

    def inverse_transform(self, X):
        """Map values of the target space back to the bounded parameters."""
        check_is_fitted(self)
        X = validate_data(self, X, dtype=np.float64, reset=False)
        low, high = self.bounds_[:, 0], self.bounds_[:, 1]
        u = X if self.space == "unit" else 0.5 * (1.0 + np.tanh(0.5 * X))
        return low + u * (high - low)
