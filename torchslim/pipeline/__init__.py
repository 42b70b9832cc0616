"""Jobs that chain the layers below: the demo now, recipes later."""

from torchslim.pipeline.demo import DemoOptions, run_demo
from torchslim.pipeline.teacher import TeacherRecipe, get_teacher

__all__ = ["DemoOptions", "TeacherRecipe", "get_teacher", "run_demo"]
