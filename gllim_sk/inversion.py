"""Inverting a physical model with a fitted GLLiM: posteriors, modes, corrections, checks.

:func:`invert` turns a batch of observations, each with its own measurement noise, into
one :class:`InversionResult`: GLLiM's posterior mixture of every observation, its mean
and spread, its merged modes with their weights, and (with the forward model) the
importance-sampling or IMIS correction of the whole posterior or of one mode, with the
effective sample size of each observation. Given the true parameters of held-out
simulations, it also returns the probability integral transforms from which
:meth:`InversionResult.coverage` measures the calibration of the posterior intervals.

The pieces are those of :mod:`gllim_sk.posterior` (:func:`~gllim_sk.posterior.merge_mixture`,
:func:`~gllim_sk.posterior.importance_sampling`) and the estimator's observation noise
(``feature_noise_var``); dask arrays of observations give lazy results computed block by
block of rows, on the workers.
"""

import warnings
from dataclasses import dataclass, fields, replace

import numpy as np
from scipy.special import ndtr, stdtr, stdtrit
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_is_fitted

from . import _dask, _engine
from ._kernels import large_empty
from ._mixtures import (
    PredictiveMixture,
    check_noise_matrix,
    check_noise_variances,
    gaussian_or_t_log_density,
)
from .posterior import _gaussian_log_likelihood, _merge_mixture, importance_sampling

__all__ = ["InversionResult", "invert"]

# Rows per call of the importance sampler: it holds (rows, draws, L) samples.
_IS_ROWS_ELEMENTS = 4_000_000
# Elements of the component covariances (rows, K, L, L) of one block of rows.
_BLOCK_ELEMENTS = 1 << 21
# Rows whose modes are merged by one call of merge_mixture (its heaviest components
# take merge_components * L * L numbers per row).
_MERGE_ROWS = 16384
# The blocks' mixture arrays of at least this size are mapped without huge-page advice
# (see _kernels.large_empty).
_BLOCK_OUT_MIN_BYTES = 1 << 20
# numpy's exp takes its fast path above _EXP_NORMAL (results above ~1e-304, normal
# numbers); exp(x) is 0 below _EXP_ZERO (it rounds to 0 below -745.14).
_EXP_NORMAL = -700.0
_EXP_ZERO = -746.0
# Fewest rows per thread of an inversion (numpy observations, no importance sampling):
# below, the thread's start and the joined outputs cost more than the rows.
_THREAD_MIN_ROWS = 2048


