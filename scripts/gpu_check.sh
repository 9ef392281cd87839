#!/usr/bin/env bash
# One script for the minutes a GPU is lent: install, run the CUDA tests, benchmark the Triton
# kernels against SDPA (FlashAttention on a recent GPU) in bfloat16, run the gpu-dry preset,
# and write every result into one JSON (OUT/gpu_check.json). Under 8 minutes on one H100.
#
#   scripts/gpu_check.sh --out runs/gpu-check            # on the GPU machine
#   scripts/gpu_check.sh --out /tmp/gpu-dry --dry-run    # the same steps at toy sizes on CPU (CI runs this)
#
# Each step runs under a time limit, its exit code, wall time and the tail of its output go
# into the JSON, and a failed step does not stop the next one (a lent GPU's minutes are few).
set -uo pipefail

OUT=""
DRY=0
while [ $# -gt 0 ]; do
    case "$1" in
        --out) OUT="${2:-}"; shift 2 ;;
        --dry-run) DRY=1; shift ;;
        -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
        *) echo "gpu_check.sh: unknown argument $1 (use --out DIR [--dry-run])" >&2; exit 2 ;;
    esac
done
if [ -z "$OUT" ]; then
    echo "gpu_check.sh: --out DIR is required" >&2
    exit 2
fi
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
[ -x .venv/bin/python ] && PY=.venv/bin/python
mkdir -p "$OUT/steps"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-4}"

if [ "$DRY" = 1 ]; then
    DEVICE=cpu; LENGTHS="128 256"; REPEATS=1; PRESET=smoke; METHODS="tapa_chunked"; DTYPE=float32
    export TRITON_INTERPRET=1
    TESTS="tests/test_phase_scale.py -k triton"
else
    DEVICE=cuda; LENGTHS="2048 4096 8192 16384 32768"; REPEATS=5; PRESET=gpu-dry; METHODS="tapa_triton"
    DTYPE=bfloat16
    TESTS="tests/test_attention_triton.py tests/test_fsdp.py tests/test_phase_scale.py tests/test_model.py"
fi

step() {  # step NAME LIMIT_SECONDS COMMAND...
    local name="$1" limit="$2"
    shift 2
    local start end rc
    start=$(date +%s%N)
    timeout "$limit" "$@" > "$OUT/steps/$name.log" 2>&1
    rc=$?
    end=$(date +%s%N)
    echo "$name $rc $start $end" >> "$OUT/steps/index.txt"
    echo "gpu_check: $name: exit $rc"
}

rm -f "$OUT/steps/index.txt"
if [ "$DRY" = 0 ]; then
    step install 240 "$PY" -m pip install --quiet -e ".[test,triton]"
    step device 60 "$PY" -c "import torch; assert torch.cuda.is_available(), 'no CUDA'; print(torch.cuda.get_device_name(0))"
fi
# shellcheck disable=SC2086
step tests 180 "$PY" -m pytest -q -x -p no:cacheprovider $TESTS
# shellcheck disable=SC2086
step benchmark 180 "$PY" benchmarks/attention.py --device "$DEVICE" --dtype "$DTYPE" --methods $METHODS \
    --lengths $LENGTHS --repeats "$REPEATS" --max-reference-len 0 --json "$OUT/attention.json"
step preset 240 "$PY" -m tapa.cli reproduce --preset "$PRESET" --out "$OUT/reproduce-$PRESET" --quiet

"$PY" - "$OUT" "$DRY" <<'EOF'
import json, pathlib, platform, sys
out, dry = pathlib.Path(sys.argv[1]), sys.argv[2] == "1"
steps = {}
for line in (out / "steps" / "index.txt").read_text().splitlines():
    name, rc, start, end = line.split()
    log = (out / "steps" / f"{name}.log").read_text(errors="replace")
    steps[name] = {"exit": int(rc), "seconds": (int(end) - int(start)) / 1e9, "tail": log[-3000:]}
bench = out / "attention.json"
result = {"dry_run": dry, "machine": platform.node(), "steps": steps,
          "attention": json.loads(bench.read_text()) if bench.is_file() else None,
          "ok": all(s["exit"] == 0 for s in steps.values())}
(out / "gpu_check.json").write_text(json.dumps(result, indent=1) + "\n")
print(f"gpu_check: {'all steps passed' if result['ok'] else 'some steps failed'}; {out / 'gpu_check.json'}")
sys.exit(0 if result["ok"] else 1)
EOF
