#!/usr/bin/env bash
# Device check of the fused Triton projection kernel (gradproj/kernels), one GPU: at most
# 4 min 40 s (pytest ≤ 90 s, gpu_check.py ≤ 180 s; expected about 2-3 minutes on an H100).
#
#   bash benchmarks/gpu_check.sh          # from anywhere; runs in the repository root
#
# 1. wheels carried in .whl/ (traker; pytest + pluggy + iniconfig + packaging + pygments) are
#    installed with --no-deps into /tmp/site and put on PYTHONPATH (gradproj itself is not
#    installed: PYTHONPATH=. );
# 2. the CUDA tests (tests/gpu: the Triton kernel, a CUDA store == the CPU store) and the CPU
#    hash tests run when pytest is importable;
# 3. benchmarks/gpu_check.py (parts a-c: its docstring); table last, JSON to $OUT/gpu_check.json
#    when $OUT is set (with the pytest log beside it).
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

timeout 180 $PY benchmarks/gpu_check.py "$@"
rc=$?
[ "$rc" = 124 ] && echo "gpu_check.py: timed out after 180 s (the JSON holds the parts done)"
echo "pytest: $GPU_CHECK_PYTEST"
[ "$rc" = 0 ] && [ "$prc" != 0 ] && rc=1
exit $rc
