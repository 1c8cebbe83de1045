"""The model registry: joining, sha256 checks, markers, resolvers. Small fake packages only; no real models."""

from __future__ import annotations

import hashlib
import os
import re
import struct
from pathlib import Path

import pytest

from dora_voice import models
from dora_voice.models import Artifact, ModelError, ModelSpec, Part


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    """Never touch the real cache, whatever a test forgets to pass."""
    monkeypatch.setenv(models.ENV_MODELS_DIR, str(tmp_path / "default-cache"))


@pytest.fixture
def cache(tmp_path) -> Path:
    return tmp_path / "cache"


@pytest.fixture
def site(tmp_path, monkeypatch) -> Path:
    """A folder on ``sys.path`` to install fake packages into."""
    root = tmp_path / "site"
    root.mkdir()
    monkeypatch.syspath_prepend(str(root))
    return root


def install_fake(site: Path, module: str, files: dict[str, bytes], version: str = "1.0") -> str:
    """Create an importable package with data files and dist-info; returns its pinned requirement."""
    pkg = site / module
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    for rel, data in files.items():
        (pkg / rel).parent.mkdir(parents=True, exist_ok=True)
        (pkg / rel).write_bytes(data)
    dist = module.replace("_", "-")
    info = site / f"{module}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    return f"{dist}=={version}"


GGUF_HEADER = b"GGUF" + struct.pack("<IQQ", 3, 0, 0)  # version 3, no tensors, no metadata: a complete GGUF
CHUNKS = [GGUF_HEADER + b"a" * 980, b"b" * 777, b"c" * 5]
JOINED = b"".join(CHUNKS)
JOINED_SHA = hashlib.sha256(JOINED).hexdigest()


def split_spec(site: Path, sha256: str = JOINED_SHA, install: bool = True) -> ModelSpec:
    """A fake LLM joined from three part packages, like ``qwen2.5-0.5b``."""
    requirements = []
    for i, chunk in enumerate(CHUNKS, start=1):
        if install:
            requirements.append(install_fake(site, f"fakepart{i}", {f"data/part{i:02d}.bin": chunk}))
        else:
            requirements.append(f"fakepart{i}==1.0")
    parts = tuple(Part(f"fakepart{i}", f"data/part{i:02d}.bin") for i in range(1, 4))
    return ModelSpec(name="fake-llm", kind="llm", description="fake", packages=tuple(requirements),
                     artifacts=(Artifact("fake.gguf", parts, sha256, len(JOINED)),), in_place=False, is_dir=False,
                     licence="test")


def inplace_spec(site: Path) -> ModelSpec:
    """A fake Piper voice used where pip put it, like ``piper-joe``."""
    onnx, config = b"onnx" * 100, b"{}"
    req = install_fake(site, "fakevoice", {"data/v.onnx": onnx, "data/v.onnx.json": config})
    return ModelSpec(
        name="fake-voice", kind="tts", description="fake", packages=(req,),
        artifacts=(Artifact("v.onnx", (Part("fakevoice", "data/v.onnx"),), hashlib.sha256(onnx).hexdigest(), 400),
                   Artifact("v.onnx.json", (Part("fakevoice", "data/v.onnx.json"),),
                            hashlib.sha256(config).hexdigest(), 2)),
        in_place=True, is_dir=False, licence="test")


@pytest.fixture
def count_hashes(monkeypatch) -> list[Path]:
    """Record every file ``sha256_file`` hashes."""
    calls: list[Path] = []
    real = models.sha256_file

    def counting(path, progress=False):
        calls.append(Path(path))
        return real(path, progress)

    monkeypatch.setattr(models, "sha256_file", counting)
    return calls


def test_join_parts_concatenates_in_order(tmp_path):
    parts = []
    for i, chunk in enumerate(CHUNKS):
        parts.append(tmp_path / f"p{i}")
        parts[-1].write_bytes(chunk)
    dest = tmp_path / "out" / "joined.bin"
    models.join_parts(parts, dest)
    assert dest.read_bytes() == JOINED
    assert models.sha256_file(dest) == JOINED_SHA
    assert [p.name for p in dest.parent.iterdir()] == ["joined.bin"]  # no temp file left


