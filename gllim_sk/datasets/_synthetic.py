"""Procedural 3-D heads rendered at known poses: the package's built-in head-pose dataset.

The head is a union of axis-aligned ellipsoids in its own frame (cranium, lower face, chin,
nose, eyes, brows, lips, ears, a hair cap) plus a neck and shoulders fixed in the body frame.
Rendering is orthographic ray casting, fully vectorised with numpy. Rather than moving the
head, each pixel's ray is mapped into every ellipsoid's unit-sphere coordinates; along a ray
that is an affine map of the pixel coordinates ``(u, v)`` and the depth ``t``, so the
discriminant of each ray/ellipsoid quadratic is a quadratic polynomial in ``(u, v)`` and its
linear coefficient an affine one. For a chunk of images and every ellipsoid they come out of
two small matrix products ``features(u, v) @ coefficients``, followed by a handful of
element-wise operations and a running minimum over ellipsoids (the nearest hit). Normals,
Lambertian + ambient shading and the painted details (irises, eye sockets) are then
evaluated for the winning surface only.

Angle convention
----------------
Camera frame: ``x`` to the image's right, ``y`` down the image, ``z`` away from the viewer.
In the frontal pose (all angles 0) the face looks at the camera. With ``Rx``, ``Ry``, ``Rz``
the usual right-handed rotation matrices, the head-to-camera rotation is::

    M = Rx(-pitch) @ Ry(yaw) @ Rz(roll)

- pitch > 0: the face turns up (the nose moves up the image);
- yaw > 0: the face turns toward the image's left (the subject's own right);
- roll > 0: the head tilts clockwise in the image (toward the subject's left shoulder).

This is the convention of the public Biwi benchmarks: the transpose of ``M`` is
``Rz(-roll) @ Ry(-yaw) @ Rx(pitch)``, from which the formulas used to read Biwi's pose
files (``roll = -atan2(R[1, 0], R[0, 0])``, ``yaw = -atan2(-R[2, 0], hypot(R[2, 1],
R[2, 2]))``, ``pitch = atan2(R[2, 1], R[2, 2])`` with ``R`` the file's matrix transposed)
return the three angles. A model trained on synthetic heads therefore reads signs the same
way as on :func:`~gllim_sk.datasets.load_biwi` and :func:`~gllim_sk.datasets.load_aflw2000`.
"""

import numbers
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from joblib import effective_n_jobs
from sklearn.utils import Bunch, check_random_state
from threadpoolctl import threadpool_limits

__all__ = ["make_head_poses", "render_head", "rotation_matrix"]

TARGET_NAMES = np.array(["pitch", "yaw", "roll"])

# Half-widths (degrees) of the pose box every distribution is confined to: Biwi's ranges.
DEFAULT_POSE_LIMITS = (60.0, 75.0, 20.0)
# Standard deviations of the near-Gaussian "biwi" distribution (pitch, yaw, roll), degrees.
_BIWI_STD = np.array([15.0, 25.0, 8.0])
_S2G_MEANS = np.array([[35.0, 60.0, 0.0], [-35.0, -60.0, 0.0]])
_S2G_STD = np.array([10.0, 10.0, 6.0])
# Width of the Gaussian hole carved out of the uniform box for "ssv".
_SSV_HOLE_STD = np.array([20.0, 25.0, 10.0])
DISTRIBUTIONS = ("biwi", "s2g", "ssv", "uniform")

# Half-width of the rendered field of view, in head units (the cranium is ~0.8 wide).
_VIEW_HALF_WIDTH = 1.45
# Depth of the head centre along the viewing axis; any value keeping all surfaces at t > 0.
_HEAD_DEPTH = 10.0

# Materials.
_SKIN, _HAIR, _EYE, _LIPS, _BROW, _CLOTH = range(6)

