"""
Synthetic heads: the built-in head-pose dataset
===============================================

:func:`~gllim_sk.datasets.make_head_poses` renders procedural 3-D heads at known poses,
so that head-pose regression can be tried, tested and benchmarked without downloading
anything. :func:`~gllim_sk.datasets.render_head` draws one head at explicit angles.

This example shows what each angle does to the image, a few of the people, and the four
target distributions of the paper's experiments.
"""

# %%
# One angle at a time
# -------------------
# Each row sweeps one angle with the other two at zero. Positive pitch turns the face up,
# positive yaw turns it towards the image's left (the subject's right), positive roll
# tilts it clockwise in the image.
import matplotlib.pyplot as plt
import numpy as np

from gllim_sk.datasets import make_head_poses, render_head

sweep = np.array([-60.0, -30.0, 0.0, 30.0, 60.0])
roll_sweep = np.array([-20.0, -10.0, 0.0, 10.0, 20.0])
zeros = np.zeros_like(sweep)
rows = {
    "pitch": (sweep, zeros, zeros),
    "yaw": (zeros, sweep, zeros),
    "roll": (zeros, zeros, roll_sweep),
}

fig, axes = plt.subplots(3, 5, figsize=(9, 5.8))
for i, (name, (pitch, yaw, roll)) in enumerate(rows.items()):
    images = render_head(pitch, yaw, roll, image_size=96)
    values = (pitch, yaw, roll)[i]
    for j, ax in enumerate(axes[i]):
        ax.imshow(images[j])
        ax.set_title(f"{name} = {values[j]:+.0f}°", fontsize="small")
        ax.set_axis_off()
fig.tight_layout()
plt.show()

# %%
# Different people, lights and framings
# -------------------------------------
# Each subject has their own head shape, skin tone and hair; each image its own light,
# background, framing jitter and noise. None of these depends on the pose.
data = make_head_poses(16, distribution="uniform", image_size=64, n_subjects=8, random_state=0)
fig, axes = plt.subplots(2, 8, figsize=(11, 3.3))
for ax, image, angles, person in zip(axes.ravel(), data.images, data.target, data.subject,
                                     strict=True):
    ax.imshow(image)
    ax.set_title(f"#{person}\n" + "/".join(f"{a:+.0f}" for a in angles), fontsize="x-small")
    ax.set_axis_off()
fig.suptitle("make_head_poses: subject id and pitch/yaw/roll (degrees)", fontsize="small")
fig.tight_layout()
plt.show()

# %%
# The four target distributions
# -----------------------------
# ``"biwi"`` mimics the Biwi database (mostly near-frontal), ``"s2g"`` is the paper's
# two-Gaussian set, ``"ssv"`` keeps side views only, and ``"uniform"`` fills the box of
# Biwi's ranges. Only the pitch and yaw are shown; roll stays within ±20°. The hole of
# ``"ssv"`` is carved in all three angles, so in this projection near-frontal pitch and
# yaw still appear, with a tilted head.
fig, axes = plt.subplots(1, 4, figsize=(12, 3.2), sharex=True, sharey=True)
for ax, distribution in zip(axes, ("biwi", "s2g", "ssv", "uniform"), strict=True):
    targets = make_head_poses(1500, distribution=distribution, image_size=8,
                              random_state=0).target
    ax.scatter(targets[:, 1], targets[:, 0], s=2, alpha=0.4)
    ax.set_title(f'distribution="{distribution}"', fontsize="small")
    ax.set_xlabel("yaw (deg)")
axes[0].set_ylabel("pitch (deg)")
fig.tight_layout()
plt.show()