def test_join_parts_leaves_no_partial_file_on_error(tmp_path):
    good = tmp_path / "good"
    good.write_bytes(b"x" * 10)
    dest = tmp_path / "out" / "joined.bin"
    with pytest.raises(OSError):
        models.join_parts([good, tmp_path / "absent"], dest)
    assert list(dest.parent.iterdir()) == []


def test_prepare_joins_verifies_and_marks(site, cache):
    spec = split_spec(site)
    path = models.prepare_model(spec, cache)
    assert path == cache / "fake-llm" / "fake.gguf"
    assert path.read_bytes() == JOINED
    assert models.model_status(spec, cache) == "ready"
    assert JOINED_SHA in (cache / "fake-llm.sha256").read_text()


def test_wrong_sha256_raises_with_digests_and_fix(site, cache):
    spec = split_spec(site, sha256="0" * 64)
    with pytest.raises(ModelError) as err:
        models.prepare_model(spec, cache)
    message = str(err.value)
    assert str(cache / "fake-llm" / "fake.gguf") in message
    assert "0" * 64 in message and JOINED_SHA in message
    assert "dora-voice-models install --force fake-llm" in message
    assert not (cache / "fake-llm" / "fake.gguf").exists()  # a bad join is not left behind


def test_corrupted_cached_file_is_caught_at_start_up(site, cache, monkeypatch):
    spec = split_spec(site)
    path = models.prepare_model(spec, cache)
    path.write_bytes(JOINED[:-1] + b"X")  # same size, new mtime: the marker no longer vouches for it
    monkeypatch.setitem(models.REGISTRY, spec.name, spec)
    with pytest.raises(ModelError, match="sha256 mismatch") as err:
        models.resolve_llm(None, spec.name, cache_dir=cache)
    assert f"dora-voice-models prepare --force {spec.name}" in str(err.value)
    assert models.prepare_model(spec, cache).read_bytes() == JOINED  # prepare re-joins it


def test_truncated_cached_file_is_a_size_error(site, cache):
    spec = split_spec(site)
    path = models.prepare_model(spec, cache)
    path.write_bytes(JOINED[:100])
    with pytest.raises(ModelError, match=rf"size mismatch[\s\S]*{len(JOINED)} bytes[\s\S]*100 bytes"):
        models.ensure_model(spec, cache)


def test_marker_avoids_rehashing(site, cache, count_hashes):
    spec = split_spec(site)
    models.prepare_model(spec, cache)
    assert len(count_hashes) == 1  # hashed once, right after joining
    count_hashes.clear()
    for _ in range(3):
        models.ensure_model(spec, cache)
        models.prepare_model(spec, cache)  # nothing to do: no join, no hash
    assert count_hashes == []
    models.verify_model(spec, cache)  # verify always re-hashes
    assert len(count_hashes) == 1


def test_in_place_model_is_hashed_once_then_trusted(site, cache, count_hashes):
    spec = inplace_spec(site)
    assert models.model_status(spec, cache) == "unverified"
    first = models.ensure_model(spec, cache)
    assert first == site / "fakevoice" / "data" / "v.onnx"
    assert len(count_hashes) == 2
    assert models.model_status(spec, cache) == "ready"
    models.ensure_model(spec, cache)
    assert len(count_hashes) == 2
    os.utime(first, ns=(1, 1))  # touched: re-hash, still good
    models.ensure_model(spec, cache)
    assert len(count_hashes) == 3


def test_cached_copy_without_marker_is_hashed_not_rejoined(site, cache, count_hashes, monkeypatch):
    spec = split_spec(site)
    models.prepare_model(spec, cache)
    (cache / "fake-llm.sha256").unlink()
    monkeypatch.setattr(models, "join_parts", lambda *a, **k: pytest.fail("should not join again"))
    models.prepare_model(spec, cache)
    assert len(count_hashes) == 2


def test_unprepared_model_names_the_fix(site, cache, monkeypatch):
    spec = split_spec(site)
    monkeypatch.setitem(models.REGISTRY, spec.name, spec)
    with pytest.raises(ModelError, match=re.escape("run: dora-voice-models prepare fake-llm")):
        models.resolve_llm(None, spec.name, cache_dir=cache)


