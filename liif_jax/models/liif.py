"""LIIF: an encoder's feature map queried by an MLP at continuous coordinates.

Why Flax Linen rather than NNX: inference and training here are pure functions of a params
pytree -- ``jit``-compiled, sharded with ``jax.sharding``, stepped with optax, and written
1:1 to the safetensors weight file. Linen gives exactly that (``apply(params, ...)``) with no
mutable module state to split and merge around every transform.

The geometry (which feature each query reads, its relative coordinate, the cell) is an
*input* here, computed on the host by ``liif_jax.geometry`` with the original's exact float32
arithmetic. The module does what depends on parameters: encode, gather, decode, blend.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import flax.linen as nn

from liif_jax.geometry import ensemble_weights
from liif_jax.models.edsr import EDSR
from liif_jax.models.mlp import MLP


def gather_features(feat: jnp.ndarray, index: jnp.ndarray, unfold: bool) -> jnp.ndarray:
    """Features of one image ``feat`` (h, w, C) at ``index`` (..., 2) = (row, col).

    With ``unfold`` each query reads its feature's 3x3 neighbourhood (zero padded), ordered
    channel-major (``c * 9 + k``, k row-major over the 3x3 window) exactly like the original's
    ``F.unfold(feat, 3, padding=1)``: returns (..., 9C); without, (..., C).
    """
    if not unfold:
        return feat[index[..., 0], index[..., 1]]
    padded = jnp.pad(feat, ((1, 1), (1, 1), (0, 0)))
    ky = jnp.repeat(jnp.arange(3), 3)  # k = ky * 3 + kx
    kx = jnp.tile(jnp.arange(3), 3)
    window = padded[index[..., 0:1] + ky, index[..., 1:2] + kx]  # (..., 9, C)
    window = jnp.swapaxes(window, -1, -2)  # (..., C, 9): channel-major
    return window.reshape(*window.shape[:-2], -1)


class LIIF(nn.Module):
    encoder: EDSR
    imnet: MLP
    local_ensemble: bool = True
    feat_unfold: bool = True
    cell_decode: bool = True

    def encode(self, inp: jnp.ndarray) -> jnp.ndarray:
        """(B, h, w, 3) image in the normalised [-1, 1] range -> (B, h, w, C) features."""
        return self.encoder(inp)

    def query_rgb(self, feat, index, rel_coord, rel_cell):
        """Decode queries. ``feat`` (B, h, w, C); ``index`` int (B, M, Q, 2); ``rel_coord``
        (B, M, Q, 2); ``rel_cell`` (B, Q, 2). Returns (B, Q, 3) in the normalised range."""
        q_feat = jax.vmap(gather_features, in_axes=(0, 0, None))(feat, index, self.feat_unfold)
        parts = [q_feat, rel_coord.astype(q_feat.dtype)]
        if self.cell_decode:
            cell = jnp.broadcast_to(rel_cell[:, None], rel_coord.shape)
            parts.append(cell.astype(q_feat.dtype))
        pred = self.imnet(jnp.concatenate(parts, axis=-1))  # (B, M, Q, 3)
        # Weights stay float32 whatever the compute dtype (see geometry.ensemble_weights).
        weights = ensemble_weights(jnp.swapaxes(rel_coord, 0, 1).astype(jnp.float32))
        out = pred[:, 0].astype(jnp.float32) * weights[0][..., None]
        for m in range(1, len(weights)):
            out = out + pred[:, m].astype(jnp.float32) * weights[m][..., None]
        return out

    def __call__(self, inp, index, rel_coord, rel_cell):
        return self.query_rgb(self.encode(inp), index, rel_coord, rel_cell)
