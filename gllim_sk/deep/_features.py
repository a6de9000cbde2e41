"""VGGFeatures: the activations of a (pretrained) network layer, as a transformer."""

import os
from numbers import Integral

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassNamePrefixFeaturesOutMixin, TransformerMixin
from sklearn.utils.validation import check_is_fitted
from torch import nn

from .._compat import Interval, _fit_context
from .._images import check_images
from ._backbone import Backbone, load_model, to_input_tensor
from ._base import MIN_IMAGE_SIZE, image_tags
from ._torch import TorchStateMixin, infer, seeded, torch_seed

__all__ = ["COMMON_CONSTRAINTS", "VGGFeatures"]

COMMON_CONSTRAINTS = {
    "model": [str, nn.Module],
    "weights": [str, os.PathLike, None],
    "batch_size": [Interval(Integral, 1, None, closed="left"), None],
    "device": [str, torch.device],
    "mixed_precision": ["boolean"],
    "verbose": ["verbose"],
}


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
        **COMMON_CONSTRAINTS,
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
        if self.input_size < 32:
            raise ValueError(
                f"input_size={self.input_size} is too small; the backbones need at least "
                "32 pixels."
            )
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
        check_images(X, name="X", min_size=MIN_IMAGE_SIZE)
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
        images = check_images(X, name="X", min_size=MIN_IMAGE_SIZE)
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
        tags = image_tags(super().__sklearn_tags__())
        tags.requires_fit = True
        return tags
