#!/usr/bin/env bash
# Issue 27 (1) on one GPU, detached so that it outlives the device call that starts it:
#   bash benchmarks/gpu_agreement_round3.sh start      # after benchmarks/gpu_stage.sh installed the bundle
#   bash benchmarks/gpu_agreement_round3.sh wait SECS  # watch; copy the results to $OUT when done
# Trial 7 of the H200 capacity study (the confirmed winner) at 88 users and the baseline (vLLM's
# defaults, trial 0) at 64, each on its own fresh server: benchmarks/reference_agreement.py.
set -u
export PYTHONPATH=/root/site:$(pwd) VLLM_USE_FLASHINFER_SAMPLER=0 HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
export VLLM_NO_USAGE_STATS=1 DO_NOT_TRACK=1
DB=docs/results/h200-capacity-llama-3-8b/h200-capacity-llama-3-8b.db
R=/tmp/ra-out; LOG=/tmp/ra.log
case "${1:-}" in
  start)
    mkdir -p $R
    nvidia-smi --query-gpu=name,memory.total,memory.used,driver_version --format=csv,noheader > $R/gpu.txt
    ss -ltnp > $R/ports.txt 2>&1
    setsid nohup bash -c "
      python3 benchmarks/reference_agreement.py --db $DB --config 7:88 --out $R/agreement-t7.json
      python3 benchmarks/reference_agreement.py --db $DB --config 0:64 --seed 9000 \
         --order ours,bench,bench_ids,bench_ids,bench,ours --out $R/agreement-t0.json
      touch $R/done" > $LOG 2>&1 < /dev/null &
    echo started; cat $R/gpu.txt ;;
  wait)
    end=$(( $(date +%s) + ${2:-500} ))
    while [ ! -f $R/done ] && [ $(date +%s) -lt $end ]; do sleep 5; done
    cat $LOG | grep -v Warning | tail -40
    mkdir -p "$OUT"; cp $R/*.json $R/gpu.txt "$OUT"/ 2>/dev/null
    tar czf "$OUT/logs.tgz" -C /tmp reference-agreement/server-t7.log reference-agreement/server-t0.log ra.log 2>/dev/null
    ls $R ;;
esac
