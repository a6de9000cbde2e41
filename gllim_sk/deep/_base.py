"""The base of the fine-tuning estimators, in the manner of skorch's ``NeuralNet``.

:class:`DeepEstimatorBase` owns what :class:`DeepRegressor` and
:class:`DeepGLLiMRegressor` share:

- the fit preamble (validation of images and targets, the preset, the device, the
  person-disjoint validation split, seeds): :meth:`~DeepEstimatorBase._begin_fit`;
- the network's initialisation in overridable steps (``initialize_backbone``,
  ``initialize_head``, ``initialize_network``, ``initialize_optimizer``);
- the training loops (:meth:`~DeepEstimatorBase.run_epochs` -> ``train_step`` per
  epoch, :meth:`~DeepEstimatorBase.run_training` per alternation) and the callbacks
  they run: :class:`LRSchedule`, :class:`BatchNormRecalibration`, :class:`Validation`,
  :class:`KeepBest`, :class:`Checkpoint`, :class:`EarlyStopping`, :class:`PrintLog`;
- one history: ``history_`` is a :class:`History`, a list of rows (dicts) indexable
  skorch-style, each with at least ``epoch`` (fine-tuning epochs run so far), ``loss``,
  ``val_mae``, ``learning_rate``, ``time`` and ``train_time`` (seconds spent in SGD
  steps only, for throughput);
- callbacks given as the ``callbacks`` parameter (:class:`EarlyStopping`,
  :class:`PrintLog`, or any :class:`Callback`), run by the training loop after the
  estimator's own.
"""

import dataclasses
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.base import BaseEstimator
from sklearn.utils import check_random_state
from torch import nn

from .._files import atomic_write
from .._images import check_images
from ._backbone import Backbone, load_model
from ._torch import (
    TorchStateMixin,
    TrainingInputs,
    _to_torch_payload,
    autocast,
    infer,
    progress,
    resolve_device,
)

MIN_IMAGE_SIZE = 8


class Network(nn.Module):
    """A backbone followed by a head; ``start`` skips the backbone stages already run."""

    def __init__(self, backbone, head):
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, x, start=0):
        return self.head(self.backbone(x, start))


@dataclasses.dataclass
class FitSetup:
    """What :meth:`DeepEstimatorBase._begin_fit` prepares for a fit."""

    images: np.ndarray
    y: np.ndarray  # (n, n_targets)
    settings: dict
    device: torch.device
    rng: np.random.RandomState
    train: np.ndarray
    val: np.ndarray


# ---------------------------------------------------------------------------------------
# History: one row (a dict) per epoch of DeepRegressor or per alternation of
# DeepGLLiMRegressor, indexable the skorch way.


class History(list):
    """The training history of a deep estimator: a list of rows (dicts), skorch-style.

    Rows are epochs (:class:`DeepRegressor`) or alternations
    (:class:`DeepGLLiMRegressor`, whose rows hold their fine-tuning epochs as rows under
    ``"epochs"``) and share the keys ``epoch`` (fine-tuning epochs run so far),
    ``loss``, ``val_mae`` (per target, or None), ``learning_rate``, ``train_time``
    (seconds in SGD steps) and ``time``. Besides list indexing (``history[-1]`` is the
    last row, a dict), a tuple selects inside the rows: ``history[-1, "val_mae"]``,
    ``history[:, "loss"]`` (rows without the key are skipped),
    ``history[-1, "epochs", :, "loss"]``.

    Examples
    --------
    >>> from gllim_sk.deep import History
    >>> h = History([{"epoch": 1, "loss": 2.0}, {"epoch": 2, "loss": 1.5}])
    >>> h[:, "loss"], h[-1, "epoch"]
    ([2.0, 1.5], 2)
    """

    def __getitem__(self, index):
        if isinstance(index, tuple):
            return _select(list(self), index)
        out = super().__getitem__(index)
        return History(out) if isinstance(index, slice) else out

    def new_row(self, **values):
        """Append a row with ``values`` and return it."""
        self.append(dict(values))
        return self[-1]


