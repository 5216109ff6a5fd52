"""vLLM support: our architecture registered with vLLM through its ``vllm.general_plugins`` entry point.

vLLM calls :func:`register` in every process it starts (the engine, each worker, the API server), before it reads
a model's config, so a Hub-layout folder of ours loads with ``LLM(folder)`` or ``python -m
vllm.entrypoints.openai.api_server --model folder`` once this package is installed beside vLLM (docs/vllm.md).

This module imports nothing from vLLM: ``import transformers_qwen3`` without vLLM installed is unaffected. The model
class (:mod:`.model`) is registered by its import path, so vLLM imports it only when it builds the model.
"""

ARCHITECTURE = "Qwen3MultimodalForConditionalGeneration"  # config.json's "architectures", as save_hub_folder writes it
MODEL_CLASS = "transformers_qwen3.vllm_plugin.model:Qwen3MultimodalForConditionalGeneration"


def register() -> None:
    """The entry point: registers the model class with vLLM's ModelRegistry (idempotent).

    Importing this package also imported ``transformers_qwen3``, whose import registers our config, tokenizer and
    processor with transformers' Auto classes, so vLLM reads our folders without ``trust_remote_code``.
    """
    from vllm import ModelRegistry

    if ARCHITECTURE not in ModelRegistry.get_supported_archs():
        ModelRegistry.register_model(ARCHITECTURE, MODEL_CLASS)
