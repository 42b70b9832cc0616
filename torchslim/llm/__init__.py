"""Weight-only (RTN, GPTQ, AWQ) and W8A8 (SmoothQuant) quantization of causal LMs, with
perplexity and decode speed on real low-bit CPU kernels.

Importing this package needs only torch; loading models and reading the Austen data need
``pip install 'torchslim[llm]'`` (transformers, gguf, rdata).
"""

from torchslim.llm.api import quantize_llm, quantize_llm_, quantized_layers, weight_sqnr
from torchslim.llm.config import METHODS, LLMQuantConfig
from torchslim.llm.evaluate import PerplexityResult, decode_speed, model_nbytes, perplexity
from torchslim.llm.groups import find_scale_groups
from torchslim.llm.model import load_causal_lm, save_quantized
from torchslim.llm.scaling import ScaleGroup
from torchslim.llm.smooth import SmoothConfig, SmoothResult, smooth_

__all__ = ["LLMQuantConfig", "METHODS", "quantize_llm", "quantize_llm_", "quantized_layers", "weight_sqnr",
           "load_causal_lm", "save_quantized", "perplexity", "PerplexityResult",
           "decode_speed", "model_nbytes", "find_scale_groups", "ScaleGroup", "smooth_",
           "SmoothConfig", "SmoothResult"]
