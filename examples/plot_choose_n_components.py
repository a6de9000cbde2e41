"""
Choosing the number of components
=================================

Two ways to pick ``K`` (``n_components``):

- the **Bayesian information criterion** of the fitted joint density ``p(x, y)``,
  :meth:`~gllim_sk.GLLiMRegressor.bic`, which needs no held-out data;
- **cross-validation** of the prediction error with
  :class:`~sklearn.model_selection.GridSearchCV`, which measures what you care about
  when the model is used for regression.

They answer different questions (how well the model describes the data, how well it
predicts) and need not agree; both are cheap for a model of this size.
"""

# %%
# A non-linear map from two targets to twenty noisy features
# ----------------------------------------------------------
import matplotlib.pyplot as plt
import numpy as np
from sklearn.model_selection import GridSearchCV, KFold, train_test_split

from gllim_sk import GLLiMRegressor

rng = np.random.default_rng(0)
n_samples, n_features = 600, 20
y = rng.uniform(-1.0, 1.0, size=(n_samples, 2))
# Each feature is a smooth, different non-linear function of the two targets.
frequencies = rng.normal(scale=1.0, size=(2, n_features))
phases = rng.uniform(0, 2 * np.pi, n_features)
X = np.sin(y @ frequencies + phases) + rng.normal(scale=0.5, size=(n_samples, n_features))
X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.3, random_state=0)

candidates = [1, 2, 3, 4, 6, 8, 12]

# %%
# BIC on the training set
# -----------------------
bic = []
for n_components in candidates:
    model = GLLiMRegressor(n_components=n_components, random_state=0).fit(X_train, y_train)
    bic.append(model.bic(X_train, y_train))
best_bic = candidates[int(np.argmin(bic))]
print(f"lowest BIC at K = {best_bic}")

# %%
# Cross-validated prediction error
# --------------------------------
# ``neg_mean_absolute_error`` averages over both targets; greater is better, so the
# error is its negation.
search = GridSearchCV(
    GLLiMRegressor(random_state=0),
    param_grid={"n_components": candidates},
    scoring="neg_mean_absolute_error",
    cv=KFold(n_splits=3, shuffle=True, random_state=0),
)
search.fit(X_train, y_train)
cv_error = -search.cv_results_["mean_test_score"]
cv_error_std = search.cv_results_["std_test_score"]
print(f"lowest cross-validated error at K = {search.best_params_['n_components']}")
test_error = np.mean(np.abs(search.predict(X_test) - y_test))
print(f"test error of the refitted best model: {test_error:.3f}")

# %%
# Both criteria against K
# -----------------------
fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
axes[0].plot(candidates, bic, marker="o")
axes[0].axvline(best_bic, color="grey", ls=":")
axes[0].set(xlabel="K (n_components)", ylabel="BIC (lower is better)", title="model.bic(X, y)")
axes[1].errorbar(candidates, cv_error, yerr=cv_error_std, marker="o", capsize=3)
axes[1].axvline(search.best_params_["n_components"], color="grey", ls=":")
axes[1].set(
    xlabel="K (n_components)",
    ylabel="mean absolute error",
    title="GridSearchCV, 3-fold",
)
fig.tight_layout()
plt.show()

# %%
# BIC judges the joint density of ``(x, y)`` and charges every component for its
# ``D (L + 2)`` mapping and noise parameters, so with many noisy features it settles on a
# few components. Cross-validation only asks how well ``y`` is predicted and here
# tolerates more. When the model is used as a regressor, trust the cross-validated error;
# BIC is a cheap first guess that needs no refits.
#
# For head-pose angles, score with :data:`gllim_sk.metrics.angle_error_scorer`, and
# split by person (``GroupKFold`` with ``groups=subject``) so that no face is seen in
# both the training and the validation folds.
