"""Jobs that chain the layers below: recipes (stages under an accuracy budget), the demo."""

from torchslim.pipeline.demo import DemoOptions, run_demo
from torchslim.pipeline.recipe import Recipe, load_recipe, parse_recipe
from torchslim.pipeline.run import RunResult
from torchslim.pipeline.runner import run_recipe
from torchslim.pipeline.search import SearchResult, search_recipe
from torchslim.pipeline.teacher import TeacherRecipe, get_teacher

__all__ = ["DemoOptions", "Recipe", "RunResult", "SearchResult", "TeacherRecipe", "get_teacher",
           "load_recipe", "parse_recipe", "run_demo", "run_recipe", "search_recipe"]
