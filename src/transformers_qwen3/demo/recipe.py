"""The recipe that made the committed demo weights, and the one command that reruns it
(``transformers-qwen3 demo retrain OUT``).

Two stages of :func:`.train.train`, in order, with the settings ``weights/training.json`` records (its top level is
the last stage; ``continued_from`` holds the first). Why two: the first 900-step run ended at 79 % (image) / 94 %
(audio) with validation accuracy still climbing, so a second run continued from it with a fresh warm-up and cosine
schedule. One 1,800-step run would be the tidier recipe, but it is not the one the committed bytes came from.

The earlier stage is written to ``OUT/<stage>/``, the last one to ``OUT/`` itself; afterwards the new test accuracy
is printed beside the committed record's. With the recorded torch build and one thread the bytes should match the
committed file too; with another build only the accuracy is expected to (docs/demo.md says why).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from .model import RECORD_FILE, TRAINED_FILE
from .train import TrainSettings, train


@dataclass(frozen=True)
class Stage:
    name: str
    settings: TrainSettings
    measure: bool  # time answer-position vs full-vocabulary steps first (does not change the run)
    init_from: str | None = None  # the earlier stage this one continues from


RECIPE = (
    Stage("stage1", TrainSettings(eval_every=100), measure=True),
    Stage("stage2", TrainSettings(eval_every=100), measure=False, init_from="stage1"),
)


def stage_dirs(out_dir: Path) -> dict[str, Path]:
    """Where each stage writes: earlier stages in OUT/<name>/, the last one in OUT/."""
    return {s.name: (out_dir if s is RECIPE[-1] else out_dir / s.name) for s in RECIPE}


def reproduce(out_dir: Path, overrides: dict | None = None, tokenizer=None) -> dict:
    """Run every stage of :data:`RECIPE` in order; ``overrides`` replaces settings in all of them (tests use a few
    steps). Returns the last stage's record."""
    dirs = stage_dirs(Path(out_dir))
    record = {}
    for stage in RECIPE:
        settings = dataclasses.replace(stage.settings, **(overrides or {}))
        init = dirs[stage.init_from] / TRAINED_FILE.name if stage.init_from else None
        print(f"== {stage.name}: {settings} ==", flush=True)
        record = train(settings, dirs[stage.name], measure=stage.measure, init_from=init, tokenizer=tokenizer)
    return record


def comparison(record: dict, committed: dict) -> list[str]:
    """Lines: the new run's test accuracy beside the committed record's, and whether the bytes are the same."""
    lines = [f"{'test accuracy':<14} {'committed':>10} {'this run':>10}"]
    for key in ("image", "audio"):
        lines.append(f"{key:<14} {committed['test_accuracy'][key]:>10.1%} {record['test_accuracy'][key]:>10.1%}")
    same = record["trained_sha256"] == committed["trained_sha256"]
    env, env_then = record["environment"], committed["environment"]
    lines.append(
        f"weights {'identical to' if same else 'differ from'} the committed file "
        f"(torch {env['torch']} here, {env_then['torch']} then; {env['threads']} vs {env_then['threads']} threads)"
    )
    return lines


class Retrain:
    """Rerun both recorded training stages (about 45 minutes at one thread) and compare with the committed record."""

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "out", type=Path, help="folder for the new weights (the last stage; earlier in OUT/<stage>)"
        )

    @staticmethod
    def run(args: argparse.Namespace) -> int:
        record = reproduce(args.out)
        committed = json.loads(RECORD_FILE.read_text())
        print("\n".join(comparison(record, committed)))
        written = args.out / TRAINED_FILE.name
        print(f"wrote {written} (sha256 {hashlib.sha256(written.read_bytes()).hexdigest()[:12]}) and its record")
        return 0
