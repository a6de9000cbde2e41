"""Backbones: loading torchvision models, cutting them into stages, preprocessing images.

A backbone is an ordered list of named *stages* (``nn.Module`` s run one after the
other). For VGG-16 they are ``block1`` ... ``block5`` (the convolutional blocks, each
ending with its max-pooling), ``pool`` (adaptive average pooling and flattening),
``fc6`` and ``fc7`` (linear + ReLU). The classification layer is dropped. Cutting the
network into stages lets the estimators freeze a prefix, run it once and cache its
output (``trainable_layers`` counts the trainable stages from the end).
"""

import copy
import os

import numpy as np
import torch
import torchvision
from torch import nn
from torch.nn import functional as F

from .._images import images_to_float

__all__ = ["Backbone", "load_model", "replace_classifier", "to_input_tensor"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _is_path(weights):
    if isinstance(weights, os.PathLike):
        return True
    return isinstance(weights, str) and (
        os.sep in weights or weights.endswith((".pt", ".pth", ".bin")) or os.path.exists(weights)
    )


def load_model(model, weights):
    """Return a fresh ``nn.Module`` for ``model`` with the requested ``weights``.

    Parameters
    ----------
    model : str or nn.Module
        A torchvision classification model name (``"vgg16"``, ``"resnet18"``...) or a
        module, which is deep-copied (the caller's module is never modified).
    weights : str, path-like or None
        ``None``: random initialisation. A torchvision weights name (``"DEFAULT"``,
        ``"IMAGENET1K_V1"``): torchvision downloads the file to its cache
        (``$TORCH_HOME/hub/checkpoints``, by default ``~/.cache/torch``) on first use.
        A path: a ``state_dict`` file read with ``torch.load(..., weights_only=True)``.
    """
    if isinstance(model, nn.Module):
        net = copy.deepcopy(model)
        if weights is not None and not _is_path(weights):
            raise ValueError(
                f"weights={weights!r}: a weights name only applies to a torchvision model "
                "name; with an nn.Module pass None or the path of a state_dict file."
            )
    elif isinstance(model, str):
        if model not in torchvision.models.list_models(module=torchvision.models):
            raise ValueError(
                f"model={model!r} is not a torchvision classification model; see "
                "torchvision.models.list_models(module=torchvision.models)."
            )
        named = None if weights is None or _is_path(weights) else weights
        try:
            net = torchvision.models.get_model(model, weights=named)
        except (KeyError, ValueError) as exc:
            raise ValueError(
                f"weights={weights!r} is not a weights name of torchvision model {model!r} "
                "(use e.g. 'DEFAULT', 'IMAGENET1K_V1', None, or a path to a state_dict file)."
            ) from exc
    else:
        raise TypeError(f"model must be a torchvision model name or an nn.Module, got {model!r}.")
    if weights is not None and _is_path(weights):
        path = os.fspath(weights)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"weights file {path!r} does not exist.")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises several types on damaged archives
            raise ValueError(
                f"weights file {path!r} cannot be read as a state_dict (damaged, or not "
                f"written by torch.save): {exc}"
            ) from exc
        if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
            state = state["state_dict"]
        # A network trained for another number of classes (e.g. by
        # pretrain_head_backbone) loads too: its classification layer is resized first.
        last_name, _ = last_linear(net)
        saved = state.get(f"{last_name}.weight") if last_name is not None else None
        if saved is not None and tuple(saved.shape) != tuple(
                net.get_submodule(last_name).weight.shape):
            replace_classifier(net, saved.shape[0])
        net.load_state_dict(state)
    return net


def last_linear(net):
    """``(name, module)`` of the last ``nn.Linear`` of ``net`` (``(None, None)`` if none)."""
    found = (None, None)
    for name, module in net.named_modules():
        if isinstance(module, nn.Linear):
            found = (name, module)
    return found


def _set_submodule(net, name, module):
    parent_name, _, child = name.rpartition(".")
    parent = net.get_submodule(parent_name) if parent_name else net
    setattr(parent, child, module)  # also replaces a Sequential's numbered child


def replace_classifier(net, n_classes):
    """Give a classification network a fresh ``n_classes``-way last linear layer (in place)."""
    name, old = last_linear(net)
    if name is None:
        raise ValueError("the model has no linear classification layer.")
    _set_submodule(net, name, nn.Linear(old.in_features, n_classes))
    return net


