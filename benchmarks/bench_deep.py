"""Benchmark of the deep estimators (prints numbers; no assertions).

Two parts:

``quick`` (CPU): DeepGLLiMRegressor with the "quick" preset on synthetic heads at
64 x 64 (random VGG-16 weights, nothing downloaded): time per alternation, where the
fit time goes, and the share spent in the GLLiM steps (target: under 10 %).

``paper`` (meant for a GPU): the paper preset (224 x 224 inputs, VGG-16 blocks 4-5 and
the fully-connected layers trained, batch 128) on synthetic heads:

1. fine-tuning throughput, images per second of SGD steps only, of VGG-IR-FT
   (DeepGLLiMRegressor) against VGG-FCL-FT (DeepRegressor) on the same backbone, the
   same trainable stages and the same batch size (target: ratio >= 0.9);
2. an end-to-end DeepGLLiMRegressor fit of a few alternations (target: within five
   minutes on one GPU), with the time per alternation and its parts.

Usage::

    python benchmarks/bench_deep.py --part paper --device cuda          # on a GPU
    python benchmarks/bench_deep.py --part paper --device cpu --tiny    # proves it runs
    python benchmarks/bench_deep.py --part quick                        # CPU, 800 images
"""

import argparse
import time

import numpy as np
import torch

from gllim_sk.datasets import make_head_poses
from gllim_sk.deep import DeepGLLiMRegressor, DeepRegressor


def quick_benchmark(args):
    data = make_head_poses(args.n_samples or 800, image_size=64, random_state=0)
    reg = DeepGLLiMRegressor(
        preset="quick", embedding_dim=args.embedding_dim, weights=args.weights,
        device=args.device, n_alternations=args.alternations, random_state=0,
    )
    tic = time.perf_counter()
    reg.fit(data.images, data.target)
    fit_time = time.perf_counter() - tic
    hist = reg.history_
    gllim = sum(h["gllim_time"] for h in hist)
    finetune = sum(h["finetune_time"] for h in hist)
    print(f"quick preset, {len(data.images)} synthetic heads 64x64, device {args.device}, "
          f"embedding_dim={reg.settings_['embedding_dim']}, K={reg.n_components}, "
          f"torch threads={torch.get_num_threads()}")
    print(f"  settings: {reg.settings_}")
    print(f"  fit time            {fit_time:8.2f} s")
    for h in hist:
        print(f"  alternation {h['alternation']}: {h['time']:6.2f} s (fine-tune "
              f"{h['finetune_time']:5.2f}, SGD steps {h['train_time']:5.2f}, GLLiM "
              f"{h['gllim_time']:5.3f}); loss {h['loss_before']:.3f} -> {h['loss']:.3f}; "
              f"loglik {h['log_likelihood']:9.2f}; val MAE {np.round(h['val_mae'], 2)}")
    per_alt = [h["time"] for h in hist[1:]]
    if per_alt:
        print(f"  time per alternation (mean of {len(per_alt)}): {np.mean(per_alt):.2f} s")
    print(f"  totals: fine-tuning {finetune:.2f} s, GLLiM {gllim:.3f} s")
    print(f"  share of fit time in the GLLiM steps: {100 * gllim / fit_time:.2f} % "
          "(target < 10 %)")


