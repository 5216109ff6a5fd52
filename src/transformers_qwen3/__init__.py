"""transformers-qwen3: a multimodal Qwen3 for Hugging Face transformers and llama.cpp.

Importing this package registers the model with transformers' Auto classes, so pip users can load our folders
without ``trust_remote_code``. This file never ships to the Hub: the three Hub files
(configuration / modeling / processing) are self-contained.
"""

from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForImageTextToText,
    AutoModelForSequenceClassification,
    AutoProcessor,
    AutoTokenizer,
)

from .remote.configuration_qwen3_multimodal import Qwen3MultimodalConfig, Qwen3MultimodalTextConfig
from .remote.media_qwen3_multimodal import MediaError, MediaPolicy
from .remote.modeling_qwen3_multimodal import (
    Qwen3MultimodalForConditionalGeneration,
    Qwen3MultimodalForSequenceClassification,
    Qwen3MultimodalModel,
    Qwen3MultimodalPreTrainedModel,
)
from .remote.processing_qwen3_multimodal import Qwen3MultimodalProcessor
from .remote.tokenization_qwen3_multimodal import Qwen3MultimodalTokenizer

__version__ = "0.1.0"

AutoConfig.register(Qwen3MultimodalConfig.model_type, Qwen3MultimodalConfig, exist_ok=True)
AutoConfig.register(Qwen3MultimodalTextConfig.model_type, Qwen3MultimodalTextConfig, exist_ok=True)
AutoModel.register(Qwen3MultimodalConfig, Qwen3MultimodalModel, exist_ok=True)
AutoModelForCausalLM.register(Qwen3MultimodalConfig, Qwen3MultimodalForConditionalGeneration, exist_ok=True)
AutoModelForImageTextToText.register(Qwen3MultimodalConfig, Qwen3MultimodalForConditionalGeneration, exist_ok=True)
AutoModelForSequenceClassification.register(
    Qwen3MultimodalConfig, Qwen3MultimodalForSequenceClassification, exist_ok=True
)
AutoTokenizer.register(Qwen3MultimodalConfig, fast_tokenizer_class=Qwen3MultimodalTokenizer, exist_ok=True)
AutoProcessor.register(Qwen3MultimodalConfig, Qwen3MultimodalProcessor, exist_ok=True)

__all__ = [
    "Qwen3MultimodalConfig",
    "Qwen3MultimodalTextConfig",
    "Qwen3MultimodalModel",
    "Qwen3MultimodalPreTrainedModel",
    "Qwen3MultimodalForConditionalGeneration",
    "Qwen3MultimodalForSequenceClassification",
    "Qwen3MultimodalTokenizer",
    "Qwen3MultimodalProcessor",
    "MediaError",
    "MediaPolicy",
    "Pipeline",
]


def __getattr__(name):
    # The Pipeline (generation threads, streaming) loads on first use only.
    if name == "Pipeline":
        from .inference.pipeline import Pipeline

        return Pipeline
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
