"""Text encoder and cross-attention UNet: diffusers paths of the attn2 key/value kernels, the context entering
only through them, causal text rows, jit, and 8 simulated devices giving the 1-device loss."""

import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from problems import eight_device_env

from unlearnx import diffusion, tree
from unlearnx.erase import cross_attention_kv
from unlearnx.models._text_encoder import text_encoder
from unlearnx.models._unet import timestep_embedding, unet

SMALL = {"image_size": 8, "channels": (8, 16), "attention": (False, True), "context_dim": 12, "groups": 4}


def _small_unet():
    return unet(**SMALL)


def test_cross_attention_kernels_sit_at_the_diffusers_paths():
    model = _small_unet()
    params = jax.eval_shape(model.init, jax.random.key(0))["params"]
    selected = [
        path for path, flag in tree.leaves_with_paths(tree.select(params, cross_attention_kv)) if flag
    ]
    blocks = [
        "down_blocks_1/attentions_0",
        "mid_block/attentions_0",
        "up_blocks_0/attentions_0",
        "up_blocks_0/attentions_1",
    ]
    expected = [f"{b}/transformer_blocks_0/attn2/{kv}/kernel" for b in blocks for kv in ("to_k", "to_v")]
    assert sorted(selected) == sorted(expected)
    shapes = dict(tree.leaves_with_paths(params))
    for path in expected:
        assert shapes[path].shape == (12, 16)  # (context_dim, width): Flax layout, maps text rows
        assert path.replace("kernel", "bias") not in shapes  # bias-free, as in SD
    assert shapes["down_blocks_1/attentions_0/transformer_blocks_0/attn1/to_k/kernel"].shape == (16, 16)


@pytest.mark.slow
def test_context_enters_only_through_attn2_key_value_kernels():
    """With every attn2 to_k/to_v kernel zeroed the output no longer depends on the context; with them it
    does."""
    model = _small_unet()
    variables = model.init(jax.random.key(0))
    x = jax.random.normal(jax.random.key(1), (2, 8, 8, 3))
    t = jnp.array([10, 900])
    c1, c2 = jax.random.normal(jax.random.key(2), (2, 2, 5, 12))
    apply = jax.jit(lambda v, c: model.apply(v, (x, t, c)))
    assert not np.allclose(apply(variables, c1), apply(variables, c2), atol=1e-5)
    flags = tree.select(variables, cross_attention_kv)
    zeroed = jax.tree.map(lambda leaf, flag: jnp.zeros_like(leaf) if flag else leaf, variables, flags)
    np.testing.assert_allclose(apply(zeroed, c1), apply(zeroed, c2), atol=1e-6)
    assert apply(variables, c1).shape == x.shape


def test_timestep_embedding_closed_form():
    out = np.asarray(timestep_embedding(jnp.array([0, 7]), 4))
    frequencies = np.array([1.0, 10_000.0**-0.5])
    np.testing.assert_allclose(
        out[1], np.concatenate([np.cos(7 * frequencies), np.sin(7 * frequencies)]), rtol=1e-5
    )
    np.testing.assert_allclose(out[0], [1, 1, 0, 0])


def test_text_encoder_rows_are_causal_and_padding_carries_the_prompt():
    model = text_encoder(10, length=6, width=16, num_layers=2, num_heads=4)
    variables = model.init(jax.random.key(0))
    a = jnp.array([[1, 3, 4, 2, 0, 0]])
    b = jnp.array([[1, 3, 5, 2, 0, 0]])  # differs at position 2
    ea, eb = np.asarray(model.apply(variables, a)), np.asarray(model.apply(variables, b))
    assert ea.shape == (1, 6, 16)
    np.testing.assert_allclose(ea[0, :2], eb[0, :2], atol=1e-6)  # earlier rows cannot see position 2
    for row in range(2, 6):  # the word's row, EOS and the padding rows all change
        assert np.abs(ea[0, row] - eb[0, row]).max() > 1e-3, row
    with pytest.raises(ValueError, match="expected 6 tokens"):
        model.apply(variables, jnp.zeros((1, 5), jnp.int32))


def test_bad_configurations_raise():
    with pytest.raises(ValueError, match="same nonzero length"):
        unet(channels=(8, 16), attention=(True,))
    with pytest.raises(ValueError, match="divisible by 2"):
        unet(image_size=6, channels=(8, 16, 16), attention=(False, True, True))
    with pytest.raises(ValueError, match="groups"):
        unet(channels=(6, 16), attention=(False, True), groups=4)
    with pytest.raises(ValueError, match="num_heads"):
        text_encoder(10, width=10, num_heads=4)


SCRIPT = textwrap.dedent(
    """
    import sys
    import jax, numpy as np
    sys.path[:0] = [sys.argv[2], sys.argv[2] + "/.."]
    from test_unet import loss_on
    from unlearnx import parallel
    assert jax.device_count() == 8, jax.devices()
    mesh = parallel.data_mesh()
    np.save(sys.argv[1], np.asarray(loss_on(lambda batch: parallel.shard_batch(batch, mesh),
                                            lambda tree: parallel.replicate(tree, mesh))))
    """
)


def loss_on(place_batch, place_params):
    """The jitted DDPM loss and its gradient norm on a fixed batch of 8, placed by the given functions
    (threefry_partitionable off in both processes, as the conftest sets it here, so the draws agree)."""
    with jax.threefry_partitionable(False):
        model = _small_unet()
        params = place_params(model.init(jax.random.key(0))["params"])
        rng = np.random.default_rng(0)
        x = rng.uniform(-1, 1, (8, 8, 8, 3)).astype(np.float32)
        batch = place_batch({"x": x, "c": rng.normal(size=(8, 5, 12)).astype(np.float32)})
        schedule = diffusion.linear_schedule(1000)

        @jax.jit
        def loss_and_grad_norm(params, batch):
            def loss(params):
                eps_fn = lambda x, t, c: model.apply({"params": params}, (x, t, c))
                null = jnp.zeros((5, 12))
                return diffusion.eps_loss(eps_fn, batch["x"], batch["c"], null, jax.random.key(5), schedule)

            value, grads = jax.value_and_grad(loss)(params)
            return jnp.stack([value, jnp.sqrt(sum(jnp.sum(g**2) for g in jax.tree.leaves(grads)))])

        return loss_and_grad_norm(params, batch)


@pytest.mark.slow
def test_eight_devices_give_the_one_device_loss(tmp_path):
    output = tmp_path / "eight.npy"
    env = eight_device_env()
    here = os.path.dirname(__file__)
    subprocess.run([sys.executable, "-c", SCRIPT, str(output), here], env=env, check=True, timeout=300)
    one = np.asarray(loss_on(lambda batch: batch, lambda tree: tree))
    np.testing.assert_allclose(np.load(output), one, rtol=1e-4)
