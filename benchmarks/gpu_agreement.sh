#!/usr/bin/env bash
# Agreement with `vllm bench serve` on a GPU vLLM server: start the server, run benchmarks/fidelity.py
# closed loop (C=64, 512 in / 128 out, 512 requests) and open loop (Poisson 12 req/s, 1024 in / 256 out,
# 300 requests), both clients on identical requests (token ids), sampling and schedule, A B B A.
#
# Usage: benchmarks/gpu_agreement.sh MODEL_DIR OUT_DIR [vLLM server flags...]
#   e.g. benchmarks/gpu_agreement.sh /models/Meta-Llama-3-8B-Instruct benchmarks/results/h100 --load-format dummy
# Env: PYTHON (imports vllm and this project; default python3), PORT (default 8000), REPS (default 2),
#      TEMPERATURE (default 0: greedy, the study's default), START_TIMEOUT_S (default 900).
# Writes OUT_DIR/agreement-{closed,open,open-own-schedule}.json and OUT_DIR/server.log.
set -euo pipefail
[ $# -ge 2 ] || { sed -n 2,10p "$0"; exit 2; }
MODEL_DIR=$1; OUT_DIR=$2; shift 2
PYTHON=${PYTHON:-python3}; PORT=${PORT:-8000}; REPS=${REPS:-2}; TEMPERATURE=${TEMPERATURE:-0}
START_TIMEOUT_S=${START_TIMEOUT_S:-900}
HERE=$(cd "$(dirname "$0")" && pwd); REPO=$(dirname "$HERE")
mkdir -p "$OUT_DIR"
export HF_HUB_OFFLINE=1 VLLM_SERVER_DEV_MODE=1   # dev mode: the benchmark empties the prefix cache before each run
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
setsid "$PYTHON" -m vllm.entrypoints.openai.api_server --model "$MODEL_DIR" --served-model-name m \
    --host 127.0.0.1 --port "$PORT" "$@" >"$OUT_DIR/server.log" 2>&1 &
SERVER=$!
trap 'kill -TERM -- -$SERVER 2>/dev/null || true; sleep 5; kill -KILL -- -$SERVER 2>/dev/null || true' EXIT
deadline=$((SECONDS + START_TIMEOUT_S))
until curl -sf "http://127.0.0.1:$PORT/health" >/dev/null; do
    kill -0 $SERVER 2>/dev/null || { echo "the server exited; see $OUT_DIR/server.log" >&2; tail -30 "$OUT_DIR/server.log" >&2; exit 1; }
    [ $SECONDS -lt $deadline ] || { echo "the server was not ready within ${START_TIMEOUT_S} s" >&2; exit 1; }
    sleep 2
done
common=(--server "http://127.0.0.1:$PORT" --served-model m --tokenizer "$MODEL_DIR" --bench-python "$PYTHON"
        --reps "$REPS" --warmup 16 --temperature "$TEMPERATURE")
"$PYTHON" "$HERE/fidelity.py" "${common[@]}" --case closed:64:512:128:512 --out "$OUT_DIR/agreement-closed.json"
"$PYTHON" "$HERE/fidelity.py" "${common[@]}" --case open:12:1024:256:300 --out "$OUT_DIR/agreement-open.json"
# the same open loop with bench drawing its own Poisson arrivals (its default): the schedule's share of a tail difference
"$PYTHON" "$HERE/fidelity.py" "${common[@]}" --case open:12:1024:256:300 --schedule own \
    --out "$OUT_DIR/agreement-open-own-schedule.json"
