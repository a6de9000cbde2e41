"""Shared test helpers: dense, brute-force reference computations for GLLiM.

Everything here is written from the model's definition with dense matrices and
scipy, independently of :mod:`gllim_sk`'s internals, so that tests can compare
the estimator against it. The ``gllim_ref`` fixture hands the functions to the
tests.

Notation: ``X`` (n, D) features, ``y`` (n, L) targets, ``K`` components and
``Lw`` latent dimensions. A parameter set is a dict with dense arrays
``pi`` (K,), ``c`` (K, L), ``Gamma`` (K, L, L), ``A`` (K, D, L), ``Aw`` (K, D, Lw),
``b`` (K, D) and ``Sigma`` (K, D, D).
"""

import os

# scikit-learn's Array API dispatch (tests/test_array_api.py) needs scipy's own Array API
# support, switched on before scipy is first imported.
os.environ.setdefault("SCIPY_ARRAY_API", "1")

import contextlib  # noqa: E402
import copy  # noqa: E402
from types import SimpleNamespace  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from scipy.special import logsumexp  # noqa: E402
from scipy.stats import multivariate_normal  # noqa: E402


def expand_covariance(cov, kind, n_components, dim):
    """Dense (K, dim, dim) matrices from a covariance stored as ``kind``.

    Also checks the documented storage shape of each kind.
    """
    cov = np.asarray(cov, dtype=float)
    eye = np.eye(dim)
    expected_shapes = {
        "full": (n_components, dim, dim),
        "diag": (n_components, dim),
        "spherical": (n_components,),
        "tied": (dim, dim),
        "tied_diag": (dim,),
        "tied_spherical": (),
    }
    assert cov.shape == expected_shapes[kind], (kind, cov.shape)
    if kind == "full":
        return cov.copy()
    if kind == "diag":
        return cov[:, :, None] * eye
    if kind == "spherical":
        return cov[:, None, None] * eye
    if kind == "tied":
        return np.repeat(cov[None], n_components, axis=0)
    if kind == "tied_diag":
        return np.repeat(np.diag(cov)[None], n_components, axis=0)
    return np.repeat((float(cov) * eye)[None], n_components, axis=0)


def dense_params(model):
    """The fitted parameters of a GLLiMRegressor as a dense parameter dict."""
    K, D, L = model.inverse_coef_.shape
    return {
        "pi": np.asarray(model.weights_, dtype=float),
        "c": np.asarray(model.target_means_, dtype=float),
        "Gamma": expand_covariance(model.target_covariances_, model.target_covariance_type, K, L),
        "A": np.asarray(model.inverse_coef_, dtype=float),
        "Aw": np.asarray(model.latent_coef_, dtype=float).reshape(K, D, -1),
        "b": np.asarray(model.inverse_intercept_, dtype=float),
        "Sigma": expand_covariance(model.noise_covariances_, model.covariance_type, K, D),
    }


def joint_gaussians(p):
    """Means (K, L+D) and covariances (K, L+D, L+D) of the joint of (y, x) per component.

    The latent variables are integrated out: cov(x | y, k) = Sigma_k + Aw_k Aw_k^T.
    """
    A, G = p["A"], p["Gamma"]
    mean_x = np.einsum("kdl,kl->kd", A, p["c"]) + p["b"]
    cov_xy = A @ G
    cov_xx = p["Sigma"] + p["Aw"] @ p["Aw"].transpose(0, 2, 1) + cov_xy @ A.transpose(0, 2, 1)
    means = np.concatenate([p["c"], mean_x], axis=1)
    top = np.concatenate([G, cov_xy.transpose(0, 2, 1)], axis=2)
    bottom = np.concatenate([cov_xy, cov_xx], axis=2)
    return means, np.concatenate([top, bottom], axis=1)


def joint_log_terms(p, X, y):
    """(n, K) array of log pi_k + log N([y; x]; joint mean_k, joint cov_k)."""
    means, covs = joint_gaussians(p)
    Z = np.hstack([y, X])
    return np.column_stack(
        [
            np.log(p["pi"][k]) + multivariate_normal.logpdf(Z, means[k], covs[k])
            for k in range(len(p["pi"]))
        ]
    )


def joint_log_density(p, X, y):
    """(n,) log p(x, y) by brute force on the dense joint."""
    return logsumexp(joint_log_terms(p, X, y), axis=1)


def responsibilities(p, X, y):
    """(n, K) exact posterior p(Z=k | x, y)."""
    terms = joint_log_terms(p, X, y)
    return np.exp(terms - logsumexp(terms, axis=1, keepdims=True))


