"""Values several parts of liif-jax name, in a module that imports nothing: the command's
parser, the Beam pipeline and the bridge use them without importing JAX (``engine`` does)."""

# What ``engine.RenderSettings.precision`` accepts (engine.PRECISIONS is this tuple).
PRECISIONS = ("float32", "bfloat16")
