"""DeepGLLiMRegressor (VGG-IR-FT): a network and a GLLiM trained jointly by EM."""

import dataclasses
import hashlib
import importlib
import os
import time
import warnings
from numbers import Integral, Real
from pathlib import Path

import numpy as np
import torch
from sklearn.base import RegressorMixin, clone
from sklearn.decomposition import PCA
from sklearn.utils.validation import check_is_fitted
from torch import nn

from .._compat import HasMethods, Hidden, Interval, StrOptions, _fit_context
from .._gllim_math import NOISE_STRUCTURES, TARGET_STRUCTURES
from .._images import check_images
from ._base import (
    MIN_IMAGE_SIZE,
    BatchNormRecalibration,
    Callback,
    Checkpoint,
    DeepEstimatorBase,
    History,
    KeepBest,
    LRSchedule,
    Network,
    Validation,
    image_tags,
)
from ._features import COMMON_CONSTRAINTS
from ._torch import _from_torch_payload, seeded

__all__ = ["DeepGLLiMRegressor", "default_head", "mixture_regression_loss"]

# Settings that a ``preset`` fills in for parameters left at None.
_PRESETS = {
    # CPU: small inputs, only fc7 and the added layers trained (fc6 output cached).
    "quick": {"input_size": 64, "trainable_layers": 1, "n_alternations": 4, "n_epochs": 2,
              "n_frozen_estep": "all", "batch_size": 32, "learning_rate": 1e-2},
    # The authors' settings: 224 x 224, VGG blocks 1-3 frozen, 12 alternations of
    # 3 epochs, SGD lr 0.1 (Nesterov momentum 0.9), batch 128; the partition stays the
    # one of the targets (the authors ran full EM after 2 fits; see n_frozen_estep).
    # Trainable stages, counted from the top: fc7, fc6, pool (no weights), block5, block4.
    "paper": {"input_size": 224, "trainable_layers": 5, "n_alternations": 12, "n_epochs": 3,
              "n_frozen_estep": "all", "batch_size": 128, "learning_rate": 0.1},
}
# The authors' embedding width; DeepGLLiMRegressor lowers it for small training sets
# (at least this many training images per feature) and narrow backbones (at most this
# fraction of the backbone's outputs).
DEFAULT_EMBEDDING_DIM = 512
IMAGES_PER_EMBEDDING_FEATURE = 10
EMBEDDING_WIDTH_FRACTION = 4
# Version of the checkpoint layout; a checkpoint of another layout is not resumed.
_CHECKPOINT_FORMAT = 3

_CHECKPOINT_NAME = "deep_gllim_checkpoint.pt"
# Parameters that do not change the result of a fit: a checkpoint written under other
# values of these can be resumed.
_RESUMABLE_PARAMS = ("n_alternations", "verbose", "device", "checkpoint_dir", "cache",
                     "callbacks")

# The head used when ``gllim`` is None: the settings of the deprecated flat parameters'
# defaults (one full noise covariance shared by the components).
DEFAULT_HEAD = dict(n_components=2, covariance_type="tied",
                    target_covariance_type="full", reg_covar=1e-6, max_iter=100, tol=1e-3)
# Deprecated flat parameters -> the head's parameter they set.
_FLAT_HEAD_PARAMS = {"n_components": "n_components", "covariance_type": "covariance_type",
                     "target_covariance_type": "target_covariance_type",
                     "reg_covar": "reg_covar", "gllim_max_iter": "max_iter",
                     "gllim_tol": "tol"}
# What DeepGLLiMRegressor calls on its head (besides get_params / set_params).
HEAD_INTERFACE = ("fit", "fit_frozen_estep", "predict", "component_posterior",
                  "expected_scale", "noise_precision", "get_fitted_arrays",
                  "set_fitted_arrays")


def default_head(**params):
    """DeepGLLiMRegressor's default mixture head, with ``params`` changed.

    ``DeepGLLiMRegressor(gllim=default_head(n_components=5))`` changes the number of
    components and keeps the other default settings of the head (one full noise
    covariance shared by the components), e.g. for a search over
    ``gllim__n_components``.

    Parameters
    ----------
    **params
        Parameters of :class:`~gllim_sk.GLLiMRegressor`.

    Returns
    -------
    head : GLLiMRegressor

    Examples
    --------
    >>> from gllim_sk.deep import default_head
    >>> default_head(n_components=5).covariance_type
    'tied'
    """
    from .._gllim import GLLiMRegressor

    return GLLiMRegressor(**{**DEFAULT_HEAD, **params})


