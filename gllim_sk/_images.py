"""Validation of image batches, shared by every part of gllim_sk that takes images.

All image-taking code (feature extractors, deep estimators, dataset helpers) accepts the
same layouts and calls :func:`check_images` so that the rules and the error messages
live in one place.
"""

import numpy as np
import scipy.sparse as sp
from sklearn.utils.validation import check_array

__all__ = ["check_images", "images_to_float"]


def check_images(images, *, name="images", min_size=1, ensure_channels=True):
    """Validate a batch of images and return it as an ``(n, H, W, C)`` array.

    Parameters
    ----------
    images : array-like of shape (n, H, W) or (n, H, W, C)
        A batch of grayscale (``C = 1`` or no channel axis) or RGB (``C = 3``) images,
        either ``uint8`` in [0, 255] or floating point in [0, 1]. A list of equally
        shaped arrays is accepted.
    name : str, default="images"
        The argument's name, used in error messages.
    min_size : int, default=1
        Smallest allowed height and width, in pixels.
    ensure_channels : bool, default=True
        Add a channel axis to ``(n, H, W)`` input so the result is always 4-D.

    Returns
    -------
    images : ndarray of shape (n, H, W, C)
        The validated images (a view of the input where possible; never modified).

    Raises
    ------
    ValueError
        For a wrong number of dimensions, one ``(H, W, C)`` image without a batch axis,
        a channel count other than 1 or 3, an empty batch, images smaller than
        ``min_size``, non-finite values, or float values outside [0, 1].
    TypeError
        For sparse input, or a dtype that is neither unsigned 8-bit integer, another
        integer, bool nor floating point.

    Examples
    --------
    >>> import numpy as np
    >>> from gllim_sk._images import check_images
    >>> check_images(np.zeros((2, 8, 8), dtype=np.uint8)).shape
    (2, 8, 8, 1)
    """
    if sp.issparse(images):  # np.asarray would make a 0-d object array of it
        check_array(images, accept_sparse=False, input_name=name)  # scikit-learn's TypeError
    if isinstance(images, (list, tuple)):
        shapes = {np.shape(im) for im in images}
        if len(shapes) > 1:
            raise ValueError(
                f"{name}: all images must have the same shape, got shapes {sorted(shapes)}."
            )
    arr = np.asarray(images)
    if arr.dtype == object:
        raise TypeError(f"{name}: expected a numeric image array, got dtype object.")
    if arr.ndim not in (3, 4):
        raise ValueError(
            f"{name}: expected an array of shape (n_images, height, width) or "
            f"(n_images, height, width, channels), got shape {arr.shape}. "
            "A single image needs a leading batch axis (image[None])."
        )
    if arr.ndim == 3 and arr.shape[2] in (1, 3) and arr.shape[2] < min(arr.shape[:2]):
        # A batch of 1- or 3-pixel-wide grayscale images is implausible; one RGB image
        # passed without its batch axis is the likely mistake.
        raise ValueError(
            f"{name}: got shape {arr.shape}, which looks like one (height, width, "
            "channels) image without a batch axis: pass a batch, e.g. image[None] of "
            f"shape (1, {arr.shape[0]}, {arr.shape[1]}, {arr.shape[2]})."
        )
    if arr.ndim == 4 and arr.shape[-1] not in (1, 3):
        raise ValueError(
            f"{name}: expected 1 (grayscale) or 3 (RGB) channels in the last axis, got "
            f"shape {arr.shape}. Channels-first arrays must be transposed to (n, H, W, C)."
        )
    if arr.shape[0] == 0:
        raise ValueError(f"{name}: got an empty batch (0 images).")
    if arr.shape[1] < min_size or arr.shape[2] < min_size:
        raise ValueError(
            f"{name}: images must be at least {min_size}x{min_size} pixels, "
            f"got {arr.shape[1]}x{arr.shape[2]}."
        )
    kind = arr.dtype.kind
    if kind == "f":
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"{name}: contains NaN or infinity.")
        lo, hi = float(arr.min()), float(arr.max())
        if lo < 0.0 or hi > 1.0:
            raise ValueError(
                f"{name}: floating-point images must lie in [0, 1], got values in "
                f"[{lo:.4g}, {hi:.4g}]. Pass uint8 images for the 0-255 range."
            )
    elif kind in "iu":
        if arr.dtype != np.uint8:
            lo, hi = int(arr.min()), int(arr.max())
            if lo < 0 or hi > 255:
                raise ValueError(
                    f"{name}: integer images must lie in [0, 255], got values in [{lo}, {hi}]."
                )
    elif kind != "b":
        raise TypeError(f"{name}: unsupported dtype {arr.dtype}; use uint8 or float.")
    if ensure_channels and arr.ndim == 3:
        arr = arr[..., None]
    return arr


def images_to_float(images, dtype=np.float32):
    """Return validated images as floats in [0, 1], shape ``(n, H, W, C)``.

    Examples
    --------
    >>> import numpy as np
    >>> from gllim_sk._images import images_to_float
    >>> float(images_to_float(np.full((1, 4, 4, 3), 255, np.uint8)).max())
    1.0
    """
    arr = check_images(images)
    if arr.dtype.kind == "f":
        return arr.astype(dtype, copy=False)
    if arr.dtype.kind == "b":
        return arr.astype(dtype)
    return arr.astype(dtype) / dtype(255)
