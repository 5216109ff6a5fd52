"""``transformers-qwen3 demo STEP``: the demo's commands, one sub-verb each, in the module that does the work.

- ``run``: the demo end to end (``make demo``): the trained model answers held-out questions in transformers and in
  llama.cpp (:mod:`.run`);
- ``build``: rebuild the Hub-layout checkpoint from the committed weights (:mod:`.model`);
- ``eval``: held-out accuracy of the committed weights (:mod:`.evaluate`);
- ``train``: one training stage with the given settings (:mod:`.train`);
- ``retrain``: rerun the recorded recipe that made the committed weights, both stages (:mod:`.recipe`);
- ``synthetic``: write the synthetic image/audio data set as chat JSONL + files (:mod:`.synthetic`).

"""

from __future__ import annotations

import argparse
import importlib

STEPS = {
    "run": ("transformers_qwen3.demo.run", "the demo end to end: answers in transformers and in llama.cpp"),
    "build": ("transformers_qwen3.demo.model:Build", "rebuild the demo model's Hub-layout checkpoint"),
    "eval": ("transformers_qwen3.demo.evaluate:Eval", "held-out accuracy of the committed weights"),
    "train": ("transformers_qwen3.demo.train:Train", "one training stage of the demo model"),
    "retrain": ("transformers_qwen3.demo.recipe:Retrain", "rerun both recorded training stages (~45 min)"),
    "synthetic": ("transformers_qwen3.demo.synthetic", "write the synthetic image/audio question data set"),
}


def _step(name: str):
    module_name, _, attr = STEPS[name][0].partition(":")
    module = importlib.import_module(module_name)
    return getattr(module, attr) if attr else module


def add_arguments(parser: argparse.ArgumentParser) -> None:
    steps = parser.add_subparsers(dest="demo_step", required=True, metavar="STEP")
    for name, (_, help_text) in STEPS.items():
        step = _step(name)
        sub = steps.add_parser(name, help=help_text, description=help_text)
        step.add_arguments(sub)
        sub.set_defaults(demo_run=step.run)


def run(args: argparse.Namespace) -> int:
    return args.demo_run(args)
