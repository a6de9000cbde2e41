"""Tests of gllim_sk.deep on the CPU with tiny networks and images; nothing is downloaded."""

import importlib
import pickle
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from sklearn.base import clone  # noqa: E402
from sklearn.model_selection import GridSearchCV, KFold  # noqa: E402
from torch import nn  # noqa: E402

from gllim_sk import GLLiMRegressor  # noqa: E402
from gllim_sk.deep import (  # noqa: E402
    DeepGLLiMRegressor,
    DeepRegressor,
    VGGFeatures,
    default_head,
)
from gllim_sk.deep._backbone import Backbone, load_model, to_input_tensor  # noqa: E402
from gllim_sk.deep._deep_gllim import (  # noqa: E402
    _noise_precision,
    mixture_regression_loss,
)
from gllim_sk.deep._torch import TrainingInputs, resolve_device  # noqa: E402
from gllim_sk.pipelines import make_vgg_ir, make_vgg_svr  # noqa: E402


class TinyVGG(nn.Module):
    """A VGG-layout network small enough for tests (stages block1, block2, pool, fc6, fc7)."""

    def __init__(self, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.avgpool = nn.AdaptiveAvgPool2d((2, 2))
        self.classifier = nn.Sequential(
            nn.Linear(64, 64), nn.ReLU(), nn.Dropout(),
            nn.Linear(64, 48), nn.ReLU(), nn.Dropout(),
            nn.Linear(48, 10),
        )


def blob_images(n, size=32, seed=0):
    """Images of a bright blob whose position encodes the two targets (in 'degrees')."""
    rng = np.random.default_rng(seed)
    y = rng.uniform(-30, 30, size=(n, 2))
    grid = np.linspace(-1, 1, size)
    yy, xx = np.meshgrid(grid, grid, indexing="ij")
    cx, cy = y[:, 0] / 40, y[:, 1] / 40
    blob = np.exp(-((xx - cx[:, None, None]) ** 2 + (yy - cy[:, None, None]) ** 2) / 0.05)
    images = blob[..., None] * np.array([1.0, 0.6, 0.3]) + rng.uniform(0, 0.2, (n, size, size, 3))
    return np.clip(images, 0, 1).astype(np.float32), y


def tiny_gllim(**params):
    defaults = dict(model=TinyVGG(), embedding_dim=8, input_size=32, n_alternations=2,
                    n_epochs=1, trainable_layers=2, batch_size=16, learning_rate=0.01,
                    validation_fraction=0.25, device="cpu", random_state=0)
    defaults.update(params)
    return DeepGLLiMRegressor(**defaults)


def head(n_components=2, **params):
    """The default head of DeepGLLiMRegressor with other settings."""
    return default_head(n_components=n_components, **params)


def tiny_regressor(**params):
    defaults = dict(model=TinyVGG(), input_size=32, phases=((1, 0), (1, 2)), batch_size=16,
                    learning_rate=0.01, validation_fraction=0.25, device="cpu", random_state=0)
    defaults.update(params)
    return DeepRegressor(**defaults)


@pytest.fixture(scope="module")
def blobs():
    return blob_images(48)


@pytest.fixture(scope="module")
def fitted_gllim(blobs):
    images, y = blobs
    return tiny_gllim().fit(images, y)


# ----------------------------------------------------------------------------- packaging


def test_lazy_top_level_import():
    import gllim_sk

    assert gllim_sk.DeepGLLiMRegressor is DeepGLLiMRegressor
    assert gllim_sk.VGGFeatures is VGGFeatures


def test_missing_torch_gives_install_hint(monkeypatch):
    for name in list(sys.modules):
        if name.startswith("gllim_sk.deep"):
            monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(ImportError, match=r'pip install "gllim_sk\[deep\]"'):
        importlib.import_module("gllim_sk.deep")


# ----------------------------------------------------------------------------- backbone


def test_vgg16_stages_and_fc7_features():
    images = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    vgg = VGGFeatures(weights=None, input_size=32, device="cpu").fit(images)
    assert vgg.stage_names_ == ["block1", "block2", "block3", "block4", "block5", "pool",
                                "fc6", "fc7"]
    features = vgg.transform(images)
    assert features.shape == (3, 4096) and features.dtype == np.float32
    assert np.all(features >= 0)  # fc7 is read after its ReLU
    assert list(vgg.get_feature_names_out()[:2]) == ["vggfeatures0", "vggfeatures1"]


def test_features_equal_a_manual_forward_pass():
    images, _ = blob_images(5)
    net = TinyVGG(seed=3)
    features = VGGFeatures(net, input_size=32, batch_size=2, device="cpu").fit_transform(images)
    # Independent computation: normalise, run features/avgpool/first two linear layers.
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    x = (torch.from_numpy(images).permute(0, 3, 1, 2) - mean) / std
    net.eval()
    with torch.no_grad():
        expected = net.classifier[:5](torch.flatten(net.avgpool(net.features(x)), 1)).numpy()
    np.testing.assert_allclose(features, expected, rtol=1e-5, atol=1e-6)


def test_features_layer_grayscale_resize_and_batches():
    rng = np.random.default_rng(1)
    gray = rng.uniform(size=(4, 40, 40))
    vgg = VGGFeatures(TinyVGG(), layer="pool", input_size=32, batch_size=3, device="cpu")
    out = vgg.fit_transform(gray)
    assert out.shape == (4, 64) and vgg.n_features_out_ == 64
    rgb = np.repeat(gray[..., None], 3, axis=-1)
    np.testing.assert_allclose(vgg.transform(rgb), out, rtol=1e-6)
    one_by_one = np.vstack([vgg.transform(gray[i : i + 1]) for i in range(4)])
    np.testing.assert_allclose(one_by_one, out, rtol=1e-5, atol=1e-6)


def test_state_dict_weights_file_and_module_untouched(tmp_path):
    source = TinyVGG(seed=7)
    path = tmp_path / "tiny.pt"
    torch.save(source.state_dict(), path)
    user_module = TinyVGG(seed=0)
    before = {k: v.clone() for k, v in user_module.state_dict().items()}
    images, _ = blob_images(4)
    from_file = VGGFeatures(user_module, weights=path, input_size=32, device="cpu")
    direct = VGGFeatures(source, input_size=32, device="cpu")
    np.testing.assert_allclose(from_file.fit_transform(images), direct.fit_transform(images),
                               rtol=1e-6)
    for key, value in user_module.state_dict().items():
        assert torch.equal(value, before[key])
    with pytest.raises(FileNotFoundError, match="does not exist"):
        VGGFeatures(TinyVGG(), weights=tmp_path / "missing.pt", device="cpu").fit(images)


def test_bad_model_and_weights_names():
    images, _ = blob_images(2)
    with pytest.raises(ValueError, match="not a torchvision classification model"):
        VGGFeatures("not_a_model", device="cpu").fit(images)
    with pytest.raises(ValueError, match="weights name"):
        load_model(TinyVGG(), "DEFAULT")
    with pytest.raises(ValueError, match="not a stage"):
        VGGFeatures(TinyVGG(), layer="fc9", input_size=32, device="cpu").fit(images)


def test_resnet_layout_is_split_into_stages():
    import torchvision

    backbone = Backbone(torchvision.models.resnet18(weights=None))
    assert backbone.stage_names == ["stem", "layer1", "layer2", "layer3", "layer4", "pool"]
    assert backbone.n_features_out == 512


def test_resolve_device():
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda")


# ----------------------------------------------------------------------------- loss


def test_mixture_loss_matches_a_direct_computation():
    rng = np.random.default_rng(0)
    B, K, E, L = 5, 3, 4, 2
    x, y = rng.normal(size=(B, E)), rng.normal(size=(B, L))
    r = rng.dirichlet(np.ones(K), size=B)
    A, b = rng.normal(size=(K, E, L)), rng.normal(size=(K, E))
    lam = rng.uniform(0.5, 2.0, size=K)
    M = rng.normal(size=(K, E, E))
    P = M @ np.swapaxes(M, 1, 2) + E * np.eye(E)
    t = lambda a: torch.as_tensor(a, dtype=torch.float64)  # noqa: E731
    iso = mixture_regression_loss(t(x), t(y), t(r), t(A), t(b),
                                  t(np.repeat(lam[:, None], E, axis=1))).numpy()
    full = mixture_regression_loss(t(x), t(y), t(r), t(A), t(b), t(P)).numpy()
    for n in range(B):
        eq9 = sum(r[n, k] * lam[k] * np.sum((A[k] @ y[n] + b[k] - x[n]) ** 2) for k in range(K))
        quad = sum(r[n, k] * (A[k] @ y[n] + b[k] - x[n]) @ P[k] @ (A[k] @ y[n] + b[k] - x[n])
                   for k in range(K))
        assert iso[n] == pytest.approx(eq9 / E, rel=1e-10)
        assert full[n] == pytest.approx(quad / E, rel=1e-10)


@pytest.mark.parametrize("covariance_type", ["tied_spherical", "diag", "tied"])
def test_noise_precision_inverts_the_fitted_noise(covariance_type):
    rng = np.random.default_rng(0)
    y = rng.normal(size=(60, 2))
    X = y @ rng.normal(size=(2, 5)) + 0.3 * rng.normal(size=(60, 5))
    gllim = GLLiMRegressor(2, covariance_type=covariance_type, random_state=0).fit(X, y)
    prec = _noise_precision(gllim, torch.device("cpu")).double().numpy()
    cov = np.asarray(gllim.noise_covariances_)
    for k in range(2):
        if covariance_type == "tied_spherical":
            dense_cov = cov * np.eye(5)
        elif covariance_type == "diag":
            dense_cov = np.diag(cov[k])
        else:
            dense_cov = cov
        dense_prec = prec[k] if prec.ndim == 3 else np.diag(prec[k])
        np.testing.assert_allclose(dense_prec @ dense_cov, np.eye(5), atol=1e-4)


# ----------------------------------------------------------------------------- caching


def test_cached_inputs_equal_uncached():
    images, _ = blob_images(10)
    backbone = Backbone(TinyVGG()).eval()
    index = np.array([1, 4, 7])
    for split in (3, 4):  # after "pool", after "fc6"
        cached = TrainingInputs(backbone, images, split, 32, torch.device("cpu"), cache=True,
                                batch_size=4)
        plain = TrainingInputs(backbone, images, split, 32, torch.device("cpu"), cache=False,
                               batch_size=4)
        assert cached.cached is not None and plain.cached is None
        np.testing.assert_allclose(cached.get(index).numpy(), plain.get(index).numpy(),
                                   rtol=1e-5, atol=1e-6)


def test_deep_gllim_cached_fit_equals_uncached(blobs):
    images, y = blobs
    cached = tiny_gllim(cache=True).fit(images, y)
    plain = tiny_gllim(cache=False).fit(images, y)
    for a, b in zip(cached.history_, plain.history_, strict=True):
        np.testing.assert_allclose(a["epoch_losses"], b["epoch_losses"], rtol=1e-4)
    np.testing.assert_allclose(cached.predict(images), plain.predict(images), rtol=1e-3,
                               atol=1e-3)


def test_deep_regressor_cached_fit_equals_uncached(blobs):
    images, y = blobs
    cached = tiny_regressor(cache=True).fit(images, y)
    plain = tiny_regressor(cache=False).fit(images, y)
    np.testing.assert_allclose([h["loss"] for h in cached.history_],
                               [h["loss"] for h in plain.history_], rtol=1e-4)
    np.testing.assert_allclose(cached.predict(images), plain.predict(images), rtol=1e-3,
                               atol=1e-3)


# ----------------------------------------------------------------------------- DeepGLLiM


def test_deep_gllim_shapes_and_history(fitted_gllim, blobs):
    images, y = blobs
    reg = fitted_gllim
    assert reg.predict(images[:5]).shape == (5, 2)
    mean, std = reg.predict(images[:5], return_std=True)
    assert std.shape == (5, 2) and np.all(std > 0)
    features = reg.transform(images[:5])
    assert features.shape == (5, 8)
    np.testing.assert_allclose(reg.gllim_.predict(features), mean, rtol=1e-10)
    assert [h["alternation"] for h in reg.history_] == [0, 1, 2]
    # By default every fit keeps the targets' partition (n_frozen_estep="all").
    assert all(h["estep_frozen"] for h in reg.history_)
    assert np.isnan(reg.history_[0]["loss"]) and len(reg.history_[1]["epoch_losses"]) == 1
    # Alternation 1 starts from the mixture fitted with the frozen E-step, whose noise
    # variance makes the loss exactly 1 on the features it was fitted on.
    assert reg.history_[1]["loss_before"] == pytest.approx(1.0, rel=1e-3)
    for h in reg.history_:
        assert h["val_mae"].shape == (2,) and np.isfinite(h["log_likelihood"])
    best = reg.history_[reg.best_alternation_]["val_mae"].mean()
    assert best == min(h["val_mae"].mean() for h in reg.history_)


def test_deep_gllim_one_dimensional_target(blobs):
    images, y = blobs
    reg = tiny_gllim(gllim=head(1), n_alternations=1).fit(images, y[:, 0])
    assert reg.predict(images[:4]).shape == (4,)


def test_pca_initialisation_whitens_the_training_features(blobs):
    images, y = blobs
    reg = tiny_gllim(n_alternations=0, validation_fraction=0.0, pca_bias="zero").fit(images, y)
    X = reg.transform(images)
    # Without fine-tuning the features are the whitened PCA scores of the fc7 features.
    np.testing.assert_allclose(X.mean(axis=0), 0, atol=1e-4)
    np.testing.assert_allclose(X.var(axis=0, ddof=1), 1, rtol=1e-3)
    fc7 = VGGFeatures(TinyVGG(), input_size=32, device="cpu").fit_transform(images)
    centred = fc7 - fc7.mean(axis=0)
    top = np.linalg.svd(centred, full_matrices=False)[0][:, :8]
    # Same subspace as the top 8 principal components.
    residual = X - top @ (top.T @ X)
    assert np.linalg.norm(residual) < 1e-3 * np.linalg.norm(X)


def test_training_lowers_the_loss_and_validation_error():
    images, y = blob_images(400, seed=1)
    reg = DeepGLLiMRegressor(
        model=TinyVGG(seed=1), embedding_dim=16, input_size=32, n_alternations=3, n_epochs=2,
        trainable_layers=5, batch_size=32, learning_rate=0.003, validation_fraction=0.25,
        device="cpu", random_state=0,
    ).fit(images, y)
    hist = reg.history_
    for h in hist[1:]:  # each fine-tuning lowers eq. (9) for its mixture
        assert h["loss"] < h["loss_before"]
    assert hist[1]["epoch_losses"][-1] < hist[1]["epoch_losses"][0]
    lls = [h["log_likelihood"] for h in hist]
    assert all(b > a for a, b in zip(lls, lls[1:], strict=False))  # features fit the mixture
    val = [h["val_mae"].mean() for h in hist]
    assert min(val[1:]) < 0.9 * val[0]  # fine-tuning improved the held-out error
    assert reg.best_alternation_ > 0


@pytest.mark.parametrize("responsibilities", ["prior", "prior_sampled"])
def test_authors_responsibilities(blobs, responsibilities):
    images, y = blobs
    reg = tiny_gllim(responsibilities=responsibilities, n_frozen_estep=0).fit(images, y)
    assert len(reg.history_) == 3 and np.isfinite(reg.history_[-1]["loss"])


@pytest.mark.parametrize("covariance_type", ["diag", "tied"])
def test_other_noise_types_train(blobs, covariance_type):
    images, y = blobs
    reg = tiny_gllim(gllim=head(covariance_type=covariance_type), n_alternations=1)
    reg.fit(images, y)
    assert np.isfinite(reg.history_[-1]["loss"])


def test_determinism(blobs):
    images, y = blobs
    estimator = tiny_gllim()
    torch.manual_seed(123)
    state_before = torch.get_rng_state()
    a = estimator.fit(images, y).predict(images)
    assert torch.equal(torch.get_rng_state(), state_before)  # the user's RNG is untouched
    b = tiny_gllim().fit(images, y).predict(images)
    c = tiny_gllim(random_state=1).fit(images, y).predict(images)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


def test_inputs_are_not_modified(blobs):
    images, y = blobs
    images_copy, y_copy = images.copy(), y.copy()
    tiny_gllim(n_alternations=1).fit(images, y)
    np.testing.assert_array_equal(images, images_copy)
    np.testing.assert_array_equal(y, y_copy)


# ----------------------------------------------------------------------------- sklearn


def test_clone_get_set_params():
    reg = tiny_gllim(gllim=head(3))
    params = reg.get_params()
    assert params["gllim__n_components"] == 3 and params["preset"] == "quick"
    cloned = clone(reg)
    assert cloned.get_params()["gllim__n_components"] == 3
    assert cloned.model is not reg.model  # modules are deep-copied
    cloned.set_params(gllim__n_components=1, learning_rate=0.5)
    assert cloned.gllim.n_components == 1 and reg.gllim.n_components == 3


def test_grid_search_over_n_components(blobs):
    images, y = blobs
    search = GridSearchCV(tiny_gllim(gllim=head(), n_alternations=1),
                          {"gllim__n_components": [1, 2]},
                          cv=KFold(2, shuffle=True, random_state=0))
    search.fit(images, y)
    assert search.best_params_["gllim__n_components"] in (1, 2)
    assert search.predict(images[:3]).shape == (3, 2)


def test_pickle_round_trip(fitted_gllim, blobs):
    images, _ = blobs
    restored = pickle.loads(pickle.dumps(fitted_gllim))
    np.testing.assert_array_equal(restored.predict(images), fitted_gllim.predict(images))
    reg = tiny_regressor().fit(*blobs)
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(reg)).predict(images),
                                  reg.predict(images))


