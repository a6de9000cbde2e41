"""Benchmark of the deep estimators (prints numbers; no assertions).

CPU mode (always): DeepGLLiMRegressor with the "quick" preset on synthetic heads at
64 x 64 (random VGG-16 weights, nothing downloaded): time per alternation, where the
fit time goes, and the share spent in the GLLiM steps (target: under 10%).

GPU mode (when CUDA is available): fine-tuning throughput of DeepGLLiMRegressor against
DeepRegressor on the same backbone and trainable layers (target: at least 0.9x), and
end-to-end fit times, with the "paper" preset at 224 x 224.

Usage::

    python benchmarks/bench_deep.py                  # CPU, 800 images, 2 threads
    python benchmarks/bench_deep.py --n-samples 400 --embedding-dim 256
    python benchmarks/bench_deep.py --gpu-only       # on a CUDA machine
"""

import argparse
import time

import numpy as np
import torch

from gllim_sk.datasets import make_head_poses
from gllim_sk.deep import DeepGLLiMRegressor, DeepRegressor


def cpu_benchmark(args):
    data = make_head_poses(args.n_samples, image_size=64, random_state=0)
    reg = DeepGLLiMRegressor(
        preset="quick", embedding_dim=args.embedding_dim, weights=None, device="cpu",
        n_alternations=args.alternations, random_state=0,
    )
    tic = time.perf_counter()
    reg.fit(data.images, data.target)
    fit_time = time.perf_counter() - tic
    hist = reg.history_
    gllim = sum(h["gllim_time"] for h in hist)
    finetune = sum(h["finetune_time"] for h in hist)
    features = sum(h["feature_time"] for h in hist)
    setup = fit_time - sum(h["time"] for h in hist[1:]) - hist[0]["gllim_time"]
    print(f"CPU, quick preset, {args.n_samples} synthetic heads 64x64, "
          f"embedding_dim={args.embedding_dim}, K={reg.n_components}, "
          f"torch threads={torch.get_num_threads()}")
    print(f"  settings: {reg.settings_}")
    print(f"  fit time            {fit_time:8.2f} s")
    print(f"  setup (cache fc6, PCA, initial GLLiM features) {setup:8.2f} s")
    for h in hist:
        print(f"  alternation {h['alternation']}: {h['time']:6.2f} s (fine-tune "
              f"{h['finetune_time']:5.2f}, features {h['feature_time']:5.2f}, GLLiM "
              f"{h['gllim_time']:5.3f}); loss {h['loss_before']:.3f} -> {h['loss']:.3f}; "
              f"loglik {h['log_likelihood']:9.2f}; val MAE {np.round(h['val_mae'], 2)}")
    per_alt = [h["time"] for h in hist[1:]]
    if per_alt:
        print(f"  time per alternation (mean of {len(per_alt)}): {np.mean(per_alt):.2f} s")
    print(f"  totals: fine-tuning {finetune:.2f} s, feature passes {features:.2f} s, "
          f"GLLiM {gllim:.3f} s")
    print(f"  share of fit time in the GLLiM steps: {100 * gllim / fit_time:.2f} % "
          "(target < 10 %)")


def gpu_benchmark(args):
    data = make_head_poses(args.gpu_samples, image_size=128, random_state=0)
    common = dict(weights=None, preset="paper", device="cuda", random_state=0,
                  mixed_precision=args.mixed_precision)
    epochs = 2
    tic = time.perf_counter()
    deep = DeepGLLiMRegressor(n_alternations=2, n_epochs=epochs, **common)
    deep.fit(data.images, data.target)
    torch.cuda.synchronize()
    deep_fit = time.perf_counter() - tic
    n_train = round(len(data.images) * (1 - deep.validation_fraction))
    finetune = [h["finetune_time"] for h in deep.history_[1:]]
    deep_rate = n_train * epochs / np.mean(finetune)

    tic = time.perf_counter()
    base = DeepRegressor(phases=((epochs, deep.settings_["trainable_layers"]),),
                         batch_size=deep.settings_["batch_size"], **common)
    base.fit(data.images, data.target)
    torch.cuda.synchronize()
    base_fit = time.perf_counter() - tic
    base_rate = n_train / np.mean([h["time"] for h in base.history_])
    print(f"GPU ({torch.cuda.get_device_name()}), paper preset (224x224, "
          f"trainable_layers={deep.settings_['trainable_layers']}, batch "
          f"{deep.settings_['batch_size']}), {len(data.images)} images, "
          f"mixed_precision={args.mixed_precision}")
    print(f"  DeepGLLiMRegressor fine-tuning: {deep_rate:8.1f} images/s "
          f"(epoch time includes nothing but training)")
    print(f"  DeepRegressor training:         {base_rate:8.1f} images/s "
          "(epoch time includes the validation pass)")
    print(f"  ratio DeepGLLiM / DeepRegressor: {deep_rate / base_rate:.2f} (target >= 0.9)")
    print(f"  end-to-end fit: DeepGLLiMRegressor {deep_fit:.1f} s (2 alternations of "
          f"{epochs} epochs), DeepRegressor {base_fit:.1f} s ({epochs} epochs)")
    gllim = sum(h["gllim_time"] for h in deep.history_)
    print(f"  share of DeepGLLiM fit time in the GLLiM steps: {100 * gllim / deep_fit:.2f} %")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-samples", type=int, default=800)
    parser.add_argument("--embedding-dim", type=int, default=512)
    parser.add_argument("--alternations", type=int, default=None,
                        help="default: the quick preset's")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--gpu-samples", type=int, default=2000)
    parser.add_argument("--mixed-precision", action="store_true")
    parser.add_argument("--gpu-only", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if not args.gpu_only:
        cpu_benchmark(args)
    if torch.cuda.is_available():
        gpu_benchmark(args)
    else:
        print("GPU mode skipped: CUDA is not available on this machine.")


if __name__ == "__main__":
    main()
