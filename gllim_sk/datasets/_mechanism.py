"""Images generated from their targets by a known mixture of affine maps and a nonlinearity.

A controlled problem for the deep GLLiM, in the spirit of Figure 2 of Lathuilière et
al. (2017): the generative model that the GLLiM layer assumes holds exactly for a
hidden feature vector ``z``, and the images show ``z`` only through a fixed
nonlinearity that a small network can learn to undo.
"""

import numpy as np
from sklearn.utils import Bunch, check_random_state

__all__ = ["make_affine_mixture_images"]


def make_affine_mixture_images(
    n_samples=500,
    *,
    n_components=2,
    n_targets=2,
    n_latent=4,
    image_size=32,
    noise=0.05,
    saturation=1.5,
    random_state=None,
):
    """Images whose hidden features follow a known mixture of affine maps of the targets.

    1. Targets ``y`` are drawn from a Gaussian mixture ``sum_k pi_k N(c_k, Gamma_k)``
       and each sample keeps its component ``k``;
    2. hidden features are ``z = A_k y + b_k + e`` with ``e ~ N(0, noise^2 I)``: the
       GLLiM model of eq. (1) with isotropic noise, as the paper's eq. (9) assumes;
    3. the image shows ``x = tanh(saturation * u) / saturation`` with ``u = z / s``
       (``s``: the standard deviation of ``z``; ``x = u`` for ``saturation=0``), an
       invertible elementwise nonlinearity, spread linearly over all the pixels and
       channels by a fixed random matrix around mid-grey.

    A network that inverts step 3 recovers ``z`` up to an affine map, and on ``z`` a
    GLLiM with ``n_components`` components is exactly right.

    Parameters
    ----------
    n_samples : int, default=500
    n_components : int, default=2
        Number of affine maps K.
    n_targets : int, default=2
        Dimension L of the targets.
    n_latent : int, default=4
        Dimension D of the hidden features (at least ``n_targets``).
    image_size : int, default=32
        Side of the square RGB images.
    noise : float, default=0.05
        Standard deviation of the noise on ``z``, relative to the spread of ``A_k y``.
    saturation : float, default=1.5
        Strength of the nonlinearity (0 would be linear).
    random_state : int, RandomState instance or None, default=None

    Returns
    -------
    data : :class:`~sklearn.utils.Bunch`
        ``images`` (n, image_size, image_size, 3) float32 in [0, 1]; ``target`` (n, L);
        ``component`` (n,) the true k; ``latent`` (n, D) the hidden ``z``; and the
        true parameters ``weights`` (K,), ``means`` (K, L), ``covariances`` (K, L, L),
        ``coef`` (K, D, L), ``intercept`` (K, D).

    Examples
    --------
    >>> from gllim_sk.datasets import make_affine_mixture_images
    >>> data = make_affine_mixture_images(10, random_state=0)
    >>> data.images.shape, data.target.shape, data.latent.shape
    ((10, 32, 32, 3), (10, 2), (10, 4))
    """
    for name, value, low in (("n_samples", n_samples, 1), ("n_components", n_components, 1),
                             ("n_targets", n_targets, 1), ("image_size", image_size, 8)):
        if not isinstance(value, (int, np.integer)) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}.")
    if not isinstance(n_latent, (int, np.integer)) or n_latent < n_targets:
        raise ValueError(f"n_latent must be an integer >= n_targets={n_targets}, got "
                         f"{n_latent!r}.")
    if not (noise >= 0 and saturation >= 0):
        raise ValueError(f"noise and saturation must be >= 0, got {noise} and {saturation}.")
    rng = check_random_state(random_state)
    K, L, D = n_components, n_targets, n_latent
    # Component centres spread apart in target space, each with a moderate spread.
    means = rng.uniform(-1.0, 1.0, size=(K, L)) * 1.5
    covariances = np.stack([np.diag(rng.uniform(0.15, 0.3, size=L) ** 2) for _ in range(K)])
    weights = np.full(K, 1.0 / K)
    coef = rng.normal(size=(K, D, L))
    intercept = rng.normal(size=(K, D))
    component = rng.choice(K, size=n_samples, p=weights)
    target = np.empty((n_samples, L))
    for k in range(K):
        idx = component == k
        target[idx] = rng.multivariate_normal(means[k], covariances[k], size=idx.sum())
    clean = np.einsum("ndl,nl->nd", coef[component], target) + intercept[component]
    latent = clean + noise * clean.std(axis=0) * rng.normal(size=clean.shape)
    standard = latent / latent.std(axis=0)
    hidden = np.tanh(saturation * standard) / saturation if saturation > 0 else standard
    n_pixels = image_size * image_size * 3
    spread = rng.normal(size=(D, n_pixels)) / np.sqrt(D)
    # Scaled so that pixels leave [0, 1] (and get clipped) only beyond 6 standard
    # deviations: the images are an affine function of x.
    hidden = hidden / np.abs(hidden).max()
    images = np.clip(0.5 + 0.08 * hidden @ spread, 0.0, 1.0)
    return Bunch(
        images=images.reshape(n_samples, image_size, image_size, 3).astype(np.float32),
        target=target, component=component, latent=latent, weights=weights, means=means,
        covariances=covariances, coef=coef, intercept=intercept,
    )
