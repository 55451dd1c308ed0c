"""The subprocess bridge: how programs that cannot import JAX (GIMP's Python) use liif-jax.
``protocol`` defines the messages; ``worker`` serves them on stdin/stdout."""
