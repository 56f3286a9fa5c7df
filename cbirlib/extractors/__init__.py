"""Built-in extractors, registered through cbirlib's own ``cbirlib`` entry points.

``baseline``
    :class:`cbirlib.extractors.baseline.BaselineExtractor`, a classical descriptor that
    needs no weights (the offline default).
``timm``
    The study's pretrained models and any ``timm:<model>`` (:mod:`cbirlib.extractors.timm_models`).

Create them with :func:`cbirlib.create_extractor`; nothing is imported here.
"""