def test_uninstalled_model_names_install_and_packages(site, cache, monkeypatch):
    spec = split_spec(site, install=False)
    monkeypatch.setitem(models.REGISTRY, spec.name, spec)
    assert models.model_status(spec, cache) == "missing"
    with pytest.raises(ModelError) as err:
        models.resolve_llm(None, spec.name, cache_dir=cache)
    assert "run: dora-voice-models install fake-llm" in str(err.value)
    assert "fakepart1==1.0" in str(err.value)
    with pytest.raises(ModelError, match="install fake-llm"):
        models.prepare_model(spec, cache)


def test_wrong_package_version_counts_as_missing(site):
    install_fake(site, "fakeold", {"x": b""}, version="0.9")
    spec = ModelSpec("old", "llm", "", ("fakeold==1.0",), (), True, False, "")
    assert models.missing_packages(spec) == ["fakeold==1.0"]


def test_non_gguf_file_is_rejected(tmp_path):
    bad = tmp_path / "model.gguf"
    bad.write_bytes(b"<html>not a model</html>")
    with pytest.raises(ModelError, match="is not a GGUF file"):
        models.resolve_llm(str(bad), "unused")
    bad.write_bytes(b"")
    with pytest.raises(ModelError, match=r"corrupt or truncated\?"):
        models.resolve_llm(str(bad), "unused")


def test_registry_model_must_be_gguf_too(site, cache, monkeypatch):
    data = b"GGML" + b"x" * 10
    req = install_fake(site, "fakeggml", {"m.gguf": data})
    spec = ModelSpec("ggml", "llm", "", (req,), (Artifact("m.gguf", (Part("fakeggml", "m.gguf"),),
                                                          hashlib.sha256(data).hexdigest(), len(data)),),
                     True, False, "")
    monkeypatch.setitem(models.REGISTRY, "ggml", spec)
    with pytest.raises(ModelError, match="not a GGUF file"):
        models.resolve_llm(None, "ggml", cache_dir=cache)


def test_valid_gguf_override_is_returned(tmp_path):
    good = tmp_path / "m.gguf"
    good.write_bytes(GGUF_HEADER)
    assert models.resolve_llm(f"  {good}  ", "unused") == good


def test_missing_overrides_raise(tmp_path):
    absent = tmp_path / "absent"
    with pytest.raises(ModelError, match="LLM_MODEL_PATH=.*no such file"):
        models.resolve_llm(str(absent), models.DEFAULT_LLM)
    with pytest.raises(ModelError, match="ASR_MODEL_PATH=.*model.bin"):
        models.resolve_asr(str(absent), models.DEFAULT_ASR)
    with pytest.raises(ModelError, match="ASR_MODEL_PATH"):
        models.resolve_asr("tiny.en", models.DEFAULT_ASR)  # a size name would download: refused
    with pytest.raises(ModelError, match="TTS_VOICE_PATH=.*no such file"):
        models.resolve_piper_voice(str(absent), None)
    voice = tmp_path / "v.onnx"
    voice.write_bytes(b"x")
    with pytest.raises(ModelError, match=r"v\.onnx\.json does not exist"):
        models.resolve_piper_voice(str(voice), None)
    with pytest.raises(ModelError, match="TTS_VOICE_CONFIG=.*no such file"):
        models.resolve_piper_voice(str(voice), str(absent))


def test_overrides_that_exist_are_used(tmp_path):
    asr = tmp_path / "whisper"
    asr.mkdir()
    (asr / "model.bin").write_bytes(b"x")
    assert models.resolve_asr(str(asr), "unused") == asr
    voice = tmp_path / "v.onnx"
    voice.write_bytes(b"x")
    Path(f"{voice}.json").write_text("{}")
    assert models.resolve_piper_voice(str(voice), "") == (voice, Path(f"{voice}.json"))


def test_piper_registry_voice_resolves_model_and_config(site, cache, monkeypatch):
    spec = inplace_spec(site)
    monkeypatch.setitem(models.REGISTRY, spec.name, spec)
    model, config = models.resolve_piper_voice(None, None, name=spec.name, cache_dir=cache)
    assert (model.name, config.name) == ("v.onnx", "v.onnx.json")