def target_posterior(p, y):
    """(n, K) p(Z=k | y), prior-only responsibilities."""
    terms = np.column_stack(
        [
            np.log(p["pi"][k]) + multivariate_normal.logpdf(y, p["c"][k], p["Gamma"][k])
            for k in range(len(p["pi"]))
        ]
    )
    return np.exp(terms - logsumexp(terms, axis=1, keepdims=True))


def condition_on_x(p, X):
    """Gaussian conditioning of the dense joint on x.

    Returns a namespace with ``weights`` (n, K) = p(Z=k | x), ``means`` (n, K, L),
    ``covs`` (K, L, L), ``coef`` (K, L, D), ``intercept`` (K, L), ``log_px`` (n,),
    and the predictive ``mean`` (n, L) and ``cov`` (n, L, L) of the mixture.
    """
    means, covs = joint_gaussians(p)
    K, L = p["c"].shape
    coef, intercept, cond_covs, log_terms = [], [], [], []
    for k in range(K):
        mu_y, mu_x = means[k, :L], means[k, L:]
        c_yy, c_yx, c_xx = covs[k, :L, :L], covs[k, :L, L:], covs[k, L:, L:]
        gain = np.linalg.solve(c_xx, c_yx.T).T
        coef.append(gain)
        intercept.append(mu_y - gain @ mu_x)
        cond_covs.append(c_yy - gain @ c_yx.T)
        log_terms.append(np.log(p["pi"][k]) + multivariate_normal.logpdf(X, mu_x, c_xx))
    coef, intercept, cond_covs = np.array(coef), np.array(intercept), np.array(cond_covs)
    log_terms = np.column_stack(log_terms)
    log_px = logsumexp(log_terms, axis=1)
    weights = np.exp(log_terms - log_px[:, None])
    comp_means = np.einsum("kld,nd->nkl", coef, X) + intercept
    mean = np.einsum("nk,nkl->nl", weights, comp_means)
    second = np.einsum("nk,klm->nlm", weights, cond_covs) + np.einsum(
        "nk,nkl,nkm->nlm", weights, comp_means, comp_means
    )
    cov = second - np.einsum("nl,nm->nlm", mean, mean)
    return SimpleNamespace(
        weights=weights, means=comp_means, covs=cond_covs, coef=coef, intercept=intercept,
        log_px=log_px, mean=mean, cov=cov,
    )


def reduce_covariance(dense, kind, weights, reg_covar):
    """Constrain per-component dense M-step covariances to ``kind`` and add the floor."""
    K, dim, _ = dense.shape
    if kind.startswith("tied"):
        dense = np.repeat(np.einsum("k,kij->ij", weights, dense)[None], K, axis=0)
        kind = {"tied": "full", "tied_diag": "diag", "tied_spherical": "spherical"}[kind]
    if kind == "diag":
        dense = np.einsum("kii->ki", dense)[:, :, None] * np.eye(dim)
    elif kind == "spherical":
        dense = (np.einsum("kii->k", dense) / dim)[:, None, None] * np.eye(dim)
    return dense + reg_covar * np.eye(dim)


def relative_floors(X, y, reg_covar):
    """The floors GLLiMRegressor adds for ``reg_covar`` (documented as relative): times
    the mean variance of the features for Sigma, of the targets for Gamma."""
    return reg_covar * np.var(X, axis=0).mean(), reg_covar * np.var(y, axis=0).mean()


