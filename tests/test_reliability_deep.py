"""Regression tests of issue #11 for the deep estimators: settings and inputs that
gave garbage or messages about internal objects, damaged weight and checkpoint files."""

import pickle

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from test_deep import TinyVGG, blob_images, head, tiny_gllim, tiny_regressor  # noqa: E402
from torch import nn  # noqa: E402

from gllim_sk.deep import DeepGLLiMRegressor, DeepRegressor, VGGFeatures  # noqa: E402
from gllim_sk.deep._backbone import Backbone, load_model  # noqa: E402


@pytest.fixture(scope="module")
def blobs():
    return blob_images(48)


@pytest.mark.parametrize("phases", [(), ((0, 0),), ((0, 0), (0, 1))])
def test_deep_regressor_without_epochs_is_rejected(blobs, phases):
    images, y = blobs
    with pytest.raises(ValueError, match="0 epochs"):
        DeepRegressor(model=TinyVGG(), phases=phases, input_size=32, device="cpu").fit(images, y)


@pytest.mark.parametrize("phases", [[1], ((1, 0, 2),), ((1.5, 0),), ((-1, 0),)])
def test_deep_regressor_malformed_phases(blobs, phases):
    images, y = blobs
    with pytest.raises(ValueError, match="phases must be a non-empty sequence"):
        tiny_regressor(phases=phases).fit(images, y)


def test_deep_regressor_phase_as_a_bare_pair(blobs):
    images, y = blobs
    reg = tiny_regressor(phases=(1, 0)).fit(images, y)
    assert len(reg.history_) == 1


def test_embedding_dim_above_backbone_width_names_the_width(blobs):
    # TinyVGG's last layer has 48 outputs; 36 training images. The width is the
    # problem, not the number of images.
    images, y = blobs
    with pytest.raises(ValueError, match="embedding_dim=60 exceeds the 48 outputs of the "
                                         "backbone's last layer"):
        tiny_gllim(embedding_dim=60).fit(images, y)


def test_embedding_dim_below_number_of_targets_names_the_parameter(blobs):
    images, y = blobs
    with pytest.raises(ValueError, match=r"embedding_dim=1 is smaller than the number of "
                                         r"targets \(2\)"):
        tiny_gllim(embedding_dim=1).fit(images, y)


def test_embedding_dim_above_training_images_says_what_to_lower(blobs):
    images, y = blobs
    with pytest.raises(ValueError, match="embedding_dim=40 needs at least 40 training images"
                                         ".*lower embedding_dim, or leave it at None"):
        tiny_gllim(embedding_dim=40).fit(images, y)


def test_default_embedding_dim_adapts_to_a_small_training_set(blobs, tmp_path):
    images, y = blobs
    reg = tiny_gllim(embedding_dim=None, n_alternations=1).fit(images, y)
    # 36 training images: one feature per ten of them (3), below the 512 default and a
    # quarter of the 48 outputs (12).
    assert reg.settings_["embedding_dim"] == 3
    assert reg.transform(images[:3]).shape == (3, 3)
    assert reg.gllim_.n_features_in_ == 3
    assert np.all(np.isfinite(reg.predict(images)))
    restored = pickle.loads(pickle.dumps(reg))
    np.testing.assert_allclose(restored.predict(images[:4]), reg.predict(images[:4]))
    reg.save_params(tmp_path / "state.pt")
    loaded = tiny_gllim(embedding_dim=None).load_params(tmp_path / "state.pt")
    np.testing.assert_allclose(loaded.predict(images[:4]), reg.predict(images[:4]), rtol=1e-5)


def test_default_embedding_dim_is_capped_by_the_backbone_width():
    images, y = blob_images(160)
    reg = tiny_gllim(embedding_dim=None, n_alternations=0, validation_fraction=0)
    # 160 images would allow 16 features; a quarter of TinyVGG's 48 outputs is 12.
    assert reg.fit(images, y).settings_["embedding_dim"] == 12


def test_deep_estimators_name_a_missing_batch_axis(blobs):
    images, y = blobs
    reg = tiny_regressor(phases=((1, 0),)).fit(images, y)
    with pytest.raises(ValueError, match="without a batch axis"):
        reg.predict(images[0])
    with pytest.raises(ValueError, match="without a batch axis"):
        tiny_gllim().fit(images[0], y[:1])
    assert reg.predict(images[0][None]).shape == (1, 2)


def test_refit_with_other_target_shapes(blobs):
    # Every fit starts afresh: the output shape follows the last y.
    images, y = blobs
    for reg in (tiny_regressor(phases=((1, 0),)), tiny_gllim(n_alternations=1)):
        assert reg.fit(images, y).predict(images[:3]).shape == (3, 2)
        assert reg.fit(images, y[:, 0]).predict(images[:3]).shape == (3,)
        assert reg.n_targets_ == 1


# --------------------------------------------------------------------------- backbones


def test_vit_b_16_backbone_is_built():
    # The issue: ValueError "invalid literal for int() with base 10: 'head'". Built on
    # the meta device: no weights are allocated.
    with torch.device("meta"):
        backbone = Backbone(load_model("vit_b_16", None))
        out = backbone(torch.empty(2, 3, 224, 224, device="meta"))
    # Cut into stages: the patch embedding, one stage per encoder layer, the pooling.
    assert backbone.stage_names == ["embed"] + [f"encoder{i}" for i in range(12)] + ["pool"]
    assert tuple(out.shape) == (2, backbone.n_features_out) == (2, 768)


@pytest.mark.slow
def test_vit_b_16_at_another_input_size_is_a_clear_error(blobs):
    with pytest.raises(ValueError, match="cannot take 32x32 inputs.*input_size"):
        VGGFeatures("vit_b_16", input_size=32, device="cpu").fit(blobs[0][:2])