@dataclass
class InversionResult:
    """The posterior of each observation of a batch, and what it says.

    All arrays have the observations along their first axis. On dask observations the
    arrays are lazy dask arrays; :meth:`compute` computes them all at once.

    Attributes
    ----------
    weights : ndarray of shape (n, K) or None
        Weights of GLLiM's posterior mixture ``p(y | x)`` (None with
        ``keep_mixture=False``, as ``means``, ``covariances``, ``dof`` and ``scales``).
    means : ndarray of shape (n, K, L) or None
        Its component means.
    covariances : ndarray of shape (n, K, L, L) or None
        Its component covariances (they include the observation's noise; ``inf`` for a
        Student-t component of at most 2 degrees of freedom).
    mean : ndarray of shape (n, L)
        Posterior mean.
    covariance : ndarray of shape (n, L, L)
        Posterior covariance.
    std : ndarray of shape (n, L)
        Posterior standard deviations.
    mode_weights : ndarray of shape (n, M)
        Weights of the merged modes, largest first.
    mode_means : ndarray of shape (n, M, L)
        Their locations.
    mode_covariances : ndarray of shape (n, M, L, L)
        Their spread (a Student-t component without covariance is merged with its
        scale matrix instead).
    n_modes : ndarray of shape (n,)
        Number of distinct modes: merged modes of weight at least ``mode_threshold``
        counted once per group lying within ``separation`` (Mahalanobis distance under
        their mean covariance) of a heavier one.
    importance : {None, "full", "mode"}
        Which posterior was corrected by importance sampling.
    is_mean, is_covariance, is_std : ndarray or None
        Importance-sampling estimates of the posterior mean, covariance and standard
        deviations (None without importance sampling).
    effective_sample_size : ndarray of shape (n,) or None
        Kish's effective sample size of each observation's weights (0 where no draw had
        positive density: such rows keep GLLiM's moments).
    pit, is_pit : ndarray of shape (n, L) or None
        With ``y_true``: the marginal posterior CDF of each parameter at its true value
        (probability integral transform), under GLLiM's mixture and under the weighted
        draws (rows of effective sample size 0 keep the proposal's PIT, as its
        moments). Calibrated posteriors give uniform values.
    names : tuple of str
        Parameter names.
    dof, scales : ndarray of shape (n, K) and (n, K, L, L), or None
        For a Student model's mixture of t components: their degrees of freedom and
        scale matrices (None for Gaussian components).
    """

    weights: np.ndarray | None
    means: np.ndarray | None
    covariances: np.ndarray | None
    mean: np.ndarray
    covariance: np.ndarray
    std: np.ndarray
    mode_weights: np.ndarray
    mode_means: np.ndarray
    mode_covariances: np.ndarray
    n_modes: np.ndarray
    importance: str | None = None
    is_mean: np.ndarray | None = None
    is_covariance: np.ndarray | None = None
    is_std: np.ndarray | None = None
    effective_sample_size: np.ndarray | None = None
    pit: np.ndarray | None = None
    is_pit: np.ndarray | None = None
    names: tuple = ()
    dof: np.ndarray | None = None
    scales: np.ndarray | None = None

    def _arrays(self):
        return {f.name: getattr(self, f.name) for f in fields(self)
                if f.name not in ("importance", "names") and getattr(self, f.name) is not None}

    def compute(self):
        """A copy with every lazy (dask) array computed, in one pass over the data."""
        arrays = self._arrays()
        lazy = {k: v for k, v in arrays.items() if _dask.is_dask_array(v)}
        if not lazy:
            return self
        import dask

        values = dask.compute(*lazy.values())
        return replace(self, **dict(zip(lazy, values, strict=True)))

    @property
    def multimodal(self):
        """Boolean (n,): whether each posterior has more than one distinct mode."""
        return self.n_modes > 1

    @property
    def share_multimodal(self):
        """Share of the observations whose posterior is multimodal."""
        return float(np.mean(np.asarray(self.n_modes) > 1))

    def coverage(self, levels=(0.5, 0.9, 0.95)):
        """Coverage of the central posterior intervals (needs ``y_true`` at inversion).

        The central interval of level ``a`` of a parameter contains its true value
        exactly when the PIT lies within ``0.5 +- a / 2``.

        Returns
        -------
        coverage : dict
            ``{"mixture": array (n_levels, L)}``, plus ``"importance"`` when importance
            sampling ran: the share of observations whose interval holds the truth.
        """
        if self.pit is None:
            raise ValueError("Coverage needs the true parameters: call invert(..., y_true=...).")
        levels = np.asarray(levels, dtype=float)
        if levels.ndim != 1 or np.any((levels <= 0) | (levels >= 1)):
            raise ValueError("levels must be a 1-D sequence of values in (0, 1).")
        out = {}
        for key, pit in (("mixture", self.pit), ("importance", self.is_pit)):
            if pit is not None:
                dev = np.abs(np.asarray(pit) - 0.5)
                out[key] = np.stack([(dev <= 0.5 * a).mean(axis=0) for a in levels])
        return out

    def interval(self, level=0.9):
        """Central interval of each parameter's marginal under GLLiM's mixture.

        Returns ``(lower, upper)``, each (n, L), found by bisection of the mixture's
        marginal CDF (to 1e-10 of the parameter's spread): normal marginals, or Student
        t ones for a mixture of t components. Needs the mixture (``keep_mixture=True``).
        """
        if not 0 < level < 1:
            raise ValueError(f"level must be in (0, 1), got {level!r}.")
        if self.weights is None:
            raise ValueError("interval needs the posterior mixture: invert with "
                             "keep_mixture=True.")
        student = self.dof is not None
        w = np.asarray(self.weights)[:, None, :, None]
        m = np.asarray(self.means)[:, None]
        spread = np.asarray(self.scales if student else self.covariances)
        s = np.sqrt(np.diagonal(spread, axis1=-2, axis2=-1))[:, None]
        dof = np.asarray(self.dof)[:, None, :, None] if student else None
        q = np.array([0.5 - level / 2, 0.5 + level / 2])[None, :, None]
        # Brackets: the t's quantiles reach far out for few degrees of freedom.
        reach = 12.0 if dof is None else np.maximum(
            12.0, -stdtrit(dof, np.minimum(q.min(), 1 - q.max()) * 1e-3))
        lo = (m - reach * s).min(axis=2)
        hi = (m + reach * s).max(axis=2)
        lo, hi = np.broadcast_to(lo, (lo.shape[0], 2, lo.shape[2])).copy(), \
            np.broadcast_to(hi, (hi.shape[0], 2, hi.shape[2])).copy()
        for _ in range(60):
            mid = 0.5 * (lo + hi)
            below = (w * _marginal_cdf((mid[:, :, None] - m) / s, dof)).sum(axis=2) < q
            lo = np.where(below, mid, lo)
            hi = np.where(below, hi, mid)
        mid = 0.5 * (lo + hi)
        return mid[:, 0], mid[:, 1]

    def summary(self):
        """A dict of batch diagnostics: share multimodal, effective sample sizes, coverage."""
        out = {"n_observations": int(np.shape(self.mean)[0]),
               "share_multimodal": self.share_multimodal}
        if self.effective_sample_size is not None:
            ess = np.asarray(self.effective_sample_size)
            out |= {"ess_median": float(np.median(ess)), "ess_min": float(ess.min()),
                    "share_ess_below_10": float(np.mean(ess < 10))}
        if self.pit is not None:
            out["coverage"] = {k: v.tolist() for k, v in self.coverage().items()}
        return out


