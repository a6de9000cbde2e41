"""
Posterior analysis of an inverse problem: modes and importance sampling
=======================================================================

A physical model ``F`` maps a parameter ``y`` to observations ``x = F(y) + noise``, and we
want the posterior ``p(y | x)``. GLLiM learns an approximation of it from simulations
``(y_n, F(y_n) + noise)``: its predictive mixture. Two tools refine that answer:

* :meth:`~gllim_sk.GLLiMRegressor.predict_modes` reduces the K-component predictive
  mixture of each input to a few components, merged by Runnalls' criterion. When the
  problem is ambiguous (several parameters explain the same observation) the merged
  components sit at the different answers, whereas the posterior mean falls between them.
* :func:`gllim_sk.posterior.importance_sampling` uses the forward model itself: draws
  from GLLiM's mixture are weighted by ``p(x | y) p(y) / q(y | x)``, so that the weighted
  draws target the exact posterior, with an effective sample size that says how good the
  proposal was. IMIS steps adapt the proposal where the weights are large.

Here ``y`` is scalar, so the exact posterior is computed on a fine grid for comparison.
"""

# %%
# The forward model and the training simulations
# ----------------------------------------------
# The first two observations are even functions of ``y``; the third one only moves for
# ``y > 0.5``. For ``|y| < 0.5`` the observation cannot tell ``y`` from ``-y``.
import matplotlib.pyplot as plt
import numpy as np

from gllim_sk import GLLiMRegressor
from gllim_sk.posterior import importance_sampling

NOISE = 0.03


def forward(Y):
    """The physical model F, vectorised over rows of Y (m, 1) -> (m, 3)."""
    y = Y[:, 0]
    return np.column_stack([y**2, np.cos(2.5 * y), 2.0 * np.maximum(y - 0.5, 0.0)])


def log_prior(Y):
    """Uniform prior on [-1, 1]."""
    return np.where(np.abs(Y[:, 0]) <= 1.0, 0.0, -np.inf)


rng = np.random.default_rng(0)
y_train = rng.uniform(-1.0, 1.0, (1500, 1))
X_train = forward(y_train) + rng.normal(scale=NOISE, size=(1500, 3))
model = GLLiMRegressor(n_components=8, random_state=0).fit(X_train, y_train)

# %%
# Two modes where the answer is ambiguous
# ---------------------------------------
# ``predict_modes`` merges each input's eight components into at most two. Inside the
# ambiguous band both modes carry about half the weight, at ``+y`` and ``-y``; outside
# it, the heavier mode is the answer.
y_test = np.linspace(-1.0, 1.0, 121)[:, None]
X_test = forward(y_test) + rng.normal(scale=NOISE, size=(121, 3))
mode_weights, modes, _ = model.predict_modes(X_test, n_modes=2)

fig, ax = plt.subplots(figsize=(6, 4))
for j in range(2):
    ax.scatter(y_test[:, 0], modes[:, j, 0], s=60 * mode_weights[:, j], label=f"mode {j + 1}")
ax.plot(y_test[:, 0], model.predict(X_test)[:, 0], color="black", label="predict (mean)")
ax.axvspan(-0.5, 0.5, color="grey", alpha=0.1)
ax.set(xlabel="true y", ylabel="estimate", title="predict_modes: marker size = weight")
ax.legend(loc="upper left")
fig.tight_layout()
plt.show()

# %%
# Correcting a coarse model with the forward model
# ------------------------------------------------
# A GLLiM with only three components is a rough posterior, and its mean is visibly off
# (the printed errors below). Importance sampling with the true ``F`` (noise variance
# ``0.03**2``) corrects it; four IMIS steps adapt the proposal further. The exact
# posterior mean comes from a grid of 40001 points.
coarse = GLLiMRegressor(n_components=3, random_state=0).fit(X_train, y_train)
y_check = rng.uniform(-1.0, 1.0, (40, 1))
X_check = forward(y_check) + rng.normal(scale=NOISE, size=(40, 3))

grid = np.linspace(-1.0, 1.0, 40001)[:, None]
log_post = -0.5 * ((forward(grid)[None] - X_check[:, None]) ** 2).sum(axis=2) / NOISE**2
post = np.exp(log_post - log_post.max(axis=1, keepdims=True))
exact_mean = (post @ grid[:, 0]) / post.sum(axis=1)

plain = importance_sampling(coarse, X_check, forward, log_prior, noise_covariance=NOISE**2,
                            n_draws=2000, random_state=0)
imis = importance_sampling(coarse, X_check, forward, log_prior, noise_covariance=NOISE**2,
                           n_draws=2000, n_imis_steps=4, random_state=0)
for name, estimate in (("GLLiM (K=3) mean", coarse.predict(X_check)[:, 0]),
                       ("importance sampling", plain.mean[:, 0]),
                       ("IMIS, 4 steps", imis.mean[:, 0])):
    error = np.abs(estimate - exact_mean)
    print(f"{name:22s} |error| to the exact posterior mean: mean {error.mean():.4f}, "
          f"max {error.max():.4f}")
print(f"effective sample size, plain IS: median {np.median(plain.effective_sample_size):.0f} "
      f"of 2000 (min {plain.effective_sample_size.min():.0f})")
print(f"effective sample size, IMIS:     median {np.median(imis.effective_sample_size):.0f} "
      f"of 2800 (min {imis.effective_sample_size.min():.0f})")

# %%
# One input in detail: the coarse mixture, the weighted draws and the exact posterior.
i = int(np.argmin(np.abs(y_check[:, 0] - 0.3)))
fig, ax = plt.subplots(figsize=(6, 4))
ax.plot(grid[:, 0], post[i] / (post[i].sum() * (grid[1, 0] - grid[0, 0])), color="black",
        label="exact posterior")
ax.hist(imis.samples[i, :, 0], bins=80, weights=imis.weights[i], density=True, alpha=0.5,
        label="IMIS weighted draws")
ax.hist(imis.samples[i, :2000, 0], bins=80, density=True, histtype="step",
        label="GLLiM proposal draws")
ax.axvline(y_check[i, 0], color="tab:red", ls=":", label="true y")
ax.set(xlabel="y", ylabel="density", title="importance sampling with the forward model")
ax.legend(fontsize="small")
fig.tight_layout()
plt.show()
