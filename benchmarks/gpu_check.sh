#!/usr/bin/env bash
# The one-shot GPU check (benchmarks/gpu_check.py) for a machine with torch and timm but no
# FiftyOne, no database, no sam2 and no network. Run from anywhere:
#
#   bash benchmarks/gpu_check.sh WHEELS_DIR [--device cuda] [--out FILE] [--quick]
#
# WHEELS_DIR holds the wheels of sam2 and of its pure-Python needs that the machine lacks. They
# are unpacked into a temporary folder put first on PYTHONPATH (no pip, no network, nothing
# installed into the machine's Python); an empty folder uses what is already importable. Make
# them on a machine with network and torch (the versions tested with refseg):
#
#   mkdir wheels && cd wheels
#   SAM2_BUILD_CUDA=0 pip wheel --no-deps --no-build-isolation sam2==1.1.0 -w .  # no CUDA ext.
#   pip wheel --no-deps antlr4-python3-runtime==4.9.3 iopath==0.1.10 -w .      # sdists only
#   pip download --no-deps hydra-core==1.3.8 omegaconf==2.3.1 portalocker==4.4.2 -d .
#   pip download --no-deps --only-binary :all: --platform manylinux2014_x86_64 \
#       --python-version 3.10 psutil==7.2.2 -d .   # abi3: any CPython >= 3.6 on x86-64 Linux
#
# `import sam2` needs hydra-core, omegaconf (and its antlr4 runtime), iopath (and portalocker),
# tqdm, numpy, pillow, PyYAML and torchvision; the last five come with torch and timm. The
# sam2 wheel holds no compiled code when built with SAM2_BUILD_CUDA=0, whatever its tag says.
#
# Under 8 minutes on an H100-class GPU: decoder checks, then benchmark_engine.py with the
# paper's models (SAM2.1-L + DINOv2-L/14, random weights, 32 x 32 prompts, 8 images a batch),
# reference and fast (bf16) paths; one JSON (default benchmarks/results/gpu-check.json).
# --device cpu --quick rehearses every step with tiny models (tests/test_package.py runs it).
set -euo pipefail

if [[ $# -lt 1 || ! -d "$1" ]]; then
    echo "usage: bash $0 WHEELS_DIR [--device cuda|cpu] [--out FILE] [--quick]" >&2
    echo "WHEELS_DIR must be a folder of wheels (it may be empty); see this file's header" >&2
    exit 2
fi
wheels=$(cd "$1" && pwd)
shift
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
python=${PYTHON:-python3}
target=$(mktemp -d "${TMPDIR:-/tmp}/refseg-gpu-check.XXXXXX")
trap 'rm -rf "$target"' EXIT

shopt -s nullglob
for wheel in "$wheels"/*.whl; do
    echo "unpacking $(basename "$wheel")"
    "$python" -m zipfile -e "$wheel" "$target"
done
export PYTHONPATH="$target:$repo${PYTHONPATH:+:$PYTHONPATH}"

missing=$("$python" - <<'EOF'
import importlib.util
needed = ["torch", "timm", "sam2", "hydra", "omegaconf", "iopath", "psutil", "PIL", "numpy"]
print(" ".join(name for name in needed if importlib.util.find_spec(name) is None))
EOF
)
if [[ -n "$missing" ]]; then
    echo "not importable: $missing; add their wheels to $wheels (see this file's header)" >&2
    exit 2
fi
"$python" -c "import sam2.build_sam" || {
    echo "sam2 does not import; check the wheels' versions (see this file's header)" >&2
    exit 2
}
cd "$repo"
exec "$python" benchmarks/gpu_check.py "$@"
