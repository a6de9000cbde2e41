"""The mixture head of DeepGLLiMRegressor as an estimator; History and callbacks."""

import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from scipy.stats import multivariate_normal  # noqa: E402
from test_deep import blob_images, head, tiny_gllim, tiny_regressor  # noqa: E402

from gllim_sk import GLLiMRegressor, StudentGLLiMRegressor  # noqa: E402
from gllim_sk.deep import Callback, EarlyStopping, History, LRSchedule  # noqa: E402

TESTS = Path(__file__).parent


@pytest.fixture(scope="module")
def blobs():
    return blob_images(48)


def mixture_data(seed=0, n=300, outliers=30):
    rng = np.random.default_rng(seed)
    y = rng.uniform(-1, 1, (n, 2))
    X = np.hstack([np.sin(3 * y), np.cos(3 * y), y**2]) + 0.05 * rng.normal(size=(n, 6))
    y_bad = y.copy()
    y_bad[:outliers] = rng.uniform(-1, 1, (outliers, 2))  # labels replaced at random
    resp = np.column_stack([y_bad[:, 0] < 0, y_bad[:, 0] >= 0]).astype(float)
    return X, y_bad, resp


# ----------------------------------------------------------------------------- the interface


@pytest.mark.parametrize("Estimator", [GLLiMRegressor, StudentGLLiMRegressor])
@pytest.mark.parametrize("covariance_type",
                         ["diag", "full", "spherical", "tied", "tied_diag", "tied_spherical"])