def _head_state(head):
    """A fitted head as its class, ``get_params`` and fitted arrays (weights_only-loadable)."""
    cls = type(head)
    params = {k: v for k, v in head.get_params(deep=False).items() if k != "resp_init"}
    return {"class": f"{cls.__module__}:{cls.__qualname__}", "params": params,
            "arrays": head.get_fitted_arrays()}


def _head_from_state(saved):
    if "arrays" not in saved:
        raise ValueError(
            "this file holds the mixture in the layout of an earlier gllim_sk version "
            "(its private state); refit the estimator and save it again."
        )
    module, _, name = saved["class"].partition(":")
    cls = getattr(importlib.import_module(module), name)
    return cls(**saved["params"]).set_fitted_arrays(saved["arrays"])


def _noise_precision(gllim, device, loss_noise="mixture"):
    """The noise precisions of the network's loss, as a float32 tensor.

    ``loss_noise="mixture"``: Sigma_k^-1, of shape (K, E) for the diagonal family and
    (K, E, E) for full/tied. ``"isotropic"``: the precision of the isotropic part of each
    component's noise, ``E / tr(Sigma_k)``, repeated to shape (K, E).
    """
    prec = gllim.noise_precision()
    if loss_noise == "isotropic":
        E = prec.shape[1]
        variances = (np.linalg.inv(prec).diagonal(axis1=-2, axis2=-1) if prec.ndim == 3
                     else 1.0 / prec)
        prec = np.repeat(E / variances.sum(axis=1, keepdims=True), E, axis=1)
    return torch.as_tensor(np.array(prec), dtype=torch.float32, device=device)


_DEPRECATED = Hidden(StrOptions({"deprecated"}))


@dataclasses.dataclass
class _Alternation:
    """What the alternations of Algorithm 1 share: the network's training inputs, the
    current features and mixture, the responsibilities, and the random streams."""

    split: int
    inputs: object
    y_train: np.ndarray
    n_frozen: int
    gllim_seed: int
    generator: torch.Generator
    draw_rng: np.random.RandomState
    X_train: np.ndarray = None
    initial_resp: np.ndarray = None
    resp: np.ndarray = None
    gllim: object = None
    # Callbacks run at every fine-tuning epoch, not only per alternation.
    epoch_callbacks: list = dataclasses.field(default_factory=list)


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


def _as_history(rows):
    """Rows read back from a file as a History (the epochs of each row too)."""
    return History({**row, "epochs": History(row.get("epochs", []))} for row in rows)


def _dataset_loss(gllim, X, y, resp, loss_noise):
    """Mean network loss (per feature) of features ``X`` under a fitted mixture."""
    as_tensor = lambda a: torch.as_tensor(np.asarray(a, dtype=np.float64))  # noqa: E731
    precision = _noise_precision(gllim, torch.device("cpu"), loss_noise).double()
    loss = mixture_regression_loss(as_tensor(X), as_tensor(y), as_tensor(resp),
                                   as_tensor(gllim.inverse_coef_),
                                   as_tensor(gllim.inverse_intercept_), precision)
    return float(loss.mean())


