"""Pyramid of histograms of oriented gradients (p-HOG), as a scikit-learn transformer."""

from numbers import Integral

import numpy as np
from joblib import Parallel, delayed, effective_n_jobs
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils.validation import check_is_fitted

from .._compat import Interval, Options, StrOptions, _fit_context
from .._images import check_images, images_to_float

__all__ = ["HOGPyramid"]

# Smallest number of images handed to one joblib task when ``batch_size="auto"``: one
# image costs about a millisecond, so smaller tasks would be dominated by dispatch overhead.
_MIN_AUTO_BATCH = 32


def _skimage():
    """scikit-image's functions, imported on use so that the package works without it."""
    try:
        from skimage.color import rgb2gray
        from skimage.feature import hog
        from skimage.transform import resize
    except ImportError as exc:
        raise ImportError(
            f"HOGPyramid needs scikit-image, which is not installed ({exc}). Install it "
            "with:  pip install \"gllim_sk[image]\""
        ) from exc
    return rgb2gray, hog, resize


def _hog_batch(images, scales, hog_params, anti_aliasing, out_dtype):
    """p-HOG of one batch of validated images; runs inside a joblib worker."""
    rgb2gray, hog, resize = _skimage()

    gray = images_to_float(images, dtype=np.float64)
    gray = rgb2gray(gray) if gray.shape[-1] == 3 else gray[..., 0]
    rows = []
    for image in gray:
        parts = []
        for size in scales:
            scaled = image
            if image.shape != (size, size):
                scaled = resize(image, (size, size), anti_aliasing=anti_aliasing)
            parts.append(hog(scaled, feature_vector=True, **hog_params))
        rows.append(np.concatenate(parts))
    return np.asarray(rows, dtype=out_dtype)


