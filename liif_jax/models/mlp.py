"""The implicit decoder's MLP: Dense + ReLU for each hidden width, then a Dense to RGB."""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp


class MLP(nn.Module):
    hidden_list: Sequence[int]
    out_dim: int = 3

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        for i, width in enumerate(self.hidden_list):
            x = nn.relu(nn.Dense(width, name=f"dense_{i}")(x))
        return nn.Dense(self.out_dim, name=f"dense_{len(self.hidden_list)}")(x)