# Parts: name, centre (head units, head frame: x right, y down, z into the screen),
# semi-axes, material, attached to the head (True) or to the body (False).
_PARTS = [
    ("cranium", (0.0, -0.18, 0.05), (0.78, 0.88, 0.92), _SKIN, True),
    ("face", (0.0, 0.22, -0.12), (0.62, 0.72, 0.74), _SKIN, True),
    ("chin", (0.0, 0.74, -0.42), (0.28, 0.2, 0.26), _SKIN, True),
    ("nose_bridge", (0.0, 0.08, -0.84), (0.1, 0.3, 0.16), _SKIN, True),
    ("nose_tip", (0.0, 0.3, -0.93), (0.13, 0.1, 0.12), _SKIN, True),
    ("eye_left", (-0.3, -0.08, -0.68), (0.13, 0.11, 0.13), _EYE, True),
    ("eye_right", (0.3, -0.08, -0.68), (0.13, 0.11, 0.13), _EYE, True),
    ("brow_left", (-0.31, -0.3, -0.78), (0.2, 0.045, 0.09), _BROW, True),
    ("brow_right", (0.31, -0.3, -0.78), (0.2, 0.045, 0.09), _BROW, True),
    ("lips", (0.0, 0.55, -0.74), (0.22, 0.065, 0.1), _LIPS, True),
    ("ear_left", (-0.78, 0.0, 0.12), (0.09, 0.26, 0.17), _SKIN, True),
    ("ear_right", (0.78, 0.0, 0.12), (0.09, 0.26, 0.17), _SKIN, True),
    ("hair", (0.0, -0.42, 0.16), (0.84, 0.78, 0.92), _HAIR, True),
    ("neck", (0.0, 1.05, 0.3), (0.42, 0.7, 0.42), _SKIN, False),
    ("torso", (0.0, 2.3, 0.45), (1.8, 0.95, 0.75), _CLOTH, False),
]
_N_PARTS = len(_PARTS)
_PART_INDEX = {name: i for i, (name, *_rest) in enumerate(_PARTS)}
_BASE_CENTRES = np.array([p[1] for p in _PARTS])
_BASE_AXES = np.array([p[2] for p in _PARTS])
_MATERIAL = np.array([p[3] for p in _PARTS])
_ON_HEAD = np.array([p[4] for p in _PARTS])
_EYES = [_PART_INDEX["eye_left"], _PART_INDEX["eye_right"]]
_IS_EYE = _MATERIAL == _EYE
_IS_FACE_SKIN = (_MATERIAL == _SKIN) & _ON_HEAD

_SKIN_DARK = np.array([0.30, 0.19, 0.13])
_SKIN_LIGHT = np.array([0.96, 0.80, 0.70])
_HAIR_PALETTE = np.array(
    [
        [0.05, 0.04, 0.04],  # black
        [0.25, 0.15, 0.08],  # dark brown
        [0.50, 0.33, 0.18],  # light brown
        [0.85, 0.70, 0.42],  # blond
        [0.60, 0.26, 0.10],  # red
        [0.62, 0.62, 0.62],  # grey
    ]
)
_IRIS_PALETTE = np.array(
    [[0.25, 0.14, 0.06], [0.45, 0.30, 0.12], [0.25, 0.45, 0.70], [0.3, 0.5, 0.3]]
)


def rotation_matrix(pitch, yaw, roll):
    """Head-to-camera rotation matrices for angles in degrees.

    Parameters
    ----------
    pitch, yaw, roll : float or array-like of shape (n,)
        Angles in degrees, in the package's convention (see :func:`make_head_poses`).

    Returns
    -------
    R : ndarray of shape (n, 3, 3) or (3, 3)
        ``Rx(-pitch) @ Ry(yaw) @ Rz(roll)`` in a camera frame with ``x`` right, ``y`` down
        and ``z`` into the screen; 2-D when all three angles are scalars.

    Examples
    --------
    >>> import numpy as np
    >>> from gllim_sk.datasets import rotation_matrix
    >>> R = rotation_matrix(0.0, 90.0, 0.0)
    >>> nose = R @ np.array([0.0, 0.0, -1.0])  # the face looks along -z when frontal
    >>> np.round(nose, 6) + 0.0  # a positive yaw turns it toward the image's left (-x)
    array([-1.,  0.,  0.])
    """
    scalar = all(np.ndim(a) == 0 for a in (pitch, yaw, roll))
    p, y, r = np.broadcast_arrays(
        *(np.deg2rad(np.atleast_1d(np.asarray(a, dtype=float))) for a in (pitch, yaw, roll))
    )
    n = p.shape[0]
    rx, ry, rz = (np.zeros((n, 3, 3)) for _ in range(3))
    cp, sp = np.cos(-p), np.sin(-p)
    rx[:, 0, 0] = 1
    rx[:, 1, 1], rx[:, 1, 2], rx[:, 2, 1], rx[:, 2, 2] = cp, -sp, sp, cp
    cy, sy = np.cos(y), np.sin(y)
    ry[:, 1, 1] = 1
    ry[:, 0, 0], ry[:, 0, 2], ry[:, 2, 0], ry[:, 2, 2] = cy, sy, -sy, cy
    cr, sr = np.cos(r), np.sin(r)
    rz[:, 2, 2] = 1
    rz[:, 0, 0], rz[:, 0, 1], rz[:, 1, 0], rz[:, 1, 1] = cr, -sr, sr, cr
    R = rx @ ry @ rz
    return R[0] if scalar else R


