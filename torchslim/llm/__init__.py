"""Weight-only (RTN, GPTQ, AWQ) and W8A8 (SmoothQuant) quantization of causal LMs, with
perplexity and decode speed on real low-bit CPU kernels. Needs ``torchslim[llm]``."""

from torchslim.llm.api import quantize_llm, quantized_layers, weight_sqnr
from torchslim.llm.config import METHODS, LLMQuantConfig

__all__ = ["LLMQuantConfig", "METHODS", "quantize_llm", "quantized_layers", "weight_sqnr"]
