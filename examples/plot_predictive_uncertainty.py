"""
Predictive uncertainty and multimodal posteriors
================================================

GLLiM does not only give a point prediction: ``p(y | x)`` is a Gaussian mixture whose
weights depend on ``x``. :meth:`~gllim_sk.GLLiMRegressor.predict` summarises it by its
mean and, with ``return_std=True``, its standard deviation;
:meth:`~gllim_sk.GLLiMRegressor.predict_mixture` returns the whole mixture, and
:meth:`~gllim_sk.GLLiMRegressor.sample_y` draws from it.

Here the features cannot always tell the sign of the target: two of them depend on
``y`` only through even functions, and a third one moves only when ``y > 0.5``. For
``|y| < 0.5``, ``y`` and ``-y`` give the same features: the posterior has two modes and
its mean falls between them. Outside that band the third feature settles the sign.
"""

# %%
# An inverse problem with an ambiguous region
# -------------------------------------------
import matplotlib.pyplot as plt
import numpy as np
from scipy.stats import norm

from gllim_sk import GLLiMRegressor

rng = np.random.default_rng(0)


def make_features(y, rng):
    """Even functions of y, plus one feature that only moves for y > 0.5."""
    clean = np.column_stack([y**2, np.cos(2.5 * y), 2.0 * np.maximum(y - 0.5, 0.0)])
    return clean + rng.normal(scale=0.03, size=clean.shape)


y_train = rng.uniform(-1.0, 1.0, 1500)
X_train = make_features(y_train, rng)
y_test = np.linspace(-1.0, 1.0, 201)
X_test = make_features(y_test, rng)

model = GLLiMRegressor(n_components=8, random_state=0).fit(X_train, y_train)
y_mean, y_std = model.predict(X_test, return_std=True)

# %%
# Mean and standard deviation
# ---------------------------
# Outside the band the prediction follows the diagonal and the standard deviation is
# small. Inside it the mean drifts towards zero and the standard deviation grows to about
# ``|y|``: the model says that it cannot tell the sign.
fig, ax = plt.subplots(figsize=(6, 4))
ax.fill_between(y_test, y_mean - 2 * y_std, y_mean + 2 * y_std, alpha=0.3, label="mean ± 2 std")
ax.plot(y_test, y_mean, label="predicted mean")
ax.plot(y_test, y_test, color="black", lw=1, ls="--", label="truth")
ax.axvspan(-0.5, 0.5, color="grey", alpha=0.1, label="ambiguous band")
ax.set(xlabel="true y", ylabel="prediction", title="predict(X, return_std=True)")
ax.legend(loc="upper left")
fig.tight_layout()
plt.show()

# %%
# The predictive mixture itself
# -----------------------------
# ``predict_mixture`` returns, for each input, the mixture weights ``(n, K)``, the
# component means ``(n, K, L)`` and the component covariances ``(K, L, L)``. For an input
# in the ambiguous band the density has one bump at ``+y`` and one at ``-y``; outside it,
# a single bump.
weights, means, covariances = model.predict_mixture(X_test)
grid = np.linspace(-1.3, 1.3, 400)
fig, ax = plt.subplots(figsize=(6, 4))
colours = ("tab:red", "tab:purple", "tab:green")
for true_value, colour in zip((-0.8, 0.35, 0.8), colours, strict=True):
    i = int(np.argmin(np.abs(y_test - true_value)))
    density = sum(
        weights[i, k] * norm.pdf(grid, means[i, k, 0], np.sqrt(covariances[k, 0, 0]))
        for k in range(model.n_components)
    )
    ax.plot(grid, density, color=colour, label=f"p(y | x), true y = {y_test[i]:.2f}")
    ax.axvline(y_test[i], color=colour, ls=":", lw=1)
ax.set(xlabel="y", ylabel="density", title="predict_mixture(X)")
ax.legend(loc="upper left", fontsize="small")
fig.tight_layout()
plt.show()

# %%
# Samples and calibration
# -----------------------
# ``sample_y`` draws from the same mixture. If the model is right about its uncertainty,
# the true target's rank among the samples is uniform; we check how often it falls in the
# central 90 % of the samples.
samples = model.sample_y(X_test, n_samples=500, random_state=0)  # (n, n_samples) for 1-d y
low, high = np.quantile(samples, [0.05, 0.95], axis=1)
coverage = np.mean((y_test >= low) & (y_test <= high))
print(f"true target inside the central 90% of the samples: {coverage:.0%} of the inputs")
log_density = model.conditional_log_density(X_test, y_test)
print(f"mean log p(y | x) on the test inputs: {log_density.mean():.2f}")
