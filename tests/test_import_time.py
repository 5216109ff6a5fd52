"""``import transformers_qwen3`` is cheap and still registers our classes with transformers' Auto classes.

Each check runs in a fresh interpreter (sys.modules is what is being tested). Times are not asserted (they go to
docs/benchmarks.md); what is asserted is which modules an import loads, and which classes the Auto classes resolve.
"""

import json
import subprocess
import sys

import pytest

from transformers_qwen3.checkpoint.build import init_checkpoint

MODELING = "transformers_qwen3.remote.modeling_qwen3_multimodal"
PROCESSING = "transformers_qwen3.remote.processing_qwen3_multimodal"


def run_python(code: str) -> dict:
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_import_loads_neither_torch_nor_transformers():
    loaded = run_python(
        "import json, sys\nimport transformers_qwen3\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers'))))"
    )
    assert loaded == [], loaded[:20]


def test_cli_help_loads_neither_torch_nor_transformers():
    loaded = run_python(
        "import contextlib, io, json, sys\nfrom transformers_qwen3 import cli\n"
        "with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
        "    cli.main(['--help'])\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers'))))"
    )
    assert loaded == [], loaded[:20]


@pytest.fixture(scope="module")
def folder(tmp_path_factory, qwen3_tokenizer):
    path = tmp_path_factory.mktemp("tiny") / "model"
    init_checkpoint(path, "tiny-mm", seed=0, tokenizer=qwen3_tokenizer)  # with towers: it has a processor
    return path


RESOLVE = """
import json, sys
{before}
import transformers_qwen3
from transformers import AutoConfig, AutoModelForCausalLM, AutoProcessor, AutoTokenizer
after_auto_imports = [m for m in ({modeling!r}, {processing!r}) if m in sys.modules]
folder = {folder!r}
loaded = [AutoConfig.from_pretrained(folder), AutoModelForCausalLM.from_pretrained(folder),
          AutoTokenizer.from_pretrained(folder), AutoProcessor.from_pretrained(folder)]
print(json.dumps({{"early": after_auto_imports,
                  "classes": [type(x).__module__ + "." + type(x).__name__ for x in loaded]}}))
"""
EXPECTED = [
    "transformers_qwen3.remote.configuration_qwen3_multimodal.Qwen3MultimodalConfig",
    f"{MODELING}.Qwen3MultimodalForConditionalGeneration",
    "transformers_qwen3.remote.tokenization_qwen3_multimodal.Qwen3MultimodalTokenizer",
    f"{PROCESSING}.Qwen3MultimodalProcessor",
]


@pytest.mark.parametrize(
    "before",
    [
        "",
        "from transformers import AutoModel, Qwen3Config",
        "import transformers_qwen3.remote.modeling_qwen3_multimodal",
    ],
    ids=["fresh", "transformers_first", "modeling_first"],
)
def test_auto_classes_resolve_our_classes_without_trust_remote_code(folder, before):
    """Whatever was imported first, the Auto classes give our package's classes (not a remote-code copy), and
    importing the Auto classes alone loads neither the modeling nor the processing file."""
    result = run_python(
        RESOLVE.format(
            before=before,
            modeling=MODELING if "modeling" not in before else "-",
            processing=PROCESSING,
            folder=str(folder),
        )
    )
    assert result["classes"] == EXPECTED
    assert result["early"] == []


ALONE = """
import json
import transformers_qwen3
from transformers import {auto}
loaded = {auto}.from_pretrained({folder!r})
print(json.dumps({{"classes": [type(loaded).__module__ + "." + type(loaded).__name__]}}))
"""


@pytest.mark.parametrize(
    "auto,expected",
    [("AutoProcessor", EXPECTED[3]), ("AutoTokenizer", EXPECTED[2]), ("AutoModelForCausalLM", EXPECTED[1])],
)
def test_each_auto_class_alone_needs_no_trust_remote_code(folder, auto, expected):
    """An Auto class used first and alone (no AutoConfig before it) finds our class: transformers 5.19's
    AutoProcessor looks the processor up by name before it reads config.json, and asked for trust_remote_code."""
    assert run_python(ALONE.format(auto=auto, folder=str(folder)))["classes"] == [expected]
