#!/usr/bin/env bash
# The GPU checks of the README's "Scale out" section, for a machine with an NVIDIA GPU whose
# python3 already has JAX with CUDA, flax, optax, orbax and matplotlib but no internet (a lent
# GPU box, a cluster node without PyPI). With internet, use the README's commands instead
# (make setup JAX_VARIANT=cuda12; make test; make bench; make reproduce FULL=1).
#
#   bash .ci/gpu.sh fetch               # where PyPI works: the suite's other packages as Python 3.12
#                                       # wheels into .whl/ (the versions of .venv, i.e. of make setup),
#                                       # real MNIST into .data/mnist (from $MNIST_DIR or ../shared)
#   bash .ci/gpu.sh check OUT           # on the GPU machine: versions and devices, make bench's numbers
#                                       # into OUT/ (<gpu>.json, .md), the test suite on the GPU (OUT/tests.log)
#   bash .ci/gpu.sh reproduce OUT SECS  # on the GPU machine: SECS seconds of make reproduce FULL=1; its runs
#                                       # go to OUT/gpu-runs.tgz; carried back as .data/gpu-runs.tgz, the
#                                       # next call resumes them (trainer.resume=true), the last one also
#                                       # writes the figures and tables into OUT/gpu-results.tgz
#
# .whl/ and .data/ are git-ignored; both must travel with the checkout (about 45 MB together).
# A dry run of check/reproduce on a CPU (tests/test_packaging.py runs check so): PYTHON=.venv/bin/python
# GPU_SH_DRY=1 (no wheels installed, the CPU allowed) GPU_SH_MNIST=<dir> BENCH_ARGS=... TESTS=... REPRODUCE_ARGS=...
set -euo pipefail
cd "$(dirname "$0")/.."
# What such a machine's image has (tests/test_packaging.py: with NEEDED, every suite dependency)
IMAGE_HAS="jax optax flax numpy matplotlib pyyaml tqdm orbax-checkpoint scipy pytest pytest-xdist pytest-timeout"
# and what the suite needs besides (its image's package list, checked 2026-12): pure-Python
# wheels but wandb, pydantic-core, sqlalchemy and wcwidth (built for CPython 3.12 x86-64).
NEEDED="alembic annotated-types antlr4-python3-runtime autopage cliff cmaes cmd2 colorlog cwevals
hydra-core hydra-joblib-launcher hydra-optuna-sweeper hydra-submitit-launcher mako matfree omegaconf
opentelemetry-api opentelemetry-exporter-http-transport opentelemetry-exporter-otlp-common
opentelemetry-exporter-otlp-proto-common opentelemetry-exporter-otlp-proto-http opentelemetry-proto
opentelemetry-sdk opentelemetry-semantic-conventions optuna platformdirs prettytable prompt-toolkit
pydantic pydantic-core pyperclip rich rich-argparse sqlalchemy stevedore submitit termcolor toml
typing-extensions typing-inspection tzdata wandb wandb-workspaces wcwidth"
PLATFORMS="--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
--platform manylinux2014_x86_64 --platform manylinux1_x86_64"

fetch() {
  test -x .venv/bin/python || make setup
  rm -rf .whl && mkdir -p .whl .data
  for name in $NEEDED; do
    version=$(.venv/bin/python -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$name")
    # shellcheck disable=SC2086
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      $PLATFORMS -d .whl "$name==$version" 2>/dev/null \
      || python3 -m pip wheel -q --no-deps -w .whl "$name==$version"  # an sdist only (antlr4 4.9.3): pure Python
  done
  local mnist="${MNIST_DIR:-../shared/data/mnist}"
  mkdir -p .data/mnist && cp "$mnist"/*-ubyte.gz .data/mnist/
  du -sh .whl .data
  echo "carry: .whl .data"
}

PYTHON="${PYTHON:-python3}"
DRY="${GPU_SH_DRY:-}"

setup_there() {
  if [ -z "$DRY" ]; then
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  fi
  export PYTHONPATH="/tmp/site:$PWD/src:$PWD" MNIST_DIR="${GPU_SH_MNIST:-$PWD/.data/mnist}" WANDB_SILENT=true PYTHONUNBUFFERED=1
  export XLA_PYTHON_CLIENT_PREALLOCATE=false  # parallel test workers share the GPU
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
  "$PYTHON" -c "import jax, flax, optax, orbax.checkpoint, hydra, wandb; print('jax', jax.__version__, 'flax',
flax.__version__, 'optax', optax.__version__, 'hydra', hydra.__version__, 'wandb', wandb.__version__); print(jax.devices())"
  if [ -z "$DRY" ]; then
    "$PYTHON" -c "import jax, sys; sys.exit(0 if jax.default_backend() == 'gpu' else 'error: JAX is not on the GPU')"
  fi
}

check() {
  local out="$1"
  setup_there
  set +e
  # shellcheck disable=SC2086
  "$PYTHON" -m benchmarks ${BENCH_ARGS:---skip-slow --no-scaling} --out "$out" >"$out/bench.log" 2>&1
  echo "bench: exit status $?"
  tail -40 "$out/bench.log"
  # shellcheck disable=SC2086
  "$PYTHON" -m pytest -n 8 --dist loadfile -q -p no:cacheprovider --ignore=tests/test_notebook.py \
    --maxfail=10 ${TESTS:-} >"$out/tests.log" 2>&1
  local rc=$?
  set -e
  tail -30 "$out/tests.log"
  echo "tests: exit status $rc"
}

reproduce() {
  local out="$1" seconds="$2" runs="${GPU_SH_RUNS:-/tmp/gpu-runs}"
  setup_there
  mkdir -p "$runs"
  if [ -f .data/gpu-runs.tgz ]; then tar -xzf .data/gpu-runs.tgz -C "$runs"; fi
  set +e
  # timeout signals its whole process group: each training job checkpoints and stops cleanly
  # shellcheck disable=SC2086
  timeout -s TERM "$seconds" "$PYTHON" scripts/reproduce.py --full --runs "$runs/paper" --out "$runs/results" \
    ${REPRODUCE_ARGS:-} logger.wandb.mode=disabled
  local rc=$?
  set -e
  tar -czf "$out/gpu-runs.tgz" -C "$runs" paper
  if [ "$rc" = 0 ]; then
    tar -czf "$out/gpu-results.tgz" -C "$runs" results
    echo "reproduce: done (manifest.json's wall time is this slice's only: add the earlier slices')"
  else
    echo "reproduce: exit status $rc (124 or 143: stopped at $seconds s; carry OUT/gpu-runs.tgz back as .data/ to go on)"
  fi
}

case "${1:-}" in
  fetch) fetch ;;
  check) mkdir -p "${2:?OUT}"; check "$2" ;;
  reproduce) mkdir -p "${2:?OUT}"; reproduce "$2" "${3:?SECS}" ;;
  *) sed -n '2,17p' "$0"; exit 2 ;;
esac