def _tiny_vit(image_size=32):
    from torchvision.models import VisionTransformer

    torch.manual_seed(0)
    return VisionTransformer(image_size=image_size, patch_size=8, num_layers=1, num_heads=2,
                             hidden_dim=16, mlp_dim=32, num_classes=5)


def _tiny_convnext():
    from torchvision.models import ConvNeXt
    from torchvision.models.convnext import CNBlockConfig

    torch.manual_seed(0)
    return ConvNeXt([CNBlockConfig(8, 16, 1), CNBlockConfig(16, None, 1)], num_classes=5)


@pytest.mark.parametrize("make_model", [_tiny_vit, _tiny_convnext])
def test_transformer_and_convnext_backbones_fit(blobs, make_model):
    images, y = blobs
    features = VGGFeatures(make_model(), input_size=32, device="cpu").fit_transform(images[:3])
    assert features.shape == (3, 16) and np.all(np.isfinite(features))
    reg = tiny_gllim(model=make_model(), trainable_layers=1, n_alternations=1).fit(images, y)
    assert np.all(np.isfinite(reg.predict(images[:3])))
    base = tiny_regressor(model=make_model(), phases=((1, 1),)).fit(images, y)
    assert np.all(np.isfinite(base.predict(images[:3])))


def test_backbone_input_size_is_checked_when_fitting(blobs):
    images, y = blobs
    with pytest.raises(ValueError, match="cannot take 64x64 inputs"):
        tiny_regressor(model=_tiny_vit(32), input_size=64).fit(images, y)
    with pytest.raises(ValueError, match="cannot take 64x64 inputs"):
        tiny_gllim(model=_tiny_vit(32), input_size=64, trainable_layers=1).fit(images, y)


def test_googlenet_layout_trains_without_auxiliary_outputs():
    from torchvision.models import GoogLeNet

    net = GoogLeNet(num_classes=5, aux_logits=True, init_weights=False)
    backbone = Backbone(net).train()
    out = backbone(torch.zeros(2, 3, 64, 64))
    assert isinstance(out, torch.Tensor) and out.shape == (2, 1024)


def test_model_without_linear_classifier_lists_the_supported_ones():
    class NoLinear(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)

    with pytest.raises(ValueError, match="Supported backbones: .*ViT"):
        Backbone(NoLinear())


# --------------------------------------------------------------------------- files


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_damaged_weights_file_is_a_clear_error(tmp_path):
    path = tmp_path / "tiny.pt"
    torch.save(TinyVGG().state_dict(), path)
    _truncate(path)
    with pytest.raises(ValueError, match="cannot be read as a state_dict"):
        load_model(TinyVGG(), path)


def test_save_params_is_atomic_and_damaged_files_are_named(blobs, tmp_path, monkeypatch):
    images, y = blobs
    reg = tiny_regressor(phases=((1, 0),)).fit(images, y)
    path = tmp_path / "state.pt"
    reg.save_params(path)
    before = path.read_bytes()

    def save_then_fail(obj, file):
        file.write(b"PK half a file")
        raise OSError("No space left on device")

    monkeypatch.setattr(torch, "save", save_then_fail)
    with pytest.raises(OSError, match="No space"):
        reg.save_params(path)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["state.pt"]
    _truncate(path)
    with pytest.raises(ValueError, match="cannot be read as a saved DeepRegressor"):
        tiny_regressor(phases=((1, 0),)).load_params(path)


def test_damaged_checkpoint_is_ignored_with_a_warning(blobs, tmp_path):
    images, y = blobs
    first = tiny_gllim(n_alternations=1, checkpoint_dir=tmp_path).fit(images, y)
    (checkpoint,) = tmp_path.glob("*.pt")
    _truncate(checkpoint)
    with pytest.warns(UserWarning, match="cannot be read.*starts from the beginning"):
        again = tiny_gllim(n_alternations=1, checkpoint_dir=tmp_path).fit(images, y)
    np.testing.assert_allclose(again.predict(images[:5]), first.predict(images[:5]),
                               rtol=1e-5, atol=1e-6)
    assert [p.name for p in tmp_path.iterdir()] == [checkpoint.name]  # rewritten whole
    torch.load(checkpoint, weights_only=True)
    assert isinstance(DeepGLLiMRegressor().get_params()["embedding_dim"], type(None))


def test_initial_responsibilities_do_not_depend_on_the_targets_units(blobs):
    # The Gaussian mixture on y that starts the deep fit had an absolute variance floor.
    y = blobs[1]
    reg = tiny_gllim(gllim=head(3))
    reg._head = reg._make_head()
    np.testing.assert_allclose(reg._initial_resp(y * 1e-8, 0), reg._initial_resp(y, 0),
                               atol=1e-8)


def test_deep_regressor_phase_with_too_many_stages_is_named_before_training(blobs,
                                                                            monkeypatch):
    def no_training(*args, **kwargs):
        raise AssertionError("the phases are checked before any training")

    monkeypatch.setattr(torch.optim.SGD, "step", no_training)
    images, y = blobs
    with pytest.raises(ValueError, match=r"phases\[1\] = \(1, 9\) trains 9 backbone stages"):
        tiny_regressor(phases=((1, 0), (1, 9))).fit(images, y)


def test_too_few_images_for_the_components_names_n_components(blobs):
    images, y = blobs
    with pytest.raises(ValueError, match=r"at least 40 are needed \(two per mixture "
                                         r"component, n_components=20\)"):
        tiny_gllim(gllim=head(20)).fit(images, y)