# --------------------------------------------------------------------------------------
# Identities and scene parameters
# --------------------------------------------------------------------------------------
def _draw_identities(rng, n):
    """Per-subject geometry and colours: centres, axes (n, E, 3) and albedos (n, E, 3)."""
    centres = np.repeat(_BASE_CENTRES[None], n, axis=0)
    axes = np.repeat(_BASE_AXES[None], n, axis=0)

    # Part-level variations, applied before the global head-shape scaling; the face stays
    # left-right symmetric so that a mirrored image is the mirrored pose.
    for name in ("nose_bridge", "nose_tip"):
        axes[:, _PART_INDEX[name]] *= rng.uniform(0.8, 1.25, (n, 1))
    nose_length = rng.uniform(-0.06, 0.06, n)
    centres[:, _PART_INDEX["nose_tip"], 1] += nose_length
    centres[:, _PART_INDEX["nose_tip"], 2] -= 0.5 * np.abs(nose_length)
    eye_spacing = rng.uniform(-0.04, 0.04, n)
    for name, sign in (("eye_left", -1), ("eye_right", 1), ("brow_left", -1), ("brow_right", 1)):
        centres[:, _PART_INDEX[name], 0] += sign * eye_spacing
    eye_size = rng.uniform(0.9, 1.12, (n, 1))
    for idx in _EYES:
        axes[:, idx] *= eye_size
    brow_lift = rng.uniform(-0.04, 0.03, n)
    brow_thick = rng.uniform(0.7, 1.5, n)
    for name in ("brow_left", "brow_right"):
        centres[:, _PART_INDEX[name], 1] += brow_lift
        axes[:, _PART_INDEX[name], 1] *= brow_thick
    ear_size = rng.uniform(0.85, 1.2, (n, 1))
    for name in ("ear_left", "ear_right"):
        axes[:, _PART_INDEX[name]] *= ear_size
    jaw = rng.uniform(0.88, 1.1, n)
    axes[:, _PART_INDEX["face"], 0] *= jaw
    axes[:, _PART_INDEX["chin"], :] *= rng.uniform(0.85, 1.2, (n, 1))
    axes[:, _PART_INDEX["lips"], :2] *= rng.uniform(0.8, 1.2, (n, 2))
    # Hair cap: moving it forward and up covers more forehead; 0 = almost bald.
    hair_extent = rng.uniform(0.0, 1.0, n)
    hair = _PART_INDEX["hair"]
    centres[:, hair, 1] += 0.08 - 0.1 * hair_extent
    centres[:, hair, 2] += 0.1 - 0.2 * hair_extent
    axes[:, hair] *= (0.97 + 0.08 * hair_extent)[:, None]
    # Global head shape: a per-axis scaling of the whole head, keeping parts axis-aligned.
    shape = rng.uniform([0.9, 0.93, 0.92], [1.1, 1.07, 1.08], (n, 3))
    centres[:, _ON_HEAD] *= shape[:, None]
    axes[:, _ON_HEAD] *= shape[:, None]

    tone = rng.uniform(0, 1, (n, 1))
    skin = _SKIN_DARK + tone * (_SKIN_LIGHT - _SKIN_DARK)
    skin *= rng.uniform(0.93, 1.07, (n, 3))
    hair_colour = _HAIR_PALETTE[rng.integers(len(_HAIR_PALETTE), size=n)]
    hair_colour = hair_colour * rng.uniform(0.75, 1.25, (n, 1)) * rng.uniform(0.93, 1.07, (n, 3))
    hair_colour = np.clip(hair_colour, 0, 1)
    lips = skin * np.array([0.85, 0.55, 0.55]) * rng.uniform(0.85, 1.05, (n, 1))
    iris = _IRIS_PALETTE[rng.integers(len(_IRIS_PALETTE), size=n)]
    palette = np.empty((n, 6, 3))
    palette[:, _SKIN] = skin
    palette[:, _HAIR] = hair_colour
    palette[:, _EYE] = 0.92
    palette[:, _LIPS] = lips
    palette[:, _BROW] = hair_colour * 0.75
    palette[:, _CLOTH] = 0.5  # replaced per image
    return {"centres": centres, "axes": axes, "palette": palette, "iris": iris}


