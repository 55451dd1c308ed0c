"""Batch upscaling of a data set on Apache Beam: ``python -m liif_jax.beam --input GLOB
--output DIR (--scale S | --size WxH) [Beam pipeline options]``.

The pipeline is in ``liif_jax.beam.pipeline`` (it imports Apache Beam, an optional extra:
``pip install '.[beam]' in the liif-jax checkout``); this package imports without it, so the command can say
what to install.
"""