def _without_dropout(layers):
    # The authors' Keras VGG-16 has no dropout; here it would only add noise to the
    # features that the mixture models, so it is removed.
    return [nn.Identity() if isinstance(layer, nn.Dropout) else layer for layer in layers]


def _split_features_classifier(net):
    """VGG, AlexNet, MobileNet, EfficientNet, ConvNeXt: ``features``, ``avgpool``, ``classifier``.

    A trunk with max-poolings (VGG, AlexNet) is cut after each pooling (``block1``,
    ``block2``...); other trunks are cut after each of their children.
    """
    stages, block = [], []
    pooled = any(isinstance(layer, nn.MaxPool2d) for layer in net.features)
    for layer in net.features:
        block.append(layer)
        if not pooled or isinstance(layer, nn.MaxPool2d):
            stages.append((f"block{len(stages) + 1}", nn.Sequential(*block)))
            block = []
    if block:
        stages.append((f"block{len(stages) + 1}", nn.Sequential(*block)))
    classifier = list(net.classifier)
    linear_at = [i for i, layer in enumerate(classifier) if isinstance(layer, nn.Linear)]
    if not linear_at:
        raise ValueError("the model's classifier has no linear layer.")
    head = classifier[linear_at[-1]]
    # What precedes the first linear layer (ConvNeXt's LayerNorm2d) runs on the pooled
    # map, as in the model's own forward.
    before_first = _without_dropout(classifier[: linear_at[0]])
    stages.append(("pool", nn.Sequential(net.avgpool, *before_first, nn.Flatten(1))))
    # One stage per hidden linear layer with what follows it (ReLU); the last linear is
    # the classification head and is dropped.
    hidden = linear_at[:-1]
    for j, start in enumerate(hidden):
        stop = linear_at[j + 1]
        stages.append((f"fc{6 + j}", nn.Sequential(*_without_dropout(classifier[start:stop]))))
    return stages, head.in_features


def _split_resnet(net):
    """ResNet, ResNeXt, Wide ResNet: ``stem``, ``layer1``..``layer4``, ``pool``."""
    stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
    stages = [("stem", stem)]
    stages += [(name, getattr(net, name)) for name in ("layer1", "layer2", "layer3", "layer4")]
    stages.append(("pool", nn.Sequential(net.avgpool, nn.Flatten(1))))
    return stages, net.fc.in_features


def _split_regnet(net):
    """RegNet: ``stem``, ``block1``..``block4``, ``pool``."""
    stages = [("stem", net.stem)]
    stages += [(name, block) for name, block in net.trunk_output.named_children()]
    stages.append(("pool", nn.Sequential(net.avgpool, nn.Flatten(1))))
    return stages, net.fc.in_features


class _ViTEmbedding(nn.Module):
    """Patches, class token and position embedding of a torchvision VisionTransformer."""

    def __init__(self, vit):
        super().__init__()
        self.conv_proj = vit.conv_proj
        self.class_token = vit.class_token
        self.pos_embedding = vit.encoder.pos_embedding
        self.dropout = vit.encoder.dropout
        self.image_size = vit.image_size

    def forward(self, x):
        if tuple(x.shape[-2:]) != (self.image_size, self.image_size):
            raise ValueError(
                f"this vision transformer takes {self.image_size} x {self.image_size} "
                f"inputs, got {tuple(x.shape[-2:])}; set input_size={self.image_size}."
            )
        x = self.conv_proj(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.class_token.expand(len(x), -1, -1), x], dim=1)
        return self.dropout(x + self.pos_embedding)


class _ClassToken(nn.Module):
    def forward(self, x):
        return x[:, 0]


def _split_vit(net):
    """VisionTransformer: ``embed``, ``encoder0``.., ``pool`` (final norm, class token)."""
    stages = [("embed", _ViTEmbedding(net))]
    stages += [(f"encoder{i}", layer) for i, layer in enumerate(net.encoder.layers)]
    stages.append(("pool", nn.Sequential(net.encoder.ln, _ClassToken())))
    return stages, net.hidden_dim


# Families of torchvision classifiers the estimators can cut into stages: name prefix,
# test of the module's layout, splitter. No other code looks at a model's family.
_FAMILIES = (
    (("vgg", "alexnet", "mobilenet", "efficientnet", "convnext"),
     lambda net: all(hasattr(net, a) for a in ("features", "avgpool", "classifier"))
     and isinstance(net.classifier, nn.Sequential), _split_features_classifier),
    (("resnet", "resnext", "wide_resnet"),
     lambda net: all(hasattr(net, a) for a in ("conv1", "bn1", "layer4", "avgpool", "fc")),
     _split_resnet),
    (("regnet",), lambda net: all(hasattr(net, a) for a in ("stem", "trunk_output", "fc")),
     _split_regnet),
    (("vit",), lambda net: all(hasattr(net, a) for a in ("conv_proj", "class_token", "encoder")),
     _split_vit),
)


