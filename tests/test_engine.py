"""Tests of the EM engine's building blocks (``gllim_sk._engine``, ``gllim_sk._gllim_math``).

What other code builds on: statistics of blocks that add up and scale, an M-step that needs
nothing but statistics, the frozen E-step, per-(k, n) sample weights in the statistics and
the Mahalanobis distances a robust variant needs. References are the brute-force dense
computations of ``conftest.py``.
"""

import numpy as np
import pytest
from numpy.testing import assert_allclose

from gllim_sk import GLLiMRegressor, _engine
from gllim_sk import _gllim_math as gm

COVARIANCE_TYPES = ("full", "diag", "spherical", "tied", "tied_diag", "tied_spherical")


def fitted(ref, covariance_type, n_latent=0, seed=0, n_samples=150):
    rng = np.random.default_rng(seed)
    true = ref.random_params(rng, 3, 6, 2, n_latent=n_latent)
    X, y, _ = ref.sample(true, n_samples, rng)
    model = GLLiMRegressor(3, covariance_type=covariance_type, n_latent=n_latent, max_iter=5,
                           tol=0, random_state=seed).fit(X, y)
    return model, X, y


def centred_block(model, X, y):
    gllim = model._em_model()
    Xc = X - model.feature_mean_
    yc = y - model.target_mean_
    return gllim, gllim.prepare_block(Xc, yc)


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
@pytest.mark.parametrize("n_latent", [0, 2])
@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_block_statistics_add_up_and_scale(gllim_ref, cross_layout, covariance_type, n_latent):
    model, X, y = fitted(gllim_ref, covariance_type, n_latent)
    gllim, whole = centred_block(model, X, y)
    plan = gllim.plan(model._params, whole.n_sq)
    _, total = gllim.e_step_with_stats(whole, plan)
    parts = [gllim.e_step_with_stats(whole.rows(a, b), plan)[1]
             for a, b in [(0, 40), (40, 41), (41, 150)]]
    summed = parts[0] + parts[1] + parts[2]
    for name, value in total._fields().items():
        if value is not None:
            assert_allclose(getattr(summed, name), value, rtol=1e-10, atol=1e-9, err_msg=name)
    # Scaling every statistic (stepwise EM blends them) leaves the M-step unchanged.
    halved = 0.5 * total
    assert halved.n_samples == 75.0
    p, q = gllim.m_step(total), gllim.m_step(halved + halved)
    for name in ("weights", "c", "gamma", "A", "W", "b", "noise"):
        assert_allclose(getattr(q, name), getattr(p, name), rtol=1e-10, atol=1e-12)
    # The E-step's log-likelihood travels with the statistics.
    assert_allclose(total.log_prob / total.n_samples, model.lower_bound_, rtol=1e-12)


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
@pytest.mark.parametrize("n_latent", [0, 2])
@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_block_e_step_and_statistics_match_brute_force(gllim_ref, cross_layout,
                                                       covariance_type, n_latent):
    # Whichever way the block holds its columns, the E-step is the posterior of the dense
    # joint Gaussians and the statistics are the responsibility-weighted sums over samples.
    model, X, y = fitted(gllim_ref, covariance_type, n_latent, n_samples=90)
    gllim, block = centred_block(model, X, y)
    assert (block.n_cross > 0) == (cross_layout == "fused")
    estep, stats = gllim.e_step_with_stats(block, gllim.plan(model._params, block.n_sq))
    p = gllim_ref.dense_params(model)
    assert_allclose(estep.log_prob, gllim_ref.joint_log_density(p, X, y), rtol=1e-9)
    resp = gllim_ref.responsibilities(p, X, y).T
    assert_allclose(estep.resp, resp, rtol=1e-7, atol=1e-12)
    Xc, yc = block.Xc, block.y
    y1 = np.column_stack([yc, np.ones(len(yc))])
    assert_allclose(stats.resp_mass, resp.sum(1), rtol=1e-7)
    assert_allclose(stats.cross[: y1.shape[1]], np.einsum("kn,nj,nd->jkd", resp, y1, Xc),
                    rtol=1e-7, atol=1e-9)
    pairs = np.einsum("kn,ni,nj->kij", resp, y1, y1)
    rows, cols = np.triu_indices(y1.shape[1])
    assert_allclose(stats.moments[:, block.n_sq:], pairs[:, rows, cols], rtol=1e-7, atol=1e-9)
    if n_latent:
        w = estep.latent_mean  # (Lw, K, n)
        assert_allclose(stats.cross[y1.shape[1]:], np.einsum("kn,lkn,nd->lkd", resp, w, Xc),
                        rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_m_step_from_statistics_matches_reference(gllim_ref, covariance_type):
    # The M-step sees only statistics; from those of given responsibilities it is the
    # reference M-step of the model's definition.
    rng = np.random.default_rng(1)
    true = gllim_ref.random_params(rng, 3, 5, 2)
    X, y, _ = gllim_ref.sample(true, 120, rng)
    resp = rng.dirichlet(np.ones(3), size=120)
    gllim = gm.GLLiMModel(covariance_type, "full", 1e-4)
    Xc, yc = X - X.mean(0), y - y.mean(0)
    executor = _engine.SerialExecutor()
    blocks = executor.blocks(gllim, Xc, yc)
    esteps = _engine.responsibilities_as_esteps(executor, blocks, np.ascontiguousarray(resp.T))
    stats = _engine.stats_of(gllim, executor, blocks, esteps, np.zeros((3, 0, 0)))
    params = gllim.m_step(stats)
    expected = gllim_ref.m_step(X, y, resp, covariance_type, "full", 1e-4)
    assert_allclose(params.weights, expected["pi"], rtol=1e-10)
    assert_allclose(params.c + y.mean(0), expected["c"], rtol=1e-8, atol=1e-10)
    assert_allclose(params.A, expected["A"], rtol=1e-7, atol=1e-9)
    public = gllim.noise.public(params.noise)
    assert_allclose(gllim_ref.expand_covariance(public, covariance_type, 3, 5),
                    expected["Sigma"], rtol=1e-7, atol=1e-10)


def test_frozen_e_step_is_one_m_step(gllim_ref):
    rng = np.random.default_rng(2)
    true = gllim_ref.random_params(rng, 3, 5, 2)
    X, y, _ = gllim_ref.sample(true, 100, rng)
    resp = rng.dirichlet(np.ones(3), size=100)
    model = GLLiMRegressor(3, covariance_type="tied_spherical", reg_covar=1e-4, max_iter=50)
    model._fit_frozen_estep(X, y, resp)
    noise_reg, target_reg = gllim_ref.relative_floors(X, y, 1e-4)
    expected = gllim_ref.m_step(X, y, resp, "tied_spherical", "full", noise_reg,
                                target_reg_covar=target_reg)
    got = gllim_ref.dense_params(model)
    for name in ("pi", "c", "Gamma", "A", "b", "Sigma"):
        assert_allclose(got[name], expected[name], rtol=1e-7, atol=1e-10, err_msg=name)
    assert model.n_iter_ == 1
    assert_allclose(model.lower_bound_, gllim_ref.joint_log_density(expected, X, y).mean(),
                    rtol=1e-10)
    with pytest.raises(ValueError, match="resp has shape"):
        model._fit_frozen_estep(X, y, resp[:, :2])


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
@pytest.mark.parametrize("n_latent", [0, 2])
@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_mahalanobis_distances_match_dense(gllim_ref, cross_layout, covariance_type, n_latent):
    model, X, y = fitted(gllim_ref, covariance_type, n_latent, n_samples=80)
    gllim, block = centred_block(model, X, y)
    dist_y, dist_x = gllim.mahalanobis(block, model._params)
    p = gllim_ref.dense_params(model)
    for k in range(3):
        dy = y - p["c"][k]
        expected_y = np.einsum("ni,ij,nj->n", dy, np.linalg.inv(p["Gamma"][k]), dy)
        dx = X - y @ p["A"][k].T - p["b"][k]
        cov_x = p["Sigma"][k] + p["Aw"][k] @ p["Aw"][k].T
        expected_x = np.einsum("ni,ij,nj->n", dx, np.linalg.inv(cov_x), dx)
        assert_allclose(dist_y[k], expected_y, rtol=1e-7, atol=1e-8)
        assert_allclose(dist_x[k], expected_x, rtol=1e-7, atol=1e-7)


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_sample_weights_multiply_the_responsibilities(gllim_ref, cross_layout):
    # A variant's per-(k, n) weights u enter every sum as r u, except resp_mass and the
    # posterior covariance of w (u scales the posterior means only).
    model, X, y = fitted(gllim_ref, "diag", n_latent=1)
    gllim, block = centred_block(model, X, y)
    plan = gllim.plan(model._params, block.n_sq)
    estep = gllim.e_step(block, plan)
    u = np.random.default_rng(0).uniform(0.5, 2.0, size=estep.resp.shape)
    weighted = gm.BlockEStep(estep.log_prob, estep.resp, estep.latent_mean, sample_weight=u)
    got = gllim.block_stats(block, weighted, plan.latent_cov)
    ru = estep.resp * u
    assert_allclose(got.resp_mass, estep.resp.sum(1))
    assert_allclose(got.mass, ru.sum(1))
    assert_allclose(got.cross[0], ru @ (block.y[:, :1] * block.Xc), rtol=1e-10)
    expected_second = np.einsum("kn,kn,kn->k", ru, estep.latent_mean[0], estep.latent_mean[0])
    assert_allclose(got.latent_second[:, 0, 0],
                    expected_second + estep.resp.sum(1) * plan.latent_cov[:, 0, 0], rtol=1e-10)


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_noise_structure_precision_and_public_attribute(gllim_ref, covariance_type):
    model, _, _ = fitted(gllim_ref, covariance_type)
    noise = gm.NOISE_STRUCTURES[covariance_type]
    K, D, _ = model.inverse_coef_.shape
    dense = gllim_ref.expand_covariance(model.noise_covariances_, covariance_type, K, D)
    precision = np.broadcast_to(noise.precision(model._params.noise),
                                (K, D) + (D,) * noise.dense_quadratic)
    if not noise.dense_quadratic:
        precision = precision[:, :, None] * np.eye(D)
    assert_allclose(precision, np.linalg.inv(dense), rtol=1e-9)
    assert_allclose(noise.logdet(model._params.noise, K), np.linalg.slogdet(dense)[1],
                    rtol=1e-10)


def test_executors_split_and_sum():
    gllim = gm.GLLiMModel("diag", "full", 1e-6)
    rng = np.random.default_rng(0)
    Xc, y = rng.normal(size=(1000, 4)), rng.normal(size=(1000, 2))
    with _engine.ThreadedExecutor(3) as executor:
        blocks = executor.blocks(gllim, Xc, y)
        assert executor.sizes(blocks) == [333, 334, 333]
        kept, total = executor.map_reduce(lambda b: (b.n_samples, float(b.Xc.sum())), blocks)
    assert kept == [333, 334, 333]
    assert_allclose(total, Xc.sum())


def test_far_components_get_floored_responsibilities_not_subnormal_ones():
    # Two clusters so far apart that each sample's log-joint under the other component is
    # thousands below its own: exp of the gap underflows to subnormal numbers or zero,
    # and subnormal responsibilities multiplied with the data slow the products.
    rng = np.random.default_rng(0)
    y = np.concatenate([rng.normal(-20.0, 0.3, (100, 1)), rng.normal(20.0, 0.3, (100, 1))])
    X = np.hstack([3.0 * y, -y]) + 0.01 * rng.normal(size=(200, 2))
    model = GLLiMRegressor(2, max_iter=5, tol=0, random_state=0).fit(X, y)
    gllim, block = centred_block(model, X, y)
    plan = gllim.plan(model._params, block.n_sq)
    log_joint, _ = gllim.log_joint(block, plan)
    assert (log_joint.max(axis=0) - log_joint.min(axis=0)).min() > 1000.0
    resp = gllim.e_step(block, plan).resp
    assert resp.min() >= np.exp(gm.LOG_RESP_FLOOR) / 2
    assert_allclose(resp.sum(axis=0), 1.0)
    assert_allclose(resp.max(axis=0), 1.0)


def test_row_chunks_run_in_order_and_cover_every_row():
    seen = []

    def rows(a, b):
        seen.append((a, b))
        return np.arange(a, b)

    parts = _engine.map_row_chunks(rows, 1001, 3)
    assert_allclose(np.concatenate(parts), np.arange(1001))
    assert sorted(seen) == [(0, 334), (334, 667), (667, 1001)]
    assert _engine.map_row_chunks(lambda a, b: (a, b), 10, 1) == [(0, 10)]
    # At most one thread per min_rows rows, never more than BLAS may use.
    assert _engine.row_chunks(100, 1000) == 1
    assert 1 <= _engine.row_chunks(10**6, 1) <= _engine.blas_thread_count()

    def fails(a, b):
        if a:
            raise ZeroDivisionError(f"range from {a}")
        return a

    with pytest.raises(ZeroDivisionError, match="range from"):
        _engine.map_row_chunks(fails, 100, 2)
