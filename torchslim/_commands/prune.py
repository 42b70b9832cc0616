"""`torchslim prune ...`: structured channel pruning (or masks) with recovery fine-tuning.
Its options are ``torchslim.pipeline.prune.PRUNE``'s rows (the recipe's prune stage has
the same)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from torchslim._commands._app import BatchSizes, Threads, command, out_console, parse_sizes
from torchslim._commands._options import with_options
from torchslim.pipeline.prune import PRUNE


@command(writes="out")
@with_options(PRUNE)
def prune(checkpoint: Annotated[Path, typer.Argument(help="Checkpoint (.safetensors) to prune.")],
          options: dict[str, Any],
          threads: Threads = 2, batch_sizes: BatchSizes = "1,32",
          out: Annotated[Path, typer.Option(help="Directory for the pruned checkpoint, artifact and report.")] = Path("runs/prune"),
          data: Annotated[Optional[Path], typer.Option(help="Dataset directory.")] = None) -> None:
    """Prune a checkpoint, fine-tune it, and measure it against the original on ONNX Runtime."""
    from torchslim.pipeline.prune import PruneJob, run_prune
    from torchslim.report import print_table

    job = PruneJob(checkpoint=checkpoint, plan=PRUNE.plan("cli", **options), out=out,
                   threads=threads, batch_sizes=parse_sizes(batch_sizes), data_root=data)
    result = run_prune(job)
    print_table(result["results"], console=out_console)
    record = result["pruning"]
    if "macs_after" in record:
        out_console.print(f"MACs {record['macs_before']:,} -> {record['macs_after']:,}  "
                          f"params {record['params_before']:,} -> {record['params_after']:,}")
    out_console.print(f"checkpoint: {result['checkpoint']}\nartifact:   {result['artifact']}\n"
                      f"report:     {result['report']['html']}")
