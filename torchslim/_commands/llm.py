"""`torchslim llm ...` commands: quantize a local causal LM, evaluate one."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Optional, TypeVar

import typer

from torchslim._commands._app import app, command, out_console
from torchslim._commands._options import with_options
from torchslim.errors import ConfigError
from torchslim.llm.config import LLMQuantConfig
from torchslim.pipeline.options import OptionTable, option

F = TypeVar("F", bound=Callable[..., Any])

llm_app = typer.Typer(no_args_is_help=True, help="Quantize causal language models (local "
                      "directories or .gguf files) and measure perplexity and decode speed.")
app.add_typer(llm_app, name="llm")


def llm_command(name: str | None = None, *, writes: str | None = None) -> Callable[[F], F]:
    return command(name, on=llm_app, group="llm", writes=writes)


ModelPath = Annotated[str, typer.Argument(help="Local model directory or .gguf file (no hub names).")]
Threads = Annotated[int, typer.Option(min=1, help="CPU threads for torch.")]


def _read_texts(paths: list[Path]) -> list[str]:
    texts = []
    for p in paths:
        if not p.is_file():
            raise ConfigError(f"text file {str(p)!r} does not exist")
        texts.append(p.read_text(encoding="utf-8", errors="replace"))
    return texts


def _default_calibration() -> list[str]:
    from torchslim.llm.data import load_austen

    books = ("prideprejudice", "persuasion", "sensesensibility")
    return list(load_austen(books=books).values())


def _llm_config(table: OptionTable, values: dict[str, Any]) -> LLMQuantConfig:
    if values["method"] == "smoothquant":  # W8A8: the grid is fixed
        values = {**values, "bits": 8, "group_size": 0, "asymmetric": False}
    return LLMQuantConfig(**table.kwargs(LLMQuantConfig, values))


# `torchslim llm quantize`: every option is a field of LLMQuantConfig
LLM_QUANTIZE = OptionTable("llm quantize", (
    option("method", LLMQuantConfig, default="gptq",
           help="rtn, gptq, awq or smoothquant (W8A8)."),
    option("bits", LLMQuantConfig, help="Weight bits: 3, 4 or 8."),
    option("group_size", LLMQuantConfig, type=int, default=128, parse=lambda g: g or None,
           help="Input elements per scale; 0 = per output channel."),
    option("asymmetric", LLMQuantConfig, field="symmetric", type=bool, default=False,
           parse=lambda asym: not asym, flag="--asymmetric", help="Grid with a zero point."),
    option("act_order", LLMQuantConfig, flag="--act-order",
           help="GPTQ: columns by descending Hessian diagonal."),
    option("n_samples", LLMQuantConfig, default=32, help="Calibration windows."),
    option("seq_len", LLMQuantConfig, help="Tokens per calibration window."),
    option("lm_head", LLMQuantConfig, help="int8 output projection (and tied embedding)."),
), build=_llm_config)


@llm_command("quantize", writes="out")
@with_options(LLM_QUANTIZE)
def quantize_cmd(model: ModelPath,
                 out: Annotated[Path, typer.Option(help="Directory for the quantized model.")],
                 *, options: dict[str, Any],
                 calib_text: Annotated[Optional[list[Path]], typer.Option(help="Calibration text file (repeatable); default: three Austen novels.")] = None,
                 threads: Threads = 2) -> None:
    """Quantize MODEL's Linear layers and save the result (safetensors) to OUT."""
    import torch

    from torchslim.llm import quantize_llm_
    from torchslim.llm.evaluate import model_nbytes
    from torchslim.llm.model import load_causal_lm, save_quantized

    torch.set_num_threads(threads)
    config = LLM_QUANTIZE.plan("cli", **options)
    texts = None
    if config.needs_calibration:
        texts = _read_texts(calib_text) if calib_text else _default_calibration()
    net, tokenizer = load_causal_lm(model)
    fp32 = model_nbytes(net)
    t0 = time.perf_counter()
    # in place: the float model is not needed afterwards, and freeing each layer's float
    # weights as it is quantized keeps peak memory near the float model's size
    quantized = quantize_llm_(net, config, calibration=texts, tokenizer=tokenizer)
    seconds = time.perf_counter() - t0
    save_quantized(quantized, out, tokenizer=tokenizer)
    qbytes = model_nbytes(quantized)
    out_console.print(f"{config.label}: {seconds:.1f} s, {qbytes:,} bytes "
                      f"({qbytes / fp32:.1%} of fp32 {fp32:,})\nsaved: {out}")


@llm_command("eval")
def eval_cmd(model: ModelPath,
             text: Annotated[Optional[Path], typer.Option(help="Text file to score; default: a slice of Austen's Emma.")] = None,
             start: Annotated[Optional[int], typer.Option(help="First token of the scored slice (default: 0 for --text, 100000 for Emma).")] = None,
             tokens: Annotated[Optional[int], typer.Option(help="Tokens in the scored slice (default: all of --text, 4096 of Emma).")] = None,
             window: int = 512, stride: int = 256,
             decode: Annotated[bool, typer.Option("--decode", help="Also measure greedy decode tokens/s at batch 1 and 8.")] = False,
             threads: Threads = 2) -> None:
    """Perplexity (sliding window) of MODEL on a text, its size and per-layer weight SQNR."""
    from torchslim.llm import weight_sqnr
    from torchslim.llm.data import load_austen, token_slice
    from torchslim.llm.evaluate import decode_speed, model_nbytes, perplexity
    from torchslim.llm.model import load_causal_lm

    body = _read_texts([text])[0] if text else load_austen(books=("emma",))["emma"]
    net, tokenizer = load_causal_lm(model)
    if text is None:  # the held-out slice the benchmark scores
        start = 100_000 if start is None else start
        tokens = 4096 if tokens is None else tokens
    ids = token_slice(tokenizer, body, start=start or 0, length=tokens)
    result = perplexity(net, ids, window=window, stride=stride, threads=threads)
    out_console.print(f"perplexity {result.ppl:.3f} over {result.tokens} tokens "
                      f"(window {window}, stride {stride}); {model_nbytes(net):,} bytes")
    sqnr = weight_sqnr(net)
    if sqnr:
        values = sorted(sqnr.values())
        out_console.print(f"weight SQNR over {len(values)} layers: min {values[0]:.1f} dB, "
                          f"median {values[len(values) // 2]:.1f} dB")
    if decode:
        speed = decode_speed({"model": net}, ids[:32], threads=threads, rounds=3)["model"]
        out_console.print(f"decode tokens/s: batch 1 {speed[1]:.1f}, batch 8 {speed[8]:.1f}")