def test_vgg_features_pickle_and_weight_file(blobs, tmp_path):
    images, _ = blobs
    vgg = VGGFeatures(TinyVGG(seed=5), input_size=32, device="cpu").fit(images)
    expected = vgg.transform(images[:4])
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(vgg)).transform(images[:4]),
                                  expected)
    vgg.save_params(tmp_path / "vgg.pt")
    fresh = VGGFeatures(TinyVGG(seed=9), input_size=32, device="cpu").load_params(
        tmp_path / "vgg.pt")
    np.testing.assert_array_equal(fresh.transform(images[:4]), expected)


def test_mixed_precision_runs(blobs):
    images, y = blobs
    reg = tiny_gllim(mixed_precision=True, n_alternations=1).fit(images, y)
    assert np.all(np.isfinite(reg.predict(images[:4])))


def test_save_and_load_params(fitted_gllim, blobs, tmp_path):
    images, _ = blobs
    path = tmp_path / "deep_gllim.pt"
    fitted_gllim.save_params(path)
    fresh = clone(fitted_gllim).load_params(path)
    np.testing.assert_allclose(fresh.predict(images), fitted_gllim.predict(images), rtol=1e-10)
    assert fresh.history_[1]["loss"] == fitted_gllim.history_[1]["loss"]
    reg = tiny_regressor().fit(*blobs)
    reg.save_params(tmp_path / "reg.pt")
    np.testing.assert_allclose(clone(reg).load_params(tmp_path / "reg.pt").predict(images),
                               reg.predict(images), rtol=1e-6)
    with pytest.raises(ValueError, match="DeepRegressor state"):
        clone(fitted_gllim).load_params(tmp_path / "reg.pt")


