"""Serving: the ``serve`` verb on existing engines (llama-cpp-python's server with our chat handler, llama.cpp's
llama-server over RPC, vLLM with our plugin). See docs/serving.md."""
