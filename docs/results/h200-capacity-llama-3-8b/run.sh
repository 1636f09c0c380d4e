#!/usr/bin/env bash
# The capacity study on an H200 host (vLLM 0.26.0 from the offline bundle, already staged), run
# detached so that it outlives the device calls that watch it:
#   bash docs/results/h200-capacity-llama-3-8b/run.sh start      # resume (or begin) the study in the background
#   bash docs/results/h200-capacity-llama-3-8b/run.sh wait 540   # watch for N seconds, then copy results to $OUT
#   bash docs/results/h200-capacity-llama-3-8b/run.sh stop       # SIGTERM (the trial in flight is retried on resume)
#   bash docs/results/h200-capacity-llama-3-8b/run.sh confirm    # the confirmation stage (foreground)
# The study database travels back through $OUT and is committed here; `start` copies the committed
# one into studies/ when the host has none, so a later session resumes it.
# Several GPUs: STORAGE=postgresql://... WORKERS=3 GPUS=0,1,2 (one worker per GPU; SQLite takes one
# writer, so parallel workers need PostgreSQL: docs/fleet.md). `start` copies the committed study into
# that database once; `snap` copies it back into the SQLite file committed here (optuna.copy_study).
set -u
HERE=docs/results/h200-capacity-llama-3-8b
NAME=h200-capacity-llama-3-8b
export PYTHONPATH=${PYTHONPATH:-/root/site} VLLM_USE_FLASHINFER_SAMPLER=0 HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 CUDA_DEVICE_ORDER=PCI_BUS_ID
ARGS=(hardware=h200 model=llama-3-8b-instruct model.load_format=dummy model.generate=config
      workload=chat-512-128 search=gpu "search.quantization=[none,fp8]" "search.kv_cache_dtype=[auto,fp8]"
      "search.dtype=[auto]" "search.max_model_len=[4096]" "search.speculative=[off]"
      "search.tensor_parallel_size=[1]" search.max_num_seqs.low=32 search.n_startup_trials=6
      # the space the study began with (search=gpu before the pow2 compile-cache grids): resumable
      search.max_num_seqs.grid= search.max_num_seqs.log=true search.max_num_batched_tokens.grid=
      search.max_num_batched_tokens.step=1024 search.max_num_batched_tokens.log=false
      load.mode=capacity load.capacity.start=32 load.warmup_requests=64
      slo.metric=e2e slo.p99_ms=2000 study.confirm.top_k=${TOP_K:-0}
      study.name=$NAME study.n_trials=${N_TRIALS:-14} "hardware.gpu_ids=[${GPUS:-0}]" study.workers=${WORKERS:-1}
      ${STORAGE:+study.storage=$STORAGE})

snap() {
  mkdir -p "$OUT"
  if [ -n "${STORAGE:-}" ]; then
    rm -f "$OUT/$NAME.db"
    python3 - "$NAME" "$OUT" "$STORAGE" <<'PY'
import sys, optuna
optuna.logging.set_verbosity(optuna.logging.WARNING)
optuna.copy_study(from_study_name=sys.argv[1], from_storage=sys.argv[3], to_storage=f"sqlite:///{sys.argv[2]}/{sys.argv[1]}.db")
PY
  else
    python3 - "$NAME" "$OUT" <<'PY'
import sqlite3, sys
src = sqlite3.connect(f"studies/{sys.argv[1]}.db")
dst = sqlite3.connect(f"{sys.argv[2]}/{sys.argv[1]}.db")
src.backup(dst); dst.close(); src.close()
PY
  fi
  tar czf "$OUT/runs.tgz" --exclude='*.safetensors' "runs/$NAME" /tmp/$NAME.log 2>/dev/null
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader > "$OUT/gpu.txt" 2>&1
  tail -5 /tmp/$NAME.log
}

case "${1:-}" in
  start)
    mkdir -p studies
    if [ -n "${STORAGE:-}" ]; then
      python3 - "$NAME" "$HERE/$NAME.db" "$STORAGE" <<'PY'
import sys, optuna
optuna.logging.set_verbosity(optuna.logging.WARNING)
name, db, url = sys.argv[1:]
if name not in [s.study_name for s in optuna.get_all_study_summaries(url)]:
    optuna.copy_study(from_study_name=name, from_storage=f"sqlite:///{db}", to_storage=url)
    print(f"copied {db} into the server database")
PY
    else
      [ -f studies/$NAME.db ] || { [ -f $HERE/$NAME.db ] && cp $HERE/$NAME.db studies/; }
    fi
    setsid nohup python3 -m optimizer.run "${ARGS[@]}" >> /tmp/$NAME.log 2>&1 < /dev/null &
    echo $! > /tmp/$NAME.pid
    echo "started pid $(cat /tmp/$NAME.pid)";;
  wait)
    end=$((SECONDS + ${2:-540}))
    while [ $SECONDS -lt $end ] && kill -0 "$(cat /tmp/$NAME.pid)" 2>/dev/null; do sleep 10; done
    kill -0 "$(cat /tmp/$NAME.pid)" 2>/dev/null && echo "still running" || echo "study process ended"
    snap;;
  stop)
    kill -TERM "$(cat /tmp/$NAME.pid)" 2>/dev/null
    for _ in $(seq 60); do kill -0 "$(cat /tmp/$NAME.pid)" 2>/dev/null || break; sleep 1; done
    snap;;
  confirm)  # TOP_K=3: baseline + top 3, 2 rounds each, on fresh servers, over the same workers' GPUs
    python3 -m optimizer.confirm "${ARGS[@]}" study.confirm.repeats=${REPEATS:-2} \
      >> /tmp/$NAME.log 2>&1 < /dev/null;;
  snap-only) snap;;
  *) echo "usage: run.sh start|wait SECONDS|stop|confirm"; exit 2;;
esac
