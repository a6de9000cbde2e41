"""
GLLiM on a one-dimensional toy problem
======================================

The smallest case of the model, as in Fig. 2 of Lathuilière et al. (CVPR 2017): a
one-dimensional target ``y`` (``L = 1``), two-dimensional features ``x`` (``D = 2``)
and two affine pieces (``K = 2``).

The features lie on a bent curve traced by the target. GLLiM fits the *inverse*
direction, from ``y`` to ``x``: each component is a straight line in feature space,
``x = A_k y + b_k``, used where its responsibilities are high. Prediction then inverts
the fitted mixture in closed form.
"""

# %%
# Data: a bent curve in the plane
# -------------------------------
# The target is drawn from two clusters; the features go round an arc of a circle as
# the target grows, plus a little noise. The arc bends by more than a right angle, so no
# single straight line through the cloud can tell every target apart.
import matplotlib.pyplot as plt
import numpy as np

from gllim_sk import GLLiMRegressor

rng = np.random.default_rng(0)
n_samples = 400
y = np.concatenate([rng.normal(-1.0, 0.45, n_samples // 2), rng.normal(1.0, 0.45, n_samples // 2)])
angle = 1.4 * y
X = np.column_stack([np.cos(angle), np.sin(angle)]) + rng.normal(scale=0.05, size=(n_samples, 2))

# %%
# Fit a two-component GLLiM
# -------------------------
# ``covariance_type="diag"`` gives each line its own diagonal noise in feature space.
model = GLLiMRegressor(n_components=2, covariance_type="diag", random_state=0)
model.fit(X, y)
print(f"converged after {model.n_iter_} EM iterations: {model.converged_}")
print("mixture weights pi_k:", np.round(model.weights_, 3))
print("target means c_k:", np.round(model.target_means_.ravel(), 3))

# %%
# What EM found
# -------------
# Left: the features, coloured by the responsibility of the first component
# ``p(Z = 1 | x, y)``, and the two fitted lines ``A_k y + b_k`` drawn over the range of
# targets each component explains. Middle: the log-likelihood after each EM iteration,
# which never decreases. Right: targets predicted from the features alone, with the
# forward mixture of eqs. (3)-(4).
responsibilities = model.component_posterior(X, y)
y_pred = model.predict(X)

fig, axes = plt.subplots(1, 3, figsize=(13, 4))
ax = axes[0]
points = ax.scatter(X[:, 0], X[:, 1], c=responsibilities[:, 0], cmap="coolwarm", s=10)
fig.colorbar(points, ax=ax, label="responsibility of component 1")
for k, colour in zip(range(2), ("tab:blue", "tab:red"), strict=True):
    centre = model.target_means_[k, 0]
    spread = 2 * np.sqrt(np.ravel(model.target_covariances_[k])[0])
    y_line = np.linspace(centre - spread, centre + spread, 2)
    x_line = y_line[:, None] * model.inverse_coef_[k, :, 0] + model.inverse_intercept_[k]
    ax.plot(x_line[:, 0], x_line[:, 1], color=colour, lw=3, label=f"$A_{k + 1} y + b_{k + 1}$")
ax.set(xlabel="$x_1$", ylabel="$x_2$", title="feature space", aspect="equal")
ax.legend(loc="center", fontsize="small")

axes[1].plot(np.arange(1, len(model.lower_bounds_) + 1), model.lower_bounds_, marker="o")
axes[1].set(xlabel="EM iteration", ylabel="log-likelihood", title="EM never goes down")

axes[2].scatter(y, y_pred, s=8, alpha=0.6)
limits = [y.min(), y.max()]
axes[2].plot(limits, limits, color="black", lw=1)
axes[2].set(xlabel="true y", ylabel="predicted y", title="forward prediction E[y | x]")
fig.tight_layout()
plt.show()

# %%
# One line is not enough
# ----------------------
# With ``K = 1`` the inverse model is a single line through a bent cloud: the target
# is no longer recoverable from ``x`` where the curve folds back.
for n_components in (1, 2):
    fitted = GLLiMRegressor(n_components=n_components, random_state=0).fit(X, y)
    error = np.mean(np.abs(fitted.predict(X) - y))
    print(f"K = {n_components}: mean absolute error {error:.3f}")
