"""End to end: the text pipeline with ``LLM_BACKEND=mlx`` (mlx[cpu] + mlx-lm on this Linux CPU), through the real
dataflow with ``dora run``; the MLX folder is the test LLM converted offline by ``dora-voice-models mlx``."""

from __future__ import annotations

from pathlib import Path

import pytest
import soundfile as sf

from dora_voice.models import TEST_LLM
from dora_voice_tools.launcher import run_dataflow
from dora_voice_tools.resources import TEXT_DATAFLOW

pytestmark = pytest.mark.e2e


def test_text_pipeline_answers_with_the_mlx_backend(tmp_path: Path) -> None:
    pytest.importorskip("mlx_lm", reason="mlx-lm is not installed (setup.sh --test installs it)")
    from dora_voice.mlx_models import ensure_mlx_model

    ensure_mlx_model(TEST_LLM)  # setup.sh --test built it; the node itself never builds (it would say how)
    out_wav = tmp_path / "answer.wav"
    env = {"LLM_BACKEND": "mlx", "LLM_MODEL": TEST_LLM, "LLM_MAX_TOKENS": "24", "LLM_TEMPERATURE": "0",
           "TEXT_INPUT_QUERIES": "What is the capital of France?", "AUDIO_OUTPUT": str(out_wav), "LOG_LEVEL": "INFO"}
    result = run_dataflow(TEXT_DATAFLOW, tmp_path, env, timeout_s=240)
    assert result.returncode == 0, result.log[-4000:]
    assert "with mlx-lm" in result.log, result.log[-4000:]  # the MLX backend answered, not llama.cpp
    assert len(result.turns) == 1, result.log[-4000:]
    turn = result.turns[0]
    assert turn["complete"] and "Paris" in turn["reply"], turn["reply"]
    assert turn["llm_ttft_ms"] > 0 and turn["llm_start_to_first_audio_ms"] > turn["llm_ttft_ms"]
    assert turn["segments_lost"] == 0 and turn["segments_played"] == turn["tts_segments"] >= 1
    audio, rate = sf.read(out_wav, dtype="float32")
    assert len(audio) / rate > 0.5