class _Proposal:
    """A fixed mixture behind the predictive hook that importance_sampling consumes."""

    def __init__(self, log_weights, means, scales, dof=None):
        self.parts = (log_weights, means, scales, dof)

    def _predictive_mixture(self, X):
        log_weights, means, scales, dof = self.parts
        return PredictiveMixture(log_weights, means, scales, dof, np.float64)


def _count_modes(weights, means, covs, threshold, separation):
    """Distinct modes per row: heavy enough, and not within ``separation`` of a heavier."""
    n, M, L = means.shape
    # (a merged mode of weight 0, an empty slot, is no mode even at threshold 0)
    keep = (weights >= threshold) & (weights > 0)
    count = np.zeros(n, dtype=int)
    distinct = np.zeros((n, M), dtype=bool)
    for j in range(M):
        alone = keep[:, j].copy()
        for i in range(j):
            d = means[:, j] - means[:, i]
            pooled = 0.5 * (covs[:, j] + covs[:, i]) + 1e-12 * np.eye(L)
            dist2 = np.einsum("nl,nl->n", d, np.linalg.solve(pooled, d[..., None])[..., 0])
            alone &= ~(distinct[:, i] & (dist2 < separation**2))
        distinct[:, j] = alone
        count += alone
    return np.maximum(count, 1)


def _exp_weights(log_w):
    """exp(log_w), the same values, without exp's slow path for results near or below
    the smallest normal number (taken one element at a time, and many posterior weights
    underflow): 0 below the smallest subnormal number, the few others computed apart."""
    w = np.exp(np.maximum(log_w, _EXP_NORMAL))
    low = log_w < _EXP_NORMAL
    if low.any():
        w[low] = 0.0
        sub = low & (log_w > _EXP_ZERO)
        w[sub] = np.exp(log_w[sub])
    return w


def _heaviest(w, k):
    """Columns of the ``k`` largest weights of each row, largest first (ties: lowest
    column first), as the first ``k`` of a stable argsort of ``-w``."""
    if k >= w.shape[1]:
        return np.argsort(-w, axis=1, kind="stable")
    top = np.argpartition(-w, k - 1, axis=1)[:, :k]
    # Equal weights at the cut: the partition may keep a later column; the columns
    # of the k-th largest weight are taken lowest first instead, as the sort does.
    wk = np.take_along_axis(w, top, axis=1)
    kth = wk.min(axis=1, keepdims=True)
    top = np.take_along_axis(top, np.lexsort((top, -wk), axis=1), axis=1)
    tied = np.flatnonzero((w == kth).sum(axis=1) > (wk == kth).sum(axis=1))
    if tied.size:
        top[tied] = np.argsort(-w[tied], axis=1, kind="stable")[:, :k]
    return top


def _marginal_cdf(z, dof):
    """CDF of the standardised marginals: normal, or Student t with ``dof`` (a multivariate
    t's marginals are t with its degrees of freedom and the diagonal of its scale)."""
    return ndtr(z) if dof is None else stdtr(dof, z)


def _row_noise(S, n, D):
    """Augmented columns [W, log|S|] of per-observation likelihood noises: W the whitening
    (D,) of variances (n, D) or (D * D,) of covariances (n, D, D), with
    |W (x - F(y))|^2 the Mahalanobis distance."""
    if S.ndim == 3:
        chol = np.linalg.cholesky(S)
        W = np.linalg.inv(chol).reshape(n, D * D)
        logdet = 2.0 * np.log(np.diagonal(chol, axis1=1, axis2=2)).sum(axis=1)
    else:
        S = np.broadcast_to(S, (n, D))
        W = 1.0 / np.sqrt(S)
        logdet = np.log(S).sum(axis=1)
    return np.hstack([W, logdet[:, None]])


def _check_row_noise(S, D):
    """A block of a dask array of per-observation likelihood noises, validated as a
    numpy one is by :func:`invert` (its rows are numbered within the block)."""
    S = np.asarray(S, dtype=float)
    if S.ndim == 3:
        return check_noise_matrix(S, D, "likelihood_cov", definite=True, n_samples=S.shape[0])
    return check_noise_variances(S, "likelihood_var", positive=True)


def _row_noise_loglik(D):
    """log N(x; F(y), S) for rows augmented by :func:`_row_noise` (their noise)."""
    def loglik(x_rep, fx):
        r = x_rep[:, :D] - fx[:, :D]
        W = x_rep[:, D:-1]
        if W.shape[1] == D:
            z = W * r
        else:
            z = np.einsum("mij,mj->mi", W.reshape(-1, D, D), r)
        return gaussian_or_t_log_density(np.einsum("mi,mi->m", z, z), x_rep[:, -1], D)

    return loglik


def _per_row(value, ndim_per_row):
    """Whether a noise argument holds one value per row (variances (n, D), covariances
    (n, D, D))."""
    return value is not None and np.ndim(value) == ndim_per_row


