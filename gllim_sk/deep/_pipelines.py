"""The VGG baselines of Table 1 of Lathuilière et al. (2017) as scikit-learn pipelines."""

from sklearn.multioutput import MultiOutputRegressor
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVR

from ._estimators import VGGFeatures

__all__ = ["make_vgg_ir_pipeline", "make_vgg_svr_pipeline"]


def _vgg_step(weights, input_size, batch_size, device, vgg_params):
    return VGGFeatures(weights=weights, input_size=input_size, batch_size=batch_size,
                       device=device, **vgg_params)


def make_vgg_svr_pipeline(*, weights="DEFAULT", C=10.0, epsilon=0.5, gamma="scale",
                          input_size=224, batch_size=32, device="auto", n_jobs=None,
                          vgg_params=None, **svr_params):
    """VGG-SVR: fc7 features of an ImageNet VGG-16, standardised, into one SVR per angle.

    Parameters
    ----------
    weights : str, path-like or None, default="DEFAULT"
        VGG-16 weights (see :class:`VGGFeatures`). ``"DEFAULT"`` are torchvision's
        ImageNet weights, downloaded by torchvision into ``$TORCH_HOME/hub/checkpoints``
        on first use; pass ``None`` (random weights) or a ``state_dict`` path to avoid
        any download.
    C, epsilon, gamma : float
        Parameters of each :class:`~sklearn.svm.SVR` (targets in degrees).
    input_size : int, default=224
        Side of the images fed to VGG-16.
    batch_size : int, default=32
        Images per VGG forward pass.
    device : str, default="auto"
        Device of the VGG forward passes.
    n_jobs : int, default=None
        Parallel jobs for the per-angle SVRs.
    vgg_params : dict, default=None
        Further :class:`VGGFeatures` parameters (``model``, ``layer``...).
    **svr_params
        Further :class:`~sklearn.svm.SVR` parameters.

    Returns
    -------
    pipeline : Pipeline
        Steps ``vgg`` (:class:`VGGFeatures`), ``scaler``
        (:class:`~sklearn.preprocessing.StandardScaler`) and ``svr``
        (:class:`~sklearn.multioutput.MultiOutputRegressor` of SVRs; ``y`` must be 2-D).

    Examples
    --------
    >>> import numpy as np
    >>> from gllim_sk.deep import make_vgg_svr_pipeline
    >>> rng = np.random.default_rng(0)
    >>> images = rng.integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)
    >>> angles = rng.normal(scale=20.0, size=(6, 3))
    >>> pipe = make_vgg_svr_pipeline(weights=None, input_size=32, device="cpu")
    >>> pipe.fit(images, angles).predict(images[:2]).shape
    (2, 3)
    """
    return Pipeline([
        ("vgg", _vgg_step(weights, input_size, batch_size, device, vgg_params or {})),
        ("scaler", StandardScaler()),
        ("svr", MultiOutputRegressor(SVR(C=C, epsilon=epsilon, gamma=gamma, **svr_params),
                                     n_jobs=n_jobs)),
    ])


def make_vgg_ir_pipeline(n_components=50, *, weights="DEFAULT", input_size=224, batch_size=32,
                         device="auto", vgg_params=None, **gllim_params):
    """VGG-IR: fc7 features of an ImageNet VGG-16 into a GLLiM inverse regression.

    This is the paper's model without the network fine-tuning (K = 50 in Table 1).

    Parameters
    ----------
    n_components : int, default=50
        Number of affine components of the :class:`~gllim_sk.GLLiMRegressor`.
    weights : str, path-like or None, default="DEFAULT"
        VGG-16 weights; see :func:`make_vgg_svr_pipeline`.
    input_size, batch_size, device, vgg_params
        As in :func:`make_vgg_svr_pipeline`.
    **gllim_params
        Further :class:`~gllim_sk.GLLiMRegressor` parameters (``covariance_type``,
        ``reg_covar``, ``random_state``...).

    Returns
    -------
    pipeline : Pipeline
        Steps ``vgg`` (:class:`VGGFeatures`) and ``gllim``
        (:class:`~gllim_sk.GLLiMRegressor`).

    Examples
    --------
    >>> from gllim_sk.deep import make_vgg_ir_pipeline
    >>> pipe = make_vgg_ir_pipeline(n_components=5, weights=None, random_state=0)
    >>> pipe.named_steps["gllim"].n_components
    5
    """
    from .._gllim import GLLiMRegressor

    return Pipeline([
        ("vgg", _vgg_step(weights, input_size, batch_size, device, vgg_params or {})),
        ("gllim", GLLiMRegressor(n_components, **gllim_params)),
    ])
