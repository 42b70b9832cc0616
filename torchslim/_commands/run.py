"""`torchslim run recipe.yaml [--resume]` and `torchslim search recipe.yaml --time-budget 30m`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from torchslim._commands._app import MaxRestarts, Nproc, command, out_console

RecipeArg = Annotated[str, typer.Argument(help="Recipe YAML file, or a built-in recipe's name "
                                               "(fashion_mnist, ptq_only, torchvision_custom_data).")]
Output = Annotated[Optional[Path], typer.Option(help="Output directory (default: the recipe's).")]


@command("run")
def run_cmd(recipe: RecipeArg,
            resume: Annotated[bool, typer.Option("--resume", help="Continue an interrupted run from its last finished stage.")] = False,
            overwrite: Annotated[bool, typer.Option("--overwrite", help="Start again in an output that holds a run.")] = False,
            output: Output = None,
            publish: Annotated[Optional[str], typer.Option(help="Push the run's chain (baseline, kept stages, shipped artifact) to the registry under this model name when the budget is met.")] = None,
            registry: Annotated[Optional[Path], typer.Option(help="Registry directory for --publish (default: $TORCHSLIM_REGISTRY or the torchslim cache).")] = None,
            nproc: Nproc = 1, max_restarts: MaxRestarts = 0) -> None:
    """Run a recipe: stages in order under the accuracy budget, then ship and report.
    Exit code 0 when the budget is met, 1 when it is not, 2 on errors. With
    --publish NAME the chain is pushed to the registry (only when the budget is met)
    and its lineage printed.

    A recipe is code: its model, teacher and data may name entry points
    (package.module:function) that are imported and run with your permissions
    when the run starts, after the whole file is validated. Run only recipes
    you trust. Nothing a recipe names is written outside its output directory."""
    from torchslim.pipeline.runner import run_recipe

    if publish:   # a bad model name is refused before the run, not after it
        from torchslim.artifacts.semver import check_name
        check_name(publish)
    result = run_recipe(recipe, resume=resume, overwrite=overwrite, output=output)
    _print_result(result)
    if result.verdict != "met":
        if publish:
            out_console.print("not published to the registry: the budget was not met")
        raise typer.Exit(1)
    if publish:
        from torchslim.artifacts import ModelRegistry
        from torchslim.pipeline.publish import publish_run

        reg = ModelRegistry(registry)
        pushed = publish_run(result.out, publish, registry=reg)
        out_console.print(f"published {len(pushed)} versions to {reg.root}; lineage of "
                          f"{pushed[-1].ref}:", soft_wrap=True)
        for line in reg.lineage(pushed[-1].ref).lines():
            out_console.print(f"  {line}", markup=False, highlight=False, soft_wrap=True)


@command("search")
def search_cmd(recipe: RecipeArg,
               time_budget: Annotated[str, typer.Option(help="Wall-clock budget: 30m, 90s, 1h30m.")] = "30m",
               fresh: Annotated[bool, typer.Option("--fresh", help="Discard trials of an earlier search in the same output.")] = False,
               output: Output = None) -> None:
    """Explore pruning ratio, per-layer precision and PTQ vs QAT within a time budget;
    keeps the best artifact so far in OUTPUT/best.onnx and plots the Pareto front.

    A recipe is code: its entry points (package.module:function) are imported
    and run with your permissions when the search starts. Run only recipes you
    trust."""
    from rich.table import Table

    from torchslim.pipeline.search import parse_duration, search_recipe

    found = search_recipe(recipe, time_budget_s=parse_duration(time_budget), output=output,
                          resume=not fresh)
    table = Table(title=f"search: {len(found.trials)} trials")
    for col in ("trial", "overrides", "val top-1", "p50 ms", "within budget"):
        table.add_column(col)
    for t in found.trials:
        mark = " (best)" if found.best and t["trial"] == found.best["trial"] else ""
        table.add_row(f"{t['trial']}{mark}", str(t["overrides"]), f"{t['val_top1']:.4f}",
                      f"{t['p50_ms']}", "yes" if t["within_budget"] else "no")
    out_console.print(table)
    _print_result(found.final)


def _print_result(result: Any) -> None:
    from rich.table import Table

    from torchslim.report import print_table

    print_table(result.results, console=out_console)
    table = Table(title="stage attempts (validation split, target runtime)")
    for col in ("stage", "attempt", "overrides", "val top-1", "Δ top-1 (pts)", "verdict"):
        table.add_column(col)
    for a in result.pipeline["attempts"]:
        table.add_row(a["stage"], str(a["attempt"]), str(a["options"] or "-"),
                      f"{a['metrics']['val_top1']:.4f}", f"{-100 * a['val_drop']:+.2f}",
                      a["verdict"])
    out_console.print(table)
    for c in result.pipeline["checks"]:
        out_console.print(f"{'ok  ' if c['ok'] else 'FAIL'} {c['check']}: {c['value']} "
                          f"{c['op']} {c['limit']}")
    out_console.print(f"verdict: {result.verdict}\nartifact: {result.artifact}\n"
                      f"report:   {result.report['html']}\npipeline: {result.report['pipeline']}")
