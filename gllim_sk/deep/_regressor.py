"""DeepRegressor: the VGG-FCL-FT baseline (backbone, BatchNorm, linear head, L2 loss)."""

from numbers import Integral, Real

import numpy as np
import torch
from sklearn.base import RegressorMixin
from sklearn.utils.validation import check_is_fitted
from torch import nn

from .._compat import Interval, StrOptions, _fit_context
from .._images import check_images
from ._base import (
    MIN_IMAGE_SIZE,
    BatchNormRecalibration,
    DeepEstimatorBase,
    History,
    KeepBest,
    LRSchedule,
    Validation,
    image_tags,
)
from ._features import COMMON_CONSTRAINTS
from ._torch import seeded, torch_seed

__all__ = ["DeepRegressor"]

# Settings that a ``preset`` fills in for parameters left at None.
_PRESETS = {
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


class DeepRegressor(RegressorMixin, DeepEstimatorBase):
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
    freeze_batchnorm : bool, default=True
        Keep the BatchNorm layers of the fine-tuned backbone stages (ResNets and other
        families that have them; VGG-16 has none) in evaluation mode while training:
        they normalise with their pretrained statistics and only their scale and shift
        are learned. ``False`` lets minibatches update their statistics, which shifts
        the features of every image even at a tiny learning rate (see the user guide).
    cache : "auto" or bool, default="auto"
        Cache the output of the frozen layers ("auto": when the convolutional trunk is
        frozen). Caching changes the speed, not the result.
    callbacks : list of Callback, default=None
        Run after every epoch, after the estimator's own (learning-rate schedule,
        BatchNorm recalibration, validation, keep-best), e.g. :class:`EarlyStopping`
        or :class:`PrintLog`. Copies run; the given objects are not changed.
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
    history_ : History
        One row per epoch: ``epoch`` (epochs run so far), ``phase``, ``learning_rate``,
        ``loss`` (training MSE on standardised targets), ``val_mae`` (per target, or
        None), ``train_time``, ``time``; e.g. ``history_[:, "val_mae"]``.
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
        **COMMON_CONSTRAINTS,
        "preset": [StrOptions(set(_PRESETS))],
        "input_size": [Interval(Integral, 1, None, closed="left"), None],
        "phases": ["array-like", None],
        "learning_rate": [Interval(Real, 0, None, closed="neither"), None],
        "momentum": [Interval(Real, 0, 1, closed="left")],
        "lr_decay": [Interval(Real, 0, 1, closed="right")],
        "lr_decay_every": [Interval(Integral, 1, None, closed="left")],
        "validation_fraction": [Interval(Real, 0, 1, closed="left")],
        "freeze_batchnorm": ["boolean"],
        "cache": [StrOptions({"auto"}), "boolean"],
        "callbacks": [list, tuple, None],
        "random_state": ["random_state"],
    }
    _presets = _PRESETS
    _preset_names = ("input_size", "phases", "batch_size", "learning_rate")

    def __init__(self, model="vgg16", *, weights=None, preset="quick", input_size=None,
                 phases=None, batch_size=None, learning_rate=None, momentum=0.9, lr_decay=0.5,
                 lr_decay_every=3, validation_fraction=0.2, freeze_batchnorm=True, cache="auto",
                 callbacks=None, device="auto", mixed_precision=False, random_state=None,
                 verbose=0):
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
        self.freeze_batchnorm = freeze_batchnorm
        self.cache = cache
        self.callbacks = callbacks
        self.device = device
        self.mixed_precision = mixed_precision
        self.random_state = random_state
        self.verbose = verbose

    def initialize_head(self, n_features):
        return nn.Sequential(nn.BatchNorm1d(n_features), nn.Linear(n_features, self.n_targets_))

    def _phases(self):
        """``phases`` as a list of (n_epochs, trainable_layers); at least one epoch in all."""
        phases = self.settings_["phases"]
        arr = np.asarray(phases, dtype=object)
        if arr.ndim == 1 and arr.size == 2:  # one phase given as a bare pair
            arr = arr.reshape(1, 2)
        no_training = (f"phases={phases!r} trains for 0 epochs: the network would keep its "
                       "initial weights and head. Give at least one phase with n_epochs >= 1.")
        if arr.size == 0:
            raise ValueError(no_training)
        message = (f"phases must be a non-empty sequence of (n_epochs, trainable_layers) "
                   f"pairs of non-negative integers, got {phases!r}.")
        if arr.ndim != 2 or arr.shape[1] != 2 or not all(
                isinstance(v, Integral) and not isinstance(v, bool) and v >= 0
                for v in arr.ravel()):
            raise ValueError(message)
        checked = [(int(e), int(t)) for e, t in arr]
        if sum(e for e, _ in checked) == 0:
            raise ValueError(no_training)
        return checked

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
        fit = self._begin_fit(X, y, groups, min_train=lambda y: 2)
        phases = self._phases()
        settings, device, train, val = fit.settings, fit.device, fit.train, fit.val
        seed = torch_seed(fit.rng)
        self.target_mean_ = fit.y[train].mean(axis=0)
        self.target_scale_ = fit.y[train].std(axis=0)
        self.target_scale_[self.target_scale_ == 0] = 1.0
        targets = torch.as_tensor((fit.y[train] - self.target_mean_) / self.target_scale_,
                                  dtype=torch.float32, device=device)

        def loss_fn(outputs, index):
            return torch.mean((outputs - targets[index]) ** 2)

        with seeded(seed, device):
            generator = torch.Generator().manual_seed(seed)
            network = self.initialize_network(self.weights).to(device)
            network.backbone.check_input_size(settings["input_size"])
            n_stages = len(network.backbone.stages)
            for index, (n_epochs, trainable_layers) in enumerate(phases):
                # Checked before any training, in the terms of the phases parameter.
                if trainable_layers > n_stages:
                    raise ValueError(
                        f"phases[{index}] = ({n_epochs}, {trainable_layers}) trains "
                        f"{trainable_layers} backbone stages, but the backbone has "
                        f"{n_stages}: {network.backbone.stage_names}."
                    )
            keep_best = KeepBest()
            extra = self.user_callbacks()
            self.begin_training([keep_best, *extra])
            epoch = 0
            for phase, (n_epochs, trainable_layers) in enumerate(phases):
                split = self.trainable_split(trainable_layers)
                inputs = self.training_inputs(fit.images[train], split, device)
                callbacks = [
                    LRSchedule(settings["learning_rate"], self.lr_decay, self.lr_decay_every),
                    BatchNormRecalibration(
                        network.head[0], lambda x, s=split: network.backbone(x, s), inputs,
                        settings["batch_size"], self.mixed_precision),
                ]
                if len(val):
                    val_inputs = self.training_inputs(fit.images[val], split, device)
                    callbacks.append(Validation(
                        lambda v=val_inputs, s=split: self._unscale(
                            self.predict_inputs(lambda x: network(x, s), v)),
                        fit.y[val]))
                callbacks += [keep_best, *extra]
                optimizer = self.initialize_optimizer(self.set_trainable(split),
                                                      settings["learning_rate"])
                self.run_epochs(lambda x, s=split: network(x, s), inputs, loss_fn, optimizer,
                                n_epochs=n_epochs, split=split, generator=generator,
                                callbacks=callbacks, first_epoch=epoch,
                                record_extra={"phase": phase}, history=self.history_,
                                desc=f"phase {phase}")
                epoch += n_epochs
                if self.stop_training_:
                    break
            self.end_training([keep_best, *extra])
            if keep_best.best is not None:
                self.best_epoch_, _ = keep_best.restore(network)
            else:  # no epoch at all: the initial network
                self.best_epoch_ = -1
        network.eval()
        return self

    def _unscale(self, standardised):
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
        images = check_images(X, name="X", min_size=MIN_IMAGE_SIZE)
        network, device = self._network_on_device()
        inputs = self.training_inputs(images, 0, device)
        y = self._unscale(self.predict_inputs(network, inputs))
        return y[:, 0] if self._y_1d else y

    def _saved_attributes(self):
        return {k: getattr(self, k) for k in (
            "settings_", "n_targets_", "target_mean_", "target_scale_", "history_",
            "best_epoch_", "_y_1d")}

    def _restore_attributes(self, attributes):
        for key, value in attributes.items():
            setattr(self, key, value)
        self.settings_["phases"] = [tuple(p) for p in self.settings_["phases"]]
        self.history_ = History(self.history_)
        self.initialize_network(None)

    def __sklearn_tags__(self):
        tags = image_tags(super().__sklearn_tags__())
        tags.target_tags.multi_output = True
        return tags