def _split_generic(net):
    """Other layouts (DenseNet, Swin, MaxViT, GoogLeNet, ...): the whole network as one
    stage, its last linear layer replaced by an identity (no partial freezing)."""
    if getattr(net, "aux_logits", False):
        # GoogLeNet and Inception return auxiliary outputs in training mode.
        net.aux_logits = False
        for name in ("aux1", "aux2", "AuxLogits"):
            if hasattr(net, name):
                setattr(net, name, None)
    name, last = last_linear(net)
    if last is None:
        raise ValueError(
            "cannot find the classification layer (an nn.Linear) of the model. Supported "
            "backbones: torchvision classification models whose last layer is linear "
            "(cut into stages: VGG, AlexNet, MobileNet, EfficientNet, ConvNeXt, ResNet, "
            "ResNeXt, Wide ResNet, RegNet, ViT; as one stage: DenseNet, MNASNet, "
            "ShuffleNet, Swin, MaxViT, GoogLeNet, Inception; not SqueezeNet) or a module "
            "with one of these layouts."
        )
    _set_submodule(net, name, nn.Identity())
    return [("network", net)], last.in_features


class Backbone(nn.Module):
    """A classification network cut into named stages, without its classification layer.

    Parameters
    ----------
    net : nn.Module
        A torchvision classification network. Those of the families in ``_FAMILIES``
        (VGG, AlexNet, MobileNet, EfficientNet, ConvNeXt, ResNet/ResNeXt/Wide ResNet,
        RegNet, ViT), or modules with the same layout, are cut into stages; any other
        network whose last layer is linear is one stage (no partial freezing).
    """

    def __init__(self, net):
        super().__init__()
        for _, matches, split in _FAMILIES:
            if matches(net):
                stages, n_out = split(net)
                break
        else:
            stages, n_out = _split_generic(net)
        self.stage_names = [name for name, _ in stages]
        self.stages = nn.ModuleList([module for _, module in stages])
        self.n_features_out = n_out

    def stop_index(self, layer):
        """Index one past the stage named ``layer`` (``None``: the last stage)."""
        if layer is None:
            return len(self.stages)
        if layer not in self.stage_names:
            raise ValueError(
                f"layer={layer!r} is not a stage of this backbone: {self.stage_names}."
            )
        return self.stage_names.index(layer) + 1

    def forward(self, x, start=0, stop=None):
        for stage in self.stages[start:stop]:
            x = stage(x)
        return x

    def check_input_size(self, input_size):
        """Run one blank image through the network: a clear error if it cannot take
        ``input_size x input_size`` inputs (ViT needs its own size, Inception 75 px...)."""
        was_training = self.training
        device = next(self.parameters()).device
        try:
            self.eval()
            with torch.inference_mode():
                self(torch.zeros(1, 3, input_size, input_size, device=device))
        except (RuntimeError, AssertionError, ValueError) as exc:
            raise ValueError(
                f"the backbone cannot take {input_size}x{input_size} inputs: {exc} Choose "
                "another input_size (e.g. the model's own, 224 for most torchvision "
                "models, 299 for Inception)."
            ) from exc
        finally:
            self.train(was_training)


def to_input_tensor(images, input_size, device, dtype=torch.float32):
    """Images ``(n, H, W, C)`` (uint8 or [0, 1] floats) -> normalised ``(n, 3, S, S)`` tensor.

    Grayscale images are repeated over the three channels; images are resized with
    antialiased bilinear interpolation and normalised with the ImageNet mean and std.
    """
    arr = images_to_float(images)
    x = torch.from_numpy(np.ascontiguousarray(arr)).to(device=device, dtype=dtype)
    x = x.permute(0, 3, 1, 2)
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    size = (input_size, input_size) if np.isscalar(input_size) else tuple(input_size)
    if tuple(x.shape[-2:]) != size:
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
    mean = torch.tensor(IMAGENET_MEAN, device=device, dtype=dtype).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=device, dtype=dtype).view(1, 3, 1, 1)
    return (x - mean) / std