def _synchronize(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def paper_benchmark(args):
    size = args.input_size
    data = make_head_poses(args.n_samples or 2000, image_size=min(size, 128),
                           random_state=0)
    trainable = DeepGLLiMRegressor._presets["paper"]["trainable_layers"]
    common = {"model": args.model, "weights": args.weights, "preset": "paper",
              "input_size": size, "batch_size": args.batch_size, "device": args.device,
              "mixed_precision": args.mixed_precision, "random_state": 0}
    device_name = (torch.cuda.get_device_name() if torch.device(args.device).type == "cuda"
                   else f"CPU, {torch.get_num_threads()} torch threads")
    print(f"paper preset: {args.model}, {size}x{size} inputs, last {trainable} backbone "
          f"stages trained (VGG-16: block4, block5, pool, fc6, fc7), batch "
          f"{args.batch_size}, {len(data.images)} synthetic heads, device {device_name}, "
          f"mixed_precision={args.mixed_precision}")

    # 1. Throughput of the SGD steps, same stages and batch for both estimators.
    base = DeepRegressor(phases=((args.epochs, trainable),), **common)
    tic = time.perf_counter()
    base.fit(data.images, data.target)
    _synchronize(args.device)
    base_fit = time.perf_counter() - tic
    base_rate = (sum(h["n_trained"] for h in base.history_)
                 / sum(h["train_time"] for h in base.history_))
    deep = DeepGLLiMRegressor(n_alternations=1, n_epochs=args.epochs,
                              embedding_dim=args.embedding_dim, **common)
    tic = time.perf_counter()
    deep.fit(data.images, data.target)
    _synchronize(args.device)
    deep_fit = time.perf_counter() - tic
    n_train = round(len(data.images) * (1 - deep.validation_fraction))
    trained = deep.history_[1]
    deep_rate = n_train * args.epochs / trained["train_time"]
    print(f"  VGG-FCL-FT (DeepRegressor) SGD steps:      {base_rate:9.1f} images/s "
          f"({args.epochs} epochs; whole fit {base_fit:.1f} s)")
    print(f"  VGG-IR-FT (DeepGLLiMRegressor) SGD steps:  {deep_rate:9.1f} images/s "
          f"({args.epochs} epochs; whole fit {deep_fit:.1f} s)")
    print(f"  ratio VGG-IR-FT / VGG-FCL-FT: {deep_rate / base_rate:.2f} (goal >= 0.9)")

    # 2. End to end: a few alternations of Algorithm 1.
    full = DeepGLLiMRegressor(n_alternations=args.alternations, n_epochs=args.epochs,
                              embedding_dim=args.embedding_dim, **common)
    tic = time.perf_counter()
    full.fit(data.images, data.target)
    _synchronize(args.device)
    full_fit = time.perf_counter() - tic
    print(f"  end-to-end DeepGLLiMRegressor fit: {full_fit:.1f} s for {args.alternations} "
          f"alternations of {args.epochs} epochs (goal: < 300 s on one GPU)")
    for h in full.history_:
        print(f"    alternation {h['alternation']}: {h['time']:7.2f} s (SGD steps "
              f"{h['train_time']:6.2f}, GLLiM {h['gllim_time']:6.3f}); val MAE "
              f"{np.round(h['val_mae'], 2)}")
    gllim = sum(h["gllim_time"] for h in full.history_)
    print(f"  share of the fit in the GLLiM steps: {100 * gllim / full_fit:.2f} %")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=("quick", "paper"), default=None,
                        help="default: paper on CUDA machines, else quick")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--model", default="vgg16")
    parser.add_argument("--weights", default=None,
                        help="backbone weights (None: random, DEFAULT: ImageNet, or a file)")
    parser.add_argument("--n-samples", type=int, default=None)
    parser.add_argument("--input-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=2, help="epochs per measurement")
    parser.add_argument("--alternations", type=int, default=3)
    parser.add_argument("--embedding-dim", type=int, default=None)
    parser.add_argument("--mixed-precision", action="store_true")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tiny", action="store_true",
                        help="CPU smoke size: 32 images at 32x32, batch 8, 1 epoch")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.part is None:
        args.part = "paper" if args.device.startswith("cuda") else "quick"
    if args.tiny:
        args.n_samples, args.input_size, args.batch_size = 32, 32, 8
        args.epochs, args.alternations = 1, 1
        args.embedding_dim = args.embedding_dim or 8
    if args.part == "quick":
        quick_benchmark(args)
    else:
        paper_benchmark(args)


if __name__ == "__main__":
    main()
