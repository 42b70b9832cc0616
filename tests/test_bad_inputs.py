"""The bad-input catalogue: every way a hostile or careless user was seen to break a
command, each run as a real ``python -m torchslim`` process.

Every case must end with exit code 2 and exactly one ``error:`` line on stderr that names
the problem (the case's ``problem`` needles) and a fix (its ``fix`` needles), no
traceback, and nothing changed under the case's working directory: no output created,
no file rewritten, no temporary file left. Log records (``INFO ...``, ``WARNING ...``)
may precede the error line; nothing else may.

The cases share a small world made once (a ResNet-8 width-4 checkpoint on the digits
data, ONNX files, damaged sidecars, reports, recipes, user modules) and run two at a
time. A fresh ``python -m torchslim`` spends 3-6 s importing torch before it reads its
arguments (about 5 minutes for the catalogue), so each case runs in a process forked from
an interpreter that has done that import once and then does what ``python -m torchslim``
does: the case's working directory and environment, ``sys.path[0]`` = that directory,
``torchslim.__main__`` run as ``__main__``, the interpreter's own exit (traceback and exit
code 1 on an uncaught exception). A sample of cases (``FRESH``) also runs as real
``python -m torchslim`` processes and must end exactly as its forked run did.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

WORKERS = 2
TIMEOUT_S = 180


@dataclass(frozen=True)
class Case:
    id: str
    args: tuple[str, ...]
    problem: tuple[str, ...]      # the line names the problem: each of these
    fix: tuple[str, ...]          # and a fix: each of these
    env: dict[str, str] = field(default_factory=dict)


def case(id: str, args: str | list[str], problem: str | tuple[str, ...],
         fix: str | tuple[str, ...], **env: str) -> Case:
    argv = tuple(args.split()) if isinstance(args, str) else tuple(args)
    as_tuple = lambda x: (x,) if isinstance(x, str) else tuple(x)  # noqa: E731
    return Case(id, argv, as_tuple(problem), as_tuple(fix), dict(env))


RECIPE_BASE = """\
model: tiny.safetensors
data: digits
stages:
  - kind: quantize
    calib_batches: 1
