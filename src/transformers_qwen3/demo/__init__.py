"""The demo model: a synthetic image/audio question-answering task, the small model trained on it (weights shipped
as package data), its training recipe, and the runner that answers in transformers and in llama.cpp."""
