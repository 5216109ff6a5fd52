"""`make demo`: the main job, end to end, on the embedded demo model.

Today (foundation): create the tiny model with the real Qwen3 tokenizer, write it in our Hub layout, load it in a
clean Python process where this package cannot be imported (as a Hub user would, through
``AutoModelForCausalLM`` with ``trust_remote_code=True``), generate and print. The tiny model is randomly
initialised, so its words are noise; what the demo shows is that the whole path works.
"""

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CLEAN_LOAD = r"""
import sys, time, torch
sys.path[:] = [p for p in sys.path if not p.endswith('/src')]
sys.meta_path[:] = [f for f in sys.meta_path if 'editable' not in type(f).__module__.lower()]
import importlib.util
assert importlib.util.find_spec('transformers_qwen3') is None, 'package importable: not a clean process'
from transformers import AutoModelForCausalLM, AutoTokenizer
folder = sys.argv[1]
t0 = time.perf_counter()
tok = AutoTokenizer.from_pretrained(folder, trust_remote_code=True)
model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True).eval()
print(f'loaded {type(model).__name__} from remote code ({type(model).__module__}) in {time.perf_counter() - t0:.1f}s')
messages = [{'role': 'user', 'content': '解释这张图片中的科学原理'}]
inputs = tok.apply_chat_template(messages, add_generation_prompt=True, enable_thinking=False,
                                 return_tensors='pt', return_dict=True)
t0 = time.perf_counter()
out = model.generate(**inputs, max_new_tokens=16, do_sample=False)
dt = time.perf_counter() - t0
print('prompt :', repr(tok.decode(inputs['input_ids'][0])))
print('answer :', repr(tok.decode(out[0, inputs['input_ids'].shape[1]:], skip_special_tokens=True)))
print(f'speed  : {16 / dt:.1f} tokens/s (greedy, batch 1, CPU)')
"""


def main() -> int:
    from .checkpoint import init_checkpoint
    from .tokenizer import build_qwen3_tokenizer

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "qwen3-multimodal-tiny"
        t0 = time.perf_counter()
        init_checkpoint(folder, "tiny", seed=0, tokenizer=build_qwen3_tokenizer())
        print(f"wrote {folder.name} in our Hub layout in {time.perf_counter() - t0:.1f}s:")
        for path in sorted(folder.iterdir()):
            print(f"  {path.name:40s} {path.stat().st_size:>12,d} bytes")
        env = {**os.environ, "HF_HUB_OFFLINE": "1"}
        env.pop("PYTHONPATH", None)
        return subprocess.run([sys.executable, "-I", "-c", CLEAN_LOAD, str(folder)], env=env, cwd=tmp).returncode


if __name__ == "__main__":
    sys.exit(main())
