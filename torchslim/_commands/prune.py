"""`torchslim prune ...`: structured channel pruning (or masks) with recovery fine-tuning."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from torchslim._commands._app import BatchSizes, Threads, parse_sizes, command, out_console


@command()
def prune(checkpoint: Annotated[Path, typer.Argument(help="Checkpoint (.safetensors) to prune.")],
          structured: Annotated[bool, typer.Option("--structured/--unstructured", help="Remove channels (a smaller, faster model), or zero weights (masks).")] = True,
          target_macs: Annotated[Optional[float], typer.Option(help="Structured: fraction of the MACs to keep (0.5 = 2x fewer).")] = None,
          target_params: Annotated[Optional[float], typer.Option(help="Structured: fraction of the parameters to keep.")] = None,
          importance: Annotated[str, typer.Option(help="l1, l2, bn (BatchNorm scale) or taylor.")] = "l2",
          scope: Annotated[str, typer.Option(help="global (rank channels across layers) or uniform.")] = "global",
          round_to: Annotated[int, typer.Option(help="Kept channel counts are multiples of this (1: any).")] = 8,
          protect: Annotated[Optional[list[str]], typer.Option(help="Layer whose output channels stay (repeatable).")] = None,
          remove_blocks: Annotated[str, typer.Option(help="Structured: residual blocks to remove first, a count (least important by validation loss) or names, e.g. layer1.1,layer2.1.")] = "0",
          sensitivity: Annotated[bool, typer.Option("--sensitivity", help="Per-layer ratios from a sensitivity scan on the validation split.")] = False,
          steps: Annotated[int, typer.Option(help="Gradual pruning: steps (cubic schedule), fine-tuning after each.")] = 1,
          sparsity: Annotated[float, typer.Option(help="Unstructured: share of weights to zero.")] = 0.5,
          pattern: Annotated[str, typer.Option(help="Unstructured: 'unstructured' or N:M such as 2:4.")] = "unstructured",
          finetune_epochs: Annotated[int, typer.Option(help="Recovery fine-tuning epochs after each step.")] = 2,
          lr: Annotated[float, typer.Option(help="Fine-tuning peak learning rate (cosine decay).")] = 0.02,
          threads: Threads = 2, batch_sizes: BatchSizes = "1,32",
          out: Annotated[Path, typer.Option(help="Directory for the pruned checkpoint, artifact and report.")] = Path("runs/prune"),
          data: Annotated[Optional[Path], typer.Option(help="Dataset directory.")] = None) -> None:
    """Prune a checkpoint, fine-tune it, and measure it against the original on ONNX Runtime."""
    from torchslim.pipeline.prune import PruneJob, run_prune
    from torchslim.report import print_table

    job = PruneJob(checkpoint=checkpoint, out=out, structured=structured,
                   target_macs=target_macs if target_macs is not None or target_params else 0.5,
                   target_params=target_params, importance=importance, scope=scope,
                   round_to=round_to, protected=tuple(protect or ()),
                   blocks=_blocks(remove_blocks), sensitivity=sensitivity,
                   steps=steps, sparsity=sparsity, pattern=pattern,
                   finetune_epochs=finetune_epochs, lr=lr, threads=threads,
                   batch_sizes=parse_sizes(batch_sizes), data_root=data)
    result = run_prune(job)
    print_table(result["results"], console=out_console)
    record = result["pruning"]
    if "macs_after" in record:
        out_console.print(f"MACs {record['macs_before']:,} -> {record['macs_after']:,}  "
                          f"params {record['params_before']:,} -> {record['params_after']:,}")
    out_console.print(f"checkpoint: {result['checkpoint']}\nartifact:   {result['artifact']}\n"
                      f"report:     {result['report']['html']}")


def _blocks(text: str) -> int | tuple[str, ...]:
    """``--remove-blocks``: "2" is a count, "layer1.1,layer2.1" names the blocks."""
    text = text.strip()
    if text.isdigit():
        return int(text)
    return tuple(name.strip() for name in text.split(",") if name.strip())
