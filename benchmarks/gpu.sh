#!/usr/bin/env bash
# Every benchmark and the CUDA-marked tests on one CUDA device, in about 10 minutes.
#
#   benchmarks/gpu.sh            # from anywhere; output also goes to benchmarks/gpu-results.txt
#   benchmarks/gpu.sh --check    # no GPU needed: the CPU smoke path (about 2 minutes, output in /tmp)
#
# Scripts with a --device option run with --device cuda; coupled_nmf.py, scale.py and
# scores.py have none (CPU estimators / tiny digits models) and run as they are. Each step has
# its own time limit so that one slow step cannot eat the budget of the others.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" MPLBACKEND=Agg
OUT=benchmarks/gpu-results.txt
CHECK=0
if [[ "${1:-}" == "--check" ]]; then
    CHECK=1
    OUT=$(mktemp -t gpu-check.XXXXXX)
fi
if [[ $CHECK == 0 ]] && ! python -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    echo "gpu.sh: no CUDA device visible to torch; run 'benchmarks/gpu.sh --check' for the CPU smoke path" >&2
    exit 2
fi
failed=0
step() {  # step LIMIT_SECONDS COMMAND...
    local limit=$1; shift
    echo "## $* (limit ${limit}s)"
    local t0=$SECONDS
    timeout "$limit" "$@"
    local rc=$?
    echo "## rc=$rc, $((SECONDS - t0)) s"
    [[ $rc == 0 ]] || failed=1
}
exec > >(tee "$OUT") 2>&1
{
    date -u '+# %Y-%m-%d %H:%M UTC'
    nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null || echo "# no nvidia-smi"
    uptime
    if [[ $CHECK == 1 ]]; then
        step 120 python benchmarks/embedding_attribution_real.py --quick --device cpu
        step 120 python benchmarks/embedding_attribution.py --device cpu --dims 16 --n 4 --repeats 1
        for script in semantic scores coupled_nmf scale; do  # no quick mode: check they parse
            step 30 python -m py_compile "benchmarks/$script.py"
        done
        step 60 python -m pytest -q -m gpu tests
    else
        step 200 python benchmarks/embedding_attribution_real.py --device cuda --batch 32 --threads 4 \
            --repeats 3 --reverse-dims 512 --captum-dims 32 --full
        step 45 python benchmarks/embedding_attribution.py --device cuda --threads 4
        step 45 python benchmarks/semantic.py --device cuda
        step 30 python -m pytest -q -m gpu tests
        step 120 python benchmarks/scores.py
        step 90 python benchmarks/coupled_nmf.py --threads 4
        step 70 python benchmarks/scale.py --repeats 1
    fi
}
exit $failed