def _select(value, keys):
    if not keys:
        return value
    key, rest = keys[0], keys[1:]
    if isinstance(key, slice):
        rows = value[key]
        if rest and isinstance(rest[0], str):  # skip the rows without the key
            rows = [row for row in rows if rest[0] in row]
        return [_select(row, rest) for row in rows]
    return _select(value[key], rest)


# ---------------------------------------------------------------------------------------
# Callbacks: called by the training loop (``run_epochs``, ``run_training``) with the
# estimator and the current row of ``history_``.


class Callback:
    """A training hook, as skorch's: override any of the four methods.

    ``on_epoch_begin`` and ``on_epoch_end`` run around every row of the history
    (an epoch of :class:`DeepRegressor`, an alternation of
    :class:`DeepGLLiMRegressor`); ``optimizer`` is the epoch's SGD optimizer, or None
    where a row spans several (the alternations). A callback stops training by
    setting ``estimator.stop_training_ = True``.
    """

    def on_train_begin(self, estimator):
        pass

    def on_epoch_begin(self, estimator, record, optimizer):
        pass

    def on_epoch_end(self, estimator, record):
        pass

    def on_train_end(self, estimator):
        pass


class EarlyStopping(Callback):
    """Stop when the mean ``monitor`` has not improved for ``patience`` rows.

    Parameters
    ----------
    patience : int, default=3
    monitor : str, default="val_mae"
        A key of the rows (lower is better); rows where it is None are ignored.
    threshold : float, default=0.0
        Smallest decrease that counts as an improvement.
    """

    def __init__(self, patience=3, monitor="val_mae", threshold=0.0):
        self.patience, self.monitor, self.threshold = patience, monitor, threshold

    def on_train_begin(self, estimator):
        self.best_, self.waited_ = np.inf, 0

    def on_epoch_end(self, estimator, record):
        value = record.get(self.monitor)
        if value is None:
            return
        score = float(np.mean(value))
        if score < self.best_ - self.threshold:
            self.best_, self.waited_ = score, 0
            return
        self.waited_ += 1
        if self.waited_ >= self.patience:
            estimator.stop_training_ = True
            record["stopped_early"] = True


class PrintLog(Callback):
    """Print one line per row: its epoch, loss, mean validation error and time."""

    def __init__(self, sink=print):
        self.sink = sink

    def on_epoch_end(self, estimator, record):
        val = record.get("val_mae")
        val = "-" if val is None else f"{float(np.mean(val)):.4g}"
        self.sink(f"{type(estimator).__name__} epoch {record['epoch']}: loss "
                  f"{record.get('loss', float('nan')):.4g}, val_mae {val}, "
                  f"{record.get('time', 0.0):.1f} s")


