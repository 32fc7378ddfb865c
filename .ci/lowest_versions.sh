#!/usr/bin/env bash
# The lowest versions pyproject.toml declares (torch, torchvision, captum, and
# timm for the tests), in a second virtual environment, on a representative
# subset of the tests. PyPI has no CPU-only torch 2.1 wheel, and its CUDA
# wheel links the CUDA libraries at import: install only those it loads, not
# the 2 GB more (cusolver, nvrtc, triton) that pip would pull in.
set -euo pipefail
cd "$(dirname "$0")/.."
TORCH=2.1.2 TORCHVISION=0.16.2 CAPTUM=0.7.0 TIMM=1.0.10
VENV="${LOWEST_VENV:-/tmp/captum_xcam_lowest}"
python -m venv "$VENV"
PIP="$VENV/bin/python -m pip install --quiet --disable-pip-version-check"
# pip reports the skipped CUDA packages as conflicts and still exits 0.
$PIP --no-deps "torch==$TORCH" "torchvision==$TORCHVISION" "captum==$CAPTUM" "timm==$TIMM" \
  nvidia-cuda-runtime-cu12==12.1.105 nvidia-cublas-cu12==12.1.3.1 nvidia-cufft-cu12==11.0.2.54 \
  nvidia-curand-cu12==10.3.2.106 nvidia-cusparse-cu12==12.1.0.106 \
  nvidia-nvjitlink-cu12==12.1.105 nvidia-cudnn-cu12==8.9.2.26 nvidia-nccl-cu12==2.18.1 \
  nvidia-nvtx-cu12==12.1.105 nvidia-cuda-cupti-cu12==12.1.105
$PIP "numpy<2" filelock typing-extensions sympy networkx jinja2 fsspec requests pillow \
  matplotlib tqdm huggingface_hub safetensors pyyaml pytest 2>/dev/null
$PIP --no-deps -e .
"$VENV/bin/python" -c "import torch, torchvision, captum, timm; print('lowest versions:', \
torch.__version__, torchvision.__version__, captum.__version__, timm.__version__)"
"$VENV/bin/python" -m pytest -q -p no:cacheprovider -o addopts="" \
  tests/test_registry.py tests/test_captum_compat.py tests/test_errors.py \
  tests/test_visualization.py tests/test_timm_models.py tests/test_metrics_confidence_deletion.py \
  tests/test_lift_cam_any_layer.py tests/test_fast_paths.py tests/test_cli.py \
  tests/test_transformers.py tests/test_cli_transformers.py