def test_noise_precision_and_fitted_arrays(Estimator, covariance_type):
    X, y, _ = mixture_data()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = Estimator(2, covariance_type=covariance_type, target_covariance_type="diag",
                          random_state=0).fit(X, y)
    prec, cov = model.noise_precision(), np.asarray(model.noise_covariances_)
    eye = np.eye(6)
    for k in range(2):
        dense = {"diag": np.diag(cov[k]) if cov.ndim == 2 else None,
                 "full": cov[k] if cov.ndim == 3 else None,
                 "spherical": cov[k] * eye if cov.ndim == 1 else None,
                 "tied": cov if cov.ndim == 2 else None,
                 "tied_diag": np.diag(cov) if cov.ndim == 1 else None,
                 "tied_spherical": cov * eye if cov.ndim == 0 else None}[covariance_type]
        dense_prec = prec[k] if prec.ndim == 3 else np.diag(prec[k])
        np.testing.assert_allclose(dense_prec @ dense, eye, atol=1e-8)
    # Rebuilt from its parameters and public arrays only: the same model.
    arrays = model.get_fitted_arrays()
    assert all(isinstance(v, (np.ndarray, int, float, bool)) for v in arrays.values())
    rebuilt = Estimator(**model.get_params()).set_fitted_arrays(arrays)
    np.testing.assert_allclose(rebuilt.predict(X), model.predict(X), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(rebuilt.joint_log_density(X, y), model.joint_log_density(X, y),
                               rtol=1e-10, atol=1e-10)
    with pytest.raises(ValueError, match="do not match"):
        Estimator(3, covariance_type=covariance_type,
                  target_covariance_type="diag").set_fitted_arrays(arrays)


def test_student_expected_scale_is_the_t_weight():
    X, y, resp = mixture_data()
    model = StudentGLLiMRegressor(2, covariance_type="diag", random_state=0)
    model.fit_frozen_estep(X, y, resp)
    # The partition is held: the weights are the given responsibilities' means.
    np.testing.assert_allclose(model.weights_, resp.mean(axis=0), rtol=1e-10)
    assert model.n_iter_ > 1  # EM ran on the scales u and the degrees of freedom
    u = model.expected_scale(X, y)
    # (alpha + p/2) / (1 + delta/2), delta the Mahalanobis distance of (y, x) under the
    # joint Gaussian covariance of component k, computed directly from the attributes.
    p = 2 + 6
    for k in range(2):
        A, b, c = model.inverse_coef_[k], model.inverse_intercept_[k], model.target_means_[k]
        gamma, sigma = model.target_covariances_[k], np.diag(model.noise_covariances_[k])
        mean = np.concatenate([c, A @ c + b])
        cov = np.block([[gamma, gamma @ A.T], [A @ gamma, A @ gamma @ A.T + sigma]])
        diff = np.hstack([y, X]) - mean
        delta = np.einsum("ni,ij,nj->n", diff, np.linalg.inv(cov), diff)
        alpha = model.dof_[k] / 2
        np.testing.assert_allclose(u[:, k], (alpha + p / 2) / (1 + delta / 2), rtol=1e-8)
    weight = (resp * u).sum(axis=1)
    assert weight[:30].mean() < 0.5 * weight[30:].mean()  # the wrong labels count less
    gaussian = GLLiMRegressor(2).fit_frozen_estep(X, y, resp)
    np.testing.assert_array_equal(gaussian.expected_scale(X, y), np.ones((300, 2)))
    # The Gaussian frozen E-step is one M-step: the weighted means of the partition.
    yc = (resp[:, 0] @ y) / resp[:, 0].sum()
    np.testing.assert_allclose(gaussian.target_means_[0], yc, rtol=1e-10)
    np.testing.assert_allclose(
        gaussian.lower_bound_,
        np.mean(np.log(sum(
            gaussian.weights_[k] * multivariate_normal.pdf(
                np.hstack([y, X]), np.concatenate([gaussian.target_means_[k],
                                                   gaussian.forward_means_[k]]),
                joint_cov(gaussian, k)) for k in range(2)))), rtol=1e-8)


def joint_cov(model, k):
    A, gamma = model.inverse_coef_[k], model.target_covariances_[k]
    sigma = np.diag(model.noise_covariances_[k])
    return np.block([[gamma, gamma @ A.T], [A @ gamma, A @ gamma @ A.T + sigma]])


def test_student_head_weights_the_loss_by_the_expected_scale(blobs):
    images, y = blobs
    y = y.copy()
    y[:6] = y[::-1][:6]  # a few wrong labels
    # One component (r = 1), no validation split: the fit with n_alternations=0 is the
    # first alternation's starting point (same seed), which gives its features and
    # mixture.
    student = StudentGLLiMRegressor(1, covariance_type="tied_spherical")
    common = dict(gllim=student, validation_fraction=0.0)
    reg = tiny_gllim(n_alternations=1, **common).fit(images, y)
    start = tiny_gllim(n_alternations=0, **common).fit(images, y)
    assert isinstance(reg.gllim_, StudentGLLiMRegressor) and reg.gllim_.dof_.shape == (1,)
    X, gllim = start.transform(images), start.gllim_
    u = gllim.expected_scale(X, y)[:, 0]
    assert u[:6].mean() < u[6:].mean()  # the wrong labels weigh less
    A, b = gllim.inverse_coef_[0], gllim.inverse_intercept_[0]
    quad = ((y @ A.T + b - X) ** 2).sum(1) / float(gllim.noise_covariances_)
    # The weights r u divided by their mean (the Gaussian head's scale of the loss).
    expected = np.mean(u * quad) / X.shape[1] / np.mean(u)
    assert reg.history_[1, "loss_before"] == pytest.approx(expected, rel=1e-4)
    assert np.isfinite(reg.history_[1, "loss"])

    # loss_weights="responsibilities": the same Student mixture, every sample weighted
    # by r_nk alone (eq. (9) of the Gaussian head), from the same starting point.
    plain = tiny_gllim(n_alternations=1, loss_weights="responsibilities", **common)
    plain.fit(images, y)
    assert isinstance(plain.gllim_, StudentGLLiMRegressor)
    assert plain.history_[1, "loss_before"] == pytest.approx(np.mean(quad) / X.shape[1],
                                                             rel=1e-4)
    assert plain.history_[1, "loss_before"] != pytest.approx(expected, rel=1e-3)


def test_loss_weights_change_nothing_for_the_gaussian_head(blobs):
    images, y = blobs
    fits = [tiny_gllim(n_alternations=1, loss_weights=w, validation_fraction=0.0,
                       random_state=0).fit(images, y)
            for w in ("expected_scale", "responsibilities")]
    np.testing.assert_array_equal(fits[0].predict(images), fits[1].predict(images))
    assert fits[0].history_[1, "loss"] == fits[1].history_[1, "loss"]


def test_flat_parameters_are_deprecated_and_equal_the_head(blobs):
    images, y = blobs
    with pytest.warns(FutureWarning, match=r"\['covariance_type', 'n_components'\]"):
        flat = tiny_gllim(n_components=1, covariance_type="diag", n_alternations=1).fit(images, y)
    new = tiny_gllim(gllim=GLLiMRegressor(1, covariance_type="diag"),
                     n_alternations=1).fit(images, y)
    np.testing.assert_array_equal(flat.predict(images), new.predict(images))
    with pytest.raises(ValueError, match="gllim are both given"):
        tiny_gllim(n_components=1, gllim=head()).fit(images, y)
    with pytest.raises(Exception, match="gllim"):
        tiny_gllim(gllim=object()).fit(images, y)


def test_the_given_head_is_not_modified(blobs):
    images, y = blobs
    given = StudentGLLiMRegressor(2, covariance_type="tied_spherical")
    reg = tiny_gllim(gllim=given, n_alternations=1).fit(images, y)
    assert not hasattr(given, "weights_") and given.resp_init is None
    assert reg.gllim_ is not given


def test_checkpoint_of_a_student_head_resumes_in_another_process(blobs, tmp_path):
    images, y = blobs
    np.savez(tmp_path / "data.npz", images=images, y=y)
    params = "gllim=StudentGLLiMRegressor(2, covariance_type='tied_spherical')"
    script = textwrap.dedent(f"""
        import sys
        import numpy as np
        sys.path.insert(0, {str(TESTS)!r})
        from test_deep import tiny_gllim
        from gllim_sk import StudentGLLiMRegressor
        data = np.load({str(tmp_path / 'data.npz')!r})
        n, directory = int(sys.argv[1]), sys.argv[2]
        reg = tiny_gllim({params}, n_alternations=n, checkpoint_dir=directory)
        reg.fit(data["images"], data["y"])
        np.save(f"{{directory}}/pred{{n}}.npy", reg.predict(data["images"]))
    """)
    # The second process resumes after alternation 1; the uninterrupted fit runs in a
    # process of its own too, so that both have the same thread settings.
    for n, directory in ((1, "ck"), (3, "ck"), (3, "full")):
        subprocess.run([sys.executable, "-c", script, str(n), str(tmp_path / directory)],
                       check=True, timeout=300)
    saved = torch.load(tmp_path / "ck" / "deep_gllim_checkpoint.pt", weights_only=True)
    assert saved["gllim"]["class"] == "gllim_sk._student:StudentGLLiMRegressor"
    assert set(saved["gllim"]) == {"class", "params", "arrays"}
    np.testing.assert_allclose(np.load(tmp_path / "ck" / "pred3.npy"),
                               np.load(tmp_path / "full" / "pred3.npy"), rtol=1e-6)


def test_a_file_of_the_old_layout_is_a_clear_error(blobs, tmp_path):
    from sklearn.base import clone

    reg = tiny_gllim(n_alternations=0).fit(*blobs)
    reg.save_params(tmp_path / "new.pt")
    payload = torch.load(tmp_path / "new.pt", weights_only=True)
    payload["attributes"]["gllim_"] = {"params": {"n_components": 2}, "state": {}}
    torch.save(payload, tmp_path / "old.pt")
    with pytest.raises(ValueError, match="earlier gllim_sk version"):
        clone(reg).load_params(tmp_path / "old.pt")


def test_the_deep_code_calls_nothing_private_of_its_head():
    import re

    import gllim_sk.deep

    # An attribute of a head (gllim, gllim_, head, _head...) that starts with "_".
    private = re.compile(r"\b(gllim_?|head|_head)\._")
    for path in Path(gllim_sk.deep.__file__).parent.glob("*.py"):
        assert not private.findall(path.read_text()), path


# ----------------------------------------------------------------------------- history


def test_history_indexing():
    h = History([{"epoch": 1, "loss": 2.0, "epochs": History([{"loss": 3.0}])},
                 {"epoch": 2, "loss": 1.0, "val_mae": np.array([1.0, 2.0]),
                  "epochs": History([{"loss": 4.0}, {"loss": 5.0}])}])
    assert h[:, "loss"] == [2.0, 1.0]
    assert h[-1, "epoch"] == 2 and h[-1]["epoch"] == 2
    assert h[:, "val_mae"][0].tolist() == [1.0, 2.0]  # rows without the key are skipped
    assert h[-1, "epochs", :, "loss"] == [4.0, 5.0]
    assert h[:, "epochs", -1, "loss"] == [3.0, 5.0]
    assert isinstance(h[:1], History) and len(h[:1]) == 1
    with pytest.raises(KeyError):
        h[0, "val_mae"]


def test_both_estimators_share_the_history(blobs):
    images, y = blobs
    deep, base = tiny_gllim().fit(images, y), tiny_regressor().fit(images, y)
    common = {"epoch", "loss", "val_mae", "learning_rate", "train_time", "time"}
    for history in (deep.history_, base.history_):
        assert isinstance(history, History)
        assert all(common <= set(row) for row in history)
    assert deep.history_[:, "epoch"] == [0, 1, 2] and base.history_[:, "epoch"] == [1, 2]
    assert deep.history_[2, "epochs", :, "epoch"] == [2]
    assert deep.history_[2, "epoch_losses"] == deep.history_[2, "epochs", :, "loss"]


class Recorder(Callback):
    def __init__(self):
        self.calls = []

    def on_train_begin(self, estimator):
        self.calls.append("begin")

    def on_epoch_end(self, estimator, record):
        assert record is estimator.history_[-1]
        self.calls.append(record["epoch"])

    def on_train_end(self, estimator):
        self.calls.append("end")


def test_callbacks_parameter_and_early_stopping(blobs):
    images, y = blobs
    recorder = Recorder()
    reg = tiny_regressor(phases=((3, 0),), callbacks=[recorder]).fit(images, y)
    assert recorder.calls == []  # a copy ran
    assert len(reg.history_) == 3 and not reg.stop_training_

    class Stop(EarlyStopping):
        def on_epoch_end(self, estimator, record):  # a validation error that never improves
            record["val_mae"] = np.array([1.0, 1.0])
            super().on_epoch_end(estimator, record)

    deep = tiny_gllim(n_alternations=4, callbacks=[Stop(patience=2)]).fit(images, y)
    # Rows 0 (best), 1 and 2 (no improvement, patience 2): stopped after alternation 2.
    assert deep.history_[:, "alternation"] == [0, 1, 2] and deep.stop_training_
    assert deep.history_[-1, "stopped_early"]
    with pytest.raises(TypeError, match="Callback instances"):
        tiny_regressor(callbacks=[print]).fit(images, y)


def test_learning_rate_schedule_runs_at_every_fine_tuning_epoch(blobs):
    images, y = blobs
    schedule = LRSchedule(0.04, decay=0.5, every=1)
    deep = tiny_gllim(n_alternations=2, n_epochs=2, callbacks=[schedule]).fit(images, y)
    # Epochs 1-4 across the two alternations, halved at each.
    rates = [deep.history_[a, "epochs", :, "learning_rate"] for a in (1, 2)]
    np.testing.assert_allclose(sum(rates, []), [0.04, 0.02, 0.01, 0.005])
    assert deep.history_[:, "learning_rate"] == [None, 0.04, 0.01]