def test_unknown_or_wrong_kind_name_lists_choices():
    with pytest.raises(ModelError, match="unknown llm model 'whisper-base'.*qwen2.5-0.5b"):
        models.resolve_llm(None, "whisper-base")
    with pytest.raises(ModelError, match="unknown model 'nope'"):
        models.get_spec("nope")


def test_models_dir_from_env(monkeypatch, tmp_path):
    monkeypatch.setenv(models.ENV_MODELS_DIR, str(tmp_path / "m"))
    assert models.models_dir() == tmp_path / "m"
    assert models.models_dir({}) == Path.home() / ".cache" / "dora-voice" / "models"


def test_registry_is_consistent():
    for name in (*models.DEFAULT_MODELS, *models.TEST_MODELS, models.TEST_LLM):
        assert name in models.REGISTRY
    assert models.REGISTRY[models.DEFAULT_LLM].kind == "llm"
    assert models.REGISTRY[models.DEFAULT_ASR].kind == "asr"
    for spec in models.REGISTRY.values():
        assert spec.kind in ("llm", "asr", "tts", "turn")
        assert spec.packages and all(re.fullmatch(r"[a-z0-9-]+==[\d.]+", r) for r in spec.packages)
        for artifact in spec.artifacts:
            assert re.fullmatch(r"[0-9a-f]{64}", artifact.sha256) and artifact.size > 0
            assert not spec.in_place or len(artifact.parts) == 1
    assert models.REGISTRY["qwen2.5-0.5b"].artifacts[0].sha256.startswith("1d9614638d18024d")
    assert models.REGISTRY["qwen2.5-1.5b"].artifacts[0].sha256.startswith("cc324af070c2ecbf")


def test_cli_help_and_usage_errors(capsys):
    with pytest.raises(SystemExit) as exit_:
        models.main(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert "qwen2.5-0.5b" in out and models.ENV_MODELS_DIR in out
    assert models.main(["prepare"]) == 1  # no names
    assert "--defaults" in capsys.readouterr().err
    assert models.main(["path", "nope"]) == 1
    assert "unknown model" in capsys.readouterr().err


def test_truncated_file_shows_as_damaged(site, cache):
    spec = split_spec(site)
    models.prepare_model(spec, cache).write_bytes(GGUF_HEADER)
    assert models.model_status(spec, cache) == "damaged"


def test_marker_keeps_entries_of_other_virtualenvs(tmp_path, site, cache):
    """Two venvs sharing one cache must not invalidate each other's in-place markers."""
    spec = inplace_spec(site)
    models.ensure_model(spec, cache)
    other = tmp_path / "other-venv-file"
    other.write_bytes(b"x")
    models._write_marker(spec, cache, [{"path": str(other), "sha256": "0" * 64, "size": 1, "mtime_ns": 0}])
    assert models.model_status(spec, cache) == "ready"
    assert str(other) in (cache / "fake-voice.sha256").read_text()


def test_smart_turn_is_located_through_its_distribution_without_importing_pipecat(tmp_path):
    """The installed pipecat-ai wheel is a data package: its files are found via importlib.metadata, checked, and
    the framework is never imported."""
    import sys

    onnx, features = models.resolve_smart_turn(None, cache_dir=tmp_path)
    assert onnx.name == "smart-turn-v3.2-cpu.onnx" and onnx.is_file()
    assert features.name == "_whisper_features.py" and features.parent == onnx.parent.parent
    assert "pipecat" not in sys.modules
    assert models.model_status(models.REGISTRY[models.DEFAULT_TURN], tmp_path) == "ready"


def test_smart_turn_override(tmp_path):
    with pytest.raises(ModelError, match="TURN_MODEL_PATH=.*no such file"):
        models.resolve_smart_turn(str(tmp_path / "absent.onnx"))
    mine = tmp_path / "mine.onnx"
    mine.write_bytes(b"x")
    (tmp_path / "_whisper_features.py").write_text("")
    assert models.resolve_smart_turn(str(mine)) == (mine, tmp_path / "_whisper_features.py")
