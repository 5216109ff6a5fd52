"""Shared fixtures. Tests pin torch to one thread: two threads on a busy 2-core machine made small matmuls ~1000x
slower, and results must not depend on the thread count.

transformers copies a trust_remote_code folder's .py files into ``$HF_MODULES_CACHE`` (default
~/.cache/huggingface/modules) with a plain, non-atomic ``shutil.copyfile`` and imports them from there. Two pytest
processes loading same-named folders (pytest-xdist workers, or two people's runs) could import a half-written file, so
each test process, and the subprocesses it starts, gets its own folder, removed at exit. Set before transformers is
imported: it reads the variable once, at import."""

import atexit
import os
import shutil
import tempfile

import pytest
import torch

_MODULES_CACHE = tempfile.mkdtemp(prefix="transformers-qwen3-tests-hf-modules-")
os.environ["HF_MODULES_CACHE"] = _MODULES_CACHE
atexit.register(shutil.rmtree, _MODULES_CACHE, ignore_errors=True)

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def qwen3_tokenizer():
    from transformers_qwen3.checkpoint.tokenizer import build_qwen3_tokenizer

    return build_qwen3_tokenizer()
