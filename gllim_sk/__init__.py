"""gllim_sk: Gaussian Locally-Linear Mapping regression for scikit-learn.

The numpy core (:class:`GLLiMRegressor`, its robust Student-t sibling
:class:`StudentGLLiMRegressor`, and the posterior tools of :mod:`gllim_sk.posterior`)
imports without torch. The deep
estimators (:class:`DeepGLLiMRegressor`, :class:`DeepRegressor`,
:class:`VGGFeatures`) live in :mod:`gllim_sk.deep` and are imported lazily, on
first access, so that ``import gllim_sk`` works where torch is not installed.
"""

from ._gllim import GLLiMRegressor, move_model
from ._student import StudentGLLiMRegressor

__version__ = "0.1.0"

_DEEP_NAMES = ("DeepGLLiMRegressor", "DeepRegressor", "VGGFeatures")

__all__ = ["GLLiMRegressor", "StudentGLLiMRegressor", "__version__", "move_model",
           *_DEEP_NAMES]


def __getattr__(name):
    # PEP 562 lazy attribute: torch is only imported when a deep class is asked for.
    if name in _DEEP_NAMES:
        from . import deep

        return getattr(deep, name)
    raise AttributeError(f"module 'gllim_sk' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_DEEP_NAMES))
