"""Deep estimators: a torchvision backbone fine-tuned jointly with a GLLiM layer.

This subpackage needs PyTorch and torchvision (``pip install "gllim_sk[deep]"``). It
provides

- :class:`VGGFeatures`, a transformer that maps images to the activations of a
  (by default VGG-16) network layer, fc7 by default;
- :class:`DeepRegressor`, the VGG-FCL-FT baseline (backbone, BatchNorm, linear head,
  L2 loss);
- :class:`DeepGLLiMRegressor`, the deep mixture of linear inverse regressions of
  Lathuilière et al. (CVPR 2017), trained by alternating GLLiM EM and network
  fine-tuning;
- :class:`History` (``history_`` of both estimators, indexable skorch-style) and the
  callbacks :class:`Callback`, :class:`EarlyStopping`, :class:`LRSchedule`, :class:`PrintLog`;
- :func:`mixture_regression_loss`, the network loss of eqs. (8)-(9) as a torch function;
- :func:`pretrain_head_backbone`, a backbone pretrained here on person identification
  of synthetic heads, for a CPU regime like the paper's ImageNet start.
"""

try:
    import torch  # noqa: F401
    import torchvision  # noqa: F401
except ImportError as exc:  # pragma: no cover - exercised only where torch is absent
    raise ImportError(
        "gllim_sk.deep needs PyTorch and torchvision, which are not installed "
        f"({exc}). Install them with:  pip install \"gllim_sk[deep]\"  "
        "(see https://pytorch.org/get-started/ for CUDA builds)."
    ) from exc

from ._base import Callback, EarlyStopping, History, LRSchedule, PrintLog
from ._deep_gllim import DeepGLLiMRegressor, default_head, mixture_regression_loss
from ._features import VGGFeatures
from ._pretrain import pretrain_head_backbone
from ._regressor import DeepRegressor
from ._torch import DeviceWarning

__all__ = [
    "Callback",
    "DeepGLLiMRegressor",
    "DeepRegressor",
    "DeviceWarning",
    "EarlyStopping",
    "History",
    "LRSchedule",
    "PrintLog",
    "VGGFeatures",
    "default_head",
    "mixture_regression_loss",
    "pretrain_head_backbone",
]
