"""Load a causal LM from a local directory or GGUF file; save and reload quantized ones.

Only local paths are accepted: nothing is ever fetched from a model hub (every
``from_pretrained`` call runs with ``local_files_only=True``).

A quantized model directory holds ``config.json`` (the architecture), ``model.safetensors``
(integer codes, scales, zero points and the float tensors left), ``torchslim_quant.json``
(which module is quantized how) and the tokenizer files.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from torchslim import _io
from torchslim._record import Quantization, record_of, update_
from torchslim.errors import CheckpointError, ConfigError, MissingDependencyError
from torchslim.llm.algorithms import replace_linear
from torchslim.llm.config import LLMQuantConfig
from torchslim.llm.qlinear import QuantEmbedding, W8A8Linear, WeightOnlyLinear

__all__ = ["load_causal_lm", "save_quantized", "QUANT_MANIFEST"]

QUANT_MANIFEST = "torchslim_quant.json"
_FORMAT = 1


def _transformers() -> Any:
    try:
        import transformers
    except ImportError as e:
        raise MissingDependencyError(
            "loading a causal LM needs: pip install 'torchslim[llm]'") from e
    return transformers


def _resolve(path: str | os.PathLike[str]) -> tuple[Path, str | None]:
    """``(directory, gguf file name or None)`` for a local directory or ``.gguf`` file."""
    p = Path(path).expanduser()
    if not p.exists():
        text = str(path)
        if not text.startswith((".", "/", "~")) and text.count("/") == 1:
            raise ConfigError(f"{text!r} is not a local path; torchslim loads only local model "
                              "directories or .gguf files and never downloads from a model "
                              "hub: download it yourself and pass its directory")
        raise CheckpointError(f"model path {text!r} does not exist; pass a local model "
                              "directory or a .gguf file")
    if p.is_file():
        if p.suffix != ".gguf":
            raise CheckpointError(f"{p} is a file but not a .gguf; pass a .gguf file or a "
                                  "model directory (config.json + weights)")
        _check_gguf(p)
        return p.parent, p.name
    if (p / "config.json").is_file():
        return p, None
    ggufs = sorted(p.glob("*.gguf"))
    if len(ggufs) == 1:
        return p, ggufs[0].name
    found = ", ".join(g.name for g in ggufs) or "no config.json and no .gguf"
    raise CheckpointError(f"{p} is not a model directory ({found}); pass a directory with "
                          "config.json and weights, or one .gguf file")


def _check_gguf(path: Path) -> None:
    """A ``.gguf`` that does not start with the format's magic bytes is refused before
    transformers (and its tokenizer converter) reads it."""
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
    except OSError as e:
        raise CheckpointError(f"cannot read {path}: {e.strerror}; check the file") from None
    if magic != b"GGUF":
        raise CheckpointError(f"{path} is not a GGUF file (it does not start with the bytes "
                              "'GGUF'); pass a real .gguf file or a model directory")


def load_causal_lm(path: str | os.PathLike[str], *, with_tokenizer: bool = True
                   ) -> tuple[nn.Module, Any]:
    """``(model in eval mode, float32, tokenizer or None)`` from a local directory (Hugging
    Face layout or a ``save_quantized`` output) or a ``.gguf`` file (dequantized to fp32)."""
    tf = _transformers()
    directory, gguf = _resolve(path)
    kwargs: dict[str, Any] = {"local_files_only": True}
    if gguf is not None:
        kwargs["gguf_file"] = gguf
    with _quiet_transformers(tf):
        try:   # a damaged file fails in the tokenizer as often as in the model
            tokenizer = (tf.AutoTokenizer.from_pretrained(directory, **kwargs)
                         if with_tokenizer else None)
            if gguf is None and (directory / QUANT_MANIFEST).is_file():
                return _load_quantized(directory, tf), tokenizer
            model = tf.AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32,
                                                            **kwargs)
        except CheckpointError:
            raise
        except Exception as e:  # transformers parsing a user's files raises many kinds
            first = (str(e).splitlines() or [type(e).__name__])[0]
            raise CheckpointError(f"cannot load a causal LM from {path}: {first}; pass a "
                                  "local model directory (config.json, weights, tokenizer) "
                                  "or an intact .gguf file") from e
    return model.eval(), tokenizer


@contextlib.contextmanager
def _quiet_transformers(tf: Any) -> Iterator[None]:
    """transformers' own progress bars only where torchslim would show one."""
    from torchslim._progress import enabled

    logging_utils = tf.utils.logging
    was = logging_utils.is_progress_bar_enabled()
    if not enabled():
        logging_utils.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            logging_utils.enable_progress_bar()