def m_step(X, y, resp, covariance_type, target_covariance_type, reg_covar, previous=None,
           target_reg_covar=None):
    """Exact EM M-step from responsibilities, written from the model's definition.

    ``reg_covar`` is added to Sigma, ``target_reg_covar`` (default: ``reg_covar``) to Gamma.

    With latent variables (``previous["Aw"]`` of width Lw > 0), w | x, y, k is
    Gaussian with covariance S_k = (I + Aw^T Sigma^-1 Aw)^-1 and mean
    S_k Aw^T Sigma^-1 (x - A y - b) under the ``previous`` parameters; [A, Aw, b]
    is the weighted least-squares fit of x on the augmented regressors
    [y, E w, 1] with S_k added to the second moment of the w block, and
    Sigma_k gains Aw S_k Aw^T.
    """
    n, D = X.shape
    L = y.shape[1]
    K = resp.shape[1]
    n_latent = 0 if previous is None else previous["Aw"].shape[2]
    nk = resp.sum(axis=0)
    pi = nk / n
    c, Gamma = np.zeros((K, L)), np.zeros((K, L, L))
    A, Aw, b = np.zeros((K, D, L)), np.zeros((K, D, n_latent)), np.zeros((K, D))
    Sigma = np.zeros((K, D, D))
    for k in range(K):
        w = resp[:, k] / nk[k]
        c[k] = w @ y
        yc = y - c[k]
        Gamma[k] = (w * yc.T) @ yc
        extra = np.zeros((L + n_latent + 1, L + n_latent + 1))
        if n_latent:
            noise_inv = np.linalg.inv(previous["Sigma"][k])
            Aw0 = previous["Aw"][k]
            S_w = np.linalg.inv(np.eye(n_latent) + Aw0.T @ noise_inv @ Aw0)
            resid = X - y @ previous["A"][k].T - previous["b"][k]
            mean_w = resid @ (S_w @ Aw0.T @ noise_inv).T
            regressors = np.hstack([y, mean_w, np.ones((n, 1))])
            extra[L : L + n_latent, L : L + n_latent] = S_w
        else:
            regressors = np.hstack([y, np.ones((n, 1))])
        second = (w * regressors.T) @ regressors + extra
        cross = (w * X.T) @ regressors
        coef = np.linalg.solve(second, cross.T).T
        A[k], Aw[k], b[k] = coef[:, :L], coef[:, L : L + n_latent], coef[:, -1]
        R = X - regressors @ coef.T
        Sigma[k] = (w * R.T) @ R
        if n_latent:
            Sigma[k] += Aw[k] @ S_w @ Aw[k].T
    return {
        "pi": pi, "c": c, "A": A, "Aw": Aw, "b": b,
        "Gamma": reduce_covariance(Gamma, target_covariance_type, pi,
                                   reg_covar if target_reg_covar is None else target_reg_covar),
        "Sigma": reduce_covariance(Sigma, covariance_type, pi, reg_covar),
    }


def random_params(rng, n_components, n_features, n_targets, n_latent=0, separation=3.0,
                  noise=(0.05, 0.3), latent_scale=1.0):
    """Random, reasonably well-separated true GLLiM parameters (diagonal Sigma)."""
    K, D, L = n_components, n_features, n_targets
    Q = rng.normal(scale=0.4, size=(K, L, L))
    return {
        "pi": rng.dirichlet(np.full(K, 10.0)),
        "c": rng.normal(scale=separation, size=(K, L)),
        "Gamma": Q @ Q.transpose(0, 2, 1) + 0.5 * np.eye(L),
        "A": rng.normal(size=(K, D, L)),
        "Aw": rng.normal(scale=latent_scale, size=(K, D, n_latent)),
        "b": rng.normal(scale=2.0, size=(K, D)),
        "Sigma": rng.uniform(*noise, size=(K, D))[:, :, None] * np.eye(D),
    }


def draw(seed=0, n_samples=300, n_features=8, n_targets=2, n_components=3, n_latent=0):
    """(X, y) drawn from random true parameters (:func:`random_params`) with ``seed``."""
    rng = np.random.default_rng(seed)
    p = random_params(rng, n_components, n_features, n_targets, n_latent=n_latent)
    X, y, _ = sample(p, n_samples, rng)
    return X, y


def sample(p, n_samples, rng):
    """Draw (X, y, z) from the generative model: y ~ N(c_z, Gamma_z), w ~ N(0, I),
    x = A_z y + Aw_z w + b_z + e, e ~ N(0, Sigma_z)."""
    K, D, L = p["A"].shape
    n_latent = p["Aw"].shape[2]
    z = rng.choice(K, size=n_samples, p=p["pi"])
    y = np.empty((n_samples, L))
    X = np.empty((n_samples, D))
    for k in range(K):
        idx = np.flatnonzero(z == k)
        yk = rng.multivariate_normal(p["c"][k], p["Gamma"][k], size=idx.size)
        wk = rng.normal(size=(idx.size, n_latent))
        noise = rng.multivariate_normal(np.zeros(D), p["Sigma"][k], size=idx.size)
        y[idx] = yk
        X[idx] = yk @ p["A"][k].T + wk @ p["Aw"][k].T + p["b"][k] + noise
    return X, y, z


@pytest.fixture(scope="session")
def gllim_ref():
    """The dense reference computations of this module, as a namespace."""
    return SimpleNamespace(
        expand_covariance=expand_covariance, dense_params=dense_params,
        joint_gaussians=joint_gaussians, joint_log_density=joint_log_density,
        responsibilities=responsibilities, target_posterior=target_posterior,
        condition_on_x=condition_on_x, m_step=m_step, random_params=random_params,
        sample=sample, relative_floors=relative_floors, draw=draw,
    )


