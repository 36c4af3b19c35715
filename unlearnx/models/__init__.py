"""Flax NNX models behind a pure functional bridge.

Outside this package models are only :class:`Model` objects: pure ``init``/``apply`` functions
over Linen-style nested-dict variables (``{"params": ..., "batch_stats": ...}``) with string keys.
"""

from unlearnx.models._bridge import Model, Variables, from_module, num_params
from unlearnx.models._cnn import cnn
from unlearnx.models._decoder import decoder_lm, non_embedding_params
from unlearnx.models._mlp import mlp
from unlearnx.models._registry import available, get
from unlearnx.models._resnet import resnet18
from unlearnx.models._resnet50 import resnet50
from unlearnx.models._text_encoder import text_encoder
from unlearnx.models._unet import unet
from unlearnx.models._vgg import vgg19

__all__ = [
    "Model",
    "Variables",
    "available",
    "cnn",
    "decoder_lm",
    "from_module",
    "get",
    "mlp",
    "non_embedding_params",
    "num_params",
    "resnet18",
    "resnet50",
    "text_encoder",
    "unet",
    "vgg19",
]