class DeepGLLiMRegressor(RegressorMixin, DeepEstimatorBase):
    """Deep mixture of linear inverse regressions (Lathuilière et al., CVPR 2017).

    A network ``phi`` (the backbone up to fc7, a linear ``embedding_dim``-unit layer
    initialised from the PCA of the training fc7 features, and a BatchNorm) maps images
    to features ``x``; a mixture head ``gllim`` (a :class:`~gllim_sk.GLLiMRegressor`
    by default, or a robust :class:`~gllim_sk.StudentGLLiMRegressor`) models them as
    ``K`` affine functions of the targets, ``x = A_k y + b_k + e_k``. ``fit`` follows
    Algorithm 1:

    1. initial responsibilities by k-means followed by a Gaussian mixture on ``y``;
    2. GLLiM fitted on the features of the training images, with the E-step frozen at
       those responsibilities (M-steps only: the partition stays the one of the
       targets) for the first ``n_frozen_estep`` fits, by default all of them; after
       those, full EM warm-started from the previous responsibilities (``resp_init``);
    3. the network fine-tuned for ``n_epochs`` epochs on the loss of eq. (9) (with
       ``loss_noise="mixture"``, eq. (8); see :func:`mixture_regression_loss`), with the
       mixture held fixed; each sample's term under component k is weighted by
       ``r_nk * gllim.expected_scale(x, y)[n, k]`` (divided by its mean over the
       training set): 1 for the Gaussian head, the E-step's expected scale u for the
       Student head (``loss_weights="expected_scale"``), or by ``r_nk`` alone
       (``loss_weights="responsibilities"``);
    4. steps 2-3 repeated ``n_alternations`` times; a held-out validation fraction keeps
       the best network and mixture.

    Prediction is the conditional mean (and standard deviation) of the forward mixture
    p(y | phi(image)), eqs. (3)-(4).

    When the whole convolutional trunk is frozen (``trainable_layers`` <= 2 on VGG-16)
    its output is computed once and reused for every epoch and alternation; this gives
    the same numbers as recomputing it. The BatchNorm has no learnable scale or shift:
    it is there to keep the features from collapsing onto the mixture's means.

    Four choices keep the joint EM from raising the error on new people (the user
    guide's "Why the joint EM collapsed" measures each): the E-step stays at the
    targets' partition (``n_frozen_estep="all"``), the embedding is narrow enough for the
    training set, the backbone's BatchNorm statistics stay the pretrained ones
    (``freeze_batchnorm``), and the mixture's noise is a full shared covariance
    (the default head's ``covariance_type="tied"``) while the network's loss keeps the
    authors' isotropic eq. (9) (``loss_noise="isotropic"``).

    Parameters
    ----------
    n_components : int
        Deprecated: give ``gllim=GLLiMRegressor(n_components=...)``. Like the other
        flat parameters of the head (``covariance_type``, ``target_covariance_type``,
        ``reg_covar``, ``gllim_max_iter`` -> ``max_iter``, ``gllim_tol`` -> ``tol``), it
        still sets that parameter of the head, with a ``FutureWarning``.
    gllim : estimator, default=None
        The mixture head, cloned at fit: :class:`~gllim_sk.GLLiMRegressor` or
        :class:`~gllim_sk.StudentGLLiMRegressor`, or any estimator with their
        parameters ``n_components``, ``target_covariance_type``, ``reg_covar``,
        ``resp_init`` and ``random_state`` and their methods ``fit``,
        ``fit_frozen_estep``, ``predict``, ``component_posterior``,
        ``expected_scale``, ``noise_precision``, ``get_fitted_arrays`` and
        ``set_fitted_arrays``. ``None``: :func:`default_head`,
        ``GLLiMRegressor(n_components=2, covariance_type="tied",
        target_covariance_type="full")``: one full noise covariance shared by the
        components (the paper's best K on Biwi is 2). The authors' isotropic
        ``"tied_spherical"`` predicts poorly from fine-tuned features: the fine-tuning
        makes the features' residual correlated across dimensions, and a forward model
        that ignores the correlation gets worse while the features get better (the user
        guide measures this).
        Its ``random_state`` is drawn from this estimator's, and its ``resp_init``
        is set by each fit; search its parameters as ``gllim__n_components``.
    loss_noise : {"isotropic", "mixture"}, default="isotropic"
        Noise covariance in the network's loss. ``"isotropic"``: eq. (9), each
        component's noise replaced by its isotropic part ``tr(Sigma_k) / E * I`` (with a
        frozen E-step, the fitted A_k, b_k do not depend on the noise structure, so
        this is exactly the authors' loss). ``"mixture"``: eq. (8) with the full
        Sigma_k^-1, which lets the network shrink the features' noise along the
        mixture's low-variance directions, a degenerate direction of the likelihood.
    loss_weights : {"expected_scale", "responsibilities"}, default="expected_scale"
        Weight of sample n under component k in the network's loss.
        ``"expected_scale"``: ``r_nk`` times the head's ``expected_scale``, the
        gradient of the head's own log-likelihood (for a Student head, the E-step's u,
        small for pairs far from every component). ``"responsibilities"``: ``r_nk``
        alone, the Gaussian loss of eq. (9) whatever the head; a Student head then
        makes the mixture's fit robust while the network's loss stays the authors'.
        The two are the same for the Gaussian head. With many more features than
        targets, u follows the distance of the features rather than that of the label,
        and down-weights hard images rather than wrong labels (the user guide's
        label-noise section measures both).
    covariance_type, target_covariance_type, reg_covar, gllim_max_iter, gllim_tol
        Deprecated (see ``n_components``).
    model : str or torch.nn.Module, default="vgg16"
        Backbone; see :class:`VGGFeatures`.
    weights : str, path-like or None, default=None
        Backbone weights; see :class:`VGGFeatures`. The paper starts from ImageNet
        (``weights="DEFAULT"``, downloaded by torchvision on first use); ``None`` is a
        random initialisation and downloads nothing.
    preset : {"quick", "paper"}, default="quick"
        Fills in the parameters left at None. ``"quick"`` (CPU): 64 x 64 inputs,
        ``trainable_layers=1`` (fc7), 4 alternations of 2 epochs, batch 32, learning
        rate 1e-2. ``"paper"`` (GPU): 224 x 224 inputs, ``trainable_layers=5`` (VGG
        blocks 1-3 frozen), 12 alternations of 3 epochs, batch 128, learning rate 0.1.
        Both keep the E-step frozen (``n_frozen_estep="all"``).
    embedding_dim : int, default=None
        Width of the linear layer before the BatchNorm: the dimension D of the GLLiM. A
        PCA of the training images' backbone features initialises the layer, so it
        can be at most the number of training images and the backbone's output width.
        ``None``: the smallest of 512 (the authors' value), a tenth of the number of
        training images and a quarter of the backbone's output width (at least
        ``n_targets``); the value used is in ``settings_["embedding_dim"]``. The
        mixture overfits when each feature has few training images, and the last
        principal directions of a backbone's output are its noise floor, which the
        whitening PCA layer would scale up to unit variance (see the user guide).
    pca_bias : {"center", "zero"}, default="center"
        Bias of the PCA-initialised layer: centre the projected features, or zero (as the
        authors); the BatchNorm removes the mean either way.
    responsibilities : {"exact", "prior", "prior_sampled"}, default="exact"
        Weights r_nk of the fine-tuning loss: the exact posteriors p(k | x_n, y_n) of
        eq. (5); the prior-only ones p(k | y_n); or, as the authors' code, one component
        per sample drawn from p(k | y_n) (the feature term dropped).
    n_alternations : int, default=None
        Number of (fine-tuning, GLLiM) alternations after the initial GLLiM fit.
    n_frozen_estep : int or "all", default=None
        Number of GLLiM fits, counting the initial one, that keep the initial
        responsibilities (M-steps only); ``"all"`` (both presets): every fit. The
        authors ran full EM after two fits; with features of hundreds of dimensions
        from a few thousand images the full E-step's responsibilities follow clusters
        of the features rather than of the targets, and the fine-tuning then pulls the
        features towards those clusters, away from the pose (the user guide measures
        this collapse).
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
    freeze_batchnorm : bool, default=True
        Keep the BatchNorm layers of the fine-tuned backbone stages (ResNets and other
        families that have them; VGG-16 has none) in evaluation mode while training:
        they normalise with their pretrained statistics and only their scale and shift
        are learned. ``False`` lets minibatches update their statistics, which shifts
        the features of every image even at a tiny learning rate (see the user guide).
    cache : "auto" or bool, default="auto"
        Cache the output of the frozen backbone stages ("auto": when the convolutional
        trunk is frozen).
    checkpoint_dir : str or path-like, default=None
        Directory where the state is saved after every alternation
        (``deep_gllim_checkpoint.pt``): the network's weights, the random streams, the
        responsibilities, the history, and the current and best heads as their class,
        ``get_params`` and ``get_fitted_arrays`` (read back with
        ``torch.load(weights_only=True)``). A fit that finds a checkpoint of the same
        data and parameters there resumes from it; other checkpoints are an error.
    callbacks : list of Callback, default=None
        Run after every alternation, after the estimator's own (validation,
        keep-best, checkpoint), e.g. :class:`EarlyStopping` or :class:`PrintLog`; an
        :class:`LRSchedule` sets the learning rate of every fine-tuning epoch.
        Copies run; the given objects are not changed.
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
    gllim_ : estimator
        The mixture head fitted on the network's features (a fitted clone of
        ``gllim``).
    history_ : History
        One row per GLLiM fit (``alternation`` 0 is the initial one, before any
        fine-tuning), e.g. ``history_[:, "val_mae"]``. ``epoch``: fine-tuning epochs
        so far; ``epochs``: the rows of the fine-tuning epochs that preceded this fit
        (``history_[-1, "epochs", :, "loss"]``), and ``epoch_losses`` their
        ``loss``; ``learning_rate`` of those epochs (None for alternation 0);
        ``loss_before`` and ``loss``: the eq. (9) loss (mean over the
        training images, divided by ``embedding_dim``; :func:`mixture_regression_loss`)
        of the fine-tuning that preceded this fit, with its mixture and
        responsibilities, on the evaluation-mode features before and after it (NaN for
        alternation 0); ``epoch_losses``: the running training loss of each epoch
        (batch-normalised features); ``log_likelihood``: mean log p(x, y) of the
        training features under the new mixture; ``val_mae``: validation mean absolute
        error per target (None without validation); ``estep_frozen``; and timings
        ``time``, ``finetune_time``, ``train_time`` (SGD steps only), ``gllim_time``
        (seconds).
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
    >>> from gllim_sk import StudentGLLiMRegressor
    >>> reg = DeepGLLiMRegressor(gllim=StudentGLLiMRegressor(2, covariance_type="tied_spherical"),
    ...                          embedding_dim=8, input_size=32,
    ...                          n_alternations=1, n_epochs=1, validation_fraction=0.25,
    ...                          device="cpu", random_state=0).fit(images, y)
    >>> reg.predict(images[:3]).shape
    (3, 2)
    >>> reg.history_[:, "alternation"], reg.history_[-1, "epochs", :, "epoch"]
    ([0, 1], [1])
    >>> reg.transform(images[:3]).shape
    (3, 8)
    """

    _parameter_constraints = {
        **COMMON_CONSTRAINTS,
        "n_components": [Interval(Integral, 1, None, closed="left"), _DEPRECATED],
        "gllim": [HasMethods(list(HEAD_INTERFACE)), None],
        "loss_noise": [StrOptions({"isotropic", "mixture"})],
        "loss_weights": [StrOptions({"expected_scale", "responsibilities"})],
        "covariance_type": [StrOptions(set(NOISE_STRUCTURES)), _DEPRECATED],
        "target_covariance_type": [StrOptions(set(TARGET_STRUCTURES)), _DEPRECATED],
        "preset": [StrOptions(set(_PRESETS))],
        "embedding_dim": [Interval(Integral, 1, None, closed="left"), None],
        "pca_bias": [StrOptions({"center", "zero"})],
        "responsibilities": [StrOptions({"exact", "prior", "prior_sampled"})],
        "n_alternations": [Interval(Integral, 0, None, closed="left"), None],
        "n_frozen_estep": [Interval(Integral, 0, None, closed="left"), StrOptions({"all"}),
                           None],
        "n_epochs": [Interval(Integral, 1, None, closed="left"), None],
        "trainable_layers": [Interval(Integral, 0, None, closed="left"), None],
        "input_size": [Interval(Integral, 1, None, closed="left"), None],
        "learning_rate": [Interval(Real, 0, None, closed="neither"), None],
        "momentum": [Interval(Real, 0, 1, closed="left")],
        "validation_fraction": [Interval(Real, 0, 1, closed="left")],
        "gllim_max_iter": [Interval(Integral, 1, None, closed="left"), _DEPRECATED],
        "gllim_tol": [Interval(Real, 0, None, closed="left"), _DEPRECATED],
        "reg_covar": [Interval(Real, 0, None, closed="left"), _DEPRECATED],
        "freeze_batchnorm": ["boolean"],
        "cache": [StrOptions({"auto"}), "boolean"],
        "checkpoint_dir": [str, os.PathLike, None],
        "callbacks": [list, tuple, None],
        "random_state": ["random_state"],
    }
    _presets = _PRESETS
    _preset_names = ("input_size", "trainable_layers", "n_alternations", "n_epochs",
                     "n_frozen_estep", "batch_size", "learning_rate")
    _nesterov = True

    def __init__(self, n_components="deprecated", *, gllim=None, loss_noise="isotropic",
                 loss_weights="expected_scale",
                 covariance_type="deprecated", target_covariance_type="deprecated",
                 model="vgg16", weights=None, preset="quick",
                 embedding_dim=None, pca_bias="center", responsibilities="exact",
                 n_alternations=None, n_frozen_estep=None, n_epochs=None, trainable_layers=None,
                 input_size=None, batch_size=None, learning_rate=None, momentum=0.9,
                 validation_fraction=0.2, gllim_max_iter="deprecated",
                 gllim_tol="deprecated", reg_covar="deprecated",
                 freeze_batchnorm=True, cache="auto", checkpoint_dir=None, callbacks=None,
                 device="auto", mixed_precision=False, random_state=None, verbose=0):
        self.n_components = n_components
        self.gllim = gllim
        self.loss_noise = loss_noise
        self.loss_weights = loss_weights
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
        self.freeze_batchnorm = freeze_batchnorm
        self.cache = cache
        self.checkpoint_dir = checkpoint_dir
        self.callbacks = callbacks
        self.device = device
        self.mixed_precision = mixed_precision
        self.random_state = random_state
        self.verbose = verbose

    # -- construction ---------------------------------------------------------------
    def initialize_head(self, n_features):
        """The added layer (PCA-initialised in ``fit``) and a BatchNorm without affine."""
        dim = self.settings_["embedding_dim"]
        return nn.Sequential(nn.Linear(n_features, dim), nn.BatchNorm1d(dim, affine=False))

    def _check_fit_parameters(self):
        if self.embedding_dim is not None and self.embedding_dim < self.n_targets_:
            raise ValueError(
                f"embedding_dim={self.embedding_dim} is smaller than the number of targets "
                f"({self.n_targets_}): the GLLiM layer regresses the targets from "
                f"embedding_dim features, which must be at least as many. Raise "
                "embedding_dim, or leave it at None."
            )

    def _make_head(self):
        """The head to fit: a clone of ``gllim`` (or the default), with the deprecated
        flat parameters applied."""
        flat = {head_name: getattr(self, name) for name, head_name in _FLAT_HEAD_PARAMS.items()
                if not (isinstance(getattr(self, name), str)
                        and getattr(self, name) == "deprecated")}
        head = default_head() if self.gllim is None else clone(self.gllim)
        if flat:
            names = sorted(k for k in _FLAT_HEAD_PARAMS if _FLAT_HEAD_PARAMS[k] in flat)
            if self.gllim is not None:
                raise ValueError(
                    f"{names} and gllim are both given: set these parameters on the "
                    "gllim estimator itself."
                )
            warnings.warn(
                f"DeepGLLiMRegressor's {names} are deprecated and will be removed: pass "
                "gllim=GLLiMRegressor(n_components=..., covariance_type=..., ...) "
                "(gllim_max_iter and gllim_tol are its max_iter and tol).",
                FutureWarning, stacklevel=4,
            )
            head.set_params(**flat)
        return head

    def _min_train(self, y):
        """Fewest training images, and why: two per component, or n_targets + 2."""
        n_components = self._head.get_params()["n_components"]
        count = max(2 * n_components, y.shape[1] + 2, 2)
        why = (f" (two per mixture component, n_components={n_components})"
               if count == 2 * n_components else
               f" (the number of targets, {y.shape[1]}, plus 2)")
        return count, why

    def _embedding_dim(self, width, n_train):
        """The embedding width: ``embedding_dim`` checked, or chosen when it is None."""
        if self.embedding_dim is None:
            if width < self.n_targets_:
                raise ValueError(
                    f"the backbone outputs {width} features, fewer than the {self.n_targets_} "
                    "targets: choose a model with a wider last layer."
                )
            return max(min(DEFAULT_EMBEDDING_DIM, width // EMBEDDING_WIDTH_FRACTION,
                           n_train // IMAGES_PER_EMBEDDING_FEATURE), self.n_targets_)
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

    def initialize_network(self, weights, n_train=None):
        """Build the network; when fitting (``n_train`` given), choose embedding_dim too."""
        if n_train is not None:
            backbone = self.initialize_backbone(weights)
            self.settings_["embedding_dim"] = self._embedding_dim(backbone.n_features_out,
                                                                  n_train)
            self.network_ = Network(backbone, self.initialize_head(backbone.n_features_out))
            return self.network_
        return super().initialize_network(weights)

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
        gllim = clone(self._head).set_params(resp_init=resp, random_state=seed)
        # A frozen E-step: the partition stays the given responsibilities.
        return gllim.fit_frozen_estep(X, y, resp) if frozen else gllim.fit(X, y)

    def _initial_resp(self, y, seed):
        from .._init import target_mixture_resp

        # The paper's init, k-means on y refined by a Gaussian mixture of y, with the
        # constants and the relative variance floor of GLLiMRegressor's initialisation.
        y = np.asarray(y, dtype=np.float64).reshape(len(y), -1)
        head = self._head.get_params()
        resp = target_mixture_resp(y, head["n_components"],
                                   head.get("target_covariance_type", "full"),
                                   head.get("reg_covar", 1e-6), seed)
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

    def _features(self, inputs, split):
        """phi of the images behind ``inputs``: the evaluation-mode BatchNorm outputs."""
        network = self.network_
        return self.predict_inputs(lambda x: network(x, split), inputs)

    # -- checkpoints ------------------------------------------------------------------
    def _fingerprint(self, images, y, groups=None):
        digest = hashlib.sha256()
        if groups is not None:
            digest.update(np.asarray(groups).tobytes())
        digest.update(np.ascontiguousarray(images).tobytes())
        digest.update(str(images.shape).encode())
        digest.update(np.ascontiguousarray(y).tobytes())
        params = {k: v for k, v in self.get_params(deep=False).items()
                  if k not in _RESUMABLE_PARAMS and k != "gllim"}
        # The head by its class and parameters (what a fit from the checkpoint rebuilds).
        params["gllim"] = (type(self._head).__qualname__,
                           sorted(self._head.get_params(deep=False).items()))
        digest.update(repr(sorted(params.items(), key=lambda kv: kv[0])).encode())
        return digest.hexdigest()

    def _read_checkpoint(self, fingerprint):
        if self.checkpoint_dir is None:
            return None
        path = Path(self.checkpoint_dir) / _CHECKPOINT_NAME
        if not path.exists():
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
        if state.get("fingerprint") != fingerprint or state.get("format") != _CHECKPOINT_FORMAT:
            raise ValueError(
                f"{path} is a checkpoint of another fit (different images, targets, "
                "parameters or package version); delete it or choose another checkpoint_dir."
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
        self._head = self._make_head()
        # The embedding's own minimum (the PCA needs embedding_dim images) is checked
        # once the backbone's width is known, by initialize_network.
        fit = self._begin_fit(X, y, groups, min_train=self._min_train)
        settings, device, train = fit.settings, fit.device, fit.train
        seeds = fit.rng.randint(np.iinfo(np.int32).max, size=5)
        torch_seed_, pca_seed, gmm_seed, gllim_seed, draw_seed = (int(s) for s in seeds)
        fingerprint = self._fingerprint(fit.images, fit.y, groups)
        resumed = self._read_checkpoint(fingerprint)
        n_alternations, n_frozen = settings["n_alternations"], settings["n_frozen_estep"]

        with seeded(torch_seed_, device):
            network = self.initialize_network(None if resumed else self.weights,
                                              n_train=len(train)).to(device)
            network.backbone.check_input_size(settings["input_size"])
            split = self.trainable_split(settings["trainable_layers"])
            state = _Alternation(
                split, self.training_inputs(fit.images[train], split, device), fit.y[train],
                n_alternations + 1 if n_frozen == "all" else n_frozen, gllim_seed,
                torch.Generator().manual_seed(torch_seed_), np.random.RandomState(draw_seed))
            callbacks = self._callbacks(state, fit, fingerprint)
            state.epoch_callbacks = [c for c in callbacks if isinstance(c, LRSchedule)]
            self.begin_training(callbacks)
            if resumed:
                self._resume(state, resumed, callbacks[1])
            else:
                # Algorithm 1, initialisation: the added layer from the PCA of the
                # backbone's features, responsibilities from a mixture on y.
                self._init_embedding(self.predict_inputs(
                    lambda x: network.backbone(x, split), state.inputs), pca_seed)
                state.initial_resp = state.resp = self._initial_resp(state.y_train, gmm_seed)
            state.X_train = self._features(state.inputs, split)
            start = len(self.history_)
            # Alternation 0 fits the mixture; each later one fine-tunes, then refits it.
            self.run_training(range(start, n_alternations + 1),
                              lambda alternation, row: self._alternate(state, alternation, row),
                              callbacks, desc="alternations", initial=start,
                              total=n_alternations + 1)
            self.end_training(callbacks)
        self.best_alternation_, self.gllim_ = callbacks[1].restore(network)
        network.eval()
        return self

    def _alternate(self, state, alternation, row):
        """One row of Algorithm 1: fine-tune the network with the mixture held fixed
        (from alternation 1 on), then fit the mixture on the new features."""
        n_epochs = self.settings_["n_epochs"]
        row.update(alternation=alternation, epoch=alternation * n_epochs,
                   loss=float("nan"), loss_before=float("nan"), epochs=History(),
                   epoch_losses=[], learning_rate=None, finetune_time=0.0, train_time=0.0)
        tic = time.perf_counter()
        if alternation > 0:
            frozen_before = alternation - 1 < state.n_frozen
            resp = self._finetune_resp(state.gllim, state.X_train, state.y_train,
                                       state.initial_resp if frozen_before else None,
                                       state.draw_rng)
            weights = resp
            if self.loss_weights == "expected_scale":
                # r_nk times the head's weight of each sample (the Student head's u_nk),
                # divided by their mean: u is about alpha_k for a typical sample, and the
                # learning rate keeps the step size it has with the Gaussian head (u = 1).
                weights = resp * state.gllim.expected_scale(state.X_train, state.y_train)
                weights /= weights.sum() / resp.sum()
            row["loss_before"] = _dataset_loss(state.gllim, state.X_train, state.y_train,
                                               weights, self.loss_noise)
            epochs = self._finetune(state.gllim, state.inputs, state.split, state.y_train,
                                    weights, state.generator,
                                    first_epoch=(alternation - 1) * n_epochs,
                                    epoch_callbacks=state.epoch_callbacks)
            row.update(epochs=History(epochs), epoch_losses=[r["loss"] for r in epochs],
                       learning_rate=epochs[0]["learning_rate"],
                       train_time=sum(r["train_time"] for r in epochs),
                       finetune_time=time.perf_counter() - tic)
            state.X_train = self._features(state.inputs, state.split)
            row["loss"] = _dataset_loss(state.gllim, state.X_train, state.y_train, weights,
                                        self.loss_noise)
        # Fit the mixture on the features: M-steps only from the initial
        # responsibilities for the first n_frozen fits, then full EM.
        frozen = alternation < state.n_frozen
        tac = time.perf_counter()
        state.gllim = self._fit_gllim(state.X_train, state.y_train,
                                      state.initial_resp if frozen else state.resp, frozen,
                                      state.gllim_seed)
        state.resp = (state.initial_resp if frozen
                      else state.gllim.component_posterior(state.X_train, state.y_train))
        row.update(log_likelihood=float(state.gllim.lower_bound_), estep_frozen=frozen,
                   gllim_time=time.perf_counter() - tac, val_mae=None)

    def _callbacks(self, state, fit, fingerprint):
        """Validation, keep-best (always second) and checkpoint, then the user's."""
        keep_best = KeepBest(extra=lambda: state.gllim)
        callbacks = [Callback(), keep_best]
        if len(fit.val):
            val_inputs = self.training_inputs(fit.images[fit.val], state.split,
                                              state.inputs.device)
            callbacks[0] = Validation(
                lambda: state.gllim.predict(self._features(val_inputs, state.split)),
                fit.y[fit.val])
        if self.checkpoint_dir is not None:
            network = self.network_
            callbacks.append(Checkpoint(self.checkpoint_dir, _CHECKPOINT_NAME, lambda: {
                "format": _CHECKPOINT_FORMAT, "fingerprint": fingerprint,
                "network": {k: v.detach().cpu() for k, v in network.state_dict().items()},
                "generator": state.generator.get_state(),
                "draw_rng": state.draw_rng.get_state(),
                "initial_resp": state.initial_resp, "resp": state.resp,
                "gllim": _head_state(state.gllim), "history": list(self.history_),
                "best": {**keep_best.best, "extra": _head_state(keep_best.best["extra"])},
            }))
        return callbacks + self.user_callbacks()

    def _resume(self, state, saved, keep_best):
        """Continue from a checkpoint: network, random streams, mixture, history."""
        self.network_.load_state_dict({k: torch.as_tensor(v)
                                       for k, v in saved["network"].items()})
        state.generator.set_state(torch.as_tensor(saved["generator"]))
        state.draw_rng.set_state(tuple(saved["draw_rng"]))
        state.initial_resp, state.resp = saved["initial_resp"], saved["resp"]
        state.gllim = _head_from_state(saved["gllim"])
        self.history_ = _as_history(saved["history"])
        keep_best.best = {**saved["best"], "extra": _head_from_state(saved["best"]["extra"])}

    def _finetune(self, gllim, inputs, split, y_train, resp, generator, first_epoch,
                  epoch_callbacks=()):
        """Fine-tune the network for ``n_epochs`` on eq. (9) with the mixture fixed.

        Returns the record of each epoch (``loss``: running training loss).
        """
        network, device = self.network_, inputs.device
        optimizer = self.initialize_optimizer(self.set_trainable(split),
                                              self.settings_["learning_rate"])
        as_tensor = lambda a: torch.as_tensor(np.ascontiguousarray(a), dtype=torch.float32,  # noqa: E731
                                              device=device)
        targets, weights = as_tensor(y_train), as_tensor(resp)
        coef, intercept = as_tensor(gllim.inverse_coef_), as_tensor(gllim.inverse_intercept_)
        precision = _noise_precision(gllim, device, self.loss_noise)

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

        # The GLLiM layer is fitted on evaluation-mode features: the BatchNorm's
        # statistics are set to the exact training-set ones after the last epoch, so
        # that they match the batch-normalised features the loss saw.
        linear, norm = network.head
        n_epochs = self.settings_["n_epochs"]
        recalibrate = BatchNormRecalibration(
            norm, lambda x: linear(network.backbone(x, split)), inputs,
            self.settings_["batch_size"], self.mixed_precision,
            last_epoch=first_epoch + n_epochs)
        records = self.run_epochs(lambda x: network(x, split), inputs, loss_fn, optimizer,
                                  n_epochs=n_epochs, split=split, generator=generator,
                                  callbacks=[*epoch_callbacks, recalibrate],
                                  loss_scale=scale,
                                  first_epoch=first_epoch, desc="fine-tuning")
        return records

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
        images = check_images(X, name="X", min_size=MIN_IMAGE_SIZE)
        _, device = self._network_on_device()
        return self._features(self.training_inputs(images, 0, device), 0)

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
                "gllim_": _head_state(self.gllim_)}

    def _restore_attributes(self, attributes):
        for key, value in attributes.items():
            setattr(self, key, value)
        self.gllim_ = _head_from_state(attributes["gllim_"])
        self.history_ = _as_history(self.history_)
        self.settings_.setdefault("embedding_dim", self.embedding_dim)  # older files
        self.initialize_network(None)

    def __sklearn_tags__(self):
        tags = image_tags(super().__sklearn_tags__())
        tags.target_tags.multi_output = True
        return tags
