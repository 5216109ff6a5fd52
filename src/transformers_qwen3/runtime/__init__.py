"""llama.cpp at run time: the one driver of llama-cpp-python (``Llama`` + mtmd) that the demo, ``verify``, the
benches and serving use, and ``verify`` (a GGUF in llama.cpp against the checkpoint in transformers)."""