def test_checkpoint_resume_equals_uninterrupted_fit(blobs, tmp_path):
    images, y = blobs
    full = tiny_gllim(n_alternations=3).fit(images, y)
    tiny_gllim(n_alternations=1, checkpoint_dir=tmp_path).fit(images, y)
    assert (tmp_path / "deep_gllim_checkpoint.pt").exists()
    resumed = tiny_gllim(n_alternations=3, checkpoint_dir=tmp_path).fit(images, y)
    assert [h["alternation"] for h in resumed.history_] == [0, 1, 2, 3]
    for a, b in zip(full.history_, resumed.history_, strict=True):
        np.testing.assert_allclose(a["epoch_losses"], b["epoch_losses"], rtol=1e-6)
    np.testing.assert_allclose(resumed.predict(images), full.predict(images), rtol=1e-6)
    with pytest.raises(ValueError, match="checkpoint of another fit"):
        tiny_gllim(gllim=head(1), checkpoint_dir=tmp_path).fit(images, y)


def test_interrupted_fit_resumes(blobs, tmp_path, monkeypatch):
    images, y = blobs
    full = tiny_gllim(n_alternations=2).fit(images, y)
    original = DeepGLLiMRegressor._finetune
    calls = []

    def interrupt_second(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    monkeypatch.setattr(DeepGLLiMRegressor, "_finetune", interrupt_second)
    with pytest.raises(KeyboardInterrupt):
        tiny_gllim(n_alternations=2, checkpoint_dir=tmp_path).fit(images, y)
    monkeypatch.setattr(DeepGLLiMRegressor, "_finetune", original)
    resumed = tiny_gllim(n_alternations=2, checkpoint_dir=tmp_path).fit(images, y)
    np.testing.assert_allclose(resumed.predict(images), full.predict(images), rtol=1e-6)


# ----------------------------------------------------------------------------- DeepRegressor


def test_deep_regressor_fit_predict(blobs):
    images, y = blobs
    reg = tiny_regressor().fit(images, y)
    assert reg.predict(images[:4]).shape == (4, 2)
    assert [h["phase"] for h in reg.history_] == [0, 1]
    assert reg.history_[1]["learning_rate"] == pytest.approx(0.01)
    assert 0 <= reg.best_epoch_ < 2
    one_d = tiny_regressor(phases=((1, 0),)).fit(images, y[:, 1])
    assert one_d.predict(images[:4]).shape == (4,)


def test_deep_regressor_batchnorm_holds_the_training_statistics(blobs):
    images, y = blobs
    reg = tiny_regressor(validation_fraction=0.0).fit(images, y)  # trained on all images
    # The BatchNorm's inputs, recomputed with the fitted backbone in one pass.
    with torch.inference_mode():
        features = reg.network_.backbone(to_input_tensor(images, 32, torch.device("cpu")))
    features = features.numpy().astype(np.float64)
    norm = reg.network_.head[0]
    np.testing.assert_allclose(norm.running_mean.numpy(), features.mean(axis=0), atol=1e-5)
    np.testing.assert_allclose(norm.running_var.numpy(), features.var(axis=0, ddof=1),
                               rtol=1e-4, atol=1e-8)


def test_deep_regressor_learning_rate_schedule(blobs):
    images, y = blobs
    reg = tiny_regressor(phases=((2, 0), (2, 1)), lr_decay_every=1, lr_decay=0.5).fit(images, y)
    assert [h["learning_rate"] for h in reg.history_] == pytest.approx(
        [0.01, 0.005, 0.0025, 0.00125])


def test_presets_fill_unset_parameters(blobs):
    images, y = blobs
    reg = tiny_regressor(phases=None, batch_size=None, learning_rate=None).fit(images, y)
    assert reg.settings_["phases"] == ((2, 0), (2, 1)) and reg.settings_["learning_rate"] == 1e-3
    assert reg.settings_["input_size"] == 32  # explicitly set values win


# ----------------------------------------------------------------------------- pipelines


def test_vgg_pipelines(blobs):
    images, y = blobs
    angles = np.column_stack([y, y[:, 0] - y[:, 1]])
    svr = make_vgg_svr(weights=None, input_size=32, device="cpu",
                                vgg_params={"model": TinyVGG()})
    assert svr.fit(images, angles).predict(images[:2]).shape == (2, 3)
    ir = make_vgg_ir(2, weights=None, input_size=32, device="cpu",
                              vgg_params={"model": TinyVGG()}, random_state=0)
    assert list(ir.named_steps) == ["vgg", "gllim"]
    assert ir.fit(images, angles).predict(images[:2]).shape == (2, 3)


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize("Estimator", [tiny_gllim, tiny_regressor])
def test_clear_errors(Estimator, blobs):
    images, y = blobs
    with pytest.raises(ValueError, match="shape"):
        Estimator().fit(images[:, :, :, 0].reshape(len(images), -1), y)  # 2-D "images"
    with pytest.raises(ValueError, match="channels"):
        Estimator().fit(np.zeros((len(images), 32, 32, 2)), y)
    bad_y = y.copy()
    bad_y[3, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        Estimator().fit(images, bad_y)
    with pytest.raises(ValueError, match="different numbers of samples"):
        Estimator().fit(images, y[:-1])
    with pytest.raises(ValueError, match="too few images"):
        Estimator().fit(images[:2], y[:2])
    with pytest.raises(ValueError, match="preset"):
        Estimator(preset="fast").fit(images, y)
    with pytest.raises(ValueError, match="too small"):
        Estimator(input_size=16).fit(images, y)


def test_gllim_specific_errors(blobs):
    images, y = blobs
    with pytest.raises(ValueError, match="trainable_layers=9 exceeds"):
        tiny_gllim(trainable_layers=9).fit(images, y)
    with pytest.raises(ValueError, match="embedding_dim=60 exceeds"):
        tiny_gllim(embedding_dim=60, validation_fraction=0).fit(np.vstack([images] * 2),
                                                               np.vstack([y] * 2))
    with pytest.raises(ValueError, match="embedding_dim=40 needs at least 40 training images"):
        tiny_gllim(embedding_dim=40).fit(images, y)  # 36 training images < 40
    from sklearn.exceptions import NotFittedError

    with pytest.raises(NotFittedError):
        tiny_gllim().predict(images)


# ----------------------------------------------------------------------------- slow


@pytest.mark.slow
def test_quick_preset_on_vgg16_and_synthetic_heads():
    from gllim_sk.datasets import make_head_poses

    data = make_head_poses(100, image_size=64, random_state=0)
    reg = DeepGLLiMRegressor(embedding_dim=32, n_alternations=2, device="cpu", random_state=0)
    reg.fit(data.images, data.target)
    assert reg.settings_["input_size"] == 64 and reg.settings_["trainable_layers"] == 1
    assert reg.predict(data.images[:3]).shape == (3, 3)
    assert all(h["loss"] < h["loss_before"] for h in reg.history_[1:])
    base = DeepRegressor(device="cpu", random_state=0).fit(data.images, data.target)
    assert base.predict(data.images[:3]).shape == (3, 3)


def test_validation_split_by_groups_is_person_disjoint():
    from gllim_sk.deep._base import train_validation_split

    groups = np.repeat(np.arange(12), 5)
    train, val = train_validation_split(60, 0.25, np.random.RandomState(0), 2, groups)
    assert not set(groups[train]) & set(groups[val])
    assert len(set(groups[val])) == 3  # a quarter of the 12 people
    np.testing.assert_array_equal(np.sort(np.concatenate([train, val])), np.arange(60))


def test_deep_estimators_take_groups(blobs):
    images, y = blobs
    groups = np.arange(len(images)) // 4
    for model in (tiny_regressor(), tiny_gllim()):
        assert np.all(np.isfinite(model.fit(images, y, groups=groups).predict(images[:4])))
        with pytest.raises(ValueError, match="groups"):
            model.fit(images, y, groups=groups[:-1])
        with pytest.raises(ValueError, match="groups"):
            model.fit(images, y, groups=np.zeros(len(images)))


def test_vgg_features_random_state_seeds_the_random_initialisation(blobs):
    images = blobs[0][:3]

    def features(seed):
        # A model given by name is built (randomly initialised) inside fit.
        return VGGFeatures(model="resnet18", weights=None, input_size=32, device="cpu",
                           random_state=seed).fit_transform(images)

    np.testing.assert_array_equal(features(0), features(0))
    assert not np.allclose(features(0), features(1))
