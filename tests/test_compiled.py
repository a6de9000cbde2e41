"""The compiled kernels (numba) against numpy's code and brute-force conditioning, and
when they run."""

import sys
import warnings

import numpy as np
import pytest
from numpy.testing import assert_allclose
from threadpoolctl import threadpool_limits

import gllim_sk
from gllim_sk import GLLiMRegressor, _compiled, _forward, _mixtures, posterior
from gllim_sk.inversion import invert


@pytest.fixture
def fresh_kernels(monkeypatch):
    """``_compiled`` as in a new process (its kernels not yet looked up), at the
    users' thresholds."""
    monkeypatch.setattr(_compiled, "_module", [])
    monkeypatch.setattr(_compiled, "MIN_WORK", dict(_compiled.MIN_WORK))
    monkeypatch.delenv("GLLIM_SK_NUMBA", raising=False)


@pytest.fixture(scope="module")
def large_problem(gllim_ref):
    """A model with latent factors and 20,000 noisy observations: 200,000 rows times
    components, enough for every kernel at the users' thresholds, in two threads too."""
    ref = gllim_ref
    rng = np.random.default_rng(5)
    p = ref.random_params(rng, 10, 6, 2, n_latent=1)
    X, y, _ = ref.sample(p, 20_000, rng)
    model = GLLiMRegressor(10, n_latent=1, max_iter=200, random_state=0).fit(X[:2000], y[:2000])
    var = rng.uniform(0.01, 0.3, size=X.shape)
    var[7] = 1e150  # |V| leaves the range of floats: that row by the numpy code
    return model, X, y, var


def _invert_all(model, X, y, var, n_threads):
    with threadpool_limits(n_threads):
        return invert(model, X, feature_noise_var=var, n_modes=2, y_true=y)


@pytest.mark.parametrize("n_threads", [1, 2])
def test_compiled_inversion_is_numpys_and_dense_conditioning(large_problem, gllim_ref,
                                                             fresh_kernels, monkeypatch,
                                                             n_threads):
    pytest.importorskip("numba")
    model, X, y, var = large_problem
    ran = set()
    lookup = _compiled.kernel

    def recording_lookup(name, work):
        found = lookup(name, work)
        if found is not None:
            ran.add(name)
        return found

    monkeypatch.setattr(_compiled, "kernel", recording_lookup)
    for module in (_forward, _mixtures, posterior):
        monkeypatch.setattr(module, "compiled_kernel", recording_lookup)
    compiled = _invert_all(model, X, y, var, n_threads)
    assert ran == set(_compiled.MIN_WORK)  # every kernel ran
    _compiled.MIN_WORK.update(dict.fromkeys(_compiled.MIN_WORK, np.inf))
    plain = _invert_all(model, X, y, var, n_threads)
    for name in ("weights", "means", "covariances", "mean", "covariance", "std",
                 "mode_weights", "mode_means", "mode_covariances", "pit"):
        assert_allclose(getattr(compiled, name), getattr(plain, name), rtol=1e-9,
                        atol=1e-11, err_msg=name)
    assert np.array_equal(compiled.n_modes, plain.n_modes)
    dense = gllim_ref.dense_params(model)
    for i in (0, 7, 9_999, 19_999):
        ref = gllim_ref.condition_on_x(dict(dense, Sigma=dense["Sigma"] + np.diag(var[i])),
                                       X[i : i + 1])
        assert_allclose(compiled.weights[i], ref.weights[0], atol=1e-9)
        assert_allclose(compiled.means[i], ref.means[0], rtol=1e-8, atol=1e-9)
        assert_allclose(compiled.covariances[i], ref.covs, rtol=1e-8, atol=1e-12)
        assert_allclose(compiled.mean[i], ref.mean[0], rtol=1e-8, atol=1e-9)
        assert_allclose(compiled.covariance[i], ref.cov[0], rtol=1e-7, atol=1e-10)


def test_kernels_release_the_gil():
    kernels = pytest.importorskip("gllim_sk._numba_kernels")
    for name in _compiled.MIN_WORK:
        assert getattr(kernels, name).targetoptions["nogil"]


def test_small_calls_and_the_environment_keep_numpys_code(fresh_kernels, monkeypatch):
    for name, work in _compiled.MIN_WORK.items():
        assert _compiled.kernel(name, work - 1) is None
    monkeypatch.setenv("GLLIM_SK_NUMBA", "0")
    assert all(_compiled.kernel(name, 10**12) is None for name in _compiled.MIN_WORK)


def test_a_numba_that_fails_to_import_warns_and_numpy_runs(fresh_kernels, monkeypatch,
                                                           gllim_ref):
    pytest.importorskip("numba")
    # A module set to None in sys.modules fails to import, as a numba built for another
    # numpy does.
    monkeypatch.setitem(sys.modules, "gllim_sk._numba_kernels", None)
    monkeypatch.delattr(gllim_sk, "_numba_kernels", raising=False)
    rng = np.random.default_rng(0)
    p = gllim_ref.random_params(rng, 2, 3, 1)
    X, y, _ = gllim_ref.sample(p, 300, rng)
    model = GLLiMRegressor(2, random_state=0).fit(X, y)
    _compiled.MIN_WORK.update(dict.fromkeys(_compiled.MIN_WORK, 0))
    with pytest.warns(RuntimeWarning, match="numba could not be imported"):
        res = invert(model, X[:50], feature_noise_var=0.1 + X[:50] ** 2)
    assert _compiled.kernel("noisy_diagonal_rows", 10**12) is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once only
        again = invert(model, X[:50], feature_noise_var=0.1 + X[:50] ** 2)
    assert_allclose(again.mean, res.mean, rtol=1e-13)