class LRSchedule(Callback):
    """Learning rate ``initial * decay ** ((epoch - 1) // every)`` of epoch ``epoch``.

    :class:`DeepRegressor` runs one from its ``learning_rate``, ``lr_decay`` and
    ``lr_decay_every``; one passed in ``callbacks`` runs after it and overrides it.
    :class:`DeepGLLiMRegressor` applies one passed in ``callbacks`` to every
    fine-tuning epoch, numbered across the alternations (its ``learning_rate`` is then
    the rate before the first epoch only).

    Parameters
    ----------
    initial : float
    decay : float, default=1.0
    every : int, default=1
    """

    def __init__(self, initial, decay=1.0, every=1):
        self.initial, self.decay, self.every = initial, decay, every

    def on_epoch_begin(self, estimator, record, optimizer):
        if optimizer is None:  # a row of several epochs: each epoch is scheduled in it
            return
        lr = self.initial * self.decay ** ((record["epoch"] - 1) // self.every)
        for group in optimizer.param_groups:
            group["lr"] = lr
        record["learning_rate"] = lr


class BatchNormRecalibration(Callback):
    """Set a BatchNorm's running statistics to the exact training-set mean and variance.

    ``forward`` maps a batch of ``inputs`` to the BatchNorm's inputs. Running averages
    lag behind the weights while they change quickly (they mix ten or so past batches),
    and evaluation-mode outputs computed with them drift away from what training saw.
    """

    def __init__(self, norm, forward, inputs, batch_size, mixed_precision=False,
                 last_epoch=None):
        self.norm, self.forward, self.inputs = norm, forward, inputs
        self.batch_size, self.mixed_precision = batch_size, mixed_precision
        self.last_epoch = last_epoch  # only after this epoch (None: after every epoch)

    def on_epoch_end(self, estimator, record):
        if self.last_epoch is not None and record["epoch"] != self.last_epoch:
            return
        estimator.network_.eval()
        inputs = self.inputs
        pre = infer(self.forward, inputs.n, self.batch_size,
                    lambda s: inputs.get(np.arange(inputs.n)[s]), device=inputs.device,
                    mixed_precision=self.mixed_precision).astype(np.float64)
        with torch.no_grad():
            self.norm.running_mean.copy_(torch.as_tensor(pre.mean(axis=0)))
            self.norm.running_var.copy_(torch.as_tensor(pre.var(axis=0, ddof=1)))


class Validation(Callback):
    """Record ``val_mae``, the validation mean absolute error per target."""

    def __init__(self, predict, y_true):
        self.predict, self.y_true = predict, y_true

    def on_epoch_end(self, estimator, record):
        record["val_mae"] = np.mean(np.abs(self.y_true - self.predict()), axis=0)


class KeepBest(Callback):
    """Keep a copy of the state with the lowest mean ``val_mae`` (the last one without).

    ``extra`` returns what else to keep with the network's weights (e.g. the mixture).
    The record is the last entry of ``history_`` when the callback runs.
    """

    def __init__(self, extra=None):
        self.extra = extra
        self.best = None

    def on_epoch_end(self, estimator, record):
        val = record.get("val_mae")
        index = len(estimator.history_) - 1
        score = float(np.mean(val)) if val is not None else -index
        if self.best is None or score < self.best["score"]:
            self.best = {
                "score": score, "index": index,
                "network": {k: v.detach().cpu().clone()
                            for k, v in estimator.network_.state_dict().items()},
                "extra": self.extra() if self.extra is not None else None,
            }

    def restore(self, network):
        """Load the kept weights into ``network``; return the record index and extras."""
        network.load_state_dict(self.best["network"])
        return self.best["index"], self.best["extra"]


class Checkpoint(Callback):
    """Write ``state()`` to ``directory/filename`` after every epoch, atomically."""

    def __init__(self, directory, filename, state):
        self.path = Path(directory) / filename
        self.state = state

    def on_epoch_end(self, estimator, record):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(self.path) as handle:  # never a half-written checkpoint
            torch.save(_to_torch_payload(self.state()), handle)


# ---------------------------------------------------------------------------------------


def check_targets(y, n_images):
    from sklearn.utils.validation import check_array

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


def train_validation_split(n, validation_fraction, rng, min_train, groups=None, why=""):
    """Indices (train, validation); validation is empty when the fraction is 0.

    With ``groups`` (the person of each image), the validation part holds
    ``validation_fraction`` of the people, none of whom is in the training part.
    """
    import math

    from sklearn.model_selection import GroupShuffleSplit

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


def image_tags(tags):
    tags.input_tags.two_d_array = False
    tags.input_tags.three_d_array = True
    return tags


class DeepEstimatorBase(TorchStateMixin, BaseEstimator):
    """Shared machinery of the fine-tuning estimators (not used directly).

    Subclasses define ``_presets`` (preset name -> settings), ``_preset_names`` (the
    parameters a preset fills in), :meth:`initialize_head`, ``fit`` and ``predict``.
    """

    _presets = {}
    _preset_names = ()
    _nesterov = False

    # -- initialisation, in overridable steps ----------------------------------------
    def initialize_backbone(self, weights):
        """The backbone: the network of ``model`` with ``weights``, cut into stages."""
        return Backbone(load_model(self.model, weights))

    def initialize_head(self, n_features):
        """The layers added on top of the backbone's ``n_features`` outputs."""
        raise NotImplementedError

    def initialize_network(self, weights):
        """Build ``network_`` (backbone and head) from ``weights``; return it."""
        backbone = self.initialize_backbone(weights)
        self.network_ = Network(backbone, self.initialize_head(backbone.n_features_out))
        return self.network_

    def initialize_optimizer(self, params, learning_rate):
        """SGD with momentum (Nesterov's for the joint EM, as the authors)."""
        return torch.optim.SGD(params, lr=learning_rate, momentum=self.momentum,
                               nesterov=self._nesterov and self.momentum > 0)

    # -- the fit preamble --------------------------------------------------------------
    def _resolve_settings(self):
        """Parameters left at None take the value of the estimator's ``preset``."""
        preset = self._presets[self.preset]
        return {name: preset[name] if getattr(self, name) is None else getattr(self, name)
                for name in self._preset_names}

    def _begin_fit(self, X, y, groups, min_train):
        images = check_images(X, name="X", min_size=MIN_IMAGE_SIZE)
        y2, self._y_1d = check_targets(y, len(images))
        settings = self._resolve_settings()
        if settings["input_size"] < 32:
            raise ValueError(
                f"input_size={settings['input_size']} is too small; the backbones need at "
                "least 32 pixels."
            )
        self.settings_ = settings
        self.n_targets_ = y2.shape[1]
        self._check_fit_parameters()
        device = resolve_device(self.device)
        rng = check_random_state(self.random_state)
        needed = min_train(y2)  # a count, or (count, why it is needed)
        count, why = needed if isinstance(needed, tuple) else (needed, "")
        train, val = train_validation_split(len(images), self.validation_fraction, rng,
                                            count, groups, why)
        return FitSetup(images, y2, settings, device, rng, train, val)

    def _check_fit_parameters(self):
        """Hook: parameter checks that need the data's shape (``n_targets_``)."""

    def trainable_split(self, trainable_layers):
        """Index of the first trained backbone stage (the last ``trainable_layers``)."""
        backbone = self.network_.backbone
        n_stages = len(backbone.stages)
        if trainable_layers > n_stages:
            raise ValueError(
                f"trainable_layers={trainable_layers} exceeds the {n_stages} stages of the "
                f"backbone {backbone.stage_names}."
            )
        return n_stages - trainable_layers

    def training_inputs(self, images, split, device):
        """Inputs of the stages from ``split`` on (the frozen prefix cached or not)."""
        backbone = self.network_.backbone
        if self.cache == "auto":
            names = backbone.stage_names
            trunk_end = names.index("pool") + 1 if "pool" in names else len(names)
            cache = split >= trunk_end
        else:
            cache = bool(self.cache) and split > 0
        return TrainingInputs(backbone, images, split, self.settings_["input_size"], device,
                              cache=cache, batch_size=self.settings_["batch_size"],
                              mixed_precision=self.mixed_precision, verbose=self.verbose)

    def set_trainable(self, split):
        """Freeze backbone stages ``[0, split)`` (no gradient, eval mode); train the rest.

        With ``freeze_batchnorm``, the BatchNorm layers of the trained backbone stages
        stay in evaluation mode too: they normalise with the statistics they were
        pretrained with, and only their scale and shift are learned. The head's
        BatchNorm always trains.
        """
        network = self.network_
        network.train()
        for i, stage in enumerate(network.backbone.stages):
            frozen = i < split
            stage.requires_grad_(not frozen)
            if frozen:
                stage.eval()
        if self.freeze_batchnorm:
            # In training mode these layers would replace their running statistics with
            # those of the fine-tuning data within an epoch, whatever the learning rate:
            # the evaluation-mode features would then shift under every layer fitted to
            # them (the added PCA layer, the mixture), and the features seen by the loss
            # (batch statistics) would differ from the ones the mixture is fitted to.
            for module in network.backbone.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()
        return [p for p in network.parameters() if p.requires_grad]

    def predict_inputs(self, forward, inputs):
        """``forward`` over all of ``inputs`` in evaluation mode, as a float64 array."""
        self.network_.eval()
        return infer(forward, inputs.n, self.settings_["batch_size"],
                     lambda s: inputs.get(np.arange(inputs.n)[s]), device=inputs.device,
                     mixed_precision=self.mixed_precision).astype(np.float64)

    # -- the training loop -------------------------------------------------------------
    def train_step(self, forward, inputs, index, loss_fn, optimizer, loss_scale=1.0):
        """One SGD step on the images at ``index``; returns the (unscaled) batch loss."""
        with autocast(inputs.device, self.mixed_precision):
            outputs = forward(inputs.get(index))
        loss = loss_fn(outputs.float(), index)
        if not torch.isfinite(loss):
            raise FloatingPointError(
                "the training loss became non-finite; lower the learning rate."
            )
        optimizer.zero_grad(set_to_none=True)
        (loss * loss_scale).backward()
        optimizer.step()
        return float(loss.detach())

    def run_epochs(self, forward, inputs, loss_fn, optimizer, *, n_epochs, split, generator,
                   callbacks=(), loss_scale=1.0, first_epoch=0, record_extra=None,
                   history=None, desc=None):
        """Train for ``n_epochs``; return one record per epoch (callbacks fill them in).

        With ``history`` (a :class:`History`), each record is appended to it as soon as
        its epoch ends, before the ``on_epoch_end`` callbacks (which complete it). The
        loop ends early when a callback sets ``stop_training_``.

        Each epoch visits the training images in a random order drawn from
        ``generator`` (so that training is reproducible), in minibatches of
        ``batch_size``. ``loss_scale`` multiplies the optimised loss; records hold the
        unscaled sample-weighted mean loss.
        """
        batch_size = self.settings_["batch_size"]
        records = []
        for epoch in progress(range(first_epoch, first_epoch + n_epochs), self.verbose,
                              desc=desc):
            tic = time.perf_counter()
            record = {"epoch": epoch + 1, **(record_extra or {})}
            record["learning_rate"] = optimizer.param_groups[0]["lr"]
            for callback in callbacks:
                callback.on_epoch_begin(self, record, optimizer)
            self.set_trainable(split)
            order = torch.randperm(inputs.n, generator=generator).numpy()
            total, count = 0.0, 0
            train_tic = time.perf_counter()
            for start in range(0, inputs.n, batch_size):
                index = np.sort(order[start:start + batch_size])
                if len(index) < 2:  # BatchNorm cannot normalise a single sample
                    continue
                total += self.train_step(forward, inputs, index, loss_fn, optimizer,
                                         loss_scale) * len(index)
                count += len(index)
            _synchronize(inputs.device)
            record.update(loss=total / max(count, 1), val_mae=None, n_trained=count,
                          train_time=time.perf_counter() - train_tic,
                          time=time.perf_counter() - tic)
            self.network_.eval()
            records.append(record)
            if history is not None:
                history.append(record)
            for callback in callbacks:
                callback.on_epoch_end(self, record)
            record["time"] = time.perf_counter() - tic
            if getattr(self, "stop_training_", False):
                break
        return records

    def run_training(self, steps, step, callbacks, *, desc=None, initial=0, total=None):
        """The outer training loop: one row of ``history_`` per element of ``steps``.

        ``step(value, row)`` does the work of the row (it fills ``row`` in); the
        callbacks run around it (``optimizer`` None) and may stop the loop by setting
        ``stop_training_``.
        """
        for value in progress(steps, self.verbose, desc=desc, initial=initial, total=total):
            tic = time.perf_counter()
            row = {}
            for callback in callbacks:
                callback.on_epoch_begin(self, row, None)
            step(value, row)
            row["time"] = time.perf_counter() - tic
            self.history_.append(row)
            for callback in callbacks:
                callback.on_epoch_end(self, row)
            row["time"] = time.perf_counter() - tic
            if self.stop_training_:
                break

    def begin_training(self, callbacks):
        """Start ``history_`` and the callbacks (``on_train_begin``)."""
        self.history_ = History()
        self.stop_training_ = False
        for callback in callbacks:
            callback.on_train_begin(self)

    def end_training(self, callbacks):
        for callback in callbacks:
            callback.on_train_end(self)

    def user_callbacks(self):
        """The ``callbacks`` parameter as a list of clones (the user's stay unchanged)."""
        import copy

        callbacks = [] if self.callbacks is None else list(self.callbacks)
        for callback in callbacks:
            if not isinstance(callback, Callback):
                raise TypeError(
                    f"callbacks must be Callback instances (gllim_sk.deep.Callback), got "
                    f"{type(callback).__name__}."
                )
        return [copy.deepcopy(c) for c in callbacks]


def _synchronize(device):
    if device.type == "cuda":  # timings must wait for the GPU's queued work
        torch.cuda.synchronize(device)
