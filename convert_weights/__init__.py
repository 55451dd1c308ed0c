"""Convert the authors' PyTorch LIIF checkpoints to liif-jax weight files, without torch and
without running any code from the checkpoint. ``python -m convert_weights SRC.pth DST``."""

from convert_weights.convert import convert_file, model_from_checkpoint_bytes
from convert_weights.torch_pickle import load_checkpoint

__all__ = ["convert_file", "load_checkpoint", "model_from_checkpoint_bytes"]
