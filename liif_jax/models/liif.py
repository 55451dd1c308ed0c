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

from liif_jax.geometry import AREA_FLOOR, ensemble_weights, weights_from_areas
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
    encoder: nn.Module  # EDSR or RDN: (B, h, w, 3), mask -> (B, h, w, out_dim)
    imnet: MLP
    local_ensemble: bool = True
    feat_unfold: bool = True
    cell_decode: bool = True

    def encode(self, inp: jnp.ndarray, mask=None) -> jnp.ndarray:
        """(B, h, w, 3) image in the normalised [-1, 1] range -> (B, h, w, C) features.
        ``mask``: see ``EDSR`` (features inside it are those of the unpadded image)."""
        return self.encoder(inp, mask)

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


# --------------------------------------------------------------------------------------
# The precomputed decoder (inference default).
#
# The MLP's first layer acts on [unfolded feature (9C), rel_coord (2), rel_cell (2)]. Its
# feature part is linear in the 3x3 neighbourhood, i.e. exactly a 3x3 convolution of the
# feature map (C -> hidden) -- so it is computed once per low-resolution pixel ("table")
# instead of once per query and ensemble member, and each query gathers one hidden-wide
# row instead of a 9C-wide one. The coordinate and cell parts are added per query. Same
# arithmetic up to float32 summation order (~1e-6).


def split_first_layer(params, module: LIIF):
    """(feature kernel (in_feat, hidden), rel kernel (2, hidden), cell kernel (2, hidden) or
    None, bias (hidden,)) of the MLP's first Dense."""
    dense0 = params["imnet"]["dense_0"]
    kernel = dense0["kernel"]
    n_feat = kernel.shape[0] - 2 - (2 if module.cell_decode else 0)
    cell = kernel[n_feat + 2:n_feat + 4] if module.cell_decode else None
    return kernel[:n_feat], kernel[n_feat:n_feat + 2], cell, dense0["bias"]


def feature_table(params, module: LIIF, feat, precision=None):
    """First layer's feature part + bias at every feature pixel: (B, h, w, hidden)."""
    k_feat, _, _, bias = split_first_layer(params, module)
    c = feat.shape[-1]
    if module.feat_unfold:
        # Rows of k_feat are ordered c * 9 + (ky * 3 + kx): reshape to (C, 3, 3, hidden), then
        # to the HWIO layout of a 3x3 convolution. Zero padding 1 == the unfold's padding.
        kernel = k_feat.reshape(c, 3, 3, -1).transpose(1, 2, 0, 3).astype(feat.dtype)
        out = jax.lax.conv_general_dilated(feat, kernel, (1, 1), ((1, 1), (1, 1)),
                                           dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                           precision=precision,
                                           preferred_element_type=jnp.float32)
    else:
        out = jnp.einsum("bhwc,cd->bhwd", feat, k_feat.astype(feat.dtype), precision=precision,
                         preferred_element_type=jnp.float32)
    return out + bias


def gather_table_rows(table, width, row_idx, col_idx):
    """Table rows for a (CH, CW) block of output pixels and every ensemble member.

    ``table`` (N, hidden): ``feature_table`` rows flattened with row stride ``width``;
    ``row_idx`` (S, CH) / ``col_idx`` (S, CW): the feature row/column each output row/column
    reads for each of the S per-axis shifts. Members are all (a, b) shift pairs, row shift
    outer (the original's order). Returns (S*S, CH, CW, hidden).
    """
    members = [table[row_idx[a][:, None] * width + col_idx[b][None, :]]
               for a in range(row_idx.shape[0]) for b in range(col_idx.shape[0])]
    return jnp.stack(members)


def decode_gathered(params, module: LIIF, gathered, row_rel, col_rel, rel_cell,
                    compute_dtype=jnp.float32, precision=None):
    """Finish the decoder from gathered table rows (M, CH, CW, hidden): add the coordinate
    and cell terms of the first layer, run the rest of the MLP, blend the ensemble.
    ``row_rel`` (S, CH), ``col_rel`` (S, CW) float32; ``rel_cell`` (2,). Geometry and ensemble
    weights stay float32; the MLP runs in ``compute_dtype``. Returns (CH, CW, 3) float32 in
    the model's normalised range."""
    _, k_rel, k_cell, _ = split_first_layer(params, module)
    coord_bias = 0.0
    if k_cell is not None:
        coord_bias = rel_cell[0] * k_cell[0] + rel_cell[1] * k_cell[1]
    preds, areas = [], []
    m = 0
    for a in range(row_rel.shape[0]):
        for b in range(col_rel.shape[0]):
            h = gathered[m].astype(jnp.float32)
            h = h + row_rel[a][:, None, None] * k_rel[0] + col_rel[b][None, :, None] * k_rel[1]
            preds.append(_mlp_tail(params, h + coord_bias, compute_dtype, precision))
            areas.append(jnp.abs(row_rel[a][:, None] * col_rel[b][None, :]) + AREA_FLOOR)
            m += 1
    weights = weights_from_areas(areas)
    out = preds[0] * weights[0][..., None]
    for pred, weight in zip(preds[1:], weights[1:]):
        out = out + pred * weight[..., None]
    return out


def _mlp_tail(params, h0, compute_dtype, precision):
    """ReLU after the first layer, then the MLP's remaining Dense layers."""
    imnet = params["imnet"]
    n_dense = len(imnet)
    x = jax.nn.relu(h0).astype(compute_dtype)
    for i in range(1, n_dense):
        layer = imnet[f"dense_{i}"]
        x = jnp.dot(x, layer["kernel"].astype(compute_dtype), precision=precision,
                    preferred_element_type=jnp.float32) + layer["bias"]
        if i < n_dense - 1:
            x = jax.nn.relu(x).astype(compute_dtype)
    return x
