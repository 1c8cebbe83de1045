#!/usr/bin/env bash
# Install PulseAudio (for the virtual audio device the device tests use) when running as root on Debian/Ubuntu.
# The device tests start their own server and null sink; they skip with a reason when this is not possible.
set -euo pipefail
if command -v pactl >/dev/null 2>&1 && command -v pulseaudio >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "[tests] not root or no apt-get: skipping the PulseAudio install (device tests will skip)"
  exit 0
fi
echo "[tests] installing pulseaudio for the virtual audio device tests"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null
apt-get install -y -qq pulseaudio libportaudio2 >/dev/null
