#!/usr/bin/env bash
# The GPU checks as one prepared run, for a machine with a CUDA GPU: the joint-EM regime of
# issue 24 (examples/pretrained_regime.py --part regime, seeds 0-2), the Array API tests on
# the GPU, then the GPU benchmarks (Array API GLLiM through torch and CuPy; the deep
# estimators' paper preset). Each step has its own time limit; the whole run stays under
# about 9.5 minutes. WEIGHTS names the pretrained backbone file (pretrain_head_backbone()'s
# output, made on the CPU); without it the regime step pretrains one first. Run from the repository root with a python that already has numpy,
# scipy, scikit-learn (1.6 or newer), torch, torchvision and tqdm (CuPy optional): nothing
# is installed, the package is imported from the checkout. Logs go to ${OUT:-gpu-results}.
#
#     bash benchmarks/gpu_check.sh
set -uo pipefail
out=${OUT:-gpu-results}
mkdir -p "$out"
python=${PYTHON:-python3}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 SCIPY_ARRAY_API=1

step() {  # step NAME SECONDS COMMAND...: run, print and keep the output, go on on failure
    local name=$1 limit=$2
    shift 2
    echo "=== $name (limit ${limit} s)"
    timeout "$limit" "$@" 2>&1 | tee "$out/$name.txt"
    echo "=== $name: exit ${PIPESTATUS[0]}"
}

step environment 30 bash -c "nvidia-smi --query-gpu=name,memory.total,driver_version \
    --format=csv; $python -c 'import numpy, scipy, sklearn, torch; print(numpy.__version__, \
    scipy.__version__, sklearn.__version__, torch.__version__, torch.cuda.is_available())'"
step regime 270 "$python" examples/pretrained_regime.py --part regime --device cuda \
    --threads 8 --seeds 0 1 2 --budget 220 --output-dir "$out" ${WEIGHTS:+--weights "$WEIGHTS"}
GLLIM_SK_TEST_DEVICE=cuda step array_api_tests 80 "$python" -m pytest -q \
    -p no:cacheprovider -o addopts="" tests/test_array_api.py
step bench_gllim_torch 60 "$python" benchmarks/bench_gllim.py --part x --namespace torch \
    --device cuda
step bench_deep_paper 120 "$python" benchmarks/bench_deep.py --part paper --device cuda
step bench_gllim_cupy 40 "$python" benchmarks/bench_gllim.py --part x --namespace cupy \
    --device cuda --fit-iterations 5 --repeat 1
