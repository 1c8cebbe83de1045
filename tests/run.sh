#!/usr/bin/env bash
# The test command (README.md; .ci/run calls exactly this): installs what the tests need, then runs them.
#   bash tests/run.sh                 # everything: unit tests and end-to-end dataflow runs with small models
#   bash tests/run.sh -m "not e2e"    # extra arguments go to pytest
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bash examples/voice-chatbot/setup.sh --test
# shellcheck disable=SC1091
. .venv/bin/activate
if [ -f tests/audio_device_setup.sh ]; then
  bash tests/audio_device_setup.sh || echo "[tests] no virtual audio device: device tests will be skipped"
fi
dora destroy >/dev/null 2>&1 || true   # a leftover daemon would capture dynamic nodes
export RUST_BACKTRACE=0
set +e
python -m pytest -ra "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
  echo "[tests] pytest collected no tests: failing" >&2
  exit 1
fi
exit "$rc"
