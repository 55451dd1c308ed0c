"""The paper's training objective and one optimiser step, as pure functions.

A batch is what the original's ``sr-implicit-downsampled`` wrapper yields: ``inp`` (B, h, w, 3)
low-resolution crops in [0, 1], ``coord`` / ``cell`` (B, Q, 2) of the sampled high-resolution
pixels, ``gt`` (B, Q, 3) their colours in [0, 1]. As in the original, images and targets are
normalised with (x - 0.5) / 0.5 and the loss is the mean L1 in that space. The query geometry
(which features each query reads) depends on coordinates only, so it is computed on the host
with the exact float32 arithmetic of ``liif_jax.geometry`` -- the same code inference uses --
and the jitted step sees plain arrays.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from liif_jax import geometry


class Batch(NamedTuple):
    inp: np.ndarray  # (B, h, w, 3) normalised
    index: np.ndarray  # (B, M, Q, 2) int32
    rel_coord: np.ndarray  # (B, M, Q, 2) float32
    rel_cell: np.ndarray  # (B, Q, 2) float32
    gt: np.ndarray  # (B, Q, 3) normalised


def make_batch(inp01, coord, cell, gt01, local_ensemble: bool = True) -> Batch:
    """Host side: normalise, and compute every query's geometry exactly."""
    inp01 = np.asarray(inp01, np.float32)
    feat_hw = inp01.shape[1:3]
    geo = geometry.query_geometry(coord, cell, feat_hw, local_ensemble)  # (M, B, Q, 2)
    normalise = lambda x: (np.asarray(x, np.float32) - np.float32(0.5)) / np.float32(0.5)  # noqa: E731
    return Batch(normalise(inp01), np.moveaxis(geo.index, 0, 1), np.moveaxis(geo.rel_coord, 0, 1),
                 geo.rel_cell, normalise(gt01))


def l1_loss(params, module, batch: Batch):
    pred = module.apply({"params": params}, batch.inp, batch.index, batch.rel_coord, batch.rel_cell)
    return jnp.mean(jnp.abs(pred - batch.gt))


def make_train_step(module, optimizer, mesh=None):
    """A jitted ``step(params, opt_state, batch) -> (params, opt_state, loss)``.

    With a ``mesh`` (1-D, axis ``"data"``) the step is data-parallel: the batch is split over
    the mesh's devices, params and optimiser state are replicated, and XLA inserts the
    gradient all-reduce -- the math is the single-device step's (the loss is a mean over the
    whole global batch). Params and state buffers are donated: each step updates in place.
    """
    step = train_step_fn(module, optimizer)
    if mesh is None:
        return jax.jit(step, donate_argnums=(0, 1))
    replicated, split = data_shardings(mesh)
    return jax.jit(step, in_shardings=(replicated, replicated, split),
                   out_shardings=(replicated, replicated, replicated), donate_argnums=(0, 1))


def train_step_fn(module, optimizer):
    """The pure (unjitted) step ``make_train_step`` compiles."""
    import optax

    def step(params, opt_state, batch: Batch):
        loss, grads = jax.value_and_grad(l1_loss)(params, module, batch)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return step


def data_shardings(mesh):
    """(replicated, split along the batch axis) shardings of a 1-D ``"data"`` mesh."""
    from jax.sharding import NamedSharding, PartitionSpec

    return NamedSharding(mesh, PartitionSpec()), NamedSharding(mesh, PartitionSpec("data"))


def step_decay_schedule(lr: float, boundaries, factor: float):
    """The original's MultiStepLR in steps: the update of step n (0-based) uses
    ``lr * factor ** (number of boundaries <= n)`` -- so with boundary 200000 the 200001st
    update is the first at half rate, as in the original's epoch 201."""
    bounds = jnp.asarray(sorted(boundaries), jnp.int32)

    def schedule(count):
        return lr * factor ** jnp.sum(count >= bounds)

    return schedule


def make_optimizer(config):
    """optax Adam with torch's defaults (b1 0.9, b2 0.999, eps 1e-8) on the step decay."""
    import optax

    return optax.adam(step_decay_schedule(config.lr, config.lr_decay_steps, config.lr_decay_factor),
                      b1=0.9, b2=0.999, eps=1e-8)


def init_params(module, seed: int) -> dict:
    """Fresh parameters initialised as PyTorch's defaults initialise the original's layers
    (``nn.Conv2d`` / ``nn.Linear``: weight and bias ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)),
    fan_in = in_channels x kernel area) -- the distribution the paper's recipe starts from,
    not Flax's LeCun-normal/zero default."""
    from flax import traverse_util

    members = 4 if module.local_ensemble else 1
    shapes = jax.eval_shape(module.init, jax.random.PRNGKey(0), jnp.zeros((1, 4, 4, 3)),
                            jnp.zeros((1, members, 1, 2), jnp.int32), jnp.zeros((1, members, 1, 2)),
                            jnp.zeros((1, 1, 2)))["params"]
    flat = traverse_util.flatten_dict(shapes, sep="/")
    layers = sorted({name.rsplit("/", 1)[0] for name in flat})
    key = jax.random.PRNGKey(seed)
    out = {}
    for i, layer in enumerate(layers):
        kernel = flat[f"{layer}/kernel"]
        bound = 1.0 / np.sqrt(np.prod(kernel.shape[:-1]))  # (kh, kw, in, out) or (in, out)
        k_key, b_key = jax.random.split(jax.random.fold_in(key, i))
        out[f"{layer}/kernel"] = jax.random.uniform(k_key, kernel.shape, jnp.float32, -bound, bound)
        if f"{layer}/bias" in flat:
            out[f"{layer}/bias"] = jax.random.uniform(b_key, flat[f"{layer}/bias"].shape, jnp.float32,
                                                      -bound, bound)
    return traverse_util.unflatten_dict(out, sep="/")
