#!/usr/bin/env bash
# Quickstart: install everything (models included), then answer a real recording with the voice-chatbot dataflow,
# write what the listener would hear to runs/latest/answer.wav and print the per-turn timing table.
#   bash examples/voice-chatbot/run.sh [--input question.wav] [--output answer.wav] [--set KEY=VALUE ...]
# (any `dora-voice run` option works; `dora-voice run --help` lists them)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
bash "$root/examples/voice-chatbot/setup.sh"
# shellcheck disable=SC1091
. "$root/.venv/bin/activate"
exec dora-voice run "$@"
