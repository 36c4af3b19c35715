"""Path selectors for the projections that closed-form erasure edits.

Cross-attention keys and values are the only maps that see the text embedding, so editing them changes
what a prompt does without touching the image pathway. Stable Diffusion trees converted to Flax name them
``…/attn2/to_k/kernel`` and ``…/attn2/to_v/kernel`` (diffusers); maxdiffusion names them
``…/attn2/key/kernel`` and ``…/attn2/value/kernel``. Selectors follow ``unlearnx.tree`` syntax.
"""

from __future__ import annotations

import re

from unlearnx import _validation as checks

__all__ = ["cross_attention_k", "cross_attention_kv", "cross_attention_v", "sd_cross_attention_shapes"]

#: Keys and values of every cross-attention block (``attn2``): diffusers ``to_k``/``to_v`` and maxdiffusion
#: ``key``/``value`` kernels (UCE's and RECE's default, ``with_to_k=True``).
cross_attention_kv = re.compile(r"(?:^|/)attn2/(?:to_k|to_v|key|value)/kernel$")

#: Only the cross-attention keys (``attn2/to_k`` or ``attn2/key``).
cross_attention_k = re.compile(r"(?:^|/)attn2/(?:to_k|key)/kernel$")

#: Only the cross-attention values (``attn2/to_v`` or ``attn2/value``; UCE with ``with_to_k=False``).
cross_attention_v = re.compile(r"(?:^|/)attn2/(?:to_v|value)/kernel$")


# Stable Diffusion v1.x UNet: (block, number of attention modules, channels) of the cross-attention blocks.
_SD_V1_BLOCKS = (
    ("down_blocks_0", 2, 320),
    ("down_blocks_1", 2, 640),
    ("down_blocks_2", 2, 1280),
    ("mid_block", 1, 1280),
    ("up_blocks_1", 3, 1280),
    ("up_blocks_2", 3, 640),
    ("up_blocks_3", 3, 320),
)


def sd_cross_attention_shapes(text_dim: int = 768) -> dict[str, tuple[int, int]]:
    """Paths and shapes of the 32 cross-attention key/value kernels of a Flax Stable Diffusion v1.x UNet.

    ``params/<block>/attentions_<i>/transformer_blocks_0/attn2/{to_k,to_v}/kernel`` with shape
    ``(text_dim, channels)``: 16 ``attn2`` blocks (down 0-2 × 2, mid × 1, up 1-3 × 3) of 320/640/1280
    channels, bias-free. ``text_dim`` is 768 for SD v1.x (CLIP ViT-L/14); use 1024 for SD 2.x's shapes
    (whose channel counts match but whose heads differ). Useful for building SD-shaped test trees.

    Args:
        text_dim: the text encoder's width, the kernels' d_in.

    Returns:
        ``{path: (text_dim, channels)}`` for the 32 kernels.

    Raises:
        ValueError: ``text_dim`` < 1.

    Examples:
        >>> shapes = sd_cross_attention_shapes()
        >>> len(shapes), shapes["params/mid_block/attentions_0/transformer_blocks_0/attn2/to_k/kernel"]
        (32, (768, 1280))
    """
    checks.static_int("text_dim", text_dim, low=1)
    shapes = {}
    for block, count, channels in _SD_V1_BLOCKS:
        for i in range(count):
            for name in ("to_k", "to_v"):
                path = f"params/{block}/attentions_{i}/transformer_blocks_0/attn2/{name}/kernel"
                shapes[path] = (text_dim, channels)
    return shapes
