"""Our checkpoint layout: ``init`` (a preset shape, randomly initialised), ``import`` (native Qwen3 / Qwen3-VL /
Qwen3-Omni folders), the preset shapes, the tokenizer build and the Hub-folder writer (weights + config + the remote
code + tokenizer + processor)."""
