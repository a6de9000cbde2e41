"""Forward models, designs and the bounded transformer, against independent computations."""

import subprocess
import sys
import warnings

import numpy as np
import pytest
from scipy import integrate
from sklearn.compose import TransformedTargetRegressor
from sklearn.linear_model import LinearRegression
from sklearn.utils.estimator_checks import check_estimator

from gllim_sk.physics import (
    BoundedTransformer,
    FunctionModel,
    HapkeModel,
    ShkuratovModel,
    hapke_h_function,
    henyey_greenstein,
    sample_design,
    simulate,
)


def chandrasekhar_h(mu, w):
    """Exact isotropic H-function from its closed-form integral (Chandrasekhar 1960):
    ln H(mu) = -(mu / pi) int_0^{pi/2} ln(1 - w t cot t) / (cos^2 t + mu^2 sin^2 t) dt."""

    def one(m):
        def f(t):
            tc = 1.0 if t == 0 else t / np.tan(t)
            return np.log(1.0 - w * tc) / (np.cos(t) ** 2 + m * m * np.sin(t) ** 2)

        with warnings.catch_warnings():
            # At w = 1 the integrand has an integrable log singularity at t = 0.
            warnings.simplefilter("ignore", integrate.IntegrationWarning)
            val, _ = integrate.quad(f, 0.0, np.pi / 2, limit=200)
        return np.exp(-m / np.pi * val)

    return np.array([one(m) for m in np.atleast_1d(mu)])


def test_exact_h_reference_is_right():
    # Conservative scattering: H(1) = 2.9078 (Chandrasekhar's tables).
    assert chandrasekhar_h(1.0, 1.0)[0] == pytest.approx(2.9078, abs=2e-4)


@pytest.mark.parametrize("variant, tol", [("1993", 0.045), ("2002", 0.01)])
def test_h_function_approximations_against_chandrasekhar(variant, tol):
    mu = np.linspace(0.0, 1.0, 21)
    for w in (0.1, 0.5, 0.9, 0.99, 1.0):
        exact = chandrasekhar_h(mu, w)
        approx = hapke_h_function(mu, w, variant)
        assert np.max(np.abs(approx / exact - 1)) < tol


def test_henyey_greenstein_normalised_and_limits():
    # Mean over the sphere is 1: (1/2) int_{-1}^{1} P(cos g) d cos g.
    for b, c in [(0.0, 0.3), (0.4, -0.5), (0.8, 0.9)]:
        val, _ = integrate.quad(lambda x, b=b, c=c: henyey_greenstein(x, b, c), -1, 1)
        assert 0.5 * val == pytest.approx(1.0, rel=1e-8)
    assert np.allclose(henyey_greenstein(np.linspace(-1, 1, 7), 0.0, 0.4), 1.0)
    # c = 1: one backward lobe, 1 - b^2 over (1 - 2 b cos g + b^2)^1.5.
    b, x = 0.3, np.cos(0.2)
    assert henyey_greenstein(x, b, 1.0) == pytest.approx((1 - b * b) / (1 - 2 * b * x + b * b)
                                                         ** 1.5)


def _random_geometry(rng, D):
    return rng.uniform(0, 75, D), rng.uniform(0, 75, D), rng.uniform(0, 180, D)


def _brute_smooth(inc, eme, az, w, b, c, variant):
    """Hapke's smooth-surface reflectance factor written out for one geometry."""
    i, e, psi = np.radians([inc, eme, az])
    mu0, mu = np.cos(i), np.cos(e)
    cos_g = mu0 * mu + np.sin(i) * np.sin(e) * np.cos(psi)
    P = henyey_greenstein(cos_g, b, c)
    H = hapke_h_function(mu0, w, variant) * hapke_h_function(mu, w, variant)
    return np.pi * (w / (4 * np.pi)) * mu0 / (mu0 + mu) * (P + H - 1) / mu0


@pytest.mark.parametrize("variant", ["1993", "2002"])
def test_hapke_smooth_limit(variant):
    rng = np.random.default_rng(0)
    inc, eme, az = _random_geometry(rng, 12)
    model = HapkeModel(inc, eme, azimuth=az, variant=variant)
    params = np.column_stack([rng.uniform(0, 1, 5), np.zeros(5), rng.uniform(0, 0.9, 5),
                              rng.uniform(-1, 1, 5)])
    out = model(params)
    for n, (w, _, b, c) in enumerate(params):
        ref = [_brute_smooth(*g, w, b, c, variant) for g in zip(inc, eme, az, strict=True)]
        assert np.allclose(out[n], ref, rtol=1e-12)
    # A tiny roughness is continuous with the smooth model.
    tiny = params.copy()
    tiny[:, 1] = 1e-4
    assert np.allclose(model(tiny), out, rtol=1e-6)


