"""Outputs never destroy what we did not write, a crash leaves nothing that lingers, and a folder's code runs only
when asked: `init` / `import` / `export` destinations, stale temporaries, untrusted remote code, unreachable Hub."""

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from transformers_qwen3.checkpoint.hub_folder import HUB_FILES, REMOTE_DIR
from transformers_qwen3.cli import main
from transformers_qwen3.outputs import atomic_file, atomic_folder, clean_stale_temps

CLI = [sys.executable, "-m", "transformers_qwen3.cli"]
# The CLI with init's shard writer held for a minute after the first shard is on disk: a signal sent then lands
# mid-write for certain (writing a whole 0.6B model can take a fraction of a second, too short to hit by polling).
CLI_SLOW_WRITE = [
    sys.executable,
    "-c",
    """
import sys, time
from transformers_qwen3.checkpoint import build
from transformers_qwen3.cli import main
real = build.save_file
def held(*args, **kwargs):
    real(*args, **kwargs)
    time.sleep(60)
build.save_file = held
sys.exit(main(sys.argv[1:]))
""",
]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = tmp_path_factory.mktemp("src") / "tiny"
    assert main(["init", str(folder), "--preset", "tiny"]) == 0
    return folder


@pytest.fixture(scope="module")
def native(tmp_path_factory):
    """A tiny native Qwen3ForCausalLM folder (what `import` takes)."""
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(0)
    config = Qwen3Config(
        vocab_size=151936, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=8, tie_word_embeddings=True,
    )  # fmt: skip
    folder = tmp_path_factory.mktemp("native") / "qwen3"
    Qwen3ForCausalLM(config).save_pretrained(folder)
    return folder


def _user_files(folder: Path) -> dict[str, bytes]:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "notes.txt").write_text("my notes")
    (folder / "src").mkdir(exist_ok=True)
    (folder / "src" / "work.py").write_text("print('mine')")
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def _error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1, err
    return lines[0]


# ---- destinations -------------------------------------------------------------------------------------------------


DESTRUCTIVE = {
    "init-cwd": lambda tiny, native: ["init", ".", "--preset", "tiny", "--force"],
    "init-parent": lambda tiny, native: ["init", "..", "--preset", "tiny", "--force"],
    "export-cwd": lambda tiny, native: ["export", str(tiny), ".", "--force"],
    "import-cwd": lambda tiny, native: ["import", str(native), ".", "--force"],
}


@pytest.mark.parametrize("case", DESTRUCTIVE)
def test_force_never_replaces_the_current_folder_or_a_parent(tiny, native, tmp_path, monkeypatch, capsys, case):
    work = tmp_path / "parent" / "work"
    before = _user_files(work)
    parent_before = _snapshot(tmp_path / "parent")
    monkeypatch.chdir(work)
    assert main(DESTRUCTIVE[case](tiny, native)) == 2
    assert "current folder" in _error_line(capsys)
    assert _snapshot(work) == before
    assert _snapshot(tmp_path / "parent") == parent_before


def test_force_refuses_a_folder_holding_files_we_did_not_write(tmp_path, capsys):
    dst = tmp_path / "dst"
    before = _user_files(dst)
    assert main(["init", str(dst), "--preset", "tiny", "--force"]) == 2
    line = _error_line(capsys)
    assert "notes.txt" in line and "does not write" in line
    assert _snapshot(dst) == before


def test_force_replaces_our_own_output(tmp_path, capsys):
    dst = tmp_path / "dst"
    assert main(["init", str(dst), "--preset", "tiny", "--seed", "1"]) == 0
    first = (dst / "model.safetensors").read_bytes()
    assert main(["init", str(dst), "--preset", "tiny", "--seed", "2"]) == 2  # exists, no --force
    assert "--force" in _error_line(capsys)
    assert main(["init", str(dst), "--preset", "tiny", "--seed", "2", "--force"]) == 0
    assert (dst / "model.safetensors").read_bytes() != first
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "temporaries left beside the output"


@pytest.mark.parametrize("inside", [False, True], ids=["dst-is-source", "dst-contains-source"])
def test_destination_never_is_or_contains_the_source(native, tmp_path, capsys, inside):
    src = tmp_path / "outer" / "model"
    shutil.copytree(native, src)
    before = _snapshot(tmp_path / "outer")
    dst = src.parent if inside else src
    assert main(["import", str(src), str(dst), "--force"]) == 2
    assert "source" in _error_line(capsys)
    assert _snapshot(tmp_path / "outer") == before


def test_a_failed_write_leaves_nothing(tmp_path):
    dst = tmp_path / "dst"
    with pytest.raises(RuntimeError), atomic_folder(dst) as tmp:
        (tmp / "config.json").write_text("{}")
        raise RuntimeError("boom")
    with pytest.raises(RuntimeError), atomic_file(tmp_path / "x.gguf") as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


# ---- stale temporaries after kill -9 --------------------------------------------------------------------------------


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid  # reaped: no process has this id now (reuse within the test is vanishingly unlikely)


def test_stale_temporaries_of_a_dead_writer_are_removed_and_live_ones_kept(tmp_path, capsys):
    dead = _dead_pid()
    stale_dir = tmp_path / f".model.{dead}-abc123.tmp"
    stale_dir.mkdir()
    (stale_dir / "model.safetensors").write_bytes(b"x" * 1000)
    stale_file = tmp_path / f".model-F16.gguf.{dead}-xyz.partial"
    stale_file.write_bytes(b"y" * 10)
    live = tmp_path / f".other.{os.getpid()}-def456.tmp"
    live.mkdir()
    foreign = tmp_path / ".model.tmp"  # not our naming: never touched
    foreign.write_text("user's")
    removed = clean_stale_temps(tmp_path)
    assert sorted(removed) == sorted([stale_dir, stale_file])
    assert live.exists() and foreign.exists()
    assert "interrupted run" in capsys.readouterr().err