def _manifest(model: nn.Module) -> dict[str, Any]:
    modules: dict[str, Any] = {}
    for name, m in model.named_modules():
        if isinstance(m, WeightOnlyLinear):
            modules[name] = {"kind": "weight_only", "bits": m.bits, "group_size": m.group_size,
                             "bias": m.bias is not None, "sqnr_db": m.sqnr_db}
        elif isinstance(m, W8A8Linear):
            modules[name] = {"kind": "w8a8", "bias": m.bias is not None, "sqnr_db": m.sqnr_db}
        elif isinstance(m, QuantEmbedding):
            source = next(n for n, s in model.named_modules() if s is m.source)
            modules[name] = {"kind": "tied_embedding", "source": source,
                             "padding_idx": m.padding_idx}
    info = record_of(model).quantization
    cfg = info.config if info is not None and isinstance(info.config, LLMQuantConfig) else None
    return {"format": _FORMAT, "config": dataclasses.asdict(cfg) if cfg else None,
            "modules": modules}


def save_quantized(model: nn.Module, out: str | os.PathLike[str], *, tokenizer: Any = None
                   ) -> Path:
    """Write ``model`` (quantized by ``quantize_llm``, or float) to the directory ``out``."""
    from safetensors.torch import save_file

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    manifest = _manifest(model)
    tensors, seen = {}, {}
    for key, t in model.state_dict().items():
        ptr = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape))
        if ptr in seen:  # a tied weight is written once; reloading re-ties it
            continue
        seen[ptr] = key
        tensors[key] = t.detach().contiguous()
    _io.write_with(out / "model.safetensors", lambda tmp: save_file(tensors, str(tmp)))
    _io.write_text(out / "config.json", model.config.to_json_string())
    _io.write_json(out / QUANT_MANIFEST, manifest)
    if tokenizer is not None:
        tokenizer.save_pretrained(out)
    return out


def _load_quantized(directory: Path, tf: Any) -> nn.Module:
    from safetensors.torch import load_file

    try:
        manifest = json.loads((directory / QUANT_MANIFEST).read_text())
        config = tf.AutoConfig.from_pretrained(directory, local_files_only=True)
        state = load_file(str(directory / "model.safetensors"))
    except (OSError, ValueError) as e:
        raise CheckpointError(f"cannot read the quantized model in {directory}: {e}") from e
    if manifest.get("format") != _FORMAT:
        raise CheckpointError(f"{directory / QUANT_MANIFEST} has format "
                              f"{manifest.get('format')!r}; this torchslim reads {_FORMAT}")
    if hasattr(config, "quantization_config"):  # the GGUF source's, not ours
        del config.quantization_config
    model = tf.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    modules = manifest["modules"]
    for name, spec in modules.items():
        old = model.get_submodule(name)
        if spec["kind"] == "weight_only":
            new: nn.Module = WeightOnlyLinear(old.in_features, old.out_features,
                                              bits=spec["bits"], group_size=spec["group_size"],
                                              bias=spec["bias"])
        elif spec["kind"] == "w8a8":
            new = W8A8Linear(old.in_features, old.out_features, bias=spec["bias"])
        else:
            continue
        new.sqnr_db = spec.get("sqnr_db")
        replace_linear(model, name, new)
    for name, spec in modules.items():
        if spec["kind"] == "tied_embedding":
            replace_linear(model, name, QuantEmbedding(model.get_submodule(spec["source"]),
                                                       spec["padding_idx"]))
    result = model.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not _tied_key(model, k)]
    if missing or result.unexpected_keys:
        raise CheckpointError(f"{directory}: weights do not fit the architecture (missing "
                              f"{missing[:3]}, unexpected {result.unexpected_keys[:3]})")
    if manifest.get("config"):
        cfg = LLMQuantConfig(**{k: tuple(v) if isinstance(v, list) else v
                                for k, v in manifest["config"].items()})
        quantized = tuple(n for n, s in modules.items() if s["kind"] in ("weight_only", "w8a8"))
        update_(model, quantization=Quantization(config=cfg, quantized=quantized))
    return model.eval()


def _tied_key(model: nn.Module, key: str) -> bool:
    """A float weight left out of the file because it is tied to one that was written."""
    if not getattr(model.config, "tie_word_embeddings", False):
        return False
    head, embed = model.get_output_embeddings(), model.get_input_embeddings()
    return isinstance(head, nn.Linear) and isinstance(embed, nn.Embedding) and \
        key.endswith(".weight") and model.get_submodule(key.rsplit(".", 1)[0]) in (head, embed)

