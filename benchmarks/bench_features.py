"""Benchmarks of the p-HOG features and of the HOG baselines on synthetic heads.

Prints numbers; asserts nothing. Two parts, chosen with ``--part``:

throughput
    Images per second of :class:`gllim_sk.features.HOGPyramid` (1,888 values per image)
    on synthetic head images of ``--image-size`` pixels, with ``n_jobs=1`` and
    ``n_jobs=2``. Best of ``--repeat`` runs; the joblib worker pool is started once
    before timing, as it is in a long-running session. With ``n_jobs=1`` the process's
    CPU time per image is printed too: unlike wall-clock time it is not inflated by
    other programs sharing the cores.
baselines
    The torch-free rows of Table 1 on the synthetic "biwi" distribution of
    :func:`gllim_sk.datasets.make_head_poses`, with a person-disjoint split (no subject in
    both the training and the test set): the (0, 0, 0) mean pose, HOG-SVR and HOG-IR
    (``--components`` affine components, ``--latent`` latent dimensions). Prints the
    table in the paper's format and the fit and predict times.

Examples
--------
Both parts with the defaults (about a minute on 2 cores)::

    python benchmarks/bench_features.py

A larger comparison::

    python benchmarks/bench_features.py --part baselines --n-samples 3000 --components 10
"""

import argparse
import time
import warnings

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import GroupShuffleSplit

from gllim_sk.datasets import make_head_poses
from gllim_sk.features import HOGPyramid
from gllim_sk.metrics import angle_errors, format_results_table
from gllim_sk.pipelines import make_hog_ir, make_hog_svr, make_mean_pose_baseline


def bench_throughput(args):
    images = make_head_poses(args.n_images, image_size=args.image_size, random_state=0).images
    print(f"HOGPyramid throughput: {args.n_images} RGB images of {args.image_size} x "
          f"{args.image_size} pixels, best of {args.repeat}")
    for n_jobs in (1, 2):
        hog = HOGPyramid(n_jobs=n_jobs).fit(images)
        hog.transform(images[:64])  # starts the worker pool (n_jobs=2) outside the timing
        best, best_cpu = np.inf, np.inf
        for _ in range(args.repeat):
            start, start_cpu = time.perf_counter(), time.process_time()
            features = hog.transform(images)
            best = min(best, time.perf_counter() - start)
            best_cpu = min(best_cpu, time.process_time() - start_cpu)
        # With n_jobs=1 the CPU time of this process is the cost of the work itself, which
        # other programs competing for the cores do not inflate (wall-clock time they do).
        cpu = f", CPU {1e3 * best_cpu / args.n_images:.2f} ms/image" if n_jobs == 1 else ""
        print(f"  n_jobs={n_jobs}: {args.n_images / best:7.0f} images/s "
              f"({1e3 * best / args.n_images:.2f} ms/image wall{cpu}), output "
              f"{features.shape} {features.dtype}")


def bench_baselines(args):
    data = make_head_poses(args.n_samples, distribution="biwi", image_size=args.image_size,
                           n_subjects=args.n_subjects, random_state=args.random_state)
    splitter = GroupShuffleSplit(n_splits=1, test_size=args.test_size,
                                 random_state=args.random_state)
    train, test = next(splitter.split(data.images, data.target, groups=data.subject))
    print(f'Synthetic "biwi" heads, {args.image_size} x {args.image_size} pixels: '
          f"{len(train)} training images of {len(set(data.subject[train]))} people, "
          f"{len(test)} test images of {len(set(data.subject[test]))} other people")
    models = {
        "(0, 0, 0)": make_mean_pose_baseline(),
        "HOG-SVR": make_hog_svr(n_jobs=args.n_jobs),
        f"HOG-IR (K={args.components}, Lw={args.latent})": make_hog_ir(
            args.components, n_latent=args.latent, n_jobs=args.n_jobs,
            random_state=args.random_state,
        ),
    }
    results, timings = {}, []
    for name, model in models.items():
        start = time.perf_counter()
        model.fit(data.images[train], data.target[train])
        fitted = time.perf_counter()
        predictions = model.predict(data.images[test])
        predicted = time.perf_counter()
        results[name] = angle_errors(data.target[test], predictions)
        timings.append((name, fitted - start, predicted - fitted))
    print()
    print(format_results_table(results))
    print()
    for name, fit_s, predict_s in timings:
        print(f"  {name:<24} fit {fit_s:6.2f} s   predict {predict_s:5.2f} s")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--part", choices=["all", "throughput", "baselines"], default="all")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--n-images", type=int, default=1000,
                        help="images for the throughput part")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--n-samples", type=int, default=1000,
                        help="images for the baselines part")
    parser.add_argument("--n-subjects", type=int, default=20)
    parser.add_argument("--test-size", type=float, default=0.25,
                        help="fraction of the subjects held out for testing")
    parser.add_argument("--components", type=int, default=5, help="K of HOG-IR")
    parser.add_argument("--latent", type=int, default=4, help="latent dimensions of HOG-IR")
    parser.add_argument("--n-jobs", type=int, default=None)
    parser.add_argument("--random-state", type=int, default=0)
    args = parser.parse_args()
    warnings.filterwarnings("ignore", category=ConvergenceWarning)
    if args.part in ("all", "throughput"):
        bench_throughput(args)
    if args.part == "all":
        print()
    if args.part in ("all", "baselines"):
        bench_baselines(args)


if __name__ == "__main__":
    main()