class HOGPyramid(TransformerMixin, BaseEstimator):
    """Pyramid of histograms of oriented gradients (p-HOG) of a batch of images.

    Each image is converted to gray levels, resized to a square of side ``s`` for each
    ``s`` in ``scales``, and described by scikit-image's :func:`skimage.feature.hog`. The
    descriptors of all scales are concatenated. The defaults give the 1,888-dimensional
    p-HOG used for the HOG-SVR and HOG-IR baselines of Lathuilière et al. (CVPR 2017):
    8 orientations, 8 x 8-pixel cells and 2 x 2-cell blocks at 64, 32 and 16 pixels, that
    is 1,568 + 288 + 32 values.

    The transformer is stateless: :meth:`fit` only validates the parameters and records
    the output size, so images of any size can be transformed after fitting.

    Parameters
    ----------
    scales : sequence of int, default=(64, 32, 16)
        Side lengths, in pixels, of the square images on which the HOG descriptors are
        computed. Images are resized to each scale independently (the aspect ratio is not
        kept; pass square face crops). Each scale must hold at least one block, i.e.
        ``scale // pixels_per_cell >= cells_per_block``.
    orientations : int, default=8
        Number of orientation bins of each cell histogram.
    pixels_per_cell : int, default=8
        Side of a (square) cell, in pixels.
    cells_per_block : int, default=2
        Side of a (square) normalisation block, in cells.
    block_norm : {"L2-Hys", "L2", "L1", "L1-sqrt"}, default="L2-Hys"
        Block normalisation of :func:`skimage.feature.hog`.
    transform_sqrt : bool, default=False
        Apply a square-root (gamma) compression to the image before computing gradients.
    anti_aliasing : bool, default=True
        Gaussian smoothing before down-scaling (:func:`skimage.transform.resize`).
    dtype : {numpy.float32, numpy.float64, "float32", "float64"}, default=numpy.float32
        Data type of the output. HOG values lie in [0, 1] and are computed in double
        precision; single precision halves the memory of large feature matrices and is
        accurate to about 1e-7 relative.
    n_jobs : int, default=None
        Number of parallel jobs (joblib) over the images. ``None`` means 1 unless in a
        :obj:`joblib.parallel_backend` context; ``-1`` uses all processors. The output does
        not depend on ``n_jobs`` or ``batch_size``.
    batch_size : int or "auto", default="auto"
        Number of images per joblib task. ``"auto"`` gives each worker about four tasks
        of at least 32 images, which keeps the dispatch overhead small.

    Attributes
    ----------
    n_output_features_ : int
        Length of the descriptor of one image (1,888 with the defaults).
    feature_sizes_ : ndarray of shape (n_scales,)
        Length of the descriptor at each scale, in the order of ``scales``.

    See Also
    --------
    skimage.feature.hog : The HOG descriptor computed at each scale.

    Notes
    -----
    Input images follow the package-wide layout of :func:`gllim_sk._images.check_images`:
    an array (or list of equally shaped arrays) of shape ``(n, H, W)`` or ``(n, H, W, C)``
    with ``C`` equal to 1 (gray) or 3 (RGB), either ``uint8`` in [0, 255] or floats in
    [0, 1]. RGB images are converted with :func:`skimage.color.rgb2gray`.

    Feature ``hog{s}_block{i}_{j}_cell{a}_{b}_orient{o}`` is orientation bin ``o`` of the
    cell ``(a, b)`` of block ``(i, j)`` (row, column) at scale ``s``; this is the order of
    scikit-image's flattened descriptor.

    Examples
    --------
    >>> import numpy as np
    >>> from gllim_sk.features import HOGPyramid
    >>> rng = np.random.default_rng(0)
    >>> images = rng.integers(0, 256, size=(5, 64, 64, 3), dtype=np.uint8)
    >>> hog = HOGPyramid().fit(images)
    >>> features = hog.transform(images)
    >>> features.shape, features.dtype
    ((5, 1888), dtype('float32'))
    >>> hog.feature_sizes_.tolist()
    [1568, 288, 32]
    >>> hog.get_feature_names_out()[:2].tolist()
    ['hog64_block0_0_cell0_0_orient0', 'hog64_block0_0_cell0_0_orient1']
    """

    _parameter_constraints: dict = {
        "scales": ["array-like"],
        "orientations": [Interval(Integral, 1, None, closed="left")],
        "pixels_per_cell": [Interval(Integral, 1, None, closed="left")],
        "cells_per_block": [Interval(Integral, 1, None, closed="left")],
        "block_norm": [StrOptions({"L1", "L1-sqrt", "L2", "L2-Hys"})],
        "transform_sqrt": ["boolean"],
        "anti_aliasing": ["boolean"],
        "dtype": [
            Options(type, {np.float32, np.float64}),
            StrOptions({"float32", "float64"}),
        ],
        "n_jobs": [None, Integral],
        "batch_size": [Interval(Integral, 1, None, closed="left"), StrOptions({"auto"})],
    }

    def __init__(
        self,
        scales=(64, 32, 16),
        *,
        orientations=8,
        pixels_per_cell=8,
        cells_per_block=2,
        block_norm="L2-Hys",
        transform_sqrt=False,
        anti_aliasing=True,
        dtype=np.float32,
        n_jobs=None,
        batch_size="auto",
    ):
        self.scales = scales
        self.orientations = orientations
        self.pixels_per_cell = pixels_per_cell
        self.cells_per_block = cells_per_block
        self.block_norm = block_norm
        self.transform_sqrt = transform_sqrt
        self.anti_aliasing = anti_aliasing
        self.dtype = dtype
        self.n_jobs = n_jobs
        self.batch_size = batch_size

    def _checked_scales(self):
        """Return ``scales`` as a tuple of ints, or raise a ValueError naming the problem."""
        scales = np.asarray(self.scales)
        if scales.ndim != 1 or scales.size == 0:
            raise ValueError(
                f"scales must be a non-empty sequence of image sizes, got {self.scales!r}."
            )
        if scales.dtype.kind not in "iu" and not (
            scales.dtype.kind == "f" and np.all(scales == np.round(scales))
        ):
            raise ValueError(f"scales must be integers (pixels), got {self.scales!r}.")
        smallest = self.pixels_per_cell * self.cells_per_block
        for size in scales:
            if size < smallest:
                raise ValueError(
                    f"scale {int(size)} is too small: with pixels_per_cell="
                    f"{self.pixels_per_cell} and cells_per_block={self.cells_per_block} every "
                    f"scale must be at least {smallest} pixels to hold one block."
                )
        return tuple(int(size) for size in scales)

    def _blocks_per_side(self, size):
        return size // self.pixels_per_cell - self.cells_per_block + 1

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y=None):
        """Validate the parameters and the images, and record the output size.

        Parameters
        ----------
        X : array-like of shape (n_images, height, width) or (n_images, height, width, C)
            Images, ``uint8`` in [0, 255] or float in [0, 1], ``C`` in {1, 3}.
        y : None
            Ignored.

        Returns
        -------
        self : HOGPyramid
            The fitted transformer.
        """
        _skimage()  # fail early, in the caller's process, if scikit-image is missing
        check_images(X, name="X")
        self.feature_sizes_ = self._feature_sizes(self._checked_scales())
        self.n_output_features_ = int(self.feature_sizes_.sum())
        return self

    def _feature_sizes(self, scales):
        per_block = self.cells_per_block**2 * self.orientations
        return np.array([self._blocks_per_side(size) ** 2 * per_block for size in scales])

    def transform(self, X):
        """Compute the p-HOG descriptor of each image.

        Parameters
        ----------
        X : array-like of shape (n_images, height, width) or (n_images, height, width, C)
            Images, ``uint8`` in [0, 255] or float in [0, 1], ``C`` in {1, 3}. Their size
            may differ from the images seen in :meth:`fit`.

        Returns
        -------
        features : ndarray of shape (n_images, n_output_features_)
            The concatenated HOG descriptors, of type ``dtype``.
        """
        check_is_fitted(self)
        images = check_images(X, name="X")
        scales = self._checked_scales()
        sizes = self._feature_sizes(scales)
        if not np.array_equal(sizes, self.feature_sizes_):
            # set_params after fit: the output would no longer match n_output_features_.
            raise ValueError(
                f"HOGPyramid's parameters changed since fit: they give {int(sizes.sum())} "
                f"features per image, not the fitted n_output_features_="
                f"{self.n_output_features_}. Call fit again."
            )
        hog_params = {
            "orientations": self.orientations,
            "pixels_per_cell": (self.pixels_per_cell, self.pixels_per_cell),
            "cells_per_block": (self.cells_per_block, self.cells_per_block),
            "block_norm": self.block_norm,
            "transform_sqrt": self.transform_sqrt,
        }
        out_dtype = np.dtype(self.dtype)
        n_images = images.shape[0]
        n_workers = effective_n_jobs(self.n_jobs)
        if self.batch_size == "auto":
            batch = max(_MIN_AUTO_BATCH, -(-n_images // (4 * n_workers)))
        else:
            batch = self.batch_size
        starts = range(0, n_images, batch)
        if n_workers == 1 or len(starts) == 1:
            parts = [
                _hog_batch(images[s : s + batch], scales, hog_params, self.anti_aliasing, out_dtype)
                for s in starts
            ]
        else:
            parts = Parallel(n_jobs=self.n_jobs)(
                delayed(_hog_batch)(
                    images[s : s + batch], scales, hog_params, self.anti_aliasing, out_dtype
                )
                for s in starts
            )
        return np.concatenate(parts, axis=0)

    def get_feature_names_out(self, input_features=None):
        """Names of the output features.

        Parameters
        ----------
        input_features : None
            Ignored: the input is images, which have no feature names. Kept for the
            scikit-learn API.

        Returns
        -------
        feature_names_out : ndarray of str objects
            ``hog{s}_block{i}_{j}_cell{a}_{b}_orient{o}``, in output order.
        """
        check_is_fitted(self)
        cells = range(self.cells_per_block)
        names = [
            f"hog{size}_block{i}_{j}_cell{a}_{b}_orient{o}"
            for size in self._checked_scales()
            for i in range(self._blocks_per_side(size))
            for j in range(self._blocks_per_side(size))
            for a in cells
            for b in cells
            for o in range(self.orientations)
        ]
        return np.asarray(names, dtype=object)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        # Input is a batch of images, not a feature matrix.
        tags.input_tags.two_d_array = False
        tags.input_tags.three_d_array = True
        # The output type is set by ``dtype``, whatever the input type.
        tags.transformer_tags.preserves_dtype = []
        return tags
