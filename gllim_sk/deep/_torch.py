"""Torch plumbing shared by the deep estimators: devices, seeding, batching, pickling.

Everything here is used by :class:`VGGFeatures`, :class:`DeepRegressor` and
:class:`DeepGLLiMRegressor` alike, so that device handling, batched inference and
(de)serialisation of the torch state live in one place (the training loop is
:class:`~gllim_sk.deep._base.DeepEstimatorBase`'s).
"""

import contextlib
import copy
import dataclasses
import os
import warnings

import numpy as np
import torch
from sklearn.utils import check_random_state
from tqdm.auto import tqdm

from .._files import atomic_write
from ._backbone import to_input_tensor

__all__ = [
    "TorchStateMixin",
    "TrainingInputs",
    "autocast",
    "infer",
    "resolve_device",
    "seeded",
    "torch_seed",
]


def resolve_device(device):
    """``"auto"`` -> CUDA when available, else CPU; anything else -> ``torch.device(device)``."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"device={device!r} is not a valid torch device.") from exc
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} was requested but CUDA is not available.")
    return resolved


def torch_seed(random_state):
    """A 31-bit integer seed drawn from ``random_state`` (None, int or RandomState)."""
    return int(check_random_state(random_state).randint(np.iinfo(np.int32).max))


@contextlib.contextmanager
def seeded(seed, device):
    """Run a block with torch's global RNG seeded, restoring the caller's RNG state after.

    Layer initialisation (``nn.Linear`` etc.) draws from the global generator; forking
    it keeps ``fit`` reproducible without changing the user's own random stream.
    """
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def autocast(device, enabled):
    """Mixed precision context: bfloat16 autocast on ``device`` when ``enabled``."""
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=bool(enabled))


def progress(iterable, verbose, **kwargs):
    """A tqdm progress bar, silent when ``verbose`` is 0."""
    return tqdm(iterable, disable=not verbose, leave=False, **kwargs)


def infer(fn, n, batch_size, get_batch, *, device, mixed_precision=False, verbose=0, desc=None):
    """Apply ``fn`` to batches ``get_batch(slice)`` under ``torch.inference_mode()``.

    Returns the concatenated outputs as a float32 numpy array on the CPU.
    """
    outputs = []
    with torch.inference_mode():
        for start in progress(range(0, n, batch_size), verbose, desc=desc):
            batch = get_batch(slice(start, start + batch_size))
            with autocast(device, mixed_precision):
                out = fn(batch)
            outputs.append(out.float().cpu().numpy())
    return np.concatenate(outputs, axis=0)


class TrainingInputs:
    """Inputs of the trainable part of a network, with the frozen prefix cached or not.

    The frozen prefix (backbone stages ``[0, split)``) always runs in evaluation mode,
    so that its output does not depend on whether it was cached: with ``cache=True``
    it is computed once for all images (in batches, under ``inference_mode``) and
    batches are read from that array; with ``cache=False`` it is recomputed for each
    batch under ``no_grad``.

    Parameters
    ----------
    backbone : Backbone
    images : ndarray of shape (n, H, W, C)
        Validated images.
    split : int
        Number of frozen leading stages.
    input_size : int
    device : torch.device
    cache : bool
    batch_size : int
        Batch size used to fill the cache.
    mixed_precision : bool
    verbose : int
    """

    def __init__(self, backbone, images, split, input_size, device, *, cache, batch_size,
                 mixed_precision=False, verbose=0):
        self.backbone = backbone
        self.images = images
        self.split = split
        self.input_size = input_size
        self.device = device
        self.mixed_precision = mixed_precision
        self.n = len(images)
        self.cached = None
        if cache and split > 0:
            self.cached = infer(
                self._frozen, self.n, batch_size, lambda s: self._pixels(images[s]),
                device=device, mixed_precision=mixed_precision, verbose=verbose,
                desc="caching frozen layers",
            )

    def _pixels(self, images):
        return to_input_tensor(images, self.input_size, self.device)

    def _frozen(self, x):
        return self.backbone(x, 0, self.split)

    def get(self, index):
        """Input of the trainable part for the images at ``index`` (a tensor on device)."""
        if self.cached is not None:
            return torch.from_numpy(self.cached[index]).to(self.device)
        x = self._pixels(self.images[index])
        if self.split == 0:
            return x
        with torch.no_grad(), autocast(self.device, self.mixed_precision):
            return self._frozen(x).float()


class DeviceWarning(UserWarning):
    """An estimator saved for a device that is not available here was moved to the CPU."""


def _is_cuda(device):
    if isinstance(device, torch.device):
        return device.type == "cuda"
    return isinstance(device, str) and device.startswith("cuda")


def _all_on_cpu(module):
    return all(t.device.type == "cpu" for t in list(module.parameters()) + list(module.buffers()))


class TorchStateMixin:
    """Pickling and weight files for estimators holding a fitted ``network_`` (skorch style).

    Pickles carry the network moved to the CPU, so that they load on machines without a
    GPU; the network is moved to the estimator's device when it is next used. An
    estimator pickled with a CUDA ``device`` and loaded where CUDA is not available
    falls back to the CPU with a :class:`DeviceWarning` (skorch's rule).
    :meth:`save_params` / :meth:`load_params` write and read the fitted torch and numpy
    state with ``torch.save`` / ``torch.load(..., weights_only=True)``.
    """

    _torch_attributes = ("network_",)

    def _saved_dataclasses(self):
        # Dataclass types that may appear in ``_saved_attributes`` (rebuilt on loading).
        return ()

    def __getstate__(self):
        state = dict(super().__getstate__())
        for name in self._torch_attributes:
            module = state.get(name)
            if module is not None and not _all_on_cpu(module):
                state[name] = copy.deepcopy(module).cpu()
        return state

    def __setstate__(self, state):
        device = state.get("device")
        if _is_cuda(device) and not torch.cuda.is_available():
            warnings.warn(
                f"{type(self).__name__} was saved with device={device!r}, but CUDA is not "
                "available here; it is loaded with device='cpu'.",
                DeviceWarning, stacklevel=2,
            )
            state = {**state, "device": "cpu"}
        super().__setstate__(state)

    def _network_on_device(self):
        device = resolve_device(self.device)
        return self.network_.to(device), device

    def save_params(self, path):
        """Save the fitted state (network weights and fitted attributes) to ``path``.

        The file is written with ``torch.save`` and holds only tensors and plain Python
        values, so :meth:`load_params` reads it with ``weights_only=True``.

        Parameters
        ----------
        path : str or path-like
        """
        from sklearn.utils.validation import check_is_fitted

        check_is_fitted(self)
        payload = {
            "class": type(self).__name__,
            "network": {k: v.detach().cpu() for k, v in self.network_.state_dict().items()},
            "attributes": _to_torch_payload(self._saved_attributes()),
        }
        with atomic_write(path) as handle:
            torch.save(payload, handle)

    def load_params(self, path):
        """Load a state written by :meth:`save_params` into this estimator.

        The estimator must have the same constructor parameters as the one that saved
        the file; its network is rebuilt (without downloading anything) and the saved
        weights are loaded into it.

        Parameters
        ----------
        path : str or path-like

        Returns
        -------
        self
        """
        try:
            payload = torch.load(os.fspath(path), map_location="cpu", weights_only=True)
        except FileNotFoundError:
            raise
        except Exception as exc:  # torch raises several types on damaged archives
            raise ValueError(
                f"{os.fspath(path)!r} cannot be read as a saved {type(self).__name__} "
                f"(damaged or not written by save_params): {exc}"
            ) from exc
        saved_class = payload.get("class") if isinstance(payload, dict) else None
        if saved_class != type(self).__name__:
            raise ValueError(
                f"{os.fspath(path)!r} holds a {saved_class or 'foreign'} state, not a "
                f"{type(self).__name__} one."
            )
        attributes = _from_torch_payload(payload["attributes"], self._saved_dataclasses())
        self._restore_attributes(attributes)
        self.network_.load_state_dict(payload["network"])
        return self


def _to_torch_payload(value):
    """Numpy arrays -> tagged tensors and dataclasses -> tagged dicts, recursively.

    The result holds only tensors and plain Python values, so that it loads with
    ``torch.load(..., weights_only=True)``.
    """
    if isinstance(value, np.ndarray):
        return {"__ndarray__": torch.from_numpy(np.ascontiguousarray(value))}
    if isinstance(value, np.generic):
        return value.item()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
        return {"__dataclass__": type(value).__name__, "fields": _to_torch_payload(fields)}
    if isinstance(value, dict):
        return {k: _to_torch_payload(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_torch_payload(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str, torch.Tensor)):
        return value
    raise TypeError(f"cannot save a value of type {type(value).__name__} in a weights file.")


def _from_torch_payload(value, dataclass_types=()):
    """Inverse of :func:`_to_torch_payload`; ``dataclass_types`` are the classes to rebuild."""
    if isinstance(value, dict):
        if set(value) == {"__ndarray__"}:
            return value["__ndarray__"].numpy()
        if set(value) == {"__dataclass__", "fields"}:
            registry = {cls.__name__: cls for cls in dataclass_types}
            cls = registry.get(value["__dataclass__"])
            if cls is None:
                raise ValueError(f"unknown saved type {value['__dataclass__']!r}.")
            return cls(**_from_torch_payload(value["fields"], dataclass_types))
        return {k: _from_torch_payload(v, dataclass_types) for k, v in value.items()}
    if isinstance(value, list):
        return [_from_torch_payload(v, dataclass_types) for v in value]
    return value
