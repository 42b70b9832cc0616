"""``torchslim serve``: compressed artifacts behind the Open Inference Protocol (KServe v2).

>>> from torchslim.serve import InferenceServer, config_for_source     # doctest: +SKIP
>>> config, template = config_for_source("runs/demo/model_repo")        # doctest: +SKIP
>>> server = InferenceServer(config, template=template).start()        # doctest: +SKIP

HTTP (FastAPI + uvicorn) and gRPC (``inference.GRPCInferenceService``) share one service:
dynamic batching per model (``BatchingConfig``), a bounded queue (429 /
RESOURCE_EXHAUSTED when full), per-request timeouts (504 / DEADLINE_EXCEEDED), versions
with load-before-unload hot swaps, and Prometheus metrics on ``/metrics``. Sessions come
from ``torchslim.runtime.open``; fastapi, uvicorn and grpcio are imported only when a
server starts (``pip install 'torchslim[serve]'``).
"""

from torchslim.serve.config import BatchingConfig, ModelConfig, ServerConfig, VersionPolicy
from torchslim.serve.config_file import config_for_source, load_config, parse_config
from torchslim.serve.errors import (BadRequestError, ModelLoadError, ModelNotFoundError,
                                    RequestTimeoutError, ServeError, ServerBusyError)
from torchslim.serve.server import InferenceServer
from torchslim.serve.sources import set_alias_resolver

__all__ = ["InferenceServer", "ServerConfig", "ModelConfig", "BatchingConfig", "VersionPolicy",
           "config_for_source", "load_config", "parse_config", "set_alias_resolver",
           "ServeError", "BadRequestError", "ModelNotFoundError", "ModelLoadError",
           "ServerBusyError", "RequestTimeoutError"]
