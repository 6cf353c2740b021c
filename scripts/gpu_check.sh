#!/usr/bin/env bash
# Every GPU check of a release in one command, writing a short summary (a few minutes on one H100-class GPU):
#   1. the GPU tests (pytest -m gpu: CUDA event timing, max_memory_allocated, bf16/fp16 autocast, compile, end to end);
#   2. the CUDA default run, `run --samplers all` (Fashion-MNIST, 10,000 images per configuration), timed;
#   3. `perf` on CUDA (linear cost in steps, harness overhead).
# Usage: scripts/gpu_check.sh [OUT_DIR]   (OUT_DIR defaults to $OUT, else ./gpu-check)
# On a machine without PyPI access, put torch-fidelity's wheel in vendor/ (`pip download --no-deps torch-fidelity
# -d vendor` elsewhere) and Fashion-MNIST's four .gz files in vendor/fashion-mnist/; both are git-ignored.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-${OUT:-gpu-check}}
mkdir -p "$out"
summary="$out/summary.md"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if ! python -c "import torch_fidelity" 2>/dev/null; then
    wheel=$(ls vendor/torch_fidelity-*.whl 2>/dev/null | head -n 1)
    [ -n "$wheel" ] || { echo "torch-fidelity is not installed and no wheel is in vendor/" >&2; exit 2; }
    pip install -q --no-index --no-deps --target vendor/site "$wheel"
    export PYTHONPATH="$PWD/vendor/site:$PYTHONPATH"
fi
if [ -z "${SAMPLER_BENCH_FASHION_MNIST:-}" ] && [ -d vendor/fashion-mnist ]; then
    export SAMPLER_BENCH_FASHION_MNIST="$PWD/vendor/fashion-mnist"
fi

{
    echo "# GPU check, $(date -u +%Y-%m-%dT%H:%MZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
    echo
    python -c "import torch; print(f'- torch {torch.__version__}, CUDA {torch.version.cuda}, {torch.cuda.get_device_name(0)}')"
} > "$summary"

status=0
python -m pytest -m gpu -q -p no:cacheprovider -o addopts="" > "$out/gpu-tests.txt" 2>&1 || status=1
echo "- GPU tests: $(tail -n 1 "$out/gpu-tests.txt")" >> "$summary"

for variant in "fp32" "bf16 --compile"; do
    name=$(echo "$variant" | tr -d ' -')
    began=$(date +%s.%N)
    # shellcheck disable=SC2086
    python -m bench run --samplers all --quiet --precision $variant --out "/tmp/gpu-check-run-$name" --force \
        > "$out/run-$name.txt" 2>&1 || status=1
    ended=$(date +%s.%N)
    python - "$name" "$began" "$ended" "/tmp/gpu-check-run-$name" >> "$summary" <<'PY'
import json, sys
import pandas as pd
name, began, ended, folder = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
try:
    df = pd.read_csv(f"{folder}/results.csv")
    compile_info = json.load(open(f"{folder}/config.json")).get("compile", {})
except OSError as exc:
    print(f"- default run ({name}): no results ({exc})"); sys.exit()
ok = df[df["status"] == "ok"]
print(f"- default run ({name}): {ended - began:.0f} s in all, {len(ok)}/{len(df)} rows ok, sampling "
      f"{ok['wall_s'].sum():.0f} s, ms per call median {ok['net_ms_per_call'].median():.2f} (network) vs "
      f"{ok['ms_per_nfe'].median():.2f} (whole step), compile {compile_info.get('compile_and_warm_up_s', 0):.0f} s")
cols = [c for c in ["sampler", "steps", "nfe", "wall_s", "ms_per_nfe", "net_ms_per_call", "fid", "fid_floor", "status"]
        if c in df.columns]
print("\n```\n" + df[cols].to_string(index=False, float_format=lambda v: f"{v:.4g}") + "\n```\n")
PY
done

python -m bench perf --device cuda --num-samples 2500 --out "$out/perf.json" > "$out/perf.txt" 2>&1 || status=1
echo "- perf: $(grep -E 'linearity|worst overhead' "$out/perf.txt" | tr '\n' ' ')" >> "$summary"
echo "- status: $([ $status -eq 0 ] && echo 'all passed' || echo 'FAILURES, see the .txt files')" >> "$summary"
cat "$summary"
exit $status
