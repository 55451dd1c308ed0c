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


def make_train_step(module, optimizer):
    """A jitted ``step(params, opt_state, batch) -> (params, opt_state, loss)``."""
    import optax

    @jax.jit
    def step(params, opt_state, batch: Batch):
        loss, grads = jax.value_and_grad(l1_loss)(params, module, batch)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return step
