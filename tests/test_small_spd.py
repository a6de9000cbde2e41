"""The batched small-matrix Cholesky kernel against numpy's LAPACK calls."""

import numpy as np
import pytest
from numpy.testing import assert_allclose

from gllim_sk._small_spd import _BLOCK, MAX_DIM, spd_logdet


@pytest.mark.parametrize("p", [1, 2, 3, 4, 6, MAX_DIM, MAX_DIM + 1])
def test_logdet_and_inverse_match_lapack(p):
    rng = np.random.default_rng(p)
    # More matrices than one block, in a (3, m) batch, some badly conditioned.
    B = rng.normal(size=(3, _BLOCK // 2 + 7, p, p))
    M = B @ np.swapaxes(B, -1, -2) + np.logspace(-6, 1, B.shape[1])[None, :, None, None] \
        * np.eye(p)
    before = M.copy()
    logdet, inv = spd_logdet(M, inverse=True)
    assert logdet.shape == M.shape[:2] and inv.shape == M.shape
    assert_allclose(logdet, np.linalg.slogdet(M)[1], rtol=1e-10, atol=1e-9)
    # Residual of the inverse, relative to the conditioning of each matrix.
    eye = inv @ M
    cond = np.linalg.cond(M)
    err = np.abs(eye - np.eye(p)).max(axis=(-2, -1))
    assert np.all(err <= 1e-13 * cond + 1e-13)
    assert_allclose(inv, np.swapaxes(inv, -1, -2), rtol=0, atol=0)
    assert_allclose(spd_logdet(M), logdet, rtol=1e-14, atol=1e-14)
    assert_allclose(M, before)  # not modified


@pytest.mark.parametrize("p", [3, MAX_DIM + 2])
def test_not_positive_definite_raises(p):
    M = np.broadcast_to(np.eye(p), (5, p, p)).copy()
    M[2, 1, 1] = -1.0
    with pytest.raises(np.linalg.LinAlgError):
        spd_logdet(M)
    M[2, 1, 1] = np.nan
    with pytest.raises(np.linalg.LinAlgError):
        spd_logdet(M, inverse=True)
