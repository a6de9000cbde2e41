"""Image feature extractors (scikit-learn transformers).

:class:`HOGPyramid` computes the pyramid of histograms of oriented gradients (p-HOG)
used by the HOG-SVR and HOG-IR baselines. Deep (VGG) features live in
:mod:`gllim_sk.deep`.
"""

from ._hog import HOGPyramid

__all__ = ["HOGPyramid"]
