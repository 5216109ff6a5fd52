"""The import path of the product brief (``from qwen3_multimodal import ...``): a thin alias of transformers_qwen3."""

from transformers_qwen3 import *  # noqa: F403
from transformers_qwen3 import __all__  # noqa: F401
