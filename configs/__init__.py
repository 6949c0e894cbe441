"""ml_collections sampling configs: ``t2mv.py`` (text→MV) and ``i2mv.py`` (image→MV).

Each ``get_config()`` returns a ``ConfigDict``: checkpoint layout (``checkpoint_dir`` +
``subdirs``), frames / resolution, orbit, negative prompt, seed, ``sampler`` (the fields of
:class:`videomv_jax.diffusion.sampler.SamplerConfig`) and ``output``. ``sample.py --set
key=value`` overrides any of them (dotted keys). The rasterizer's own settings are the named
presets of :mod:`videomv_jax.render.rasterize`.
"""
