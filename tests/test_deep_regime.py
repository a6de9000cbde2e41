"""Backbone families, CUDA-pickle fallback, the pretrained backbone and the mechanism test."""

import pickle
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import torchvision  # noqa: E402
from sklearn.metrics import adjusted_rand_score  # noqa: E402
from torch import nn  # noqa: E402

from gllim_sk import GLLiMRegressor  # noqa: E402
from gllim_sk.datasets import make_affine_mixture_images  # noqa: E402
from gllim_sk.deep import (  # noqa: E402
    DeepGLLiMRegressor,
    DeepRegressor,
    DeviceWarning,
    VGGFeatures,
    default_head,
    pretrain_head_backbone,
)
from gllim_sk.deep._backbone import Backbone, last_linear  # noqa: E402


def _penultimate(net, x):
    """The network's own forward pass with its last linear layer made an identity."""
    name, _ = last_linear(net)
    parent_name, _, child = name.rpartition(".")
    parent = net.get_submodule(parent_name) if parent_name else net
    setattr(parent, child, nn.Identity())
    with torch.no_grad():
        return net.eval()(x)


def tiny_convnext():
    from torchvision.models.convnext import CNBlockConfig, ConvNeXt

    torch.manual_seed(0)
    return ConvNeXt([CNBlockConfig(8, 16, 1), CNBlockConfig(16, None, 1)], num_classes=5)


def tiny_vit(image_size=32):
    torch.manual_seed(0)
    return torchvision.models.VisionTransformer(image_size=image_size, patch_size=8,
                                                num_layers=2, num_heads=2, hidden_dim=16,
                                                mlp_dim=32, num_classes=5)


def tiny_resnet():
    from torchvision.models.resnet import BasicBlock, ResNet

    torch.manual_seed(0)
    return ResNet(BasicBlock, [1, 1, 1, 1], num_classes=5)


def _seeded(factory):
    def make():
        torch.manual_seed(0)
        return factory(num_classes=5)
    return make


@pytest.mark.parametrize("make", [tiny_convnext, tiny_vit, tiny_resnet,
                                  _seeded(torchvision.models.mobilenet_v3_small),
                                  _seeded(torchvision.models.regnet_x_400mf)])
def test_backbone_families_equal_the_networks_own_forward(make):
    net = make().eval()
    backbone = Backbone(net).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        out = backbone(x)
        # Any cut gives the same result: stages [0, 2) then the rest.
        two_steps = backbone(backbone(x, 0, 2), 2)
    expected = _penultimate(make(), x)
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(two_steps, expected)
    assert "pool" in backbone.stage_names and out.shape[1] == backbone.n_features_out


def test_other_layouts_are_one_stage_and_equal_the_networks_own_forward():
    make = lambda: torchvision.models.densenet121(num_classes=5)  # noqa: E731
    torch.manual_seed(0)
    backbone = Backbone(make()).eval()
    torch.manual_seed(0)
    expected = _penultimate(make(), torch.ones(1, 3, 32, 32))
    assert backbone.stage_names == ["network"]
    with torch.no_grad():
        torch.testing.assert_close(backbone(torch.ones(1, 3, 32, 32)), expected)


def test_vit_input_size_mismatch_is_a_clear_error():
    images = np.zeros((2, 32, 32, 3), np.uint8)
    with pytest.raises(ValueError, match="cannot take 64x64 inputs.*set input_size=32"):
        VGGFeatures(tiny_vit(), input_size=64, device="cpu").fit_transform(images)


@pytest.mark.parametrize("make", [tiny_convnext, tiny_vit])
def test_deep_estimators_train_other_families(make):
    rng = np.random.default_rng(0)
    images = rng.uniform(size=(24, 32, 32, 3)).astype(np.float32)
    y = rng.normal(size=(24, 2))
    gllim = DeepGLLiMRegressor(model=make(), embedding_dim=4, input_size=32,
                               n_alternations=1, n_epochs=1, trainable_layers=2,
                               batch_size=8, validation_fraction=0.25, device="cpu",
                               random_state=0).fit(images, y)
    reg = DeepRegressor(make(), input_size=32, phases=((1, 0), (1, 2)), batch_size=8,
                        validation_fraction=0.25, device="cpu", random_state=0).fit(images, y)
    for est in (gllim, reg):
        assert np.all(np.isfinite(est.predict(images[:3])))


