"""
Inverting Hapke's photometric model
===================================

The whole workflow of a planetary photometrist, end to end:

1. Hapke's bidirectional reflectance (:class:`gllim_sk.physics.HapkeModel`) at 10
   geometries of a multi-angle orbital observation: incidence 45 degrees, emergences
   swept from 70 degrees on the forward side of the sun to 65 degrees on the backward
   side;
2. a Sobol design of the four parameters (single-scattering albedo ``omega``,
   roughness ``theta_bar``, phase-function parameters ``b`` and ``c``), simulated with
   1% noise (:func:`gllim_sk.physics.simulate`);
3. the number of components chosen by the slope heuristic on a subset
   (:class:`gllim_sk.model_selection.ComponentSelector`), then GLLiM learnt from the
   100,000 simulations;
4. 10,000 test observations, each with its own noise level of 1 to 4%, inverted with
   their uncertainties (:func:`gllim_sk.inversion.invert`): posterior mixtures, means,
   merged modes, and importance sampling with the physical model on a subset;
5. diagnostics: share of multimodal posteriors, effective sample sizes, coverage of the
   50/90/95% intervals; figures of a few posteriors (modes marked) and of the predicted
   against the true parameters.

It takes a few minutes on one core (``--n-train`` and ``--n-test`` make it smaller);
figures go to ``examples/output/``. ``benchmarks/bench_inversion.py`` runs the same
problem next to xllim and sbi.
"""

import argparse
import time
import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from sklearn.exceptions import ConvergenceWarning

from gllim_sk import GLLiMRegressor
from gllim_sk.inversion import invert
from gllim_sk.model_selection import ComponentSelector
from gllim_sk.physics import HapkeModel, simulate

parser = argparse.ArgumentParser(description="Invert Hapke's model with GLLiM.")
parser.add_argument("--n-train", type=int, default=100_000)
parser.add_argument("--n-test", type=int, default=10_000)
parser.add_argument("--n-is", type=int, default=500)
parser.add_argument("--seed", type=int, default=0)
parser.add_argument("--output-dir", type=Path,
                    default=Path(__file__).resolve().parent / "output")
args = parser.parse_args()
args.output_dir.mkdir(parents=True, exist_ok=True)
# The candidates of the K choice run a fixed, small number of EM iterations on purpose.
warnings.filterwarnings("ignore", category=ConvergenceWarning)

# %%
# The forward model and the simulations
# -------------------------------------
incidence = np.full(10, 45.0)
emergence = np.array([70.0, 55.0, 40.0, 25.0, 10.0, 5.0, 20.0, 35.0, 50.0, 65.0])
azimuth = np.array([180.0] * 5 + [0.0] * 5)  # forward side, then backward side
F = HapkeModel(incidence, emergence, azimuth=azimuth, bounds={"b": (0.0, 0.95)})
print(F, "bounds:", F.bounds.tolist())

Y, X = simulate(F, args.n_train, method="sobol", noise_std=0.01, relative_noise=True,
                random_state=args.seed)
# Test observations: random parameters, each observation with its own noise level.
rng = np.random.default_rng(args.seed + 1)
Y_test, _ = simulate(F, args.n_test, method="random", random_state=args.seed + 1)
clean = F(Y_test)
level = rng.uniform(0.01, 0.04, size=(args.n_test, 1))
X_test = clean * (1 + level * rng.standard_normal(clean.shape))
noise_var = (level * np.abs(X_test)) ** 2  # what the user knows: level x measured value

# %%
# Choosing K
# ----------
# The slope heuristic on 20,000 simulations (the data-driven penalty of capushe).
sub = slice(0, min(20_000, args.n_train))
selector = ComponentSelector(GLLiMRegressor(covariance_type="diag", max_iter=30),
                             n_components=[5, 10, 20, 30, 40, 50, 60, 80],
                             random_state=args.seed).fit(X[sub], Y[sub])
print("BIC/AIC table:")
for row in zip(*(selector.results_[k] for k in ("n_components", "n_parameters", "bic",
                                                  "aic", "slope_criterion")), strict=True):
    print("  K={:3d}  params={:6d}  BIC={:12.1f}  AIC={:12.1f}  slope={:12.1f}".format(*row))