@pytest.fixture(params=["serial", "chunked"])
def em_threading(request, monkeypatch):
    """Run GLLiM's EM serially, or in three chunks of samples on parallel threads.

    Which one a fit uses normally depends on its size and on the machine's cores; the
    "chunked" case forces chunks (of unequal sizes, on a thread pool) at any size, so
    that the exactness tests cover the parallel path on every machine.
    """
    if request.param == "chunked":
        from gllim_sk import _engine

        monkeypatch.setattr(_engine, "_em_parallelism", lambda n_samples, work: (3, 1))
    return request.param


def _restoring_dask_config():
    try:
        import dask.config
    except ImportError:
        yield
        return
    # Importing distributed adds its defaults to dask's configuration, and dask imports
    # it on its own (its rechunking does): imported within a test, after the snapshot,
    # the restore would drop those defaults and break every later computation.
    with contextlib.suppress(ImportError):
        import distributed  # noqa: F401
    saved = copy.deepcopy(dask.config.config)
    yield
    dask.config.config.clear()
    dask.config.config.update(saved)


@pytest.fixture(autouse=True)
def _compiled_kernels_on_every_size(monkeypatch):
    """With ``GLLIM_SK_TEST_COMPILED=1`` the compiled kernels run on calls of every size,
    so that the whole suite checks them; otherwise on large calls only, as for users."""
    if os.environ.get("GLLIM_SK_TEST_COMPILED") == "1":
        from gllim_sk import _compiled

        monkeypatch.setattr(_compiled, "MIN_WORK", dict.fromkeys(_compiled.MIN_WORK, 0))
    yield


@pytest.fixture(params=["numpy", "compiled"])
def kernels(request, monkeypatch):
    """Run a test with numpy's code and with the compiled kernels, on calls of every
    size (the compiled ones skipped where numba is not installed)."""
    from gllim_sk import _compiled

    if request.param == "compiled":
        pytest.importorskip("numba")
        monkeypatch.delenv("GLLIM_SK_NUMBA", raising=False)
        monkeypatch.setattr(_compiled, "_module", [])
        work = 0
    else:
        work = float("inf")
    monkeypatch.setattr(_compiled, "MIN_WORK", dict.fromkeys(_compiled.MIN_WORK, work))
    return request.param


@pytest.fixture(autouse=True, scope="module")
def _dask_config_restored_per_module():
    """Each test module, its module-scoped clusters' set-up and tear-down included,
    leaves dask's global configuration as it found it (see the per-test fixture)."""
    yield from _restoring_dask_config()


@pytest.fixture(autouse=True)
def _dask_config_restored():
    """Every test leaves dask's global configuration as it found it: a scheduler left set
    for a closed client (distributed's ``as_current`` and default clients set it
    globally) would break the next test's lazy computations."""
    yield from _restoring_dask_config()


def _local_cluster_client(processes):
    distributed = pytest.importorskip("distributed")
    # Two single-threaded workers; silence_logs keeps a closing cluster's chatter out.
    cluster = distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=processes, dashboard_address=":0",
        silence_logs=40,
    )
    # Not the default client: a default client sets dask's global "scheduler" option and
    # restores on close the value it found, so two module clusters closed in the order
    # they were opened would leave the closed second one configured for later tests. The
    # fixtures below make the client current only for the duration of each test.
    client = distributed.Client(cluster, set_as_default=False)
    try:
        yield client
    finally:
        client.close()
        cluster.close()


@pytest.fixture(scope="module")
def _dask_threads_cluster():
    yield from _local_cluster_client(processes=False)


@pytest.fixture(scope="module")
def _dask_processes_cluster():
    yield from _local_cluster_client(processes=True)


@pytest.fixture
def dask_client(_dask_threads_cluster):
    """A distributed Client on a real LocalCluster of two threaded workers, the current
    client during the test (closed after the module)."""
    with _dask_threads_cluster.as_current():
        yield _dask_threads_cluster


@pytest.fixture
def dask_process_client(_dask_processes_cluster):
    """A distributed Client on a real LocalCluster of two worker processes, the current
    client during the test (closed after the module)."""
    with _dask_processes_cluster.as_current():
        yield _dask_processes_cluster


@pytest.fixture(params=["fused", "separate"])
def cross_layout(request, monkeypatch):
    """Run a test with the products y1_j x_d among the training blocks' columns, and
    without them (the layout that wide features get), whatever the data's width."""
    from gllim_sk import _gllim_math

    columns = 10**9 if request.param == "fused" else 0
    monkeypatch.setattr(_gllim_math, "FUSED_CROSS_MAX_COLUMNS", columns)
    return request.param
