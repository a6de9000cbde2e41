"""The deep estimators: VGGFeatures, DeepRegressor (VGG-FCL-FT) and DeepGLLiMRegressor."""

import copy
import hashlib
import math
import os
import time
import warnings
from numbers import Integral, Real
from pathlib import Path

import numpy as np
import torch
from sklearn.base import (
    BaseEstimator,
    ClassNamePrefixFeaturesOutMixin,
    RegressorMixin,
    TransformerMixin,
    _fit_context,
)
from sklearn.decomposition import PCA
from sklearn.model_selection import GroupShuffleSplit
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_array, check_is_fitted
from torch import nn

from .._files import atomic_write
from .._gllim_math import NOISE_STRUCTURES, TARGET_STRUCTURES
from .._images import check_images
from ._backbone import Backbone, load_model, to_input_tensor
from ._torch import (
    TorchStateMixin,
    TrainingInputs,
    _from_torch_payload,
    _to_torch_payload,
    infer,
    progress,
    resolve_device,
    seeded,
    set_trainable,
    torch_seed,
    train_epochs,
)

__all__ = ["DeepGLLiMRegressor", "DeepRegressor", "VGGFeatures", "mixture_regression_loss"]

_MIN_IMAGE_SIZE = 8
# The authors' embedding width; DeepGLLiMRegressor lowers it for small training sets.
DEFAULT_EMBEDDING_DIM = 512

# Settings that a ``preset`` fills in for parameters left at None.
_REGRESSOR_PRESETS = {
    # CPU: small inputs, only the head then the last fully connected layer trained.
    # lr 1e-2 diverged on synthetic heads from random weights; 1e-3 lowers the
    # validation error in the fc7 phase (benchmarks/bench_deep.py).
    "quick": {"input_size": 64, "phases": ((2, 0), (2, 1)), "batch_size": 32,
              "learning_rate": 1e-3},
    # The paper's VGG-FCL-FT: 224 x 224, 3 epochs of the last layer, then the last four
    # layers (fc6, fc7, BatchNorm, head); SGD lr 1e-3 halved every 3 epochs.
    "paper": {"input_size": 224, "phases": ((3, 0), (3, 2)), "batch_size": 128,
              "learning_rate": 1e-3},
}
_GLLIM_PRESETS = {
    # CPU: small inputs, only fc7 and the added layers trained (fc6 output cached).
    "quick": {"input_size": 64, "trainable_layers": 1, "n_alternations": 4, "n_epochs": 2,
              "n_frozen_estep": 1, "batch_size": 32, "learning_rate": 1e-2},
    # The authors' settings: 224 x 224, VGG blocks 1-3 frozen, 12 alternations of
    # 3 epochs, SGD lr 0.1 (Nesterov momentum 0.9), batch 128.
    # Trainable stages, counted from the top: fc7, fc6, pool (no weights), block5, block4.
    "paper": {"input_size": 224, "trainable_layers": 5, "n_alternations": 12, "n_epochs": 3,
              "n_frozen_estep": 2, "batch_size": 128, "learning_rate": 0.1},
}


# ---------------------------------------------------------------------------------------
# Helpers shared by the estimators


def _resolve_settings(estimator, presets, names):
    """Parameters left at None take the value of the estimator's ``preset``."""
    preset = presets[estimator.preset]
    return {name: preset[name] if getattr(estimator, name) is None else getattr(estimator, name)
            for name in names}


def _check_input_size(input_size):
    if input_size < 32:
        raise ValueError(f"input_size={input_size} is too small; VGG needs at least 32 pixels.")


def _check_targets(y, n_images):
    y = check_array(y, ensure_2d=False, dtype=np.float64, input_name="y")
    if y.ndim not in (1, 2):
        raise ValueError(
            f"y must have shape (n_samples,) or (n_samples, n_targets), got {y.shape}."
        )
    if y.shape[0] != n_images:
        raise ValueError(
            f"images and y have different numbers of samples: {n_images} and {y.shape[0]}."
        )
    return y.reshape(len(y), -1), y.ndim == 1


def _check_phases(phases):
    """``phases`` as a list of (n_epochs, trainable_layers); at least one epoch in all."""
    arr = np.asarray(phases, dtype=object)
    if arr.ndim == 1 and arr.size == 2:  # one phase given as a bare pair
        arr = arr.reshape(1, 2)
    no_training = (f"phases={phases!r} trains for 0 epochs: the network would keep its "
                   "initial weights and head. Give at least one phase with n_epochs >= 1.")
    if arr.size == 0:
        raise ValueError(no_training)
    message = (f"phases must be a non-empty sequence of (n_epochs, trainable_layers) pairs "
               f"of non-negative integers, got {phases!r}.")
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise ValueError(message)
    if not all(isinstance(v, Integral) and not isinstance(v, bool) and v >= 0
               for v in arr.ravel()):
        raise ValueError(message)
    checked = [(int(e), int(t)) for e, t in arr]
    if sum(e for e, _ in checked) == 0:
        raise ValueError(no_training)
    return checked


def _train_validation_split(n, validation_fraction, rng, min_train, groups=None, why=""):
    """Indices (train, validation); validation is empty when the fraction is 0.

    With ``groups`` (the person of each image), the validation part holds
    ``validation_fraction`` of the people, none of whom is in the training part.
    """
    if validation_fraction > 0 and groups is not None:
        groups = np.asarray(groups)
        if groups.shape != (n,):
            raise ValueError(
                f"groups must have shape ({n},), one entry per image; got {groups.shape}."
            )
        if len(np.unique(groups)) < 2:
            raise ValueError(
                "groups must hold at least 2 distinct people for a person-disjoint "
                "validation split."
            )
        splitter = GroupShuffleSplit(n_splits=1, test_size=validation_fraction,
                                     random_state=rng.randint(np.iinfo(np.int32).max))
        train, val = (np.sort(part) for part in next(splitter.split(np.zeros(n), groups=groups)))
    else:
        n_val = math.ceil(validation_fraction * n) if validation_fraction > 0 else 0
        order = rng.permutation(n)
        train, val = np.sort(order[: n - n_val]), np.sort(order[n - n_val :])
    if len(train) < min_train:
        raise ValueError(
            f"too few images: {n} images with validation_fraction={validation_fraction} "
            f"leave {len(train)} training images, and at least {min_train} are needed"
            f"{why}."
        )
    return train, val


def _cache_split(backbone, split, cache):
    """Whether to cache the frozen prefix: ``"auto"`` caches once the trunk is frozen."""
    if cache == "auto":
        names = backbone.stage_names
        trunk_end = names.index("pool") + 1 if "pool" in names else len(names)
        return split >= trunk_end
    return bool(cache) and split > 0


def _trainable_split(backbone, trainable_layers):
    n_stages = len(backbone.stages)
    if trainable_layers > n_stages:
        raise ValueError(
            f"trainable_layers={trainable_layers} exceeds the {n_stages} stages of the "
            f"backbone {backbone.stage_names}."
        )
    return n_stages - trainable_layers


def _set_batchnorm_statistics(norm, forward, inputs, batch_size, device, mixed_precision):
    """Set a BatchNorm's running statistics to the exact training-set mean and variance.

    ``forward`` maps a batch from ``inputs`` to the BatchNorm's inputs. Running averages
    lag behind the weights while they change quickly (they mix ten or so past batches),
    and evaluation-mode outputs computed with them drift away from what training saw.
    """
    pre = infer(forward, inputs.n, batch_size, lambda s: inputs.get(np.arange(inputs.n)[s]),
                device=device, mixed_precision=mixed_precision).astype(np.float64)
    with torch.no_grad():
        norm.running_mean.copy_(torch.as_tensor(pre.mean(axis=0)))
        norm.running_var.copy_(torch.as_tensor(pre.var(axis=0, ddof=1)))