def _draw_scenes(rng, n, *, jitter=True):
    """Per-image lighting, background, framing and noise, all independent of the pose."""
    azimuth = rng.uniform(-np.pi, np.pi, n)
    spread = rng.uniform(0.0, 1.0, n)  # 0 = light from the camera, 1 = grazing
    light = np.stack(
        [spread * np.cos(azimuth), spread * np.sin(azimuth), -np.sqrt(1.2 - spread**2)], axis=1
    )
    light /= np.linalg.norm(light, axis=1, keepdims=True)
    light_colour = np.clip(1.0 + rng.normal(0, 0.12, (n, 3)), 0.6, 1.3)
    light_colour *= rng.uniform(0.6, 1.05, (n, 1))
    ambient = rng.uniform(0.15, 0.45, (n, 1)) * np.clip(1.0 + rng.normal(0, 0.1, (n, 3)), 0.7, 1.3)
    background = rng.uniform(0.05, 0.95, (n, 3))
    gradient_angle = rng.uniform(-np.pi, np.pi, n)
    gradient = rng.uniform(0.0, 0.25, (n, 1)) * np.stack(
        [np.cos(gradient_angle), np.sin(gradient_angle)], axis=1
    )
    cloth = rng.uniform(0.05, 0.9, (n, 3))
    if jitter:
        scale = rng.uniform(0.9, 1.1, n)
        shift = rng.uniform(-0.08, 0.08, (n, 2))
        noise = rng.uniform(0.005, 0.03, n)
    else:
        scale, shift, noise = np.ones(n), np.zeros((n, 2)), np.zeros(n)
    return {
        "light": light,
        "light_colour": light_colour,
        "ambient": ambient,
        "background": background,
        "gradient": gradient,
        "cloth": cloth,
        "scale": scale,
        "shift": shift,
        "noise": noise,
    }