def test_hapke_single_scattering_isotropic_is_lommel_seeliger():
    # w -> 0: H = 1 + O(w), so r / w -> mu0 / (4 pi (mu0 + mu)) for isotropic scatterers.
    rng = np.random.default_rng(1)
    inc, eme, az = _random_geometry(rng, 10)
    model = HapkeModel(inc, eme, azimuth=az, quantity="r")
    w = 1e-7
    out = model(np.array([[w, 0.0, 0.0, 0.0]]))[0] / w
    mu0, mu = np.cos(np.radians(inc)), np.cos(np.radians(eme))
    assert np.allclose(out, mu0 / (4 * np.pi * (mu0 + mu)), rtol=1e-6)


@pytest.mark.parametrize("theta", [0.0, 10.0, 25.0])
@pytest.mark.parametrize("opposition", [False, True])
def test_hapke_brdf_reciprocity(theta, opposition):
    # Helmholtz reciprocity: r / cos i is symmetric in (i, e), rough or smooth.
    rng = np.random.default_rng(2)
    inc, eme, az = _random_geometry(rng, 15)
    a = HapkeModel(inc, eme, azimuth=az, quantity="brdf", opposition=opposition)
    b = HapkeModel(eme, inc, azimuth=az, quantity="brdf", opposition=opposition)
    p = [0.6, theta, 0.3, 0.4] + ([0.5, 0.1] if opposition else [])
    assert np.allclose(a(np.array([p])), b(np.array([p])), rtol=1e-10)


def test_hapke_rough_normal_geometry_and_darkening():
    # At i = e = 0 the shadowing function is 1 and both effective cosines are chi:
    # REFF = w/4 * 1/(2 chi) * (P(0) + H(chi)^2 - 1)... divided by cos i = 1, times 2 chi.
    theta = 20.0
    chi = 1 / np.sqrt(1 + np.pi * np.tan(np.radians(theta)) ** 2)
    model = HapkeModel([0.0], [0.0], azimuth=[0.0])
    w, b, c = 0.7, 0.2, 0.3
    got = model(np.array([[w, theta, b, c]]))[0, 0]
    P0 = henyey_greenstein(1.0, b, c)
    ref = w / 4 * 0.5 * (P0 + hapke_h_function(chi, w) ** 2 - 1)
    assert got == pytest.approx(ref, rel=1e-12)
    # Roughness darkens an oblique, grazing geometry.
    oblique = HapkeModel([70.0], [60.0], azimuth=[180.0])
    r = oblique(np.array([[w, 0.0, b, c], [w, 25.0, b, c]]))[:, 0]
    assert r[1] < r[0]


def test_hapke_opposition_effect_formula():
    rng = np.random.default_rng(3)
    inc, eme, az = _random_geometry(rng, 8)
    with_oe = HapkeModel(inc, eme, azimuth=az, opposition=True, quantity="r")
    without = HapkeModel(inc, eme, azimuth=az, quantity="r")
    w, t, b, c, B0, h = 0.5, 0.0, 0.3, 0.2, 0.8, 0.05
    r1 = with_oe(np.array([[w, t, b, c, B0, h]]))[0]
    r0 = without(np.array([[w, t, b, c]]))[0]
    g = with_oe.phase_
    mu0, mu = np.cos(with_oe.incidence_), np.cos(with_oe.emergence_)
    P = henyey_greenstein(np.cos(g), b, c)
    extra = w / (4 * np.pi) * mu0 / (mu0 + mu) * P * B0 / (1 + np.tan(g / 2) / h)
    assert np.allclose(r1 - r0, extra, rtol=1e-10)


def test_hapke_phase_angle_geometry_equals_azimuth_geometry():
    rng = np.random.default_rng(4)
    inc, eme, az = _random_geometry(rng, 10)
    a = HapkeModel(inc, eme, azimuth=az)
    b = HapkeModel(inc, eme, phase=np.degrees(a.phase_))
    p = np.array([[0.4, 12.0, 0.5, -0.2]])
    assert np.allclose(a(p), b(p), rtol=1e-8)


