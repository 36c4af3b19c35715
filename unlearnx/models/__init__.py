"""Flax NNX models behind a pure functional bridge.

Outside this package models are only :class:`Model` objects: pure ``init``/``apply`` functions
over Linen-style nested-dict variables (``{"params": ..., "batch_stats": ...}``) with string keys.
"""

from unlearnx.models.bridge import Model, Variables, from_module, num_params
from unlearnx.models.cnn import cnn
from unlearnx.models.decoder import decoder_lm
from unlearnx.models.mlp import mlp
from unlearnx.models.registry import available, get
from unlearnx.models.resnet import resnet18
from unlearnx.models.resnet50 import resnet50
from unlearnx.models.text_encoder import text_encoder
from unlearnx.models.unet import unet
from unlearnx.models.vgg import vgg19

__all__ = [
    "Model",
    "Variables",
    "available",
    "cnn",
    "decoder_lm",
    "from_module",
    "get",
    "mlp",
    "num_params",
    "resnet18",
    "resnet50",
    "text_encoder",
    "unet",
    "vgg19",
]
