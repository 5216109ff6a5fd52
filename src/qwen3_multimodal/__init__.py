"""The import path of the product brief (``from qwen3_multimodal import Pipeline``): a thin alias of
transformers_qwen3, as lazy as it is (no star import, which would load every name at once)."""

import transformers_qwen3 as _package

__all__ = list(_package.__all__)


def __getattr__(name):
    return getattr(_package, name)


def __dir__():
    return sorted(list(globals()) + __all__)
