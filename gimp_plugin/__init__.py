"""The GIMP plug-ins of liif-jax, shipped as data: ``liif-jax gimp install`` copies them into
GIMP's plug-in folders. GIMP runs them in its own Python, which never imports JAX; they talk
to liif-jax through ``liif_bridge_client``."""