# --------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------
def _chunk_size(image_size):
    # About 2.5 million (pixel, image, part) triples per chunk: a few tens of MB per array.
    return int(max(1, min(256, 2_500_000 // (image_size * image_size * _N_PARTS))))


def _pixel_grid(image_size):
    coords = (np.arange(image_size) + 0.5) / image_size * 2 - 1
    v, u = np.meshgrid(coords, coords, indexing="ij")
    return u.ravel(), v.ravel()


def _render_chunk(rot, centres, axes, albedo, iris, scene, image_size, rng):
    """Render a chunk of images; every argument is per image (leading axis n)."""
    n = rot.shape[0]
    E = _N_PARTS
    f32 = np.float32
    # Camera-to-part rotations: the head's rotation for head parts, the identity for the body.
    Q = np.where(_ON_HEAD[None, :, None, None], rot.transpose(0, 2, 1)[:, None], np.eye(3))
    part_centre_cam = np.where(
        _ON_HEAD[None, :, None], np.einsum("nij,nej->nei", rot, centres), centres
    )
    part_centre_cam[..., 2] += _HEAD_DEPTH
    # Pixel (u, v) in [-1, 1] -> camera (alpha * u + bx, alpha * v + by); the ray runs along +z.
    alpha = _VIEW_HALF_WIDTH / scene["scale"]
    bx, by = scene["shift"][:, 0], scene["shift"][:, 1]
    inv_a = 1.0 / axes
    # s = W @ [u, v, 1] + g * t: the ray in the part's unit-sphere coordinates.
    W = np.empty((n, E, 3, 3))
    W[..., 0] = alpha[:, None, None] * Q[..., 0]
    W[..., 1] = alpha[:, None, None] * Q[..., 1]
    W[..., 2] = (
        bx[:, None, None] * Q[..., 0]
        + by[:, None, None] * Q[..., 1]
        - np.einsum("neij,nej->nei", Q, part_centre_cam)
    )
    W *= inv_a[..., None]
    g = Q[..., 2] * inv_a  # (n, E, 3)
    # |s|^2 = 1 <=> A t^2 + 2 B t + C = 0, with B linear and C quadratic in (u, v): the
    # reduced discriminant B^2 - A C is the quadratic form [u, v, 1] H [u, v, 1]^T.
    A = np.einsum("nei,nei->ne", g, g)
    b = np.einsum("neij,nei->nej", W, g)
    WtW = np.einsum("neij,neik->nejk", W, W)
    WtW[..., 2, 2] -= 1.0
    H = b[..., :, None] * b[..., None, :] - A[..., None, None] * WtW
    # Columns ordered part-major (e, i), so that each part's depths form one (P, n) block.
    coef_disc = np.stack(
        [H[..., 0, 0], H[..., 1, 1], H[..., 2, 2], H[..., 0, 1], H[..., 0, 2], H[..., 1, 2]],
        axis=0,
    )
    coef_disc = coef_disc.transpose(0, 2, 1).reshape(6, E * n).astype(f32)
    coef_lin = b.transpose(2, 1, 0).reshape(3, E * n).astype(f32)

    u, v = _pixel_grid(image_size)
    P = u.size
    ones = np.ones_like(u)
    feat_disc = np.stack([u * u, v * v, ones, 2 * u * v, 2 * u, 2 * v], axis=1).astype(f32)
    feat_lin = np.stack([u, v, ones], axis=1).astype(f32)
    # (P, 6) @ (6, E n) is an efficient shape for BLAS; the transposed product is not.
    disc = feat_disc @ coef_disc
    lin = feat_lin @ coef_lin
    # Rays that miss a part have a negative discriminant: their square root is NaN, and a
    # NaN depth never wins the comparisons below, so no mask is needed.
    with np.errstate(invalid="ignore"):
        np.sqrt(disc, out=disc)
    np.add(lin, disc, out=disc)  # = -A t for the nearer root
    np.multiply(disc, (-1.0 / A).T.reshape(1, E * n).astype(f32), out=disc)
    # Nearest hit: a running minimum over parts (faster than argmin over a short axis).
    t = np.full((P, n), np.inf, dtype=f32)
    winner = np.zeros((P, n), dtype=np.intp)
    closer = np.empty((P, n), dtype=bool)
    for e in range(E):
        depth = disc[:, e * n : (e + 1) * n]
        np.less(depth, t, out=closer)
        np.copyto(t, depth, where=closer)
        np.copyto(winner, e, where=closer)
    background = np.isinf(t)
    t[background] = 0.0

    # Per-(part, image) parameters, gathered for each pixel's winning part.
    light_local = np.einsum("neij,nj->nei", Q, scene["light"]) * inv_a
    table = np.concatenate(
        [
            W.reshape(n, E, 9),  # 0-8
            g,  # 9-11
            inv_a,  # 12-14
            light_local,  # 15-17
            albedo,  # 18-20
        ],
        axis=-1,
    )
    table = table.transpose(2, 1, 0).reshape(21, E * n).astype(f32)
    px = np.take(table, winner * n + np.arange(n), axis=1)  # (21, P, n), every field contiguous
    uu, vv = u.astype(f32)[:, None], v.astype(f32)[:, None]
    s = [px[3 * j] * uu + px[3 * j + 1] * vv + px[3 * j + 2] + px[9 + j] * t for j in range(3)]
    # The camera-frame normal is Q^T (s / a): same norm as s / a, and n . L = s . (Q L / a).
    norm2 = sum((s[j] * px[12 + j]) ** 2 for j in range(3))
    lambert = sum(s[j] * px[15 + j] for j in range(3))
    lambert /= np.sqrt(np.maximum(norm2, f32(1e-12)))
    np.maximum(lambert, 0, out=lambert)
    colour = [px[18 + j] for j in range(3)]

    # Irises and pupils painted on the front of the eyeballs (the gaze is straight ahead).
    is_eye = _IS_EYE[winner]
    front = -s[2]
    iris_mask = is_eye & (front > 0.86)
    pupil_mask = is_eye & (front > 0.965)
    iris32 = iris.astype(f32)
    for j in range(3):
        colour[j] = np.where(iris_mask, iris32[:, j], colour[j])
        colour[j][pupil_mask] = 0.03
    # Eye sockets: darker skin around each eye, on the face's front.
    on_face = _IS_FACE_SKIN[winner]
    # Head-frame coordinates: rot^T (camera point - head centre), affine in (u, v, t).
    rt = rot.transpose(0, 2, 1)
    offset = bx[:, None] * rt[:, :, 0] + by[:, None] * rt[:, :, 1] - _HEAD_DEPTH * rt[:, :, 2]
    hp = np.stack([alpha[:, None] * rt[:, :, 0], alpha[:, None] * rt[:, :, 1], offset, rt[:, :, 2]])
    hp = hp.astype(f32)  # (4, n, 3)
    head_point = [
        hp[0, :, j] * uu + hp[1, :, j] * vv + hp[2, :, j] + hp[3, :, j] * t for j in (0, 1, 2)
    ]
    on_face &= head_point[2] < 0
    shade = np.ones((P, n), f32)
    for eye in _EYES:
        ec = centres[:, eye].astype(f32)
        d2 = ((head_point[0] - ec[:, 0]) * f32(1 / 0.21)) ** 2 + (
            (head_point[1] - ec[:, 1] + f32(0.03)) * f32(1 / 0.16)
        ) ** 2
        falloff = np.maximum(f32(1) - d2, 0)
        shade -= f32(0.35) * falloff * falloff * on_face

    amb = scene["ambient"].astype(f32)
    light_colour = scene["light_colour"].astype(f32)
    bg_base = scene["background"].astype(f32)
    grad = scene["gradient"].astype(f32)
    bg_ramp = grad[:, 0] * uu + grad[:, 1] * vv
    image = np.empty((n, P, 3), dtype=np.uint8)
    noise_sd = scene["noise"].astype(f32)
    add_noise = rng is not None and np.any(noise_sd > 0)
    for j in range(3):
        channel = colour[j] * shade * (amb[:, j] + lambert * light_colour[:, j])
        np.copyto(channel, bg_base[:, j] + bg_ramp, where=background)
        if add_noise:
            channel += rng.standard_normal((P, n), dtype=f32) * noise_sd
        channel *= 255
        channel += 0.5
        np.clip(channel, 0, 255, out=channel)
        image[..., j] = channel.T
    return image.reshape(n, image_size, image_size, 3)


def _render(angles, identities, subject, scenes, image_size, seed, n_jobs=1):
    """Render all images, chunk by chunk; ``seed`` (or None: no noise) drives the noise.

    Each chunk draws its noise from its own generator, so the images do not depend on
    ``n_jobs``: chunks may run in parallel threads (numpy releases the GIL in its loops).
    """
    n = angles.shape[0]
    images = np.empty((n, image_size, image_size, 3), dtype=np.uint8)
    rot = rotation_matrix(angles[:, 0], angles[:, 1], angles[:, 2])
    step = _chunk_size(image_size)
    starts = range(0, n, step)
    chunk_seeds = (
        [None] * len(starts) if seed is None else np.random.SeedSequence(seed).spawn(len(starts))
    )

    def work(start, chunk_seed):
        sl = slice(start, min(start + step, n))
        sid = subject[sl]
        scene = {key: value[sl] for key, value in scenes.items()}
        albedo = identities["palette"][sid][:, _MATERIAL]
        albedo[:, _MATERIAL == _CLOTH] = scene["cloth"][:, None, :]
        images[sl] = _render_chunk(
            rot[sl],
            identities["centres"][sid],
            identities["axes"][sid],
            albedo,
            identities["iris"][sid],
            scene,
            image_size,
            None if chunk_seed is None else np.random.default_rng(chunk_seed),
        )

    # The matrix products are small (K = 3 or 6): a multi-threaded BLAS only adds
    # synchronisation overhead (2x slower on two busy cores), so keep it on one thread.
    with threadpool_limits(limits=1, user_api="blas"):
        if n_jobs == 1 or len(starts) == 1:
            for start, chunk_seed in zip(starts, chunk_seeds, strict=True):
                work(start, chunk_seed)
        else:
            with ThreadPoolExecutor(max_workers=min(n_jobs, len(starts))) as pool:
                list(pool.map(work, starts, chunk_seeds))
    return images


# --------------------------------------------------------------------------------------
# Pose distributions
# --------------------------------------------------------------------------------------
def _sample_poses(rng, n, distribution, limits):
    """Draw ``n`` (pitch, yaw, roll) triples in degrees, inside the box ``[-limits, limits]``.

    Truncation (and the "ssv" hole) work by rejection; batches grow with the observed
    acceptance rate, and a box that accepts almost nothing is reported, not looped on.
    """
    kept, n_kept, n_drawn, n_accepted = [], 0, 0, 0
    while n_kept < n:
        rate = max(n_accepted / n_drawn, 1e-4) if n_drawn else 0.5
        m = int(min(1.2 * (n - n_kept) / rate + 16, 2_000_000))
        if distribution == "biwi":
            cand = rng.normal(0.0, _BIWI_STD, (m, 3))
        elif distribution == "s2g":
            cand = _S2G_MEANS[rng.integers(2, size=m)] + rng.normal(0.0, _S2G_STD, (m, 3))
        else:
            cand = rng.uniform(-limits, limits, (m, 3))
            if distribution == "ssv":
                # Rejection: keep a pose with probability 1 - exp(-|pose / hole|^2 / 2).
                hole = np.exp(-0.5 * np.sum((cand / _SSV_HOLE_STD) ** 2, axis=1))
                cand = cand[rng.uniform(size=m) >= hole]
        cand = cand[np.all(np.abs(cand) <= limits, axis=1)]
        kept.append(cand)
        n_kept += len(cand)
        n_drawn += m
        n_accepted += len(cand)
        if n_drawn > 1000 * n + 10_000_000 and n_kept < n:
            raise ValueError(
                f"pose_limits={limits.tolist()} keeps almost no poses of the "
                f"{distribution!r} distribution ({n_accepted} of {n_drawn} draws); widen it."
            )
    return np.concatenate(kept)[:n]


def _check_int(value, name, low):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} ({value!r}).")
    if value < low:
        raise ValueError(f"{name} must be >= {low}, got {value}.")
    return int(value)


def _check_limits(pose_limits):
    if pose_limits is None:
        return np.array(DEFAULT_POSE_LIMITS)
    limits = np.asarray(pose_limits, dtype=float)
    if limits.shape != (3,) or not np.all(np.isfinite(limits)) or np.any(limits <= 0):
        raise ValueError(
            "pose_limits must be three positive finite half-widths in degrees "
            f"(pitch, yaw, roll), got {pose_limits!r}."
        )
    if np.any(limits > 180):
        raise ValueError(f"pose_limits must not exceed 180 degrees, got {pose_limits!r}.")
    return limits


def make_head_poses(
    n_samples=1000,
    *,
    distribution="biwi",
    image_size=64,
    n_subjects=20,
    pose_limits=None,
    random_state=None,
    n_jobs=None,
):
    """Render procedural 3-D heads at random poses: a head-pose regression dataset.

    Every subject is a head of its own shape (head proportions, nose, eyes, ears, jaw,
    chin, lips), skin tone, eye colour, and hair colour and extent. Every image has its
    own light direction and colour, ambient level, background colour and gradient,
    clothes colour, a small shift and scale jitter of the framing, and pixel noise. None
    of these depends on the pose, so the pose can only be read from the head's geometry.
    The renderer is fully vectorised numpy (orthographic ray casting against ellipsoids):
    about a thousand 64 x 64 images per second per core.

    Parameters
    ----------
    n_samples : int, default=1000
        Number of images.
    distribution : {"biwi", "s2g", "ssv", "uniform"}, default="biwi"
        Distribution of the (pitch, yaw, roll) targets, after Lathuilière et al. (2017):

        - ``"biwi"``: near-Gaussian around the frontal pose (standard deviations 15, 25
          and 8 degrees), truncated to Biwi's ranges;
        - ``"s2g"``: an equal mixture of two Gaussians centred at (35, 60, 0) and
          (-35, -60, 0) (standard deviations 10, 10, 6 degrees);
        - ``"ssv"``: "side views only": uniform in the box, with the frontal region removed
          by a Gaussian hole at (0, 0, 0) (poses kept with probability
          ``1 - exp(-|pose / (20, 25, 10)|^2 / 2)``);
        - ``"uniform"``: uniform in the box.

        Every distribution is confined to ``[-pose_limits, pose_limits]``.
    image_size : int, default=64
        Height and width of the square images, in pixels (at least 8).
    n_subjects : int, default=20
        Number of distinct people; the images are shared out between them as evenly as
        possible, in random order.
    pose_limits : array-like of shape (3,), default=None
        Half-widths in degrees of the pose box (pitch, yaw, roll). ``None`` means Biwi's
        ranges, (60, 75, 20).
    random_state : int, RandomState instance or None, default=None
        Controls subjects, poses, scenes and noise. Pass an int for reproducible output.
    n_jobs : int or None, default=None
        Number of threads rendering chunks of images in parallel (``None`` means 1, -1
        all processors, as in joblib). The images do not depend on it.

    Returns
    -------
    data : :class:`~sklearn.utils.Bunch`
        - ``images`` : ndarray of shape (n_samples, image_size, image_size, 3), uint8.
        - ``target`` : ndarray of shape (n_samples, 3), the pitch, yaw and roll in degrees.
        - ``subject`` : ndarray of shape (n_samples,), int subject ids in
          ``[0, n_subjects)``; use them as ``groups`` to split by person.
        - ``target_names`` : ``array(["pitch", "yaw", "roll"])``.
        - ``DESCR`` : str, a description of the dataset.

    See Also
    --------
    render_head : Render one subject at explicit angles.
    load_biwi, load_aflw2000 : The real datasets, returned in the same layout.

    Notes
    -----
    Angles follow the public Biwi benchmarks' convention (so do the loaders):

    - pitch > 0: the face turns up (the nose moves up the image);
    - yaw > 0: the face turns toward the image's left (the subject's own right);
    - roll > 0: the head tilts clockwise in the image.

    The head-to-camera rotation is ``Rx(-pitch) @ Ry(yaw) @ Rz(roll)`` in a camera frame
    with ``x`` right, ``y`` down and ``z`` into the screen (:func:`rotation_matrix`).

    To evaluate on unseen people, split by ``subject`` with scikit-learn's group
    splitters, as in :func:`train_val_test_split_by_subject`.

    Examples
    --------
    >>> from gllim_sk.datasets import make_head_poses
    >>> data = make_head_poses(50, distribution="s2g", image_size=32, random_state=0)
    >>> data.images.shape, data.images.dtype, data.target.shape
    ((50, 32, 32, 3), dtype('uint8'), (50, 3))
    >>> data.target_names.tolist()
    ['pitch', 'yaw', 'roll']
    >>> from sklearn.model_selection import GroupShuffleSplit
    >>> split = GroupShuffleSplit(n_splits=1, test_size=0.25, random_state=0)
    >>> train, test = next(split.split(data.images, data.target, groups=data.subject))
    >>> set(data.subject[train]) & set(data.subject[test])
    set()
    """
    n_samples = _check_int(n_samples, "n_samples", 1)
    image_size = _check_int(image_size, "image_size", 8)
    n_subjects = _check_int(n_subjects, "n_subjects", 1)
    if not isinstance(distribution, str) or distribution not in DISTRIBUTIONS:
        raise ValueError(f"distribution must be one of {DISTRIBUTIONS}, got {distribution!r}.")
    limits = _check_limits(pose_limits)
    seed = check_random_state(random_state).randint(np.iinfo(np.int32).max, size=4)
    rng = np.random.default_rng(seed)

    identities = _draw_identities(rng, n_subjects)
    subject = rng.permutation(np.arange(n_samples) % n_subjects)
    angles = _sample_poses(rng, n_samples, distribution, limits)
    scenes = _draw_scenes(rng, n_samples)
    noise_seed = int(rng.integers(np.iinfo(np.int64).max))
    images = _render(
        angles, identities, subject, scenes, image_size, noise_seed, effective_n_jobs(n_jobs)
    )
    descr = (
        f"Synthetic head poses: {n_samples} images of {n_subjects} procedural subjects, "
        f"{image_size}x{image_size} RGB, targets (pitch, yaw, roll) in degrees drawn from "
        f"the {distribution!r} distribution within +-{limits.tolist()} degrees. Generated "
        "by gllim_sk.datasets.make_head_poses; see its docstring for the angle convention."
    )
    return Bunch(
        images=images,
        target=angles,
        subject=subject.astype(np.intp),
        target_names=TARGET_NAMES.copy(),
        DESCR=descr,
    )


def render_head(
    pitch,
    yaw,
    roll,
    *,
    image_size=128,
    subject=0,
    light_direction=(-0.4, -0.5, -1.0),
    background=(0.85, 0.85, 0.85),
):
    """Render one subject's head at explicit angles (for figures and checks).

    Lighting and framing are fixed and there is no noise, so only the pose changes from
    one call to the next.

    Parameters
    ----------
    pitch, yaw, roll : float or array-like of shape (n,)
        Angles in degrees, in the convention of :func:`make_head_poses`.
    image_size : int, default=128
        Height and width of the image, in pixels (at least 8).
    subject : int, default=0
        Seed of the subject's identity (head shape, colours, hair). The same value always
        gives the same person.
    light_direction : array-like of shape (3,), default=(-0.4, -0.5, -1.0)
        Direction toward the light in the camera frame (``x`` right, ``y`` down, ``z`` into
        the screen; the default lights the face from the upper left).
    background : array-like of shape (3,), default=(0.85, 0.85, 0.85)
        Background RGB colour in [0, 1].

    Returns
    -------
    image : ndarray of shape (image_size, image_size, 3) or (n, image_size, image_size, 3)
        uint8 RGB; 4-D when the angles are arrays.

    Examples
    --------
    >>> from gllim_sk.datasets import render_head
    >>> render_head(10, -30, 5, image_size=48).shape
    (48, 48, 3)
    >>> render_head([0, 20], [0, 40], [0, 0], image_size=48).shape
    (2, 48, 48, 3)
    """
    image_size = _check_int(image_size, "image_size", 8)
    subject = _check_int(subject, "subject", 0)
    try:
        p, y, r = np.broadcast_arrays(*(np.asarray(a, dtype=float) for a in (pitch, yaw, roll)))
    except (TypeError, ValueError) as exc:
        raise ValueError(
            "pitch, yaw and roll must be numbers or 1-D arrays of the same length."
        ) from exc
    if p.ndim > 1:
        raise ValueError(f"pitch, yaw and roll must be scalars or 1-D, got shape {p.shape}.")
    angles = np.stack([np.atleast_1d(p), np.atleast_1d(y), np.atleast_1d(r)], axis=1)
    if angles.shape[0] == 0:
        raise ValueError("pitch, yaw and roll are empty.")
    if not np.all(np.isfinite(angles)):
        raise ValueError("pitch, yaw and roll must be finite.")
    light = np.asarray(light_direction, dtype=float)
    if light.shape != (3,) or not np.all(np.isfinite(light)) or np.linalg.norm(light) == 0:
        raise ValueError(f"light_direction must be a non-zero 3-vector, got {light_direction!r}.")
    bg = np.asarray(background, dtype=float)
    if bg.shape != (3,) or not np.all((bg >= 0) & (bg <= 1)):
        raise ValueError(f"background must be an RGB triple in [0, 1], got {background!r}.")

    n = angles.shape[0]
    identities = _draw_identities(np.random.default_rng(subject), 1)
    scenes = _draw_scenes(np.random.default_rng(0), n, jitter=False)
    scenes["light"] = np.repeat((light / np.linalg.norm(light))[None], n, axis=0)
    scenes["light_colour"] = np.full((n, 3), 0.85)
    scenes["ambient"] = np.full((n, 3), 0.3)
    scenes["background"] = np.repeat(bg[None], n, axis=0)
    scenes["gradient"] = np.zeros((n, 2))
    scenes["cloth"] = np.repeat(np.array([[0.25, 0.3, 0.45]]), n, axis=0)
    images = _render(angles, identities, np.zeros(n, dtype=np.intp), scenes, image_size, None)
    return images if p.ndim == 1 else images[0]
