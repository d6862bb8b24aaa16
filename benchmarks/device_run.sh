#!/usr/bin/env bash
# On a lent GPU machine (one H200, 16 cores; no registry): the GPU tests, the CUDA benchmark and
# the real-model CPU benchmark at 16 threads, most important first, each bounded by `timeout`.
#
#   bash benchmarks/device_run.sh [STAGE ...]      STAGE: env tests bench cpu batch (default: all)
#
# Logs and results go to $OUT (the device tool's folder that comes back; default /tmp/gx-out):
# env.log, tests.log, bench.log, cuda.md, cuda.json, cpu.log, cpu16.md, batch.log (whose
# tables are the batch stage's results). Seconds per stage:
# T_TESTS, T_BENCH, T_CPU (defaults below). The image has torch, torchvision, timm, pytest,
# hypothesis, psutil but no dask/distributed: wheels for those (dask distributed partd locket
# tblib tornado zict, see docs/executors/cuda.md "Measuring on a GPU") are installed from a
# `.whl` folder beside or above this checkout when one is there.
set -u -o pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
OUT=${OUT:-/tmp/gx-out}
mkdir -p "$OUT"
STAGES=${*:-env tests bench cpu batch}
PY=${PY:-python3}
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
export PYTHONPATH="$ROOT"
for wheels in "$ROOT/.whl" "$ROOT/../.whl"; do
  if compgen -G "$wheels/*.whl" >/dev/null; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/site "$wheels"/*.whl && export PYTHONPATH="$ROOT:/tmp/site"
    break
  fi
done
has() { [[ " $STAGES " == *" $1 "* ]]; }
stamp() { echo "== $1 at $(date -u +%H:%M:%S)"; }

if has env; then
  {
    stamp env
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm \
      --format=csv || true
    nproc
    $PY - <<'PY'
import importlib, sys, torch
print("python", sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda,
      "cudnn", torch.backends.cudnn.version(), "threads", torch.get_num_threads())
print("gpu", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none")
for name in ("graphexec", "dask", "distributed", "torchvision", "timm", "transformers"):
    try:
        m = importlib.import_module(name)
        print(name, getattr(m, "__version__", ""), m.__file__)
    except Exception as exc:
        print(name, "FAILED:", type(exc).__name__, exc)
PY
  } 2>&1 | tee "$OUT/env.log"
fi

if has tests; then
  stamp tests
  timeout "${T_TESTS:-110}" $PY -m pytest -m gpu tests/ -q -rfEs -p no:cacheprovider \
    --continue-on-collection-errors --timeout 60 2>&1 | tee "$OUT/tests.log"
  echo "tests: exit $?"
  # torch 2.11's own DeprecationWarning (torch.jit.script_method, raised by importing inductor
  # in torch._dynamo.reset) is an error under the project's filterwarnings: the Dynamo GPU test
  # once more without it, to see the test itself
  timeout 60 $PY -m pytest -m gpu tests/test_dynamo.py -q -rfEs -p no:cacheprovider \
    -W "ignore::DeprecationWarning" 2>&1 | tee -a "$OUT/tests.log"
fi

if has bench; then
  stamp bench
  timeout "${T_BENCH:-110}" $PY benchmarks/bench_cuda.py --reps "${REPS:-50}" --budget 85 \
    --out "$OUT/cuda.md" --json "$OUT/cuda.json" 2>&1 | tee "$OUT/bench.log"
  echo "bench: exit $?"
fi

if has cpu; then
  stamp cpu
  uptime
  timeout "${T_CPU:-100}" $PY -m benchmarks.cpu_threads --threads "${THREADS:-16}" --reps 15 \
    --sweep 1 4 --budget "${CPU_BUDGET:-70}" --out "$OUT/cpu16.md" 2>&1 | tee "$OUT/cpu.log"
  echo "cpu: exit $?"
fi
if has batch; then  # where do streams pay without a CUDA graph: larger batches
  stamp batch
  timeout "${T_BATCH:-90}" $PY benchmarks/bench_cuda.py --reps 30 --budget 60 --batch 8 32 \
    --workloads googlenet inception towers --out /tmp/cuda_batch.md 2>&1 | tee "$OUT/batch.log"
  echo "batch: exit $?"
fi
stamp done
