#!/usr/bin/env bash
# Device check of the fused Triton projection kernel (gradproj/kernels) and of real sizes, one
# GPU: at most 9 min 40 s (pytest ≤ 120 s, gpu_check.py ≤ 180 s, bench_scale ≤ 170 + 100 s).
#
#   bash benchmarks/gpu_check.sh          # from anywhere; runs in the repository root
#
# 1. wheels carried in .whl/ (traker; pytest + pluggy + iniconfig + packaging + pygments) are
#    installed with --no-deps into /tmp/site and put on PYTHONPATH (gradproj itself is not
#    installed: PYTHONPATH=. );
# 2. the CUDA tests (tests/gpu: the Triton kernel, a CUDA store == the CPU store) and the CPU
#    hash tests run when pytest is importable;
# 3. benchmarks/gpu_check.py (parts a-c: its docstring); table last, JSON to $OUT/gpu_check.json
#    when $OUT is set (with the pytest log beside it);
# 4. benchmarks/bench_scale.py (issue 13): store build vs a DPO step on random-weight Llama-3.2-1B
#    and Llama-3.1-8B, bf16, checkpointing, T = 1024, 2048; then the 8B on a 4-bit base (carry a
#    bitsandbytes wheel in .whl/); JSON + memory-vs-T PNG to $OUT. GPU_CHECK_SCALE=0 skips it.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
PY=${PYTHON:-python3}

if compgen -G ".whl/*.whl" > /dev/null; then
  if $PY -m pip install -q --no-deps --disable-pip-version-check --target /tmp/site .whl/*.whl; then
    export PYTHONPATH="$PYTHONPATH:/tmp/site"
  else
    echo "gpu_check: installing .whl/*.whl failed; going on without them"
  fi
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true

export GPU_CHECK_PYTEST="not run (pytest not importable)"
prc=0
if $PY -c "import pytest" 2>/dev/null; then
  log=/tmp/gpu_check_pytest.log
  timeout 120 $PY -m pytest -q -p no:cacheprovider -o addopts="" -rs tests/gpu tests/test_projection.py \
      tests/test_kernel_hash.py -k "not interpreter" 2>&1 | tee "$log" | tail -n 25
  prc=${PIPESTATUS[0]}
  summary=$(grep -E "(passed|failed|error)" "$log" | tail -n 1)
  [ "$prc" = 124 ] && summary="timed out after 120 s; $summary"
  export GPU_CHECK_PYTEST="rc=$prc: ${summary:-no summary}"
  if [ -n "${OUT:-}" ]; then mkdir -p "$OUT" && cp "$log" "$OUT/pytest.log"; fi
fi

timeout 180 $PY -m benchmarks.gpu_check "$@"
rc=$?
[ "$rc" = 124 ] && echo "gpu_check.py: timed out after 180 s (the JSON holds the parts done)"
if [ "${GPU_CHECK_SCALE:-1}" != 0 ]; then
  so=${OUT:-/tmp}; mkdir -p "$so"
  common=(--device cuda --checkpointing --pairs 2 --warmup 1 --repeats 3 --out "$so/bench_scale.json")
  timeout 170 $PY -m benchmarks.bench_scale "${common[@]}" --dtype bfloat16 --budget-s 120 \
      --arch llama-3.2-1b,llama-3.1-8b --tokens 1024,2048 --plot "$so/bench_scale.png"
  src=$?
  timeout 100 $PY -m benchmarks.bench_scale "${common[@]}" --quantized 4bit --arch llama-3.1-8b \
      --tokens 1024 --plot "$so/bench_scale_4bit.png"
  echo "bench_scale: rc=$src (bf16), rc=$? (4-bit); 124 = timed out, the JSON holds the runs done"
fi
echo "pytest: $GPU_CHECK_PYTEST"
[ "$rc" = 0 ] && [ "$prc" != 0 ] && rc=1
exit $rc