def test_cuda_pickle_falls_back_to_cpu_with_a_warning():
    rng = np.random.default_rng(0)
    images = rng.uniform(size=(16, 32, 32, 3)).astype(np.float32)
    y = rng.normal(size=16)
    reg = DeepRegressor(tiny_resnet(), input_size=32, phases=((1, 0),), batch_size=8,
                        device="cpu", random_state=0).fit(images, y)
    expected = reg.predict(images)
    reg.set_params(device="cuda")  # as if it had been fitted on a GPU machine
    payload = pickle.dumps(reg)
    if torch.cuda.is_available():
        pytest.skip("the fallback only happens where CUDA is missing")
    with pytest.warns(DeviceWarning, match="CUDA is not available"):
        loaded = pickle.loads(payload)
    assert loaded.device == "cpu"
    np.testing.assert_allclose(loaded.predict(images), expected, rtol=1e-5, atol=1e-6)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pickle.loads(pickle.dumps(loaded))  # a CPU estimator loads silently


# ----------------------------------------------------------------------------- pretraining


def test_pretrained_backbone_is_deterministic_cached_and_loadable(tmp_path):
    settings = dict(n_subjects=3, n_samples=24, image_size=32, n_epochs=1, batch_size=8,
                    random_state=0)
    first = pretrain_head_backbone(cache_dir=tmp_path / "a", **settings)
    second = pretrain_head_backbone(cache_dir=tmp_path / "b", **settings)
    assert first.name == second.name and first.is_file()
    a = torch.load(first, weights_only=True)
    b = torch.load(second, weights_only=True)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert a["fc.weight"].shape == (3, 512)  # one output per person
    # Cached: a second call returns the same file without retraining.
    mtime = first.stat().st_mtime_ns
    assert pretrain_head_backbone(cache_dir=tmp_path / "a", **settings) == first
    assert first.stat().st_mtime_ns == mtime
    # Another setting is another file; no temporary file is left behind.
    other = pretrain_head_backbone(cache_dir=tmp_path / "a", **{**settings, "random_state": 1})
    assert other != first
    assert sorted(p.suffix for p in (tmp_path / "a").iterdir()) == [".json", ".json", ".pt",
                                                                   ".pt"]
    # weights= takes the file; the features are those of the trained trunk.
    images = np.random.default_rng(0).uniform(size=(2, 32, 32, 3)).astype(np.float32)
    features = VGGFeatures("resnet18", weights=first, input_size=32, device="cpu")
    net = torchvision.models.resnet18(num_classes=3)
    net.load_state_dict(a)
    from gllim_sk.deep._backbone import to_input_tensor

    expected = _penultimate(net, to_input_tensor(images, 32, torch.device("cpu"))).numpy()
    np.testing.assert_allclose(features.fit_transform(images), expected, rtol=1e-4, atol=1e-5)


def test_pretraining_rejects_bad_settings(tmp_path):
    with pytest.raises(ValueError, match="n_samples=4 must be at least 2 \\* n_subjects"):
        pretrain_head_backbone(n_subjects=3, n_samples=4, cache_dir=tmp_path)
    with pytest.raises(ValueError, match="image_size must be an integer >= 32"):
        pretrain_head_backbone(image_size=16, cache_dir=tmp_path)
    with pytest.raises(TypeError, match="random_state must be an int"):
        pretrain_head_backbone(random_state=None, cache_dir=tmp_path)


# ----------------------------------------------------------------------------- mechanism