def test_hapke_input_validation():
    with pytest.raises(ValueError, match="exactly one of azimuth and phase"):
        HapkeModel([10], [20])
    with pytest.raises(ValueError, match=r"\[0, 90\)"):
        HapkeModel([95], [20], azimuth=[0])
    with pytest.raises(ValueError, match="spherical triangle"):
        HapkeModel([10], [20], phase=[50])
    with pytest.raises(ValueError, match="unknown parameters"):
        HapkeModel([10], [20], azimuth=[0], bounds={"B0": (0, 1)})  # needs opposition
    with pytest.raises(ValueError, match="bounds of theta_bar"):
        HapkeModel([10], [20], azimuth=[0], bounds={"theta_bar": (0, 95)})
    model = HapkeModel([10], [20], azimuth=[0])
    with pytest.raises(ValueError, match="outside the bounds"):
        model(np.array([[1.5, 0, 0, 0]]))
    with pytest.raises(ValueError, match=r"shape \(n, 4\)"):
        model(np.ones((2, 3)))
    p = np.array([[0.5, 10.0, 0.2, 0.1]])
    keep = p.copy()
    model(p)
    assert np.array_equal(p, keep)


def test_shkuratov_limits():
    model = ShkuratovModel([0.0, 30.0, 50.0], [0.0, 30.0, 10.0], phase=[0.0, 0.0, 40.0])
    p = np.array([[0.3, 1.0, 0.5, 0.2, 0.4]])
    out = model(p)[0]
    assert out[:2] == pytest.approx([0.3, 0.3])  # alpha = 0: A_N whatever the latitude
    # Photometric coordinates reproduce the cosines.
    beta, gamma, alpha = model.latitude_, model.longitude_, model.phase_
    assert np.allclose(np.cos(beta) * np.cos(alpha - gamma), np.cos(model.incidence_))
    assert np.allclose(np.cos(beta) * np.cos(gamma), np.cos(model.emergence_))
    # m = 0: a single exponential phase curve; nu = 0: no latitude dependence.
    a = alpha[2]
    ref = 0.3 * np.exp(-1.0 * a) * np.cos(a / 2) * np.cos(np.pi / (np.pi - a)
                                                          * (gamma[2] - a / 2)) / np.cos(gamma[2])
    assert model(np.array([[0.3, 1.0, 0.0, 0.2, 0.0]]))[0, 2] == pytest.approx(ref)