def test_init_killed_mid_write_is_cleaned_by_the_next_run(tmp_path):
    """A real kill -9 during `init`'s shard writing, then another `init` into the same folder."""
    proc = subprocess.Popen(
        [*CLI_SLOW_WRITE, "init", "big", "--preset", "tiny"], cwd=tmp_path, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 240
    temps = []
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            temps = [p for p in tmp_path.glob(".big.*.tmp") if any(p.glob("*.safetensors"))]
            if temps:
                break
            time.sleep(0.2)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert temps, "init never started writing its temporary folder"
    assert temps[0].exists(), "kill -9 leaves the temporary behind (the case this test is about)"
    run = subprocess.run([*CLI, "init", "small", "--preset", "tiny"], cwd=tmp_path, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert "interrupted run" in run.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["small"]


def test_convert_removes_what_a_killed_conversion_left(tiny, tmp_path, capsys):
    """convert's temporaries carry the writer's pid, so a dead writer's are found and removed by the next run."""
    outdir = tmp_path / "gguf"
    outdir.mkdir()
    stale = outdir / f".tiny-F32.gguf.{_dead_pid()}-abc.partial"
    stale.write_bytes(b"half a gguf")
    assert main(["convert", str(tiny), str(outdir), "--outtype", "f32"]) == 0
    assert "interrupted run" in capsys.readouterr().err
    assert sorted(p.name for p in outdir.iterdir()) == ["tiny-F32.gguf"]


def test_ctrl_c_is_one_line_and_leaves_nothing(tmp_path):
    proc = subprocess.Popen(
        [*CLI_SLOW_WRITE, "init", "big", "--preset", "tiny"],
        cwd=tmp_path,
        stderr=subprocess.PIPE,
        text=True,
        # as in a terminal: pytest-xdist's workers ignore SIGINT, and an ignored signal is inherited
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.monotonic() + 240
    written = []
    while time.monotonic() < deadline and proc.poll() is None and not written:
        written = [p for p in tmp_path.glob(".big.*.tmp/*.safetensors")]
        time.sleep(0.2)
    assert written and proc.poll() is None, "init never reached its shard writer"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "interrupted" in err, err
    assert list(tmp_path.iterdir()) == []


# ---- a folder's code runs only when asked ---------------------------------------------------------------------------


def _tampered(tiny: Path, tmp_path: Path) -> tuple[Path, Path]:
    """A copy of ``tiny`` whose processing file writes a marker file when imported (what hostile code could do)."""
    folder = tmp_path / "tampered"
    shutil.copytree(tiny, folder)
    marker = tmp_path / "code-ran"
    code = folder / "processing_qwen3_multimodal.py"
    code.write_text(f"open({str(marker)!r}, 'w').close()\n" + code.read_text())
    return folder, marker


def _cli(args, tmp_path, **env):
    environ = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "modules"), "HF_HUB_OFFLINE": "1", **env}
    return subprocess.run([*CLI, *args], cwd=tmp_path, capture_output=True, text=True, env=environ, timeout=600)


def test_generate_runs_the_installed_code_unless_trusted(tiny, tmp_path):
    folder, marker = _tampered(tiny, tmp_path)
    run = _cli(["generate", str(folder), "--prompt", "hi", "--max-new-tokens", "2"], tmp_path)
    assert run.returncode == 0, run.stderr
    assert not marker.exists(), "generate ran the folder's code without --trust-remote-code"
    assert "processing_qwen3_multimodal.py" in run.stderr and "--trust-remote-code" in run.stderr
    # the control: the flag does run the folder's code, so the check above can fail
    run = _cli(["generate", str(folder), "--prompt", "hi", "--max-new-tokens", "2", "--trust-remote-code"], tmp_path)
    assert run.returncode == 0, run.stderr
    assert marker.exists()


def test_export_refuses_modified_code_or_replaces_it(tiny, tmp_path, capsys):
    folder, marker = _tampered(tiny, tmp_path)
    assert main(["export", str(folder), str(tmp_path / "out")]) == 2
    line = _error_line(capsys)
    assert "processing_qwen3_multimodal.py" in line and "--replace-code" in line
    assert not (tmp_path / "out").exists()
    assert main(["export", str(folder), str(tmp_path / "out"), "--replace-code"]) == 0
    for name in HUB_FILES:
        assert (tmp_path / "out" / name).read_bytes() == (REMOTE_DIR / name).read_bytes(), name
    assert not marker.exists(), "export ran the folder's code"


def test_push_to_an_unreachable_hub_is_one_clear_error(tiny, tmp_path):
    run = _cli(
        ["export", str(tiny), "out", "--push", "me/tiny"],
        tmp_path,
        HF_ENDPOINT="http://127.0.0.1:9",  # discard port: nothing listens
        HF_HUB_OFFLINE="0",
        HF_TOKEN="hf_test",
    )
    assert run.returncode == 2, run.stderr
    assert "Traceback" not in run.stderr
    assert "uploading" in run.stderr and (tmp_path / "out" / "config.json").is_file()