class PixelMLP(nn.Module):
    """A two-hidden-layer perceptron on the pixels, in the VGG layout (fc6, fc7)."""

    def __init__(self, n_pixels=3072, width=32, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.features = nn.Sequential(nn.Identity())
        self.avgpool = nn.Identity()
        self.classifier = nn.Sequential(nn.Linear(n_pixels, width), nn.ReLU(),
                                        nn.Linear(width, width), nn.ReLU(),
                                        nn.Linear(width, 10))


def _mechanism_fit(data, n_alternations, **params):
    defaults = dict(model=PixelMLP(), embedding_dim=4, trainable_layers=2, input_size=32,
                    n_alternations=n_alternations, n_epochs=3, n_frozen_estep=1,
                    batch_size=32, learning_rate=1e-3, validation_fraction=0.0,
                    device="cpu", random_state=0)
    return DeepGLLiMRegressor(**{**defaults, **params}).fit(data.images, data.target)


def _affine_r2(features, y, component):
    """Share of the feature variance explained by one affine map of y per true component."""
    scores = []
    for k in np.unique(component):
        rows = component == k
        design = np.c_[y[rows], np.ones(rows.sum())]
        coef, *_ = np.linalg.lstsq(design, features[rows], rcond=None)
        residual = features[rows] - design @ coef
        scores.append(1 - residual.var(axis=0).sum() / features[rows].var(axis=0).sum())
    return float(np.mean(scores))


def test_mechanism_data_follow_the_stated_model():
    data = make_affine_mixture_images(400, noise=0.0, saturation=0.0, random_state=0)
    # Without noise, z is exactly A_k y + b_k, and without saturation the pixels are an
    # affine function of z: an affine map per component explains all the pixel variance.
    pixels = data.images.reshape(400, -1)
    assert _affine_r2(pixels, data.target, data.component) > 1 - 1e-6
    np.testing.assert_allclose(
        data.latent, np.einsum("ndl,nl->nd", data.coef[data.component], data.target)
        + data.intercept[data.component], atol=1e-12)
    # A GLLiM on the hidden z recovers the true partition of the targets.
    gllim = GLLiMRegressor(2, random_state=0).fit(data.latent, data.target)
    found = gllim.component_posterior(data.latent, data.target).argmax(axis=1)
    assert adjusted_rand_score(data.component, found) > 0.95


def test_each_network_step_lowers_eq9_with_small_steps():
    # Full-batch gradient steps small enough for first-order descent: every fine-tuning
    # lowers eq. (9) on the evaluation-mode features the mixture models.
    data = make_affine_mixture_images(300, random_state=0)
    reg = _mechanism_fit(data, 3, batch_size=300, learning_rate=1e-6)
    steps = reg.history_[1:]
    assert len(steps) == 3
    for record in steps:
        assert record["loss"] < record["loss_before"], record


def test_joint_em_recovers_the_mixture_of_affine_maps():
    data = make_affine_mixture_images(600, random_state=1)
    before = _mechanism_fit(data, 0)
    after = _mechanism_fit(data, 4)
    r2_before = _affine_r2(before.transform(data.images), data.target, data.component)
    r2_after = _affine_r2(after.transform(data.images), data.target, data.component)
    # The fine-tuned features are much closer to one affine map of y per component...
    assert r2_after > r2_before + 0.1
    # ...and the mixture's partition of the training set is the true one.
    features = after.transform(data.images)
    found = after.gllim_.component_posterior(features, data.target).argmax(axis=1)
    assert adjusted_rand_score(data.component, found) > 0.9


# ----------------------------------------------------------------------------- paper preset


@pytest.mark.slow
def test_paper_preset_runs_end_to_end_on_the_cpu_at_a_tiny_size():
    from gllim_sk.datasets import make_head_poses

    data = make_head_poses(32, image_size=32, n_subjects=8, random_state=0)
    tiny = dict(preset="paper", input_size=32, batch_size=8, device="cpu", random_state=0)
    # No validation: the last alternation's weights are kept, so the trained stages moved.
    deep = DeepGLLiMRegressor(n_alternations=2, n_epochs=1, embedding_dim=8,
                              validation_fraction=0.0, **tiny)
    deep.fit(data.images, data.target)
    # The paper's trainable part: VGG-16 blocks 4-5 and the fully-connected layers.
    assert deep.settings_["trainable_layers"] == 5 and deep.settings_["n_frozen_estep"] == "all"
    assert [h["estep_frozen"] for h in deep.history_] == [True, True, True]
    stages = deep.network_.backbone.stage_names
    assert stages[-5:] == ["block4", "block5", "pool", "fc6", "fc7"]
    # Same seed, no fine-tuning: the initial weights. Blocks 1-3 are untouched, the
    # trained stages moved.
    start = DeepGLLiMRegressor(n_alternations=0, embedding_dim=8, validation_fraction=0.0,
                               **tiny)
    start.fit(data.images, data.target)
    for name, before, after in zip(stages, start.network_.backbone.stages,
                                   deep.network_.backbone.stages, strict=True):
        same = all(torch.equal(a, b) for a, b in zip(before.state_dict().values(),
                                                     after.state_dict().values(), strict=True))
        if name in ("block4", "block5", "fc6", "fc7"):
            assert not same, name
        elif name != "pool":
            assert same, name
    assert np.all(np.isfinite(deep.predict(data.images[:4])))
    base = DeepRegressor(**tiny).fit(data.images, data.target, groups=data.subject)
    assert [h["phase"] for h in base.history_] == [0, 0, 0, 1, 1, 1]
    assert np.all(np.isfinite(base.predict(data.images[:4])))


# ------------------------------------------------- the backbone's BatchNorm (issue 24's mechanism)


def _resnet_pretrained_on_other_images():
    """A tiny ResNet whose BatchNorm statistics are unlike those of the images fitted
    later, as in a backbone pretrained on another data set."""
    net = tiny_resnet()
    generator = torch.Generator().manual_seed(1)
    for module in net.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.normal_(0.0, 0.5, generator=generator)
            module.running_var.uniform_(0.3, 3.0, generator=generator)
    return net.eval()


@pytest.mark.parametrize("estimator", ["gllim", "l2"])
def test_fine_tuning_at_zero_learning_rate_leaves_the_features_unchanged(estimator):
    # Before issue 24's fix the trained backbone stages ran in training mode, so that an
    # epoch of minibatches replaced their BatchNorm statistics by those of the new images:
    # the features of every image moved (here by a third of their spread) although no
    # weight did, and the PCA layer and the mixture fitted to them no longer matched.
    from gllim_sk.datasets import make_head_poses

    data = make_head_poses(48, image_size=32, n_subjects=6, random_state=0)
    net = _resnet_pretrained_on_other_images()
    common = dict(model=net, input_size=32, batch_size=16, learning_rate=1e-12, device="cpu",
                  validation_fraction=0, random_state=0)
    drift = {}
    for freeze in (True, False):
        if estimator == "gllim":
            fits = [DeepGLLiMRegressor(embedding_dim=8, trainable_layers=2, n_epochs=1,
                                       n_alternations=n, n_frozen_estep=2,
                                       freeze_batchnorm=freeze, **common)
                    .fit(data.images, data.target) for n in (0, 1)]
            before, after = (reg.transform(data.images) for reg in fits)
        else:
            fits = [DeepRegressor(phases=phases, freeze_batchnorm=freeze, **common)
                    .fit(data.images, data.target) for phases in (((1, 0),), ((1, 0), (1, 2)))]
            # The network's output before its linear head: the backbone's features.
            before, after = (reg.network_.backbone(
                torch.as_tensor(reg.training_inputs(data.images, 0, "cpu")
                                .get(np.arange(48)))).detach().numpy() for reg in fits)
        drift[freeze] = np.abs(after - before).max() / before.std()
    assert drift[True] < 1e-4, drift
    assert drift[False] > 0.05, drift  # the mechanism: the statistics alone move them
    # The net passed in is copied, never trained in place.
    assert all(not m.training for m in net.modules())


def _nuisance_images(n, seed):
    """Images of a weak 2-D pose and a strong binary nuisance (think of two people)
    that is independent of the pose: the nuisance dominates the features."""
    rng = np.random.default_rng(seed)
    y = rng.uniform(-1, 1, (n, 2))
    who = rng.integers(0, 2, n)
    patterns = np.random.default_rng(123).normal(size=(4, 3072))
    pixels = (0.5 + 0.12 * patterns[who] + 0.01 * y @ patterns[2:]
              + 0.1 * rng.normal(size=(n, 3072)))
    return np.clip(pixels, 0, 1).reshape(n, 32, 32, 3), y, who


def test_joint_em_keeps_the_partition_of_the_targets_instead_of_collapsing():
    # Issue 24's collapse in miniature: 48 features of 180 training images. With the full
    # E-step after the first fit (the authors' schedule), the mixture's components become
    # the nuisance's clusters, and the fine-tuning pulls the features onto the two
    # cluster codes: the noise precision explodes while the pose is lost. The default
    # keeps the E-step frozen at the targets' partition. Both fits use the authors'
    # isotropic noise, under which the collapse was measured (a full covariance absorbs
    # this nuisance's single direction).
    images, y, who = _nuisance_images(240, 0)
    fits = {}
    for n_frozen in (1, None):  # None: the preset's default
        reg = DeepGLLiMRegressor(gllim=default_head(covariance_type="tied_spherical"),
                                 model=PixelMLP(width=64), embedding_dim=48,
                                 trainable_layers=2, input_size=32, n_alternations=8,
                                 n_epochs=2, n_frozen_estep=n_frozen, batch_size=32,
                                 learning_rate=3e-2, validation_fraction=0.25, device="cpu",
                                 random_state=0).fit(images, y)
        features = reg.transform(images)
        partition = reg.gllim_.component_posterior(features, y).argmax(axis=1)
        precision = 1.0 / reg.gllim_.noise_covariances_.mean()
        fits[n_frozen] = (reg, adjusted_rand_score(who, partition), precision)
    full_em, default = fits[1], fits[None]
    assert default[0].settings_["n_frozen_estep"] == "all"
    assert full_em[1] > 0.9, full_em[1]      # components = the nuisance's clusters
    assert default[1] < 0.2, default[1]
    assert full_em[2] > 5 * default[2], (full_em[2], default[2])
    val = [np.mean(h["val_mae"]) for h in default[0].history_]
    assert val[-1] < val[0] and max(val) <= val[0] + 1e-9, val


def test_fine_tuned_features_are_predicted_with_a_full_noise_covariance():
    # Issue 24's first-alternation rise in miniature (600 synthetic heads of 12 people,
    # the validation people held out): the fine-tuning makes the features' residual
    # correlated across dimensions, and the authors' isotropic noise, which ignores
    # that correlation, predicts worse from the better features; the default full
    # shared covariance (with the same isotropic eq. (9) loss for the network) does not.
    from gllim_sk.datasets import make_head_poses

    data = make_head_poses(600, image_size=32, n_subjects=12, random_state=0)
    curves = {}
    for covariance_type in ("tied_spherical", None):  # None: the default
        params = {} if covariance_type is None else {"covariance_type": covariance_type}
        for seed in range(3):
            reg = DeepGLLiMRegressor(gllim=default_head(**params), model=PixelMLP(width=256),
                                     trainable_layers=2, input_size=32, n_alternations=2,
                                     n_epochs=2, batch_size=32, learning_rate=1e-2,
                                     device="cpu", random_state=seed)
            reg.fit(data.images, data.target, groups=data.subject)
            curves[covariance_type, seed] = [np.mean(h["val_mae"]) for h in reg.history_]
    assert default_head().covariance_type == "tied"  # DeepGLLiMRegressor's default head
    for seed in range(3):
        isotropic, default = curves["tied_spherical", seed], curves[None, seed]
        # The network's trajectory is the same in both (eq. (9) with the same A_k,
        # b_k); only the mixture that predicts from its features differs.
        assert max(isotropic) > 1.25 * isotropic[0], isotropic  # the rise
        assert max(default) < 1.1 * default[0], default
