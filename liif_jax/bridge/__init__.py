"""The subprocess bridge: how programs that cannot import JAX (GIMP's Python) use liif-jax.
``protocol`` defines the messages; ``worker`` serves them on stdin/stdout (``liif-jax
bridge``) or on one connection of ``server`` (``liif-jax serve``), whose local endpoints
(a Unix socket; a named pipe with a key on Windows) are in ``transport``."""
