"""The Hub code: the files of this folder (not this one) ship verbatim to every model folder we write.

They import only stdlib, torch, transformers and each other (flat relative imports); tests/test_layout.py keeps that
true. ``transformers_qwen3`` registers their classes with the Auto classes; a Hub user runs them with
``trust_remote_code=True``.
"""