def _xllim_available():
    # xllim's extension can abort the interpreter on import next to other native
    # libraries: try it in a child process first.
    try:
        proc = subprocess.run([sys.executable, "-c", "import xllim"], capture_output=True,
                              timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return proc.returncode == 0


@pytest.mark.skipif(not _xllim_available(), reason="xllim is not installed")
def test_hapke_against_xllim():
    code = r"""
import numpy as np, json, sys
from gllim_sk.physics import HapkeModel
import xllim
rng = np.random.default_rng(5)
D = 10
inc, eme, az = rng.uniform(0, 70, D), rng.uniform(0, 70, D), rng.uniform(0, 180, D)
geo = np.column_stack([inc, eme, az])
worst = 0.0
for b0, h in [(0.0, 0.0), (0.7, 0.05)]:
    # xllim's "2002" variant is the 1981/1993 H-function; its c is our (1 + c) / 2.
    xm = xllim.HapkeModel(geo.copy(), "2002", "four", 30.0, b0, h)
    ours = HapkeModel(inc, eme, azimuth=az, variant="1993", opposition=b0 > 0)
    for _ in range(20):
        u = rng.uniform(0.01, 0.99, 4)
        phys = xm.toPhysic(u[:, None]).ravel()
        ref = xm.F(u[:, None]).ravel()
        p = [phys[0], phys[1], phys[2], 2 * phys[3] - 1] + ([b0, h] if b0 > 0 else [])
        got = ours(np.array([p]))[0]
        worst = max(worst, float(np.max(np.abs(got / ref - 1))))
print(json.dumps(worst))
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert float(proc.stdout.strip().splitlines()[-1]) < 1e-9


@pytest.mark.skipif(not _xllim_available(), reason="xllim is not installed")
def test_shkuratov_against_xllim():
    """xllim's ShkuratovModel ("5p": A_N, mu1, nu, m, mu2; "3p": A_N, mu1, nu with m = 0)
    on random parameters and geometries, with unit scaling and zero offset.

    Conventions found: xllim returns A(alpha) D / cos(i) (a reflectance factor), and
    its roughness term cos(beta)^(nu alpha / (pi - alpha)) differs from Shkuratov et al.
    (2011, eq. 5), which ours follows: the comparison holds nu = 0, where the phase
    function, the photometric longitude and the rest of the disk function all enter.
    """
    code = r"""
import numpy as np, json
from gllim_sk.physics import ShkuratovModel
import xllim
rng = np.random.default_rng(7)
D = 10
inc, eme, az = rng.uniform(0, 70, D), rng.uniform(0, 70, D), rng.uniform(0, 180, D)
geo = np.column_stack([inc, eme, az])
unit = {"A_N": (0, 1), "mu1": (0, 3), "m": (0, 10), "mu2": (0, 3), "nu": (0, 2)}
ours = ShkuratovModel(inc, eme, azimuth=az, bounds=unit)
x5 = xllim.ShkuratovModel(geo.copy(), "5p", np.ones(5), np.zeros(5))
x3 = xllim.ShkuratovModel(geo.copy(), "3p", np.ones(3), np.zeros(3))
cos_i = np.cos(np.radians(inc))
worst = 0.0
for _ in range(40):
    a_n, mu1 = rng.uniform(0.05, 1), rng.uniform(0, 3)
    m, mu2 = rng.uniform(0, 10), rng.uniform(0, 3)
    ref5 = x5.F(np.array([[a_n], [mu1], [0.0], [m], [mu2]])).ravel()
    ref3 = x3.F(np.array([[a_n], [mu1], [0.0]])).ravel()
    got5 = ours(np.array([[a_n, mu1, m, mu2, 0.0]]))[0] / cos_i
    got3 = ours(np.array([[a_n, mu1, 0.0, mu2, 0.0]]))[0] / cos_i
    worst = max(worst, float(np.max(np.abs(got5 / ref5 - 1))),
                float(np.max(np.abs(got3 / ref3 - 1))))
print(json.dumps(worst))
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert float(proc.stdout.strip().splitlines()[-1]) < 1e-9


@pytest.mark.parametrize("method", ["sobol", "lhs", "halton", "random"])
def test_designs_fill_the_box(method):
    bounds = np.array([[0, 1], [10, 30], [-1, 1]])
    Y = sample_design(bounds, 512, method, random_state=0)
    assert Y.shape == (512, 3)
    assert np.all(Y >= bounds[:, 0]) and np.all(Y <= bounds[:, 1])
    # Each margin is close to uniform: Kolmogorov-Smirnov distance small.
    u = (Y - bounds[:, 0]) / (bounds[:, 1] - bounds[:, 0])
    for col in u.T:
        ks = np.max(np.abs(np.sort(col) - (np.arange(1, 513) - 0.5) / 512))
        assert ks < (0.01 if method != "random" else 0.08)
    assert np.array_equal(Y, sample_design(bounds, 512, method, random_state=0))


def test_simulate_noise_and_dask():
    model = FunctionModel(lambda y: np.hstack([y, 2 * y]), [[0, 1]], 2)
    Y, X = simulate(model, 4000, noise_std=0.1, random_state=0)
    resid = X - model(Y)
    assert np.std(resid) == pytest.approx(0.1, rel=0.05)
    Y, X = simulate(model, 4000, noise_std=0.05, relative_noise=True, random_state=0)
    rel = (X - model(Y)) / model(Y)
    assert np.std(rel[Y[:, 0] > 0.1]) == pytest.approx(0.05, rel=0.05)
    da = pytest.importorskip("dask.array")
    Yd, Xd = simulate(model, 2500, noise_std=0.1, chunks=1000, random_state=0)
    assert isinstance(Xd, da.Array) and Xd.chunks[0] == (1000, 1000, 500)
    Yc, Xc = Yd.compute(), Xd.compute()
    assert np.std(Xc - model(Yc)) == pytest.approx(0.1, rel=0.1)
    # Same seed, same lazy simulation.
    assert np.array_equal(Xc, simulate(model, 2500, noise_std=0.1, chunks=1000,
                                       random_state=0)[1].compute())


def test_bounded_transformer_round_trip_and_bounds():
    bounds = np.array([[0, 1], [0, 30]])
    t = BoundedTransformer(bounds=bounds).fit(np.zeros((1, 2)))
    rng = np.random.default_rng(0)
    Y = sample_design(bounds, 100, random_state=0)
    assert np.allclose(t.inverse_transform(t.transform(Y)), Y, atol=1e-9)
    wild = t.inverse_transform(rng.normal(scale=50, size=(200, 2)))
    assert np.all(wild >= bounds[:, 0]) and np.all(wild <= bounds[:, 1])
    u = BoundedTransformer(bounds=bounds, space="unit").fit(Y)
    assert np.allclose(u.transform(Y), Y / [1, 30])
    # A regressor through the transformer predicts inside the bounds even far outside
    # the training range.
    X = Y @ rng.normal(size=(2, 3))
    reg = TransformedTargetRegressor(LinearRegression(), transformer=BoundedTransformer(bounds))
    reg.fit(X, Y)
    pred = reg.predict(100 * X)
    assert np.all(pred >= bounds[:, 0]) and np.all(pred <= bounds[:, 1])
    with pytest.raises(ValueError, match=r"bounds must have shape"):
        BoundedTransformer(bounds=[[0, 1]]).fit(Y)


def test_bounded_transformer_check_estimator():
    check_estimator(BoundedTransformer())