def _mean_absolute_errors(y_true, y_pred):
    return np.mean(np.abs(y_true - y_pred), axis=0)


class _Network(nn.Module):
    """A backbone followed by a head; ``start`` skips the backbone stages already run."""

    def __init__(self, backbone, head):
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, x, start=0):
        return self.head(self.backbone(x, start))


def _image_tags(tags):
    tags.input_tags.two_d_array = False
    tags.input_tags.three_d_array = True
    return tags


_COMMON_CONSTRAINTS = {
    "model": [str, nn.Module],
    "weights": [str, os.PathLike, None],
    "batch_size": [Interval(Integral, 1, None, closed="left"), None],
    "device": [str, torch.device],
    "mixed_precision": ["boolean"],
    "verbose": ["verbose"],
}


# ---------------------------------------------------------------------------------------
# VGGFeatures


class VGGFeatures(ClassNamePrefixFeaturesOutMixin, TransformerMixin, TorchStateMixin,
                  BaseEstimator):
    """Activations of a pretrained (by default VGG-16) network layer, as a transformer.

    The VGG-SVR and VGG-IR baselines of Lathuilière et al. (2017) regress head pose
    from the fc7 activations (4096 values after ReLU) of an ImageNet VGG-16. Images are
    resized to ``input_size``, normalised with the ImageNet mean and standard deviation
    (grayscale images are repeated over three channels) and run through the network in
    batches under ``torch.inference_mode()``.

    Parameters
    ----------
    model : str or torch.nn.Module, default="vgg16"
        A torchvision classification model name (``"vgg16"``, ``"vgg11"``,
        ``"resnet18"``...), or a module with the torchvision VGG layout (``features``,
        ``avgpool``, ``classifier``) or ResNet layout; the module is copied, never
        modified. Its last linear (classification) layer is dropped.
    weights : str, path-like or None, default=None
        ``None``: random initialisation (nothing is downloaded). A torchvision weights
        name such as ``"DEFAULT"`` or ``"IMAGENET1K_V1"``: torchvision downloads the
        ImageNet weights on first use into its cache (``$TORCH_HOME/hub/checkpoints``,
        ``~/.cache/torch`` by default). A path: a ``state_dict`` file, read with
        ``torch.load(..., weights_only=True)``. The paper's features need ImageNet
        weights (``weights="DEFAULT"``).
    layer : str, default=None
        The stage whose output is returned; ``None`` is the penultimate layer (fc7 for
        VGG-16). VGG stages are ``"block1"``..``"block5"``, ``"pool"``, ``"fc6"``,
        ``"fc7"``; ResNet stages ``"stem"``, ``"layer1"``..``"layer4"``, ``"pool"``.
    input_size : int, default=224
        Images are resized to ``input_size x input_size`` pixels.
    batch_size : int, default=32
        Images per forward pass.
    device : str or torch.device, default="auto"
        ``"auto"`` uses CUDA when available, else the CPU.
    mixed_precision : bool, default=False
        Run the network under bfloat16 autocast.
    random_state : int, RandomState instance or None, default=None
        Seeds the random initialisation used with ``weights=None``.
    verbose : int, default=0
        Show a progress bar when positive.

    Attributes
    ----------
    network_ : torch.nn.Module
        The backbone (stages up to ``layer``).
    stage_names_ : list of str
        Names of the backbone's stages.
    n_features_out_ : int
        Number of output features.

    See Also
    --------
    gllim_sk.pipelines.make_vgg_svr, gllim_sk.pipelines.make_vgg_ir : The VGG baselines.

    Examples
    --------
    >>> import numpy as np
    >>> from gllim_sk.deep import VGGFeatures
    >>> images = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    >>> features = VGGFeatures(weights=None, input_size=32, device="cpu").fit_transform(images)
    >>> features.shape
    (2, 4096)
    """

    _parameter_constraints = {
        **_COMMON_CONSTRAINTS,
        "layer": [str, None],
        "input_size": [Interval(Integral, 1, None, closed="left")],
        "batch_size": [Interval(Integral, 1, None, closed="left")],
        "random_state": ["random_state"],
    }

    def __init__(self, model="vgg16", *, weights=None, layer=None, input_size=224, batch_size=32,
                 device="auto", mixed_precision=False, random_state=None, verbose=0):
        self.model = model
        self.weights = weights
        self.layer = layer
        self.input_size = input_size
        self.batch_size = batch_size
        self.device = device
        self.mixed_precision = mixed_precision
        self.random_state = random_state
        self.verbose = verbose

    def _build(self, weights):
        _check_input_size(self.input_size)
        backbone = Backbone(load_model(self.model, weights))
        stop = backbone.stop_index(self.layer)
        self.stage_names_ = list(backbone.stage_names)
        del backbone.stages[stop:]
        self.network_ = backbone.eval()

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y=None):
        """Load the network (nothing is learnt from the images).

        Parameters
        ----------
        X : array-like of shape (n, H, W) or (n, H, W, C)
            Images, uint8 or floats in [0, 1].
        y : ignored

        Returns
        -------
        self
        """
        check_images(X, name="X", min_size=_MIN_IMAGE_SIZE)
        # The random initialisation (weights=None) draws from a seeded fork of torch's RNG.
        with seeded(torch_seed(self.random_state), torch.device("cpu")):
            self._build(self.weights)
        self.network_.check_input_size(self.input_size)
        if len(self.network_.stages) == len(self.stage_names_):
            self.n_features_out_ = self.network_.n_features_out
        else:
            self.n_features_out_ = self.transform(np.zeros((1, 8, 8, 3), np.uint8)).shape[1]
        return self

    def transform(self, X):
        """Features of each image.

        Parameters
        ----------
        X : array-like of shape (n, H, W) or (n, H, W, C)
            Images, uint8 or floats in [0, 1].

        Returns
        -------
        features : ndarray of shape (n, n_features_out_), float32
        """
        check_is_fitted(self, "network_")
        images = check_images(X, name="X", min_size=_MIN_IMAGE_SIZE)
        network, device = self._network_on_device()
        network.eval()
        features = infer(
            lambda x: network(x).flatten(1), len(images), self.batch_size,
            lambda s: to_input_tensor(images[s], self.input_size, device),
            device=device, mixed_precision=self.mixed_precision, verbose=self.verbose,
            desc="features",
        )
        return features

    @property
    def _n_features_out(self):
        return self.n_features_out_

    def _saved_attributes(self):
        return {"stage_names_": self.stage_names_, "n_features_out_": self.n_features_out_}

    def _restore_attributes(self, attributes):
        self._build(None)
        self.n_features_out_ = attributes["n_features_out_"]

    def __sklearn_tags__(self):
        tags = _image_tags(super().__sklearn_tags__())
        tags.requires_fit = True
        return tags


# ---------------------------------------------------------------------------------------
# DeepRegressor (VGG-FCL-FT)