K = selector.best_params_["n_components"]
print(f"slope heuristic: K = {K}; lowest BIC at K = "
      f"{selector.results_['n_components'][np.argmin(selector.results_['bic'])]}")
selector.plot()
plt.savefig(args.output_dir / "hapke_choose_K.png", dpi=100)

# %%
# Learning and inverting
# ----------------------
t = time.perf_counter()
# k-means on the joint [parameters, observations] starts EM closer to a good optimum
# here than k-means on the parameters alone (see the benchmark).
model = GLLiMRegressor(n_components=K, covariance_type="diag", max_iter=100,
                       init_params="kmeans_joint", random_state=args.seed).fit(X, Y)
print(f"learnt in {time.perf_counter() - t:.1f} s ({model.n_iter_} EM iterations)")
t = time.perf_counter()
result = invert(model, X_test, feature_noise_var=noise_var, n_modes=2, y_true=Y_test)
print(f"{args.n_test} observations inverted in {time.perf_counter() - t:.2f} s")
rmse = np.sqrt(((result.mean - Y_test) ** 2).mean(axis=0))
print("RMSE of the posterior mean:", dict(zip(F.names, rmse.round(4), strict=True)))
print("share of multimodal posteriors:", round(result.share_multimodal, 3))
for lvl, row in zip((0.5, 0.9, 0.95), result.coverage()["mixture"], strict=True):
    print(f"coverage of the {lvl:.0%} intervals:", row.round(3))

# %%
# Importance sampling with the physical model
# -------------------------------------------
sl = slice(0, args.n_is)
t = time.perf_counter()
corrected = invert(model, X_test[sl], feature_noise_var=noise_var[sl], n_modes=2,
                   forward_model=F, importance="full", n_draws=500, n_imis_steps=5,
                   imis_batch=100, y_true=Y_test[sl], random_state=args.seed)
print(f"IMIS on {args.n_is} observations: {time.perf_counter() - t:.1f} s;",
      corrected.summary())
for name, est in (("GLLiM mean", corrected.mean), ("IMIS mean", corrected.is_mean)):
    err = np.sqrt(((est - Y_test[sl]) ** 2).mean(axis=0))
    print(f"  RMSE of the {name}:", dict(zip(F.names, err.round(4), strict=True)))

# %%
# Figures
# -------
# Marginal posteriors of three observations (the multimodal ones first) with the merged
# modes marked, and the posterior means against the truth.
order = np.argsort(~result.multimodal[:200], kind="stable")[:3]
fig, axes = plt.subplots(3, 4, figsize=(13, 8))
for row, n in zip(axes, order, strict=True):
    for j, ax in enumerate(row):
        lo, hi = F.bounds[j]
        grid = np.linspace(lo, hi, 400)
        sd = np.sqrt(result.covariances[n, :, j, j])
        dens = (result.weights[n] * np.exp(-0.5 * ((grid[:, None] - result.means[n, :, j])
                                                    / sd) ** 2) / (sd * np.sqrt(2 * np.pi))
                ).sum(axis=1)
        ax.plot(grid, dens, "k")
        ax.axvline(Y_test[n, j], color="g", label="truth")
        for m, (w, mu) in enumerate(zip(result.mode_weights[n], result.mode_means[n, :, j],
                                        strict=True)):
            ax.axvline(mu, color="r", ls="--", alpha=0.4 + 0.6 * w,
                       label="modes" if m == 0 else None)
        ax.set_title(f"obs {n}: {F.names[j]}")
axes[0, 0].legend()
fig.tight_layout()
fig.savefig(args.output_dir / "hapke_posteriors.png", dpi=100)

fig, axes = plt.subplots(1, 4, figsize=(14, 3.5))
for j, ax in enumerate(axes):
    ax.plot(Y_test[:2000, j], result.mean[:2000, j], ".", ms=2)
    ax.plot(F.bounds[j], F.bounds[j], "k--")
    ax.set_xlabel(f"true {F.names[j]}")
    ax.set_ylabel("posterior mean")
fig.tight_layout()
fig.savefig(args.output_dir / "hapke_predicted_vs_true.png", dpi=100)
print("figures written to", args.output_dir)

# sphinx_gallery_thumbnail_path = "_static/thumbnails/invert_hapke.png"