budget: {max_drop: 0.5}
target: {threads: 1, repeats: 1, stage_repeats: 1, timing_rounds: 1, measure_memory: false}
"""

RECIPES = {
    "data_raises": "name: r\ndata: usermods.data_raises:loaders\n",
    "import_raises": "name: r\ndata: usermods.import_raises:loaders\n",
    "syntax_error": "name: r\ndata: usermods.syntax_error:loaders\n",
    "model_missing_module": "name: r\nmodel: nosuchpkg.models:build\n",
    "model_returns_int": "name: r\nmodel: usermods.models:not_a_model\n",
    "duplicate_key": "name: r\nname: r2\n",
    "data_args_unknown": "name: r\ndata_args: {colour: red}\n",
    "data_args_value": "name: r\ndata_args: {batch_size: -3}\n",
    "stage_abs_name": "name: r\nstages:\n  - kind: quantize\n    name: /tmp/torchslim-victim\n",
    "artifact_dotdot": "name: r\nstages:\n  - kind: quantize\n  - kind: export\n"
                       "    artifact: ../escaped.onnx\n",
    "recipe_name_path": "name: ../../etc\n",
    "invalid_yaml": "name: r\nstages: [\n",
    "unknown_kind": "name: r\nstages:\n  - kind: prun\n",
    "unknown_option": "name: r\nstages:\n  - kind: quantize\n    calib_batch: 2\n",
    "bad_budget": "name: r\nbudget: {max_drop: 2}\n",
    "bad_runtime": "name: r\ntarget: {runtime: tensorrt}\n",
    "missing_checkpoint": "name: r\nmodel: nothere/model.safetensors\n",
    "symlinked_stages": "name: r\noutput: symlinked\n",
    "holds_a_run": "name: r\noutput: finished\n",
    "locked": "name: r\noutput: locked\n",
}


def _recipe(overrides: str) -> str:
    """RECIPE_BASE with the top-level keys in ``overrides`` replacing its own."""
    own = {line.split(":")[0] for line in overrides.splitlines() if line and line[0] != " "}
    kept, skip = [], False
    for line in RECIPE_BASE.splitlines():
        if line and line[0] != " ":
            skip = line.split(":")[0] in own
        if not skip:
            kept.append(line)
    out = overrides + "\n".join(kept) + "\n"
    return out if "output:" in overrides else out + "output: outs/recipe\n"


CASES = [
    # ---------------------------------------------------------------- CLI usage
    case("threads-abc", "train --threads abc --out outs/t", "--threads", "--help"),
    case("train-threads-negative", "train --threads -1 --dataset digits --out outs/t",
         ("--threads", "greater than or equal to 1"), "torchslim train --help"),
    case("evaluate-threads-negative", "evaluate tiny.safetensors --dataset digits --threads -2 "
         "--out outs/e", ("--threads", "greater than or equal to 1"), "--help"),
    case("unknown-option", "quantize tiny.safetensors --colour red", "No such option: --colour",
         "torchslim quantize --help"),
    case("unknown-command", "compress tiny.safetensors", "No such command 'compress'",
         "torchslim --help"),
    case("missing-argument", "quantize", "Missing argument", "--help"),
    case("demo-threads-zero", "demo --quick --threads 0 --out outs/d", "--threads", "--help"),
    # ---------------------------------------------------------------- train
    case("train-lr-diverges", "train --lr 1e30 --model resnet8 --width 8 --dataset digits "
         "--epochs 1 --threads 1 --out outs/t", "loss became nan", "lower the learning rate"),
    case("train-unknown-model", "train --model resnet7 --dataset digits --out outs/t",
         "resnet7", "resnet8"),
    case("train-unknown-dataset", "train --dataset cifar --out outs/t", "cifar",
         "fashion-mnist"),
    case("train-epochs-zero", "train --epochs 0 --dataset digits --out outs/t", "epochs=0",
         ">= 1"),
    case("train-batch-size-zero", "train --batch-size 0 --dataset digits --out outs/t",
         "--batch-size", "--help"),
    case("train-other-settings", "train --model resnet8 --width 8 --dataset digits --epochs 2 "
         "--threads 1 --out trained", ("holds a training run with other settings",
                                       "epochs 1 -> 2"), ("--overwrite", "--resume")),
    case("train-resume-nothing", "train --dataset digits --resume --out outs/t",
         "holds no training run to resume", "drop --resume"),
    case("train-resume-and-overwrite", "train --dataset digits --resume --overwrite "
         "--out outs/t", "contradict", "pass one"),
    case("train-out-is-a-file", "train --dataset digits --out afile", "afile is a file",
         "pass a directory"),
    case("train-out-locked", "train --dataset digits --out locked",
         "in use by torchslim holder", "wait for that run to finish"),
    # ---------------------------------------------------------------- evaluate
    case("evaluate-out-is-a-file", "evaluate tiny.safetensors --dataset digits --out afile",
         "--out afile is a file", "pass a directory"),
    case("evaluate-missing-file", "evaluate nothere.safetensors --dataset digits --out outs/e",
         "not found", "torchslim train"),
    case("evaluate-unknown-suffix", "evaluate notes.txt --dataset digits --out outs/e",
         "no runtime for 'notes.txt'", ".onnx file"),
    case("evaluate-corrupt-onnx", "evaluate corrupt.onnx --dataset digits --out outs/e",
         "not a valid ONNX model", ("torchslim.export()", "`torchslim quantize`")),
    case("evaluate-onnx-input-shape", "evaluate big.onnx --dataset digits --out outs/e",
         ("expects shape", "(batch, 1, 28, 28)", "(1, 1, 8, 8)"), "export the model again"),
    case("evaluate-onnx-five-classes", "evaluate five.onnx --dataset digits --out outs/e",
         ("outputs 5 classes", "digits has 10"), "--dataset"),
    case("evaluate-sidecar-binary", "evaluate side/binary.safetensors --dataset digits "
         "--out outs/e", ("sidecar", "binary.json", "not valid JSON"), "delete it"),
    case("evaluate-sidecar-list", "evaluate side/list.safetensors --dataset digits --out outs/e",
         ("sidecar", "list.json", "JSON list"), "delete it"),
    case("evaluate-sidecar-model-none", "evaluate side/none.safetensors --dataset digits "
         "--out outs/e", ("sidecar", "none.json", "'name': None"), "--model"),
    case("evaluate-sidecar-width-wide", "evaluate side/wide.safetensors --dataset digits "
         "--out outs/e", ("sidecar", "wide.json", "width='wide'"),
         "fix its 'architecture' entry"),
    case("evaluate-sidecar-unknown-option", "evaluate side/colour.safetensors --dataset digits "
         "--out outs/e", ("sidecar", "colour.json", "no option 'colour'"), "delete the sidecar"),
    case("evaluate-damaged-weights", "evaluate empty.safetensors --dataset digits --out outs/e",
         "cannot read checkpoint", "damaged"),
    case("evaluate-other-architecture", "evaluate tiny.safetensors --model resnet14 "
         "--dataset digits --out outs/e", "does not fit", "architecture it was trained with"),
    case("evaluate-batch-sizes", "evaluate tiny.safetensors --dataset digits --batch-sizes 1,x "
         "--out outs/e", "--batch-sizes '1,x'", "comma-separated integers"),
    case("evaluate-two-artifacts", "evaluate twoartifacts --dataset digits --out outs/e",
         "holds 2 artifacts", "pass one file"),
    case("evaluate-missing-reference", "evaluate tiny.onnx --reference nothere.safetensors "
         "--dataset digits --out outs/e", "not found", "torchslim train"),
    case("evaluate-missing-data-dir", "evaluate tiny.safetensors --data emptydir --out outs/e",
         "emptydir", "apt-get install"),
    # ---------------------------------------------------------------- quantize, sensitivity
    case("quantize-unknown-method", "quantize tiny.safetensors --method int3 --out outs/q",
         "int3", "ptq"),
    case("quantize-bits", "quantize tiny.safetensors --bits 12 --out outs/q", "bits=12",
         "[2, 8]"),
    case("quantize-observer", "quantize tiny.safetensors --observer kl --out outs/q",
         "unknown observer 'kl'", "entropy"),
    case("quantize-percentile", "quantize tiny.safetensors --observer percentile "
         "--percentile 101 --out outs/q", "percentile=101", "(0, 100]"),
    case("quantize-runtime", "quantize tiny.safetensors --runtime tensorrt --out outs/q",
         "tensorrt", "onnxruntime"),
    case("quantize-missing-checkpoint", "quantize nothere.safetensors --out outs/q",
         "checkpoint not found", "torchslim train"),
    case("quantize-out-locked", "quantize tiny.safetensors --out locked",
         ("output locked is in use", "pid"), "pass another output directory"),
    case("quantize-out-is-a-file", "quantize tiny.safetensors --out afile",
         "afile is a file", "pass a directory"),
    case("sensitivity-batches-zero", "sensitivity tiny.safetensors --batches 0 --out outs/s",
         "--batches", "--help"),
    case("sensitivity-bits", "sensitivity tiny.safetensors --bits 1 --out outs/s", "bits=1",
         "[2, 8]"),
    # ---------------------------------------------------------------- prune, distill
    case("prune-target-macs", "prune tiny.safetensors --target-macs 1.5 --out outs/p",
         "target_macs=1.5", "(0, 1]"),
    case("prune-importance", "prune tiny.safetensors --importance magic --out outs/p",
         "magic", "l2"),
    case("prune-out-is-a-file", "prune tiny.safetensors --out afile", "afile is a file",
         "pass a directory"),
    case("prune-sidecar-list", "prune side/list.safetensors --out outs/p", "JSON list",
         "delete it"),
    case("distill-missing-teacher", "distill --teacher nothere.safetensors --out outs/k",
         "checkpoint not found", "torchslim train"),
    case("distill-temperature", "distill --teacher tiny.safetensors --temperature 0 "
         "--out outs/k", "temperature", "> 0"),
    case("distill-unknown-student", "distill --teacher tiny.safetensors --student nosuchnet "
         "--out outs/k", "nosuchnet", "resnet8"),
    case("distill-out-locked", "distill --teacher tiny.safetensors --out locked",
         "in use by", "wait for that run to finish"),
    # ---------------------------------------------------------------- report
    case("report-missing-baseline", "report reports/nobaseline.json --out outs/r",
         ("baseline 'gone'", "not one of its candidates"), "set 'baseline' to one of them"),
    case("report-top1-text", "report reports/texttop1.json --out outs/r",
         ("candidates[0].top1 is 'high'", "not int or float"), "fix the value"),
    case("report-top1-percent", "report reports/percent.json --out outs/r",
         "candidates[0].top1 is 92.1", "0.92, not 92"),
    case("report-not-json", "report reports/notjson.json --out outs/r", "cannot read report",
         "pass a report.json written by torchslim"),
    case("report-json-list", "report reports/list.json --out outs/r", "holds a list",
         "pass a report.json written by torchslim"),
    case("report-missing-file", "report reports/nothere.json --out outs/r",
         "report not found", "run an evaluating command first"),
    case("report-not-a-report", "report reports/other.json --out outs/r", "lacks keys",
         "is it a torchslim report.json"),
    case("report-out-is-a-file", "report reports/good.json --out afile", "afile is a file",
         "pass a directory"),
    # ---------------------------------------------------------------- run, search
    case("run-missing-recipe", "run nothere.yaml", "recipe 'nothere.yaml' not found",
         "built-in recipe"),
    case("run-data-function-raises", "run recipes/data_raises.yaml",
         ("recipes/data_raises.yaml:2: data", "raised ValueError: no images here"),
         "fix the function"),
    case("run-import-raises", "run recipes/import_raises.yaml",
         ("recipes/import_raises.yaml:2: data", "raised RuntimeError: refuses to import"),
         "fix the module"),
    case("run-syntax-error", "run recipes/syntax_error.yaml",
         ("recipes/syntax_error.yaml:2: data", "raised SyntaxError"), "fix the module"),
    case("run-model-missing-module", "run recipes/model_missing_module.yaml",
         ("model_missing_module.yaml:2: model", "cannot import 'nosuchpkg.models'"),
         "install the package or fix the name"),
    case("run-model-returns-int", "run recipes/model_returns_int.yaml",
         ("model_returns_int.yaml:2: model", "returned int, not a torch.nn.Module"),
         "entry point"),
    case("run-duplicate-key", "run recipes/duplicate_key.yaml",
         ("duplicate_key.yaml:2: name", "duplicate key (first at line 1)"), "keep one"),
    case("run-data-args-unknown", "run recipes/data_args_unknown.yaml",
         ("data_args_unknown.yaml:2: data_args", "unknown option(s) ['colour']"), "allowed:"),
    case("run-data-args-value", "run recipes/data_args_value.yaml",
         ("data_args_value.yaml:2: data_args", "batch_size=-3"), ">= 1"),
    case("run-stage-absolute-name", "run recipes/stage_abs_name.yaml",
         ("stage_abs_name.yaml:4: stages[0].name", "/tmp/torchslim-victim"), "plain name"),
    case("run-artifact-dotdot", "run recipes/artifact_dotdot.yaml",
         ("artifact_dotdot.yaml:5: stages[1].artifact", "../escaped.onnx"), "plain name"),
    case("run-recipe-name-path", "run recipes/recipe_name_path.yaml",
         ("recipe_name_path.yaml:1: name", "'../../etc'"), "plain name"),
    case("run-invalid-yaml", "run recipes/invalid_yaml.yaml",
         ("invalid_yaml.yaml:4", "invalid YAML"), "expected"),
    case("run-unknown-stage", "run recipes/unknown_kind.yaml",
         ("unknown_kind.yaml:3: stages[0].kind", "unknown stage 'prun'"), "did you mean 'prune'"),
    case("run-unknown-stage-option", "run recipes/unknown_option.yaml",
         ("unknown_option.yaml:4: stages[0].calib_batch", "unknown option"), "calib_batches"),
    case("run-bad-budget", "run recipes/bad_budget.yaml", ("bad_budget.yaml:2: budget.max_drop",
                                                           "less than or equal to 1"), "(got 2)"),
    case("run-bad-runtime", "run recipes/bad_runtime.yaml",
         ("bad_runtime.yaml:2: target.runtime", "unknown runtime 'tensorrt'"), "onnxruntime"),
    case("run-missing-checkpoint", "run recipes/missing_checkpoint.yaml",
         ("missing_checkpoint.yaml:2: model", "does not exist"), "torchslim train"),
    case("run-symlinked-stages", "run recipes/symlinked_stages.yaml",
         ("outside the output directory", "symlink"), "remove it or pass another output"),
    case("run-output-holds-a-run", "run recipes/holds_a_run.yaml",
         "already holds a run", ("--resume", "--overwrite")),
    case("run-resume-changed-recipe", "run recipes/holds_a_run.yaml --resume",
         "recipe changed since the run", "same recipe or pass --overwrite"),
    case("run-output-locked", "run recipes/locked.yaml", "output locked is in use",
         "wait for that run to finish"),
    case("search-time-budget", "search recipes/holds_a_run.yaml --time-budget soon",
         "--time-budget 'soon'", "30m"),
    case("search-stage-absolute-name", "search recipes/stage_abs_name.yaml --time-budget 1m",
         "stages[0].name", "plain name"),
    # ---------------------------------------------------------------- llm
    case("llm-eval-random-gguf", "llm eval random.gguf --text text.txt",
         "random.gguf is not a GGUF file", "pass a real .gguf file"),
    case("llm-quantize-random-gguf", "llm quantize random.gguf --method rtn --out outs/l",
         "not a GGUF file", "model directory"),
    case("llm-quantize-damaged-gguf", "llm quantize damaged.gguf --method rtn --out outs/l",
         "cannot load a causal LM from damaged.gguf", "intact .gguf file"),
    case("llm-eval-bad-config", "llm eval badlm --text text.txt",
         "cannot load a causal LM from badlm", "local model directory"),
    case("llm-eval-hub-name", "llm eval someorg/somemodel --text text.txt",
         "is not a local path", "pass its directory"),
    case("llm-eval-missing-text", "llm eval random.gguf --text nothere.txt",
         "text file 'nothere.txt' does not exist", "nothere.txt"),
    case("llm-quantize-bits", "llm quantize random.gguf --bits 5 --method rtn --out outs/l",
         "bits=5", "3, 4 or 8"),
    case("llm-quantize-out-is-a-file", "llm quantize random.gguf --method rtn --out afile",
         "--out afile is a file", "pass a directory"),
    # ---------------------------------------------------------------- registry, serve
    case("registry-show-unknown", "registry show nomodel --registry registry",
         "nomodel", "push"),
    case("registry-push-missing", "registry push nothere.onnx m --registry registry",
         "nothere.onnx", "check the path"),
    case("registry-pull-into-a-file", "registry pull m@1.0.0 afile --registry registry",
         "DEST afile is a file", "pass a directory"),
    case("serve-missing-artifact", "serve nothere.onnx --http-port 0 --grpc-port 0",
         "nothere.onnx", "pass an artifact file"),
    case("serve-source-and-config", "serve tiny.onnx --config serve.yaml", "either",
         "one of them"),
]


# ------------------------------------------------------------------------ the world


def _write_world(root: Path) -> None:
    """Every file the cases point at, made once (a few seconds: one tiny model)."""
    import shutil

    import torch

    from torchslim.exporters import export_onnx
    from torchslim.train import save_checkpoint
    from torchslim.zoo import build_model

    torch.manual_seed(0)
    tiny = build_model("resnet8", width=4, num_classes=10, in_channels=1).eval()
    ckpt = save_checkpoint(root / "tiny.safetensors", tiny, dataset="digits")
    export_onnx(tiny, root / "tiny.onnx", input_shape=(1, 8, 8))
    export_onnx(tiny, root / "big.onnx", input_shape=(1, 28, 28))
    export_onnx(build_model("resnet8", width=4, num_classes=5, in_channels=1).eval(),
                root / "five.onnx", input_shape=(1, 8, 8))
    (root / "twoartifacts").mkdir()
    for name in ("a.onnx", "b.onnx"):
        shutil.copy(root / "tiny.onnx", root / "twoartifacts" / name)
    (root / "corrupt.onnx").write_bytes(os.urandom(600))
    (root / "notes.txt").write_text("not a model\n")
    (root / "empty.safetensors").write_bytes(b"")
    (root / "emptydir").mkdir()
    (root / "afile").write_text("a file where a directory is expected\n")
    _sidecars(root, ckpt)
    _llm_files(root)
    _reports(root)
    _recipes(root)
    (root / "serve.yaml").write_text("models: []\n")


def _sidecars(root: Path, ckpt: Path) -> None:
    import shutil

    side = root / "side"
    side.mkdir()
    meta = json.loads(ckpt.with_suffix(".json").read_text())
    variants: dict[str, bytes] = {
        "binary": bytes(range(256)),
        "list": b"[1, 2, 3]",
        "none": json.dumps({**meta, "architecture": {"name": None, "kwargs": {}}}).encode(),
        "wide": json.dumps({**meta, "architecture": {"name": "resnet8",
                                                     "kwargs": {"width": "wide"}}}).encode(),
        "colour": json.dumps({**meta, "architecture": {"name": "resnet8", "kwargs": {
            "width": 4, "colour": 3}}}).encode(),
    }
    for name, sidecar in variants.items():
        shutil.copy(ckpt, side / f"{name}.safetensors")
        (side / f"{name}.json").write_bytes(sidecar)


def _llm_files(root: Path) -> None:
    (root / "random.gguf").write_bytes(os.urandom(2048))
    (root / "damaged.gguf").write_bytes(b"GGUF" + os.urandom(2048))
    (root / "badlm").mkdir()
    (root / "badlm" / "config.json").write_text('{"model_type": "llama", "hidden_size": "x"}')
    (root / "text.txt").write_text("It is a truth universally acknowledged.\n" * 4)


def _reports(root: Path) -> None:
    reports = root / "reports"
    reports.mkdir()
    candidate = {"name": "base-fp32-torch", "runtime": "torch", "precision": "fp32",
                 "threads": 1, "top1": 0.9, "top5": 1.0, "per_class": [0.9] * 10,
                 "agreement": 1.0, "latency_ms": {"1": {"p50": 1.0, "p90": 1.1, "p99": 1.2}},
                 "items_per_s": {"1": 1000.0}, "bytes": 1000, "params": 100,
                 "nonzero_params": 100, "macs": 1000}
    good = {"torchslim_version": "0.1.0", "machine": {"cpu": "x", "threads": 1},
            "dataset": {"name": "digits", "split": "test", "n": 360},
            "baseline": "base-fp32-torch", "candidates": [candidate]}

    def variant(**change: Any) -> str:
        return json.dumps({**good, **change})

    files = {"good": json.dumps(good), "nobaseline": variant(baseline="gone"),
             "texttop1": variant(candidates=[{**candidate, "top1": "high"}]),
             "percent": variant(candidates=[{**candidate, "top1": 92.1}]),
             "notjson": "{ this is not json", "list": "[1, 2]",
             "other": json.dumps({"results": [1, 2]})}
    for name, text in files.items():
        (reports / f"{name}.json").write_text(text)


def _recipes(root: Path) -> None:
    mods = root / "usermods"
    mods.mkdir()
    (mods / "__init__.py").write_text("")
    (mods / "data_raises.py").write_text(
        "def loaders():\n    raise ValueError('no images here')\n")
    (mods / "import_raises.py").write_text("raise RuntimeError('refuses to import')\n")
    (mods / "syntax_error.py").write_text("def loaders(:\n    pass\n")
    (mods / "models.py").write_text("def not_a_model():\n    return 3\n")
    recipes = root / "recipes"
    recipes.mkdir()
    for name, overrides in RECIPES.items():
        (recipes / f"{name}.yaml").write_text(_recipe(overrides))
    (root / "symlinked").mkdir()
    (root / "victim").mkdir()
    (root / "victim" / "keep.txt").write_text("not torchslim's\n")
    (root / "symlinked" / "stages").symlink_to(Path("..") / "victim")   # each copy's own
    (root / "finished").mkdir()                # an earlier run of another recipe
    (root / "finished" / "recipe.json").write_text(json.dumps({"fingerprint": "0123abcd"}))
    (root / "held").mkdir()                    # one directory, held for every copy
    (root / "locked").symlink_to(root / "held")


# The forking interpreter: imports what `python -m torchslim` imports before it parses its
# arguments (and, once for all cases, what most commands import lazily: scikit-learn for
# the digits data, 2 s a case, and ONNX Runtime), then forks once per job
# line {"argv", "cwd", "env", "stdout", "stderr", "timeout"} and answers the child's exit
# code. The child runs torchslim.__main__ as `python -m` does and exits as the interpreter
# would (SystemExit's code, or the traceback and 1; non-daemon threads joined, atexit
# handlers, stdio flushed) but without tearing its modules down: that would copy every
# page it shares with the forking interpreter, 1 s of CPU per case. One past its timeout
# is ended by SIGALRM (exit code -14).
_FORKER = textwrap.dedent("""
    import atexit, json, os, runpy, signal, sys, threading
    import torchslim.cli
    import onnxruntime, sklearn.datasets
    print("ready", flush=True)
    for line in sys.stdin:
        job = json.loads(line)
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            os.chdir(job["cwd"])
            os.environ.clear()
            os.environ.update(job["env"])
            extra = [p for p in job["env"].get("PYTHONPATH", "").split(os.pathsep) if p]
            sys.path[:1] = [job["cwd"], *extra]
            for fd, name, flags in ((0, os.devnull, os.O_RDONLY),
                                    (1, job["stdout"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC),
                                    (2, job["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)):
                opened = os.open(name, flags)
                os.dup2(opened, fd)
                os.close(opened)
            sys.argv = ["-m", *job["argv"]]
            signal.alarm(job["timeout"])
            code = 0
            try:
                runpy.run_module("torchslim", run_name="__main__", alter_sys=True)
            except SystemExit as exc:
                if isinstance(exc.code, int):
                    code = exc.code
                elif exc.code is not None:
                    print(exc.code, file=sys.stderr)
                    code = 1
            except BaseException:
                sys.excepthook(*sys.exc_info())
                code = 1
            threading._shutdown()
            atexit._run_exitfuncs()
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(int(code) & 0xFF)
        _, status = os.waitpid(pid, 0)
        print(os.waitstatus_to_exitcode(status), flush=True)
""")


class Forker:
    """One forking interpreter; ``run`` is one case at a time (callers hold one each)."""

    def __init__(self, env: dict[str, str], logs: Path) -> None:
        self.logs = logs
        self.proc = subprocess.Popen([sys.executable, "-c", _FORKER], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True,
                                     env={k: v for k, v in env.items() if k != "PYTHONPATH"})
        assert self.proc.stdout.readline().strip() == "ready"

    def run(self, args: list[str], cwd: Path, env: dict[str, str]) -> tuple[int, str]:
        out, err = self.logs / f"{cwd.name}.out", self.logs / f"{cwd.name}.err"
        job = {"argv": args, "cwd": str(cwd), "env": env, "stdout": str(out), "stderr": str(err),
               "timeout": TIMEOUT_S}
        self.proc.stdin.write(json.dumps(job) + "\n")
        self.proc.stdin.flush()
        returncode = int(self.proc.stdout.readline())
        return returncode, err.read_text()

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=TIMEOUT_S)


def _train_once(root: Path, env: dict[str, str], forker: Forker) -> None:
    """A finished 1-epoch run in ``trained/`` (the 'other settings' case resumes it)."""
    returncode, stderr = forker.run(["--quiet", "train", "--model", "resnet8", "--width", "8",
                                     "--dataset", "digits", "--epochs", "1", "--threads", "1",
                                     "--batch-size", "256", "--out", "trained"], root, env)
    assert returncode == 0, stderr[-2000:]


_HOLDER = textwrap.dedent("""
    import sys, time
    from torchslim import _io
    with _io.lock_dir(sys.argv[1], command="torchslim holder"):
        print("held", flush=True)
        time.sleep(3600)
""")


def _snapshot(root: Path) -> dict[str, str]:
    """Every path under ``root`` -> its content digest (links by target, dirs as such)."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        if p.is_symlink():
            out[rel] = "-> " + os.readlink(p)
        elif p.is_dir():
            out[rel] = "dir"
        else:
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


@dataclass
class Outcome:
    returncode: int
    stderr: str
    changed: list[str]


def _run(c: Case, world: Path, copy: Path, env: dict[str, str],
         forker: Forker | None) -> Outcome:
    """``c`` in its own copy of the world (two cases run at once: one's output must not
    show up as a change of the other's); forked, or a fresh ``python -m torchslim``."""
    import shutil

    root = shutil.copytree(world, copy, symlinks=True)
    before = _snapshot(root)
    case_env = {**env, "PYTHONPATH": str(root), **c.env}
    if forker is None:
        done = subprocess.run([sys.executable, "-m", "torchslim", *c.args], cwd=root,
                              env=case_env, capture_output=True, text=True, timeout=TIMEOUT_S)
        returncode, stderr = done.returncode, done.stderr
    else:
        returncode, stderr = forker.run(list(c.args), root, case_env)
    after = _snapshot(root)
    changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
    return Outcome(returncode, stderr.replace(str(root), "<case>"), changed)


# Cases that also run as real `python -m torchslim` processes: a user module imported from
# the working directory, transformers imported by the command, and a command that imports
# scikit-learn and ONNX Runtime itself (the forking interpreter has them already).
FRESH = ("run-import-raises", "llm-eval-bad-config", "evaluate-onnx-input-shape")


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Outcome]:
    """Every case's outcome (forked), and under "fresh:<id>" the FRESH ones' outcome as real
    processes: the world is made once, the cases run two at a time."""
    from queue import SimpleQueue

    root = tmp_path_factory.mktemp("world")
    cases = tmp_path_factory.mktemp("cases")
    scratch = tmp_path_factory.mktemp("scratch")
    env = {**os.environ, "PYTHONPATH": str(root), "PYTHONDONTWRITEBYTECODE": "1",
           "TORCHSLIM_CACHE": str(scratch / "cache"), "TORCHSLIM_PROGRESS": "0",
           "TORCHSLIM_DATA": str(root / "emptydir"), "MPLCONFIGDIR": str(scratch / "mpl"),
           "OMP_NUM_THREADS": "1", "COLUMNS": "80"}
    env.pop("TORCHSLIM_REGISTRY", None)
    _write_world(root)
    (scratch / "logs").mkdir()
    forkers: SimpleQueue[Forker] = SimpleQueue()
    started = []
    holder = None
    try:
        for _ in range(WORKERS):
            started.append(Forker(env, scratch / "logs"))
            forkers.put(started[-1])
        _train_once(root, env, started[0])
        holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(root / "held")],
                                  stdout=subprocess.PIPE, text=True, env=env)
        assert holder.stdout.readline().strip() == "held"

        def forked(c: Case) -> Outcome:
            forker = forkers.get()
            try:
                return _run(c, root, cases / c.id, env, forker)
            finally:
                forkers.put(forker)

        by_id = {c.id: c for c in CASES}
        with ThreadPoolExecutor(WORKERS) as pool:
            futures = {c.id: pool.submit(forked, c) for c in CASES}
            futures |= {f"fresh:{i}": pool.submit(_run, by_id[i], root, cases / f"fresh-{i}",
                                                  env, None) for i in FRESH}
            return {name: f.result() for name, f in futures.items()}
    finally:
        if holder is not None:
            holder.kill()
            holder.wait()
        for forker in started:
            forker.close()


def test_the_catalogue_is_large_and_distinct() -> None:
    assert len(CASES) >= 60
    assert len({c.id for c in CASES}) == len(CASES)
    assert len({c.args for c in CASES}) == len(CASES)
    commands = {c.args[0] for c in CASES}
    assert {"train", "evaluate", "quantize", "sensitivity", "prune", "distill", "report",
            "run", "search", "llm", "registry", "serve", "demo"} <= commands


def _error_lines(stderr: str) -> list[str]:
    """stderr less blank lines and log records."""
    return [ln for ln in stderr.splitlines()
            if ln.strip() and not ln.startswith(("INFO ", "WARNING ", "DEBUG "))]


@pytest.mark.slow
@pytest.mark.parametrize("c", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_one_line_and_exit_2_and_changes_nothing(c: Case, outcomes) -> None:
    got = outcomes[c.id]
    assert "Traceback" not in got.stderr, got.stderr[-3000:]
    lines = _error_lines(got.stderr)
    assert got.returncode == 2, got.stderr[-3000:]
    assert len(lines) == 1, got.stderr
    line = lines[0]
    assert line.startswith("error: "), line
    for needle in (*c.problem, *c.fix):
        assert needle in line, f"{needle!r} not in {line!r}"
    assert got.changed == [], f"{c.id} changed {got.changed}"


@pytest.mark.slow
@pytest.mark.parametrize("case_id", FRESH)
def test_a_real_process_ends_as_the_forked_one(case_id: str, outcomes) -> None:
    fresh, forked = outcomes[f"fresh:{case_id}"], outcomes[case_id]
    assert (fresh.returncode, fresh.changed) == (forked.returncode, forked.changed)
    assert _error_lines(fresh.stderr) == _error_lines(forked.stderr), fresh.stderr