class _Inverter:
    """The inversion of one block of rows (what dask maps over the row blocks)."""

    def __init__(self, model, forward_model, log_prior, settings):
        self.model = model
        self.forward_model = forward_model
        self.log_prior = log_prior
        self.settings = settings

    @_dask.blockwise(shared={"feature_noise_var": 1, "feature_noise_cov": 2,
                             "likelihood_var": 1, "likelihood_cov": 2},
                     row_offset="first_row")
    def run(self, X, y_true=None, *, feature_noise_var=None, feature_noise_cov=None,
            likelihood_var=None, likelihood_cov=None, likelihood_rows=None, first_row=0,
            mixture_out=None):
        # mixture_out: with keep_mixture, the arrays (n, K, L) and (n, K, L, L) that the
        # mixture's means and covariances are returned in (see _threaded_run).
        s = self.settings
        X = np.asarray(X, dtype=float)
        n, D = X.shape
        K = self.model.weights_.shape[0]
        L = self.model.n_targets_
        y = None if y_true is None else np.asarray(y_true, dtype=float).reshape(n, L)
        if feature_noise_var is not None or feature_noise_cov is not None:
            # The whole block's shapes, before the rows are cut into pieces.
            feature_noise_var, feature_noise_cov = self.model._check_feature_noise(
                n, feature_noise_var, feature_noise_cov)
            if feature_noise_var is not None and feature_noise_var.shape[0] == 1:
                feature_noise_var = feature_noise_var[0]  # shared: (D,)
        importance = s["importance"] is not None
        aug = forward = loglik = rng = None
        if importance:
            seed = np.random.SeedSequence([s["seed"], int(first_row)])
            rng = np.random.RandomState(np.random.MT19937(seed))
            if likelihood_rows is not None:
                # Per-observation noise: carried by the rows, as extra columns
                # (:func:`_row_noise`, made by ``invert``).
                loglik = _row_noise_loglik(D)
                aug = np.hstack([X, np.asarray(likelihood_rows, dtype=float)])
            else:
                loglik = _gaussian_log_likelihood(
                    likelihood_cov if likelihood_cov is not None else likelihood_var, D)
                aug = X
            extra = aug.shape[1] - D

            def forward(Y):
                f = np.asarray(self.forward_model(Y), dtype=float)
                return np.hstack([f, np.zeros((f.shape[0], extra))]) if extra else f

        # Rows in blocks: each block's mixture is summarised (and sampled) while it is
        # in memory; only what is kept is written to the outputs.
        rows = max(1, _BLOCK_ELEMENTS // (K * L * L))
        if importance:
            total_draws = s["n_draws"] + s["n_imis_steps"] * (s["imis_batch"] or 0)
            rows = min(rows, max(1, _IS_ROWS_ELEMENTS // max(1, total_draws * L)))
        # The modes are merged after the blocks, over up to _MERGE_ROWS rows at a time:
        # merge_mixture's cost is mostly per call (one pass per merge step), not per
        # row. Merged modes as the proposal ("mode") are needed by each block itself.
        late = s["importance"] != "mode"
        blocks, pending, modes = [], [], []

        def merge_pending():
            top = [np.concatenate(part) for part in zip(*pending, strict=True)]
            modes.append(self._modes(*top))
            pending.clear()

        whole = block_out = None
        if s["keep_mixture"]:
            # The mixture to keep is made at once, in the arrays returned (no copies of
            # blocks); the summaries run over blocks of its rows.
            whole = self.model._predictive_mixture(
                X, feature_noise_var=feature_noise_var, feature_noise_cov=feature_noise_cov,
                method="invert", out=mixture_out).to_numpy()
        else:
            # One pair of arrays for every block's component means and covariances
            # (where the mixture is made per row): nothing of a block is kept after it.
            most = min(rows, n)
            block_out = (large_empty((most, K, L), _BLOCK_OUT_MIN_BYTES),
                         large_empty((most, K, L, L), _BLOCK_OUT_MIN_BYTES))
        for a in range(0, max(n, 1), rows):
            sl = slice(a, min(a + rows, n))
            if whole is not None:
                mix = whole.rows(sl)
            else:
                var = feature_noise_var[sl] if _per_row(feature_noise_var, 2) else \
                    feature_noise_var
                cov = feature_noise_cov[sl] if _per_row(feature_noise_cov, 3) else \
                    feature_noise_cov
                m = sl.stop - sl.start
                mix = self.model._predictive_mixture(
                    X[sl], feature_noise_var=var, feature_noise_cov=cov, method="invert",
                    out=(block_out[0][:m], block_out[1][:m])).to_numpy()
            out, top = self._block(mix, None if y is None else y[sl],
                                   None if aug is None else aug[sl], forward, loglik, rng,
                                   late)
            blocks.append(out)
            if late:
                pending.append(top)
                if sum(t[0].shape[0] for t in pending) >= _MERGE_ROWS or sl.stop >= n:
                    merge_pending()
        parts = [list(part) for part in zip(*blocks, strict=True)]
        if whole is not None:  # the component means and covariances as made
            covs = whole.covariances()
            shape = whole.means.shape + whole.means.shape[-1:]
            parts[1] = [whole.means]
            parts[2] = [covs if covs.shape == shape else np.broadcast_to(covs, shape)]
            if mixture_out is not None:
                for i, array in zip((1, 2), mixture_out, strict=True):
                    if parts[i][0] is not array:  # made elsewhere (shared covariances)
                        np.copyto(array, parts[i][0])
                        parts[i] = [array]
        if late:  # the merged modes' slots
            parts[6:10] = [list(part) for part in zip(*modes, strict=True)]
        # Only the outputs asked for (dask maps arrays, not Nones); one block's own
        # arrays as they are (broadcast views are made whole).
        return tuple(part[0] if len(part) == 1 and part[0].flags.writeable
                     else np.concatenate(part) for part in parts if part[0] is not None)

    def _modes(self, weights, means, covs):
        """Merged modes (weights, means, covariances) and their count, of the
        ``merge_components`` heaviest components of each row (see ``_block``)."""
        s = self.settings
        # (the components' covariances are positive definite by construction)
        mw, mm, mc = _merge_mixture(weights, means, covs, s["n_modes"],
                                    check_covariances=False)
        return mw, mm, mc, _count_modes(mw, mm, mc, s["mode_threshold"], s["separation"])

    def _block(self, mix, y, aug, forward, loglik, rng, late):
        """The outputs of the rows of the posterior mixture ``mix``, and the components
        to merge into modes: with ``late`` the modes' slots are None and the caller
        merges those components."""
        s = self.settings
        n = mix.means.shape[0]
        w = _exp_weights(mix.log_weights)
        mu, dof = mix.means, mix.dof
        K, L = mu.shape[1:]
        scales = np.broadcast_to(mix.scales, (n, K, L, L))
        cov = np.broadcast_to(mix.covariances(), (n, K, L, L))
        mean, total = mix.moments(w)
        std = np.sqrt(np.maximum(np.einsum("nll->nl", total), 0.0))
        # Modes: merging is cubic in the number of components, so it takes the
        # ``merge_components`` heaviest that weigh at least ``merge_min_weight``
        # (renormalised; at least the heaviest). The moments, PITs and importance
        # sampling use the whole mixture.
        keep = min(K, s["merge_components"])
        top = _heaviest(w, keep)
        rows = np.arange(n)[:, None]
        wt = w[rows, top]
        wt = np.where((wt >= s["merge_min_weight"]) | (np.arange(keep) == 0), wt, 0.0)
        wt = wt / wt.sum(axis=1, keepdims=True)
        merge_cov = cov[rows, top]
        if dof is not None and not np.all(np.isfinite(merge_cov)):
            # A t component of at most 2 degrees of freedom has no covariance to merge
            # by moments: its scale matrix stands in for it (as IMIS's metric does).
            merge_cov = np.where(np.isfinite(merge_cov), merge_cov, scales[rows, top])
        heaviest = (wt, mu[rows, top], merge_cov)
        mw = mm = mc = n_modes = None
        if not late:
            mw, mm, mc, n_modes = self._modes(*heaviest)
        kept = s["keep_mixture"]
        student = dof is not None and kept
        out = [w if kept else None, mu if kept else None, cov if kept else None,
               mean, total, std, mw, mm, mc, n_modes,
               np.broadcast_to(dof, (n, K)) if student else None,
               scales if student else None]
        if y is not None:
            sd = np.sqrt(np.diagonal(scales, axis1=-2, axis2=-1))
            dof_l = None if dof is None else np.broadcast_to(dof, (n, K))[..., None]
            mix_pit = np.einsum("nk,nkl->nl", w, _marginal_cdf((y[:, None] - mu) / sd,
                                                                dof_l))
            out.append(mix_pit)
        if s["importance"] is None:
            return out, heaviest

        # Importance sampling, of the whole mixture or of one merged mode.
        if s["importance"] == "full":
            prop = (mix.log_weights, mu, mix.scales, dof)
        else:
            j = min(s["mode"], mw.shape[1] - 1)
            prop = (np.zeros((n, 1)), mm[:, j:j + 1], mc[:, j:j + 1], None)
        with warnings.catch_warnings():
            # Rows without any positive weight are reported by ESS = 0.
            warnings.simplefilter("ignore", RuntimeWarning)
            res = importance_sampling(
                _Proposal(*prop), aug, forward, self.log_prior, log_likelihood=loglik,
                n_draws=s["n_draws"], n_imis_steps=s["n_imis_steps"],
                imis_batch=s["imis_batch"], random_state=rng)
        out += [res.mean, res.covariance,
                np.sqrt(np.maximum(np.einsum("nll->nl", res.covariance), 0.0)),
                res.effective_sample_size]
        if y is not None:
            below = res.samples <= y[:, None, :]
            # Normalised weights may sum to 1 + a rounding error.
            is_pit = np.minimum(np.einsum("ns,nsl->nl", res.weights, below), 1.0)
            dead = res.effective_sample_size == 0
            if dead.any():
                # Rows without a weighted draw keep the proposal's moments, and its PIT
                # (their weights are all 0: the PIT of the draws would be 0).
                if s["importance"] == "full":
                    prop_pit = mix_pit
                else:
                    prop_pit = _marginal_cdf((y - prop[1][:, 0]) / np.sqrt(np.diagonal(
                        prop[2][:, 0], axis1=-2, axis2=-1)), None)
                is_pit[dead] = prop_pit[dead]
            out.append(is_pit)
        return out, heaviest


def _threaded_run(model, inverter, n_chunks, X, y_true, feature_noise_var,
                  feature_noise_cov):
    """``inverter.run`` (without importance sampling) over ``n_chunks`` ranges of the
    rows in parallel threads (:func:`_engine.map_row_chunks`), its outputs joined. The
    noises are checked on all rows first, so that an error names the sample as
    without threads."""
    X = np.asarray(X, dtype=float)
    n = X.shape[0]
    y = None if y_true is None else np.asarray(y_true, dtype=float)
    if feature_noise_var is not None or feature_noise_cov is not None:
        feature_noise_var, feature_noise_cov = model._check_feature_noise(
            n, feature_noise_var, feature_noise_cov)
        if feature_noise_var is not None and feature_noise_var.shape[0] == 1:
            feature_noise_var = feature_noise_var[0]  # shared: (D,)

    def rows(value, ndim_per_row, a, b):
        return value[a:b] if _per_row(value, ndim_per_row) else value

    # The kept mixture's means and covariances, the largest outputs, are written in place
    # by the threads (in the same arrays), not joined after them.
    kept = None
    if inverter.settings["keep_mixture"]:
        K, L = model.weights_.shape[0], model.n_targets_
        kept = (large_empty((n, K, L)), large_empty((n, K, L, L)))

    def run(a, b):
        args = (X[a:b],) if y is None else (X[a:b], y[a:b])
        return inverter.run(*args, feature_noise_var=rows(feature_noise_var, 2, a, b),
                            feature_noise_cov=rows(feature_noise_cov, 3, a, b),
                            mixture_out=None if kept is None else (kept[0][a:b],
                                                                   kept[1][a:b]))

    parts = _engine.map_row_chunks(run, n, n_chunks)
    # (with kept, the run's outputs 1 and 2 are views of its arrays: see _Inverter.run)
    return [kept[i - 1] if kept is not None and i in (1, 2) else np.concatenate(part)
            for i, part in enumerate(zip(*parts, strict=True))]


def invert(model, X, *, feature_noise_var=None, feature_noise_cov=None, n_modes=3,
           mode_threshold=0.1, separation=2.0, merge_components=10, merge_min_weight=1e-3,
           forward_model=None, log_prior=None, importance=None, mode=0, likelihood_var=None,
           likelihood_cov=None, n_draws=1000, n_imis_steps=0, imis_batch=None, y_true=None,
           keep_mixture=True, names=None, random_state=None):
    """Invert a batch of observations with a fitted GLLiM: one result for the batch.

    Parameters
    ----------
    model : fitted GLLiMRegressor or StudentGLLiMRegressor
        Learnt from simulations ``(parameters, observations)``.
    X : array-like or dask array of shape (n, D)
        Observations.
    feature_noise_var : float or array-like of shape (D,) or (n, D), default=None
        Measurement-noise variances of the observations (shared or per observation),
        added to the model's noise as in :meth:`~gllim_sk.GLLiMRegressor.predict`.
    feature_noise_cov : array-like of shape (D, D) or (n, D, D), default=None
        Full measurement-noise covariances instead, shared or per observation (each
        symmetric positive semi-definite). The posterior stays exact: each component's
        ``Sigma_k + S`` is factorised per observation.
    n_modes : int, default=3
        Components kept when the posterior mixture is merged into modes
        (:func:`~gllim_sk.posterior.merge_mixture`).
    mode_threshold : float, default=0.1
        Weight a merged mode needs to count as a mode.
    separation : float, default=2.0
        Modes closer than this Mahalanobis distance to a heavier mode (under their mean
        covariance) count as the same mode.
    merge_components : int, default=10
        The modes are merged from the ``merge_components`` heaviest components of each
        posterior (renormalised), which bounds the cost of merging (cubic in the number
        of components); ``n_components`` merges them all. The posterior mean, spread,
        PITs and importance sampling always use the whole mixture.
    merge_min_weight : float, default=1e-3
        Of those, components lighter than this are left out of the merging too (the
        heaviest is always kept); 0 merges all ``merge_components``. Light components
        barely move the modes, and most posteriors have few heavy ones: their number
        sets the cost of merging.
    forward_model : callable or ForwardModel, default=None
        The physical model ``(m, L) -> (m, D)``: needed for importance sampling.
    log_prior : callable, default=None
        Log prior density of parameters (m, L); default the model's ``log_prior``
        (uniform on its bounds) when ``forward_model`` is a
        :class:`~gllim_sk.physics.ForwardModel`.
    importance : {None, "full", "mode"}, default=None
        Importance-sample the whole posterior mixture ("full") or the merged mode of
        index ``mode`` (0: the heaviest) as proposal; None skips it.
    mode : int, default=0
        Mode used as proposal with ``importance="mode"``.
    likelihood_var : float or array-like of shape (D,) or (n, D), default=None
        Noise variances of the likelihood ``N(x; F(y), S)`` used by importance sampling;
        default ``feature_noise_var``.
    likelihood_cov : array-like of shape (D, D) or (n, D, D), default=None
        Full likelihood covariances instead, shared or per observation, positive
        definite (default ``feature_noise_cov``).
    n_draws, n_imis_steps, imis_batch : int
        Importance sampling's draws, IMIS steps and draws per IMIS step
        (:func:`~gllim_sk.posterior.importance_sampling`).
    y_true : array-like of shape (n, L), default=None
        True parameters of held-out simulations: the result then holds the PITs from
        which :meth:`InversionResult.coverage` measures calibration.
    keep_mixture : bool, default=True
        Keep the whole posterior mixture of every observation in the result (its
        ``weights``, ``means`` and ``covariances``, n x K x L x L numbers). False keeps
        the summaries only (moments, modes, PITs, importance sampling), which the
        inversion computes block by block of rows: for millions of observations.
    names : sequence of str, default=None
        Parameter names (default: the forward model's, if any).
    random_state : int, RandomState instance or None, default=None
        Seeds importance sampling (each row block of a dask X draws from its own stream
        derived from this seed and its first row, so results do not depend on chunking
        of a numpy X into blocks of equal starts).

    Returns
    -------
    result : InversionResult

    Notes
    -----
    Without importance sampling, the rows of a numpy ``X`` are inverted in as many
    parallel threads as BLAS may use (``OMP_NUM_THREADS``, threadpoolctl's limits;
    ranges of at least 2048 rows), with the same results as on one thread: every row's
    posterior is its own. Importance sampling stays on one thread, so that its draws do
    not depend on the threads.

    Examples
    --------
    >>> import numpy as np
    >>> from gllim_sk import GLLiMRegressor
    >>> from gllim_sk.inversion import invert
    >>> from gllim_sk.physics import FunctionModel, simulate
    >>> F = FunctionModel(lambda y: np.hstack([y**2, np.cos(y)]), [[-1, 1]], 2)
    >>> Y, X = simulate(F, 1000, noise_std=0.01, random_state=0)
    >>> model = GLLiMRegressor(n_components=6, random_state=0).fit(X, Y)
    >>> res = invert(model, X[:3], feature_noise_var=1e-4, forward_model=F,
    ...              importance="full", n_draws=200, random_state=0)
    >>> res.mean.shape, res.mode_means.shape, res.effective_sample_size.shape
    ((3, 1), (3, 3, 1), (3,))
    """
    if not hasattr(model, "_predictive_mixture"):
        # (a ComponentSelector or a Pipeline would fail later on a missing attribute)
        hint = (" (a ComponentSelector: pass its best_estimator_)"
                if hasattr(model, "best_estimator_") else "")
        raise TypeError(f"model must be a fitted GLLiMRegressor or StudentGLLiMRegressor; "
                        f"got {type(model).__name__}{hint}.")
    check_is_fitted(model)
    if importance not in (None, "full", "mode"):
        raise ValueError(f"importance must be None, 'full' or 'mode', got {importance!r}.")
    for name, value, low in (("n_modes", n_modes, 1), ("mode", mode, 0),
                             ("merge_components", merge_components, 1),
                             ("n_draws", n_draws, 2), ("n_imis_steps", n_imis_steps, 0)):
        if not isinstance(value, (int, np.integer)) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}.")
    if not 0 <= mode_threshold < 1 or not separation >= 0:
        raise ValueError("mode_threshold must be in [0, 1) and separation >= 0.")
    if importance is not None and mode >= n_modes:
        raise ValueError(f"mode={mode} needs n_modes > {mode}; got n_modes={n_modes}.")
    if not 0 <= merge_min_weight < 1:
        raise ValueError(f"merge_min_weight must be in [0, 1), got {merge_min_weight!r}.")
    if np.ndim(X) != 2:
        raise ValueError(f"X must be 2-D (n_observations, n_features); got shape "
                         f"{np.shape(X)} (one observation: X.reshape(1, -1)).")
    n, D = np.shape(X)
    L = model.n_targets_
    if y_true is not None:
        rows, *per_row = np.shape(y_true)
        # (dask arrays of unknown chunk sizes have NaN row counts: checked per block)
        rows_agree = rows == n or np.isnan(rows) or np.isnan(n)
        if not rows_agree or per_row not in ([L], [] if L == 1 else [L]):
            raise ValueError(f"y_true must have shape (n, L) = ({n}, {L}); got "
                             f"{np.shape(y_true)}.")
    # The merged modes number at most min(n_modes, K, merge_components).
    n_available = min(n_modes, model.weights_.shape[0], merge_components)
    if importance == "mode" and mode >= n_available:
        raise ValueError(f"mode={mode} asks for merged mode {mode} of at most {n_available} "
                         f"(min(n_modes, n_components, merge_components)).")
    from .physics import ForwardModel

    if names is None:
        names = tuple(forward_model.names) if isinstance(forward_model, ForwardModel) else ()
    names = tuple(names)
    if names and len(names) != L:
        raise ValueError(f"{len(names)} parameter names {names} for a model of {L} targets.")
    if importance is not None:
        if forward_model is None or not callable(forward_model):
            raise ValueError("Importance sampling needs forward_model, a callable.")
        if log_prior is None:
            if not isinstance(forward_model, ForwardModel):
                raise ValueError("Give log_prior (forward_model is not a ForwardModel).")
            log_prior = forward_model.log_prior
        if likelihood_var is None and likelihood_cov is None:
            likelihood_var, likelihood_cov = feature_noise_var, feature_noise_cov
        if likelihood_var is None and likelihood_cov is None:
            raise ValueError("Importance sampling needs the noise of the likelihood: give "
                             "likelihood_var or likelihood_cov (or feature_noise_var/cov).")
        if likelihood_var is not None and likelihood_cov is not None:
            raise ValueError("Give likelihood_var or likelihood_cov, not both.")
        # A shared noise (D numbers, or D x D) given as a dask array is small: it is
        # checked here as a numpy one (the workers named it noise_covariance).
        if _dask.is_dask_array(likelihood_var) and likelihood_var.ndim < 2:
            likelihood_var = likelihood_var.compute()
        if _dask.is_dask_array(likelihood_cov) and likelihood_cov.ndim < 3:
            likelihood_cov = likelihood_cov.compute()
        if likelihood_var is not None:
            if np.shape(likelihood_var) not in ((), (D,), (n, D)):
                raise ValueError(f"likelihood_var must be a scalar, ({D},) or (n, {D}) = "
                                 f"({n}, {D}); got shape {np.shape(likelihood_var)}.")
            if not _dask.is_dask_array(likelihood_var):  # as importance_sampling's
                likelihood_var = check_noise_variances(likelihood_var, "likelihood_var",
                                                       positive=True)
        elif not _dask.is_dask_array(likelihood_cov):
            likelihood_cov = check_noise_matrix(likelihood_cov, D, "likelihood_cov",
                                                definite=True, n_samples=n)
        elif np.shape(likelihood_cov) not in ((D, D), (n, D, D)):
            raise ValueError(f"likelihood_cov must have shape ({D}, {D}) or (n, {D}, {D}) = "
                             f"({n}, {D}, {D}); got {np.shape(likelihood_cov)}.")
    seed = int(check_random_state(random_state).randint(0, 2**31 - 1))
    settings = {"n_modes": int(n_modes), "mode_threshold": float(mode_threshold),
                "separation": float(separation),
                "merge_components": int(merge_components),
                "merge_min_weight": float(merge_min_weight), "importance": importance,
                "mode": int(mode), "keep_mixture": bool(keep_mixture),
                "n_draws": int(n_draws), "n_imis_steps": int(n_imis_steps),
                "imis_batch": imis_batch, "seed": seed}
    inverter = _Inverter(model, forward_model, log_prior, settings)
    args = (X,) if y_true is None else (X, y_true)
    likelihood_rows = None
    if importance is not None and (np.ndim(likelihood_var) == 2
                                   or np.ndim(likelihood_cov) == 3):
        # One noise per observation: its whitening and log-determinant become extra
        # columns of the rows (made block by block for dask arrays).
        S = likelihood_cov if likelihood_cov is not None else likelihood_var
        likelihood_var = likelihood_cov = None
        if _dask.is_dask_array(S):
            S = S.rechunk({i: -1 for i in range(1, S.ndim)})
            width = (D * D if S.ndim == 3 else D) + 1
            likelihood_rows = S.map_blocks(
                lambda b: _row_noise(_check_row_noise(b, D), b.shape[0], D),
                dtype=float, chunks=(S.chunks[0], (width,)),
                drop_axis=[2] if S.ndim == 3 else [])
        else:
            likelihood_rows = _row_noise(np.asarray(S, dtype=float), n, D)
    n_chunks = 1
    if importance is None and not _dask.any_dask_array(X, y_true, feature_noise_var,
                                                       feature_noise_cov):
        # Rows in parallel threads where BLAS may use several (see
        # _engine.row_chunks). Not with importance sampling: its draws follow the rows
        # of one stream, which ranges of rows would change.
        n_chunks = _engine.row_chunks(n, _THREAD_MIN_ROWS)
    if n_chunks > 1:
        out = _threaded_run(model, inverter, n_chunks, X, y_true, feature_noise_var,
                            feature_noise_cov)
    else:
        out = list(inverter.run(*args, feature_noise_var=feature_noise_var,
                                feature_noise_cov=feature_noise_cov,
                                likelihood_var=likelihood_var if importance else None,
                                likelihood_cov=likelihood_cov if importance else None,
                                likelihood_rows=likelihood_rows))
    keys = (["weights", "means", "covariances"] if keep_mixture else []) + [
        "mean", "covariance", "std", "mode_weights", "mode_means", "mode_covariances",
        "n_modes"]
    if keep_mixture and hasattr(model, "dof_"):  # t components
        keys += ["dof", "scales"]
    if y_true is not None:
        keys.append("pit")
    if importance is not None:
        keys += ["is_mean", "is_covariance", "is_std", "effective_sample_size"]
        if y_true is not None:
            keys.append("is_pit")
    parts = {"weights": None, "means": None, "covariances": None}
    parts |= dict(zip(keys, out, strict=True))
    return InversionResult(**parts, importance=importance, names=names)
