"""Speed of the synthetic head renderer and of the real-dataset loaders.

Run from the repository root::

    python benchmarks/bench_datasets.py            # everything (about a minute)
    python benchmarks/bench_datasets.py --quick    # fewer images

Prints the renderer's images per second at 64, 112 and 224 pixels: with the BLAS thread
pool at its default size and limited to one thread (the renderer is element-wise numpy
plus two small matrix products per chunk, which it runs on one BLAS thread itself, so
OMP_NUM_THREADS / OPENBLAS_NUM_THREADS should not matter), and with two rendering threads
(``n_jobs=2``); wall-clock and per CPU-second (the second is less sensitive to other
processes sharing the machine). Then the Biwi and AFLW2000 loaders' first (decoding) and second
(cached) load times on fixture datasets written to a temporary folder in the original
formats, and on the real Biwi frame in ../shared if it is there.
"""

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

from gllim_sk.datasets import load_aflw2000, load_biwi, make_head_poses, rotation_matrix


def _time(fn, *args, **kwargs):
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - wall, time.process_time() - cpu


def bench_renderer(quick):
    print("make_head_poses (distribution='biwi'), images per second")
    print(
        f"{'size':>5} {'n':>6} {'BLAS threads':>12} {'n_jobs':>6} {'wall img/s':>11} "
        f"{'img/CPU-s':>10}"
    )
    sizes = {64: 1000 if quick else 4000, 112: 300 if quick else 1000, 224: 60 if quick else 250}
    for size, n in sizes.items():
        make_head_poses(8, image_size=size, random_state=0)  # warm-up
        for threads, n_jobs in ((None, 1), (1, 1), (None, 2)):
            with threadpool_limits(limits=threads):
                _, wall, cpu = _time(
                    make_head_poses, n, image_size=size, random_state=0, n_jobs=n_jobs
                )
            label = "default" if threads is None else str(threads)
            print(f"{size:>5} {n:>6} {label:>12} {n_jobs:>6} {n / wall:>11.0f} {n / cpu:>10.0f}")


def _write_biwi(root, n_frames):
    from PIL import Image

    rng = np.random.default_rng(0)
    folder = root / "hpdb" / "01"
    folder.mkdir(parents=True)
    (folder / "rgb.cal").write_text(
        "517.679 0 320\n0 517.679 240.5\n0 0 1\n\n0 0 0 0\n\n1 0 0\n0 1 0\n0 0 1\n\n"
        "-24.0198 5.8896 -13.2308\n\n640 480\n"
    )
    for i in range(n_frames):
        M = rotation_matrix(*rng.uniform(-30, 30, 3))
        pose = "\n".join(" ".join(f"{x:.6f}" for x in row) for row in M)
        centre = rng.uniform([-50, -50, 800], [50, 50, 1000])
        pose += "\n\n" + " ".join(f"{x:.3f}" for x in centre) + "\n"
        (folder / f"frame_{i:05d}_pose.txt").write_text(pose)
        image = rng.integers(0, 255, (480, 640, 3), dtype=np.uint8)
        Image.fromarray(image).save(folder / f"frame_{i:05d}_rgb.png")


def _write_aflw(root, n_images):
    from PIL import Image
    from scipy.io import savemat

    rng = np.random.default_rng(0)
    folder = root / "AFLW2000"
    folder.mkdir(parents=True)
    for i in range(n_images):
        pose = np.zeros((1, 7))
        pose[0, :3] = np.radians(rng.uniform(-60, 60, 3))
        pt2d = rng.uniform(150, 300, (2, 21))
        savemat(folder / f"image{i:05d}.mat", {"Pose_Para": pose, "pt2d": pt2d})
        image = rng.integers(0, 255, (450, 450, 3), dtype=np.uint8)
        Image.fromarray(image).save(folder / f"image{i:05d}.jpg", quality=90)


def bench_loaders(quick):
    n = 50 if quick else 200
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        _write_biwi(root / "biwi", n)
        _write_aflw(root / "aflw", n)
        print(f"\nLoaders on {n}-image fixtures (640x480 PNG / 450x450 JPEG), image_size=64")
        for name, fn in (
            ("load_biwi", lambda: load_biwi(root / "biwi", image_size=64)),
            ("load_aflw2000", lambda: load_aflw2000(root / "aflw", image_size=64)),
        ):
            _, first, _ = _time(fn)
            _, second, _ = _time(fn)
            print(
                f"{name:>14}: first load {first:.2f} s ({n / first:.0f} images/s), "
                f"cached load {second * 1e3:.1f} ms"
            )
    sample = Path(__file__).resolve().parents[1].parent / "shared/reference/biwi-sample"
    if sample.is_dir():
        _, wall, _ = _time(lambda: load_biwi(sample, image_size=64, cache=False))
        print(f"{'real frame':>14}: {wall * 1e3:.1f} ms (decode + crop, no cache)")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer images")
    args = parser.parse_args()
    bench_renderer(args.quick)
    bench_loaders(args.quick)


if __name__ == "__main__":
    main()
