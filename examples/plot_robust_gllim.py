"""
Robust GLLiM: Student-t components against corrupted training rows
===================================================================

:class:`~gllim_sk.StudentGLLiMRegressor` replaces each Gaussian component of GLLiM by a
multivariate Student t. During EM every training row gets, per component, a weight
``E[u | x, y]``: about its prior value for rows the component explains, much smaller for
rows that fit no component. Corrupted rows then pull the fit far less.

Here 10% of the training rows get the features of another row, multiplied by 5 (a
mismatched, out-of-scale feature vector), and separately 10% of the rows get heavy-tailed
Cauchy noise. Both models are scored on a clean test set, next to the Gaussian model
trained on clean data. ``benchmarks/bench_robust.py`` runs the same comparison over ten
seeds.
"""

# %%
# Data: a smooth map from two targets to twenty features
# ------------------------------------------------------
import matplotlib.pyplot as plt
import numpy as np

from gllim_sk import GLLiMRegressor, StudentGLLiMRegressor

rng = np.random.default_rng(0)
freq = rng.normal(scale=1.5, size=(20, 2))
phase = rng.uniform(0, 2 * np.pi, 20)


def features(y):
    return np.sin(y @ freq.T + phase)


y_train = rng.uniform(-1, 1, (1000, 2))
X_train = features(y_train) + 0.05 * rng.normal(size=(1000, 20))
y_test = rng.uniform(-1, 1, (1000, 2))
X_test = features(y_test) + 0.05 * rng.normal(size=(1000, 20))

bad = rng.choice(1000, 100, replace=False)
X_mismatch = X_train.copy()
X_mismatch[bad] = 5.0 * X_train[rng.integers(0, 1000, 100)]
X_cauchy = X_train.copy()
X_cauchy[bad] += X_train.std(axis=0) * rng.standard_cauchy(size=(100, 20))

# %%
# Fit and score on the clean test set
# -----------------------------------
settings = dict(n_components=10, random_state=0, max_iter=200)


def rmse(model):
    return np.sqrt(np.mean((model.predict(X_test) - y_test) ** 2))


reference = GLLiMRegressor(**settings).fit(X_train, y_train)
print(f"Gaussian GLLiM, clean training data: RMSE {rmse(reference):.4f}")
fits = {}
for name, X in (("mismatched rows", X_mismatch), ("Cauchy noise", X_cauchy)):
    gaussian = GLLiMRegressor(**settings).fit(X, y_train)
    student = StudentGLLiMRegressor(**settings).fit(X, y_train)
    fits[name] = student, X
    print(f"{name:16s} Gaussian GLLiM: RMSE {rmse(gaussian):.4f}   "
          f"Student GLLiM: RMSE {rmse(student):.4f}")
student, X = fits["mismatched rows"]
print("fitted degrees of freedom (mismatched rows):", np.round(student.dof_, 1))

# %%
# Which rows did the Student model discount?
# ------------------------------------------
# :meth:`~gllim_sk.StudentGLLiMRegressor.outlier_weights` gives, for each training pair,
# how much it counted in the fit relative to a typical pair (about 1). The corrupted rows
# get weights near 0.
fig, axes = plt.subplots(1, 2, figsize=(9, 3.5), sharey=True)
clean = np.setdiff1d(np.arange(1000), bad)
for ax, (name, (student, X)) in zip(axes, fits.items(), strict=True):
    weights = student.outlier_weights(X, y_train)
    bins = np.linspace(0, max(weights.max(), 1.5), 40)
    ax.hist(weights[clean], bins=bins, alpha=0.6, label="clean rows")
    ax.hist(weights[bad], bins=bins, alpha=0.6, label="corrupted rows")
    ax.set(title=name, xlabel="outlier_weights")
axes[0].set_ylabel("rows")
axes[0].legend()
fig.tight_layout()
plt.show()