class DeepRegressor(RegressorMixin, TorchStateMixin, BaseEstimator):
    """The VGG-FCL-FT baseline: a fine-tuned network with a BatchNorm and a linear head.

    The network is the backbone up to its penultimate layer (fc7 for VGG-16), a
    BatchNorm and a linear layer with one unit per target, trained with an L2 loss
    (mean squared error on standardised targets) by SGD in *phases*: by default first
    the head only, then the last layers too, the learning rate halved every
    ``lr_decay_every`` epochs, as in Lathuilière et al. (2017). After every epoch the
    BatchNorm's running statistics are set to the exact mean and variance of its inputs
    over the training images, so that the validation error (and prediction) does not
    depend on running averages that lag behind the weights. A held-out validation
    fraction keeps the weights of the best epoch.

    Frozen leading layers run in evaluation mode; when the whole convolutional trunk is
    frozen its output is computed once per phase and cached (``cache="auto"``).

    Parameters
    ----------
    model : str or torch.nn.Module, default="vgg16"
        Backbone; see :class:`VGGFeatures`.
    weights : str, path-like or None, default=None
        Backbone weights; see :class:`VGGFeatures` (``"DEFAULT"`` downloads ImageNet
        weights through torchvision; ``None`` downloads nothing).
    preset : {"quick", "paper"}, default="quick"
        Fills in the parameters left at None. ``"quick"`` (CPU): 64 x 64 inputs, phases
        ``((2, 0), (2, 1))``, batch 32, learning rate 1e-3. ``"paper"`` (GPU): 224 x 224
        inputs, phases ``((3, 0), (3, 2))``, batch 128, learning rate 1e-3.
    input_size : int, default=None
        Images are resized to ``input_size x input_size``.
    phases : sequence of (int, int), default=None
        ``(n_epochs, trainable_layers)`` per phase: the BatchNorm and head are always
        trained, plus the last ``trainable_layers`` backbone stages (VGG-16 stages from
        the end: ``fc7``, ``fc6``, ``pool``, ``block5``, ...).
    batch_size : int, default=None
    learning_rate : float, default=None
        Initial SGD learning rate.
    momentum : float, default=0.9
    lr_decay : float, default=0.5
        Factor applied to the learning rate every ``lr_decay_every`` epochs.
    lr_decay_every : int, default=3
    validation_fraction : float, default=0.2
        Fraction of the images held out to select the best epoch (0: keep the last).
    cache : "auto" or bool, default="auto"
        Cache the output of the frozen layers ("auto": when the convolutional trunk is
        frozen). Caching changes the speed, not the result.
    device : str or torch.device, default="auto"
    mixed_precision : bool, default=False
        bfloat16 autocast for the forward passes.
    random_state : int, RandomState instance or None, default=None
        Seeds the split, the initialisation of the new layers and the shuffling.
    verbose : int, default=0

    Attributes
    ----------
    network_ : torch.nn.Module
        The fitted network (on the CPU after unpickling).
    history_ : list of dict
        Per epoch: ``phase``, ``epoch``, ``learning_rate``, ``loss`` (training MSE on
        standardised targets), ``val_mae`` (per target, or None), ``time``.
    best_epoch_ : int
        Index in ``history_`` of the kept weights.
    n_targets_ : int
    settings_ : dict
        The parameters in effect after applying the preset.

    Examples
    --------
    >>> import numpy as np
    >>> from gllim_sk.deep import DeepRegressor
    >>> rng = np.random.default_rng(0)
    >>> images = rng.integers(0, 256, (12, 32, 32, 3), dtype=np.uint8)
    >>> y = rng.normal(size=(12, 2))
    >>> reg = DeepRegressor(input_size=32, phases=((1, 0),), validation_fraction=0.25,
    ...                     device="cpu", random_state=0).fit(images, y)
    >>> reg.predict(images[:3]).shape
    (3, 2)
    """

    _parameter_constraints = {
        **_COMMON_CONSTRAINTS,
        "preset": [StrOptions(set(_REGRESSOR_PRESETS))],
        "input_size": [Interval(Integral, 1, None, closed="left"), None],
        "phases": ["array-like", None],
        "learning_rate": [Interval(Real, 0, None, closed="neither"), None],
        "momentum": [Interval(Real, 0, 1, closed="left")],
        "lr_decay": [Interval(Real, 0, 1, closed="right")],
        "lr_decay_every": [Interval(Integral, 1, None, closed="left")],
        "validation_fraction": [Interval(Real, 0, 1, closed="left")],
        "cache": [StrOptions({"auto"}), "boolean"],
        "random_state": ["random_state"],
    }

    def __init__(self, model="vgg16", *, weights=None, preset="quick", input_size=None,
                 phases=None, batch_size=None, learning_rate=None, momentum=0.9, lr_decay=0.5,
                 lr_decay_every=3, validation_fraction=0.2, cache="auto", device="auto",
                 mixed_precision=False, random_state=None, verbose=0):
        self.model = model
        self.weights = weights
        self.preset = preset
        self.input_size = input_size
        self.phases = phases
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.momentum = momentum
        self.lr_decay = lr_decay
        self.lr_decay_every = lr_decay_every
        self.validation_fraction = validation_fraction
        self.cache = cache
        self.device = device
        self.mixed_precision = mixed_precision
        self.random_state = random_state
        self.verbose = verbose

    def _build(self, weights, n_targets):
        backbone = Backbone(load_model(self.model, weights))
        width = backbone.n_features_out
        self.network_ = _Network(backbone, nn.Sequential(nn.BatchNorm1d(width),
                                                         nn.Linear(width, n_targets)))

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y, groups=None):
        """Fine-tune the network on images ``X`` and targets ``y``.

        Parameters
        ----------
        X : array-like of shape (n, H, W) or (n, H, W, C)
            Images, uint8 or floats in [0, 1].
        y : array-like of shape (n,) or (n, n_targets)
        groups : array-like of shape (n,), default=None
            The person in each image. When given, the validation images come from
            people not used for training (``validation_fraction`` of the people).

        Returns
        -------
        self
        """
        images = check_images(X, name="X", min_size=_MIN_IMAGE_SIZE)
        y2, self._y_1d = _check_targets(y, len(images))
        settings = _resolve_settings(self, _REGRESSOR_PRESETS,
                                     ("input_size", "phases", "batch_size", "learning_rate"))
        phases = _check_phases(settings["phases"])
        _check_input_size(settings["input_size"])
        self.settings_ = settings
        device = resolve_device(self.device)
        rng = check_random_state(self.random_state)
        train, val = _train_validation_split(len(images), self.validation_fraction, rng, 2,
                                             groups)
        seed = torch_seed(rng)
        self.n_targets_ = y2.shape[1]
        self.target_mean_ = y2[train].mean(axis=0)
        self.target_scale_ = y2[train].std(axis=0)
        self.target_scale_[self.target_scale_ == 0] = 1.0
        targets = torch.as_tensor((y2 - self.target_mean_) / self.target_scale_,
                                  dtype=torch.float32, device=device)
        with seeded(seed, device):
            generator = torch.Generator().manual_seed(seed)
            self._build(self.weights, self.n_targets_)
            network = self.network_.to(device)
            network.backbone.check_input_size(settings["input_size"])
            for index, (n_epochs, trainable_layers) in enumerate(phases):
                # Checked before any training, in the terms of the phases parameter.
                if trainable_layers > len(network.backbone.stages):
                    raise ValueError(
                        f"phases[{index}] = ({n_epochs}, {trainable_layers}) trains "
                        f"{trainable_layers} backbone stages, but the backbone has "
                        f"{len(network.backbone.stages)}: {network.backbone.stage_names}."
                    )
            self.history_, best = [], (np.inf, None)
            epoch = 0
            for phase, (n_epochs, trainable_layers) in enumerate(phases):
                split = _trainable_split(network.backbone, trainable_layers)
                use_cache = _cache_split(network.backbone, split, self.cache)
                kwargs = {"cache": use_cache, "batch_size": settings["batch_size"],
                          "mixed_precision": self.mixed_precision, "verbose": self.verbose}
                inputs = TrainingInputs(network.backbone, images[train], split,
                                        settings["input_size"], device, **kwargs)
                val_inputs = (TrainingInputs(network.backbone, images[val], split,
                                             settings["input_size"], device, **kwargs)
                              if len(val) else None)
                params = set_trainable(network, split)
                optimizer = torch.optim.SGD(params, lr=settings["learning_rate"],
                                            momentum=self.momentum)
                train_targets = targets[torch.as_tensor(train, device=device)]

                def loss_fn(outputs, index, train_targets=train_targets):
                    return torch.mean((outputs - train_targets[index]) ** 2)

                for _ in progress(range(n_epochs), self.verbose, desc=f"phase {phase}"):
                    tic = time.perf_counter()
                    lr = settings["learning_rate"] * self.lr_decay ** (epoch // self.lr_decay_every)
                    for group in optimizer.param_groups:
                        group["lr"] = lr
                    set_trainable(network, split)
                    (loss,) = train_epochs(
                        lambda x, split=split: network(x, split), inputs, loss_fn, optimizer,
                        n_epochs=1, batch_size=settings["batch_size"], generator=generator,
                        mixed_precision=self.mixed_precision,
                    )
                    network.eval()
                    _set_batchnorm_statistics(
                        network.head[0], lambda x, split=split: network.backbone(x, split),
                        inputs, settings["batch_size"], device, self.mixed_precision)
                    val_mae = None
                    if val_inputs is not None:
                        pred = self._predict_inputs(network, val_inputs, split, device)
                        val_mae = _mean_absolute_errors(y2[val], pred)
                        if val_mae.mean() < best[0]:
                            best = (val_mae.mean(), copy.deepcopy(network.state_dict()),
                                    len(self.history_))
                    self.history_.append({
                        "phase": phase, "epoch": epoch, "learning_rate": lr, "loss": loss,
                        "val_mae": val_mae, "time": time.perf_counter() - tic,
                    })
                    epoch += 1
            if best[1] is not None:
                network.load_state_dict(best[1])
                self.best_epoch_ = best[2]
            else:
                self.best_epoch_ = len(self.history_) - 1
        network.eval()
        return self

    def _predict_inputs(self, network, inputs, split, device):
        network.eval()
        standardised = infer(
            lambda x: network(x, split), inputs.n, self.settings_["batch_size"],
            lambda s: inputs.get(np.arange(inputs.n)[s]), device=device,
            mixed_precision=self.mixed_precision,
        )
        return standardised * self.target_scale_ + self.target_mean_

    def predict(self, X):
        """Predicted targets.

        Parameters
        ----------
        X : array-like of shape (n, H, W) or (n, H, W, C)

        Returns
        -------
        y : ndarray of shape (n,) or (n, n_targets)
        """
        check_is_fitted(self, "network_")
        images = check_images(X, name="X", min_size=_MIN_IMAGE_SIZE)
        network, device = self._network_on_device()
        inputs = TrainingInputs(network.backbone, images, 0, self.settings_["input_size"],
                                device, cache=False, batch_size=self.settings_["batch_size"])
        y = self._predict_inputs(network, inputs, 0, device)
        return y[:, 0] if self._y_1d else y

    def _saved_attributes(self):
        return {k: getattr(self, k) for k in (
            "settings_", "n_targets_", "target_mean_", "target_scale_", "history_",
            "best_epoch_", "_y_1d")}

    def _restore_attributes(self, attributes):
        for key, value in attributes.items():
            setattr(self, key, value)
        self.settings_["phases"] = [tuple(p) for p in self.settings_["phases"]]
        self._build(None, self.n_targets_)

    def __sklearn_tags__(self):
        tags = _image_tags(super().__sklearn_tags__())
        tags.target_tags.multi_output = True
        return tags


# ---------------------------------------------------------------------------------------
# DeepGLLiMRegressor


_CHECKPOINT_NAME = "deep_gllim_checkpoint.pt"
# Parameters that do not change the result of a fit: a checkpoint written under other
# values of these can be resumed.
_RESUMABLE_PARAMS = ("n_alternations", "verbose", "device", "checkpoint_dir", "cache")


def _gllim_state(gllim):
    """A fitted GLLiMRegressor as plain values and arrays (weights_only-loadable)."""
    params = {k: v for k, v in gllim.get_params().items() if k != "resp_init"}
    state = {k: v for k, v in gllim.__getstate__().items()
             if k not in params and k != "resp_init"}
    return {"params": params, "state": state}


def _gllim_from_state(saved):
    from .._gllim import GLLiMRegressor

    gllim = GLLiMRegressor(**saved["params"])
    gllim.__setstate__(saved["state"])
    return gllim


def _noise_precision(gllim, device):
    """Sigma_k^-1 as a tensor: (K, E) for the diagonal family, (K, E, E) for full/tied."""
    K, E, _ = gllim.inverse_coef_.shape
    model = gllim._em_model()
    prec = np.broadcast_to(model.noise.precision(gllim._params.noise),
                           (K, E) + (E,) * model.noise.dense_quadratic)
    return torch.as_tensor(np.array(prec), dtype=torch.float32, device=device)


def mixture_regression_loss(features, targets, resp, coef, intercept, precision):
    """Eq. (8)/(9) of Lathuilière et al. (2017) per sample, divided by the feature count.

    ``sum_k r_nk (A_k y_n + b_k - x_n)^T Sigma_k^-1 (A_k y_n + b_k - x_n) / E``: with
    isotropic noise ``Sigma_k = I / lambda_k`` this is eq. (9), and up to constants
    that do not depend on the network it is minus eq. (8) for any noise.

    Parameters
    ----------
    features : Tensor of shape (B, E)
        Network outputs x_n.
    targets : Tensor of shape (B, L)
    resp : Tensor of shape (B, K)
        Responsibilities r_nk.
    coef : Tensor of shape (K, E, L)
        A_k.
    intercept : Tensor of shape (K, E)
        b_k.
    precision : Tensor of shape (K, E) or (K, E, E)
        Sigma_k^-1 (diagonal or full).

    Returns
    -------
    loss : Tensor of shape (B,)

    Examples
    --------
    >>> import torch
    >>> from gllim_sk.deep import mixture_regression_loss
    >>> x, y = torch.zeros(1, 2), torch.ones(1, 1)
    >>> coef, intercept = torch.ones(1, 2, 1), torch.zeros(1, 2)
    >>> mixture_regression_loss(x, y, torch.ones(1, 1), coef, intercept,
    ...                         torch.full((1, 2), 4.0))  # lambda ||A y - x||^2 / E
    tensor([4.])
    """
    residual = torch.einsum("kel,bl->bke", coef, targets) + intercept - features[:, None, :]
    if precision.dim() == 2:
        quad = (residual * residual * precision).sum(-1)
    else:
        quad = torch.einsum("bkd,kde,bke->bk", residual, precision, residual)
    return (resp * quad).sum(1) / features.shape[1]


def _dataset_loss(gllim, X, y, resp):
    """Mean eq. (9) loss (per feature) of features ``X`` under a fitted mixture."""
    as_tensor = lambda a: torch.as_tensor(np.asarray(a, dtype=np.float64))  # noqa: E731
    precision = _noise_precision(gllim, torch.device("cpu")).double()
    loss = mixture_regression_loss(as_tensor(X), as_tensor(y), as_tensor(resp),
                                   as_tensor(gllim.inverse_coef_),
                                   as_tensor(gllim.inverse_intercept_), precision)
    return float(loss.mean())


class DeepGLLiMRegressor(RegressorMixin, TorchStateMixin, BaseEstimator):
    """Deep mixture of linear inverse regressions (Lathuilière et al., CVPR 2017).

    A network ``phi`` (the backbone up to fc7, a linear ``embedding_dim``-unit layer
    initialised from the PCA of the training fc7 features, and a BatchNorm) maps images
    to features ``x``; a :class:`~gllim_sk.GLLiMRegressor` models them as ``K`` affine
    functions of the targets, ``x = A_k y + b_k + e_k``. ``fit`` follows Algorithm 1:

    1. initial responsibilities by k-means followed by a Gaussian mixture on ``y``;
    2. GLLiM fitted on the features of the training images, with the E-step frozen at
       those responsibilities for the first ``n_frozen_estep`` fits (M-steps only), then
       full EM warm-started from the previous responsibilities (``resp_init``);
    3. the network fine-tuned for ``n_epochs`` epochs on the loss of eq. (9) (eq. (8)
       for non-isotropic noise, see :func:`mixture_regression_loss`), with the mixture
       held fixed;
    4. steps 2-3 repeated ``n_alternations`` times; a held-out validation fraction keeps
       the best network and mixture.

    Prediction is the conditional mean (and standard deviation) of the forward mixture
    p(y | phi(image)), eqs. (3)-(4).

    When the whole convolutional trunk is frozen (``trainable_layers`` <= 2 on VGG-16)
    its output is computed once and reused for every epoch and alternation; this gives
    the same numbers as recomputing it. The BatchNorm has no learnable scale or shift:
    it is there to keep the features from collapsing onto the mixture's means.

    The method assumes informative (ImageNet) features. From random weights
    (``weights=None``) on synthetic heads at 64 x 64 the "quick" preset's fine-tuning
    raises the validation error with the default isotropic noise: it makes the features
    fit the mixture better while correlating their noise, which the isotropic forward
    prediction ignores. There ``covariance_type="tied"`` with a small ``embedding_dim``
    (64-128) lets the fine-tuning lower it, slightly (a few percent).

    Parameters
    ----------
    n_components : int, default=2
        Number of affine components K (the paper's best on Biwi is 2).
    covariance_type : str, default="tied_spherical"
        Noise covariance structure of the GLLiM layer (see
        :class:`~gllim_sk.GLLiMRegressor`); isotropic and shared, as the authors.
    target_covariance_type : str, default="full"
        Structure of the target covariances Gamma_k.
    model : str or torch.nn.Module, default="vgg16"
        Backbone; see :class:`VGGFeatures`.
    weights : str, path-like or None, default=None
        Backbone weights; see :class:`VGGFeatures`. The paper starts from ImageNet
        (``weights="DEFAULT"``, downloaded by torchvision on first use); ``None`` is a
        random initialisation and downloads nothing.
    preset : {"quick", "paper"}, default="quick"
        Fills in the parameters left at None. ``"quick"`` (CPU): 64 x 64 inputs,
        ``trainable_layers=1`` (fc7), 4 alternations of 2 epochs, 1 frozen E-step,
        batch 32, learning rate 1e-2. ``"paper"`` (GPU): 224 x 224 inputs,
        ``trainable_layers=5`` (VGG blocks 1-3 frozen), 12 alternations of 3 epochs,
        2 frozen E-steps, batch 128, learning rate 0.1.
    embedding_dim : int, default=None
        Width of the linear layer before the BatchNorm: the dimension D of the GLLiM. A
        PCA of the training images' backbone features initialises the layer, so it
        can be at most the number of training images and the backbone's output width.
        ``None``: 512 (the authors' value) where the training set is large enough,
        else half the number of training images (at least ``n_targets``); the value
        used is in ``settings_["embedding_dim"]``.
    pca_bias : {"center", "zero"}, default="center"
        Bias of the PCA-initialised layer: centre the projected features, or zero (as the
        authors); the BatchNorm removes the mean either way.
    responsibilities : {"exact", "prior", "prior_sampled"}, default="exact"
        Weights r_nk of the fine-tuning loss: the exact posteriors p(k | x_n, y_n) of
        eq. (5); the prior-only ones p(k | y_n); or, as the authors' code, one component
        per sample drawn from p(k | y_n) (the feature term dropped).
    n_alternations : int, default=None
        Number of (fine-tuning, GLLiM) alternations after the initial GLLiM fit.
    n_frozen_estep : int, default=None
        Number of GLLiM fits, counting the initial one, that keep the initial
        responsibilities (M-steps only).
    n_epochs : int, default=None
        Fine-tuning epochs per alternation.
    trainable_layers : int, default=None
        Number of backbone stages fine-tuned, from the end (VGG-16: ``fc7``, ``fc6``,
        ``pool``, ``block5``, ``block4``...); the added layer is always trained.
    input_size : int, default=None
        Images are resized to ``input_size x input_size``.
    batch_size : int, default=None
    learning_rate : float, default=None
        SGD learning rate (Nesterov momentum ``momentum``).
    momentum : float, default=0.9
    validation_fraction : float, default=0.2
        Fraction of the images held out to select the best alternation (0: keep the last).
    gllim_max_iter : int, default=100
        EM iterations per GLLiM fit.
    gllim_tol : float, default=1e-3
        EM tolerance per GLLiM fit.
    reg_covar : float, default=1e-6
        Variance floor of the GLLiM layer, relative to the variance of the features and
        targets (see :class:`~gllim_sk.GLLiMRegressor`).
    cache : "auto" or bool, default="auto"
        Cache the output of the frozen backbone stages ("auto": when the convolutional
        trunk is frozen).
    checkpoint_dir : str or path-like, default=None
        Directory where the state is saved after every alternation
        (``deep_gllim_checkpoint.pt``). A fit that finds a checkpoint of the same data
        and parameters there resumes from it; other checkpoints are an error.
    device : str or torch.device, default="auto"
    mixed_precision : bool, default=False
        bfloat16 autocast for the forward passes.
    random_state : int, RandomState instance or None, default=None
        Seeds numpy and torch: split, initialisations, shuffling. Fits on the CPU with
        the same seed give the same result.
    verbose : int, default=0
        Progress bars when positive.

    Attributes
    ----------
    network_ : torch.nn.Module
        The fine-tuned network (backbone and the added layer with its BatchNorm).
    gllim_ : GLLiMRegressor
        The mixture fitted on the network's features.
    history_ : list of dict
        One entry per GLLiM fit (``alternation`` 0 is the initial one, before any
        fine-tuning). ``loss_before`` and ``loss``: the eq. (9) loss (mean over the
        training images, divided by ``embedding_dim``; :func:`mixture_regression_loss`)
        of the fine-tuning that preceded this fit, with its mixture and
        responsibilities, on the evaluation-mode features before and after it (NaN for
        alternation 0); ``epoch_losses``: the running training loss of each epoch
        (batch-normalised features); ``log_likelihood``: mean log p(x, y) of the
        training features under the new mixture; ``val_mae``: validation mean absolute
        error per target (None without validation); ``estep_frozen``; and timings
        ``time``, ``finetune_time``, ``feature_time``, ``gllim_time`` (seconds).
    best_alternation_ : int
        The alternation whose network and mixture were kept.
    settings_ : dict
        The parameters in effect after applying the preset, and the ``embedding_dim``
        used.
    n_targets_ : int

    Examples
    --------
    >>> import numpy as np
    >>> from gllim_sk.deep import DeepGLLiMRegressor
    >>> rng = np.random.default_rng(0)
    >>> y = rng.uniform(-30, 30, size=(24, 2))
    >>> images = np.clip(rng.normal(0.5, 0.1, (24, 32, 32, 3))
    ...                  + y[:, :1, None, None] / 100, 0, 1)
    >>> reg = DeepGLLiMRegressor(n_components=2, embedding_dim=8, input_size=32,
    ...                          n_alternations=1, n_epochs=1, validation_fraction=0.25,
    ...                          device="cpu", random_state=0).fit(images, y)
    >>> reg.predict(images[:3]).shape
    (3, 2)
    >>> reg.transform(images[:3]).shape
    (3, 8)
    """

    _parameter_constraints = {
        **_COMMON_CONSTRAINTS,
        "n_components": [Interval(Integral, 1, None, closed="left")],
        "covariance_type": [StrOptions(set(NOISE_STRUCTURES))],
        "target_covariance_type": [StrOptions(set(TARGET_STRUCTURES))],
        "preset": [StrOptions(set(_GLLIM_PRESETS))],
        "embedding_dim": [Interval(Integral, 1, None, closed="left"), None],
        "pca_bias": [StrOptions({"center", "zero"})],
        "responsibilities": [StrOptions({"exact", "prior", "prior_sampled"})],
        "n_alternations": [Interval(Integral, 0, None, closed="left"), None],
        "n_frozen_estep": [Interval(Integral, 0, None, closed="left"), None],
        "n_epochs": [Interval(Integral, 1, None, closed="left"), None],
        "trainable_layers": [Interval(Integral, 0, None, closed="left"), None],
        "input_size": [Interval(Integral, 1, None, closed="left"), None],
        "learning_rate": [Interval(Real, 0, None, closed="neither"), None],
        "momentum": [Interval(Real, 0, 1, closed="left")],
        "validation_fraction": [Interval(Real, 0, 1, closed="left")],
        "gllim_max_iter": [Interval(Integral, 1, None, closed="left")],
        "gllim_tol": [Interval(Real, 0, None, closed="left")],
        "reg_covar": [Interval(Real, 0, None, closed="left")],
        "cache": [StrOptions({"auto"}), "boolean"],
        "checkpoint_dir": [str, os.PathLike, None],
        "random_state": ["random_state"],
    }

    def __init__(self, n_components=2, *, covariance_type="tied_spherical",
                 target_covariance_type="full", model="vgg16", weights=None, preset="quick",
                 embedding_dim=None, pca_bias="center", responsibilities="exact",
                 n_alternations=None, n_frozen_estep=None, n_epochs=None, trainable_layers=None,
                 input_size=None, batch_size=None, learning_rate=None, momentum=0.9,
                 validation_fraction=0.2, gllim_max_iter=100, gllim_tol=1e-3, reg_covar=1e-6,
                 cache="auto", checkpoint_dir=None, device="auto", mixed_precision=False,
                 random_state=None, verbose=0):
        self.n_components = n_components
        self.covariance_type = covariance_type
        self.target_covariance_type = target_covariance_type
        self.model = model
        self.weights = weights
        self.preset = preset
        self.embedding_dim = embedding_dim
        self.pca_bias = pca_bias
        self.responsibilities = responsibilities
        self.n_alternations = n_alternations
        self.n_frozen_estep = n_frozen_estep
        self.n_epochs = n_epochs
        self.trainable_layers = trainable_layers
        self.input_size = input_size
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.momentum = momentum
        self.validation_fraction = validation_fraction
        self.gllim_max_iter = gllim_max_iter
        self.gllim_tol = gllim_tol
        self.reg_covar = reg_covar
        self.cache = cache
        self.checkpoint_dir = checkpoint_dir
        self.device = device
        self.mixed_precision = mixed_precision
        self.random_state = random_state
        self.verbose = verbose

    # -- construction ---------------------------------------------------------------
    def _build(self, weights, n_train=None):
        """Build the network; when fitting (``n_train`` given), choose embedding_dim too."""
        backbone = Backbone(load_model(self.model, weights))
        width = backbone.n_features_out
        if n_train is not None:
            self.settings_["embedding_dim"] = self._embedding_dim(width, n_train)
        dim = self.settings_["embedding_dim"]
        head = nn.Sequential(nn.Linear(width, dim), nn.BatchNorm1d(dim, affine=False))
        self.network_ = _Network(backbone, head)

    def _embedding_dim(self, width, n_train):
        """The embedding width: ``embedding_dim`` checked, or chosen when it is None."""
        if self.embedding_dim is None:
            dim = min(DEFAULT_EMBEDDING_DIM, width, max(n_train // 2, self.n_targets_))
            if dim < self.n_targets_:
                raise ValueError(
                    f"the backbone outputs {width} features, fewer than the {self.n_targets_} "
                    "targets: choose a model with a wider last layer."
                )
            return dim
        if self.embedding_dim > width:
            raise ValueError(
                f"embedding_dim={self.embedding_dim} exceeds the {width} outputs of the "
                f"backbone's last layer: choose embedding_dim <= {width}."
            )
        if self.embedding_dim > n_train:
            raise ValueError(
                f"embedding_dim={self.embedding_dim} needs at least {self.embedding_dim} "
                "training images (a PCA of their backbone features initialises the "
                f"embedding layer), but only {n_train} are used for training (after the "
                f"validation_fraction={self.validation_fraction} hold-out): lower "
                "embedding_dim, or leave it at None to adapt it to the training set."
            )
        return self.embedding_dim

    def _init_embedding(self, fc7, seed):
        """Initialise the added layer from the PCA of the training fc7 features."""
        pca = PCA(self.settings_["embedding_dim"], random_state=seed).fit(fc7)
        linear, norm = self.network_.head
        # Eigenvectors scaled to unit output variance (whitening): the BatchNorm would
        # rescale them anyway, and small fc7 variances would otherwise drown in its eps.
        variance = pca.explained_variance_
        floor = max(1e-12 * float(variance.max(initial=0.0)), np.finfo(np.float64).tiny)
        scale = np.sqrt(np.maximum(variance, floor))  # relative: fc7 may be of any scale
        components = torch.as_tensor(pca.components_ / scale[:, None], dtype=torch.float32)
        projected_mean = components @ torch.as_tensor(pca.mean_, dtype=torch.float32)
        with torch.no_grad():
            linear.weight.copy_(components)
            if self.pca_bias == "center":
                linear.bias.copy_(-projected_mean)
                norm.running_mean.zero_()
            else:
                linear.bias.zero_()
                norm.running_mean.copy_(projected_mean)
            # Running statistics that match the projected training features, so that
            # the features start as whitened PCA scores in evaluation mode too.
            norm.running_var.fill_(1.0)

    def _fit_gllim(self, X, y, resp, frozen, seed):
        from .._gllim import GLLiMRegressor

        gllim = GLLiMRegressor(
            self.n_components, covariance_type=self.covariance_type,
            target_covariance_type=self.target_covariance_type, reg_covar=self.reg_covar,
            max_iter=self.gllim_max_iter, tol=self.gllim_tol, resp_init=resp,
            random_state=seed,
        )
        # A frozen E-step: the mixture is one M-step from the given responsibilities.
        return gllim._fit_frozen_estep(X, y, resp) if frozen else gllim.fit(X, y)

    def _initial_resp(self, y, seed):
        if self.n_components == 1:
            return np.ones((len(y), 1))
        from .._gllim import kmeans_responsibilities, refine_by_target_mixture, variance_scale

        # k-means on y, then a Gaussian mixture of y run to convergence (the paper's init);
        # its variance floor follows the targets' units, as GLLiMRegressor's.
        y = np.asarray(y, dtype=np.float64).reshape(len(y), -1)
        resp = refine_by_target_mixture(
            y, kmeans_responsibilities(y, self.n_components, seed),
            self.target_covariance_type, 1e-6 * variance_scale(y), max_iter=100, tol=1e-3,
        )
        return np.ascontiguousarray(resp.T)

    def _finetune_resp(self, gllim, X, y, frozen_resp, rng):
        if frozen_resp is not None:
            return frozen_resp
        if self.responsibilities == "exact":
            return gllim.component_posterior(X, y)
        prior = gllim.component_posterior(y=y)
        if self.responsibilities == "prior":
            return prior
        draws = (rng.uniform(size=(len(y), 1)) > np.cumsum(prior, axis=1)).sum(axis=1)
        one_hot = np.zeros_like(prior)
        one_hot[np.arange(len(y)), np.minimum(draws, prior.shape[1] - 1)] = 1.0
        return one_hot

    def _features(self, network, inputs, split, device):
        network.eval()
        return infer(
            lambda x: network(x, split), inputs.n, self.settings_["batch_size"],
            lambda s: inputs.get(np.arange(inputs.n)[s]), device=device,
            mixed_precision=self.mixed_precision,
        ).astype(np.float64)

    # -- checkpoints ------------------------------------------------------------------
    def _fingerprint(self, images, y, groups=None):
        digest = hashlib.sha256()
        if groups is not None:
            digest.update(np.asarray(groups).tobytes())
        digest.update(np.ascontiguousarray(images).tobytes())
        digest.update(str(images.shape).encode())
        digest.update(np.ascontiguousarray(y).tobytes())
        params = {k: v for k, v in self.get_params().items() if k not in _RESUMABLE_PARAMS}
        digest.update(repr(sorted(params.items(), key=lambda kv: kv[0])).encode())
        return digest.hexdigest()

    def _checkpoint_path(self):
        return None if self.checkpoint_dir is None else Path(self.checkpoint_dir) / _CHECKPOINT_NAME

    def _write_checkpoint(self, state):
        path = self._checkpoint_path()
        if path is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(path) as handle:  # never leave a half-written checkpoint behind
            torch.save(_to_torch_payload(state), handle)

    def _read_checkpoint(self, fingerprint):
        path = self._checkpoint_path()
        if path is None or not path.exists():
            return None
        try:
            raw = torch.load(path, map_location="cpu", weights_only=True)
            state = _from_torch_payload(raw)
        except Exception as exc:  # torch raises several types on damaged archives
            warnings.warn(
                f"The checkpoint {path} cannot be read ({type(exc).__name__}: {exc}); it "
                "is ignored, the fit starts from the beginning and overwrites it.",
                stacklevel=3,
            )
            return None
        if state.get("fingerprint") != fingerprint:
            raise ValueError(
                f"{path} is a checkpoint of another fit (different images, targets or "
                "parameters); delete it or choose another checkpoint_dir."
            )
        return state

    # -- fitting ----------------------------------------------------------------------
    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y, groups=None):
        """Train the network and the mixture jointly (Algorithm 1 of the paper).

        Parameters
        ----------
        X : array-like of shape (n, H, W) or (n, H, W, C)
            Images, uint8 or floats in [0, 1].
        y : array-like of shape (n,) or (n, n_targets)
            Targets (e.g. pitch, yaw, roll in degrees).
        groups : array-like of shape (n,), default=None
            The person in each image. When given, the validation images that choose the
            kept weights come from people not used for training (``validation_fraction``
            of the people), as the paper's protocol asks.

        Returns
        -------
        self
        """
        images = check_images(X, name="X", min_size=_MIN_IMAGE_SIZE)
        y2, self._y_1d = _check_targets(y, len(images))
        settings = _resolve_settings(self, _GLLIM_PRESETS, (
            "input_size", "trainable_layers", "n_alternations", "n_epochs", "n_frozen_estep",
            "batch_size", "learning_rate"))
        _check_input_size(settings["input_size"])
        self.settings_ = settings
        self.n_targets_ = y2.shape[1]
        device = resolve_device(self.device)
        rng = check_random_state(self.random_state)
        if self.embedding_dim is not None and self.embedding_dim < self.n_targets_:
            raise ValueError(
                f"embedding_dim={self.embedding_dim} is smaller than the number of targets "
                f"({self.n_targets_}): the GLLiM layer regresses the targets from "
                f"embedding_dim features, which must be at least as many. Raise "
                "embedding_dim, or leave it at None."
            )
        # The embedding's own minimum (the PCA needs embedding_dim images) is checked
        # once the backbone's width is known, by _build.
        min_train = max(2 * self.n_components, self.n_targets_ + 2, 2)
        why = (f" (two per mixture component, n_components={self.n_components})"
               if min_train == 2 * self.n_components else
               f" (the number of targets, {self.n_targets_}, plus 2)")
        train, val = _train_validation_split(len(images), self.validation_fraction, rng,
                                             min_train, groups, why)
        seeds = rng.randint(np.iinfo(np.int32).max, size=5)
        torch_seed_, pca_seed, gmm_seed, gllim_seed, draw_seed = (int(s) for s in seeds)
        y_train = y2[train]
        fingerprint = self._fingerprint(images, y2, groups)
        resumed = self._read_checkpoint(fingerprint)

        with seeded(torch_seed_, device):
            generator = torch.Generator().manual_seed(torch_seed_)
            draw_rng = np.random.RandomState(draw_seed)
            self._build(None if resumed else self.weights, n_train=len(train))
            network = self.network_.to(device)
            network.backbone.check_input_size(settings["input_size"])
            split = _trainable_split(network.backbone, settings["trainable_layers"])
            kwargs = {"cache": _cache_split(network.backbone, split, self.cache),
                      "batch_size": settings["batch_size"],
                      "mixed_precision": self.mixed_precision, "verbose": self.verbose}
            inputs = TrainingInputs(network.backbone, images[train], split,
                                    settings["input_size"], device, **kwargs)
            val_inputs = (TrainingInputs(network.backbone, images[val], split,
                                         settings["input_size"], device, **kwargs)
                          if len(val) else None)

            if resumed:
                network.load_state_dict({k: torch.as_tensor(v) for k, v in
                                         resumed["network"].items()})
                generator.set_state(torch.as_tensor(resumed["generator"]))
                draw_rng.set_state(tuple(resumed["draw_rng"]))
                initial_resp, resp = resumed["initial_resp"], resumed["resp"]
                gllim = _gllim_from_state(resumed["gllim"])
                history, best = resumed["history"], resumed["best"]
                best["gllim"] = _gllim_from_state(best["gllim"])
                start = resumed["alternation"] + 1
                X_train = self._features(network, inputs, split, device)
            else:
                tic = time.perf_counter()
                fc7 = self._features(network.backbone, inputs, split, device)
                self._init_embedding(fc7, pca_seed)
                del fc7
                initial_resp = self._initial_resp(y_train, gmm_seed)
                X_train = self._features(network, inputs, split, device)
                feature_time = time.perf_counter() - tic
                history, best, resp = [], None, initial_resp
                start = 0

            n_alternations = settings["n_alternations"]
            steps = progress(range(start, n_alternations + 1), self.verbose,
                             desc="alternations", initial=start, total=n_alternations + 1)
            for alternation in steps:
                tic = time.perf_counter()
                epoch_losses, finetune_time = [], 0.0
                loss_before = loss_after = float("nan")
                if alternation > 0:
                    frozen_before = alternation - 1 < settings["n_frozen_estep"]
                    resp_ft = self._finetune_resp(
                        gllim, X_train, y_train, initial_resp if frozen_before else None,
                        draw_rng)
                    loss_before = _dataset_loss(gllim, X_train, y_train, resp_ft)
                    epoch_losses = self._finetune(network, gllim, inputs, split, y_train,
                                                  resp_ft, generator, device)
                    finetune_time = time.perf_counter() - tic
                    tac = time.perf_counter()
                    X_train = self._features(network, inputs, split, device)
                    feature_time = time.perf_counter() - tac
                    loss_after = _dataset_loss(gllim, X_train, y_train, resp_ft)
                frozen = alternation < settings["n_frozen_estep"]
                tac = time.perf_counter()
                gllim = self._fit_gllim(X_train, y_train, initial_resp if frozen else resp,
                                        frozen, gllim_seed)
                resp = initial_resp if frozen else gllim.component_posterior(X_train, y_train)
                gllim_time = time.perf_counter() - tac
                val_mae = None
                if val_inputs is not None:
                    tac = time.perf_counter()
                    X_val = self._features(network, val_inputs, split, device)
                    val_mae = _mean_absolute_errors(y2[val], gllim.predict(X_val))
                    feature_time += time.perf_counter() - tac
                history.append({
                    "alternation": alternation,
                    "loss": loss_after,
                    "loss_before": loss_before,
                    "epoch_losses": list(epoch_losses),
                    "log_likelihood": float(gllim.lower_bound_),
                    "val_mae": val_mae,
                    "estep_frozen": frozen,
                    "time": time.perf_counter() - tic,
                    "finetune_time": finetune_time,
                    "feature_time": feature_time,
                    "gllim_time": gllim_time,
                })
                score = val_mae.mean() if val_mae is not None else -alternation
                if best is None or score < best["score"]:
                    best = {"score": float(score), "alternation": alternation,
                            "network": copy.deepcopy(
                                {k: v.detach().cpu() for k, v in network.state_dict().items()}),
                            "gllim": gllim}
                if self.checkpoint_dir is not None:
                    self._write_checkpoint({
                        "fingerprint": fingerprint, "alternation": alternation,
                        "network": {k: v.detach().cpu() for k, v in network.state_dict().items()},
                        "generator": generator.get_state(), "draw_rng": draw_rng.get_state(),
                        "initial_resp": initial_resp, "resp": resp,
                        "gllim": _gllim_state(gllim), "history": history,
                        "best": {**best, "gllim": _gllim_state(best["gllim"])},
                    })
        network.load_state_dict(best["network"])
        network.eval()
        self.gllim_ = best["gllim"]
        self.best_alternation_ = best["alternation"]
        self.history_ = history
        return self

    def _finetune(self, network, gllim, inputs, split, y_train, resp, generator, device):
        """Fine-tune the network for ``n_epochs`` on eq. (9) with the mixture fixed."""
        params = set_trainable(network, split)
        optimizer = torch.optim.SGD(params, lr=self.settings_["learning_rate"],
                                    momentum=self.momentum, nesterov=self.momentum > 0)
        as_tensor = lambda a: torch.as_tensor(np.ascontiguousarray(a), dtype=torch.float32,  # noqa: E731
                                              device=device)
        targets, weights = as_tensor(y_train), as_tensor(resp)
        coef, intercept = as_tensor(gllim.inverse_coef_), as_tensor(gllim.inverse_intercept_)
        precision = _noise_precision(gllim, device)

        # The gradient of eq. (9) grows with the precisions, which grow as the features
        # fit the mixture better; optimising eq. (9) times the mean noise variance keeps
        # the step size of a given learning rate the same from one alternation to the
        # next (same minimiser, same gradient direction). The loss is reported unscaled.
        scale = float(1.0 / precision.diagonal(dim1=-2, dim2=-1).mean()
                      if precision.dim() == 3 else 1.0 / precision.mean())

        def loss_fn(outputs, index):
            index = torch.as_tensor(index, device=device)
            return mixture_regression_loss(outputs, targets[index], weights[index], coef,
                                           intercept, precision).mean()

        losses = train_epochs(
            lambda x: network(x, split), inputs, loss_fn, optimizer, loss_scale=scale,
            n_epochs=self.settings_["n_epochs"], batch_size=self.settings_["batch_size"],
            generator=generator, mixed_precision=self.mixed_precision, verbose=self.verbose,
            desc="fine-tuning",
        )
        self._recalibrate_batchnorm(network, inputs, split, device)
        return losses

    def _recalibrate_batchnorm(self, network, inputs, split, device):
        """Set the BatchNorm statistics to the exact mean and variance over the training set.

        The GLLiM layer is fitted on evaluation-mode features; with the running averages
        left by training they would drift away from the batch-normalised features that
        the loss sees, and the mixture would fit a moving target.
        """
        linear, norm = network.head
        network.eval()
        _set_batchnorm_statistics(norm, lambda x: linear(network.backbone(x, split)), inputs,
                                  self.settings_["batch_size"], device, self.mixed_precision)

    # -- prediction -------------------------------------------------------------------
    def transform(self, X):
        """Features phi(image): the BatchNorm outputs that the GLLiM layer models.

        Parameters
        ----------
        X : array-like of shape (n, H, W) or (n, H, W, C)

        Returns
        -------
        features : ndarray of shape (n, embedding_dim)
        """
        check_is_fitted(self, "gllim_")
        images = check_images(X, name="X", min_size=_MIN_IMAGE_SIZE)
        network, device = self._network_on_device()
        inputs = TrainingInputs(network.backbone, images, 0, self.settings_["input_size"],
                                device, cache=False, batch_size=self.settings_["batch_size"])
        return self._features(network, inputs, 0, device)

    def predict(self, X, return_std=False):
        """Conditional mean of the forward mixture p(y | phi(image)), eq. (4).

        Parameters
        ----------
        X : array-like of shape (n, H, W) or (n, H, W, C)
        return_std : bool, default=False
            Also return the predictive standard deviation of each target.

        Returns
        -------
        y : ndarray of shape (n,) or (n, n_targets)
        std : ndarray of the same shape, only when ``return_std`` is True
        """
        features = self.transform(X)  # checks that the estimator is fitted
        out = self.gllim_.predict(features, return_std=return_std)
        if self._y_1d:
            out = tuple(a[:, 0] for a in out) if return_std else out[:, 0]
        return out

    # -- persistence ------------------------------------------------------------------
    def _saved_attributes(self):
        return {"settings_": self.settings_, "n_targets_": self.n_targets_,
                "_y_1d": self._y_1d, "history_": self.history_,
                "best_alternation_": self.best_alternation_,
                "gllim_": _gllim_state(self.gllim_)}

    def _restore_attributes(self, attributes):
        for key, value in attributes.items():
            setattr(self, key, value)
        self.gllim_ = _gllim_from_state(attributes["gllim_"])
        self.settings_.setdefault("embedding_dim", self.embedding_dim)  # older files
        self._build(None)

    def __sklearn_tags__(self):
        tags = _image_tags(super().__sklearn_tags__())
        tags.target_tags.multi_output = True
        return tags
