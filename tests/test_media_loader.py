"""The media loader treats sources named in text as untrusted.

Local files only below the allowed roots (after resolving symlinks, regular files only, byte cap); network off by
default, then http(s) only with a timeout, a byte cap and no redirects to other schemes (checked against a local
http.server on 127.0.0.1); Pillow's decompression-bomb guard and our pixel cap; audio duration cap; one error class
(MediaError) for every failure, which the hypothesis fuzz at the end holds the tag parser and the loader to.
"""

import base64
import http.server
import io
import os
import struct
import sys
import threading
import time
import zlib

import numpy as np
import pytest
import soundfile
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from transformers_qwen3.remote.media_qwen3_multimodal import (
    MediaError,
    MediaPolicy,
    load_audio,
    load_image,
    load_video,
    read_source,
)
from transformers_qwen3.remote.processing_qwen3_multimodal import MediaEncoder, parse_media_tags


def png_bytes(size=(20, 10), color=(200, 30, 10)):
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


def noise_png(size=(64, 64)):
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (*size, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def wav_bytes(seconds=0.5, rate=16000, channels=1):
    samples = np.random.default_rng(0).standard_normal((int(seconds * rate), channels)).astype("float32") * 0.1
    buf = io.BytesIO()
    soundfile.write(buf, samples, rate, format="WAV")
    return buf.getvalue()


def bomb_png(width=20000, height=20000):
    """A valid PNG header claiming width x height pixels, in a few dozen bytes."""

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0")) + chunk(b"IEND", b"")


@pytest.fixture
def root(tmp_path, monkeypatch):
    """An allowed root (the working directory) with a secret file beside it, outside."""
    inside = tmp_path / "root"
    inside.mkdir()
    (tmp_path / "secret.png").write_bytes(png_bytes())
    (inside / "ok.png").write_bytes(png_bytes())
    monkeypatch.chdir(inside)
    monkeypatch.delenv("QWEN3_MM_ALLOW_NETWORK", raising=False)
    monkeypatch.delenv("QWEN3_MM_ALLOWED_ROOTS", raising=False)
    return inside


def reason(excinfo):
    return str(excinfo.value)


# ---- local files ---------------------------------------------------------------------------------------------------


def test_local_path_file_url_and_data_uri_load(root):
    assert load_image("ok.png").size == (20, 10)
    assert load_image(f"file://{root}/ok.png").size == (20, 10)
    uri = "data:image/png;base64," + base64.b64encode(png_bytes((7, 9))).decode()
    image = load_image(uri)
    assert image.size == (7, 9) and image.mode == "RGB"


def test_raw_file_bytes_are_decoded_under_the_same_caps(root):
    assert load_image(png_bytes((3, 4))).size == (3, 4)
    assert load_audio(wav_bytes(0.5)).numel() == 8000
    with pytest.raises(MediaError, match="byte cap"):
        load_image(png_bytes(), MediaPolicy(max_bytes=10))


@pytest.mark.parametrize("source", ["../secret.png", "{tmp}/secret.png", "file://{tmp}/secret.png", "/etc/passwd"])
def test_paths_outside_the_root_are_refused(root, source):
    with pytest.raises(MediaError, match="outside the allowed folders"):
        read_source(source.format(tmp=root.parent), tag="<image>")


def test_symlinks_are_resolved_before_the_root_check(root):
    (root / "escape.png").symlink_to(root.parent / "secret.png")
    (root / "inside.png").symlink_to(root / "ok.png")
    with pytest.raises(MediaError, match="outside the allowed folders"):
        load_image("escape.png")
    assert load_image("inside.png").size == (20, 10)


def test_allowed_roots_from_argument_and_environment(root, monkeypatch):
    other = root.parent
    assert load_image(str(other / "secret.png"), MediaPolicy(allowed_roots=(str(other),))).size == (20, 10)
    monkeypatch.setenv("QWEN3_MM_ALLOWED_ROOTS", str(other))
    assert load_image(str(other / "secret.png")).size == (20, 10)


def test_non_regular_files_are_refused(root):
    (root / "folder").mkdir()
    with pytest.raises(MediaError, match="not a regular file"):
        read_source("folder")
    os.mkfifo(root / "pipe")  # opening a FIFO would block; it must be refused before that
    with pytest.raises(MediaError, match="not a regular file"):
        read_source("pipe")


def test_missing_file_and_oversized_file(root):
    with pytest.raises(MediaError, match="file not found"):
        read_source("nope.png", tag="<image>")
    (root / "big.bin").write_bytes(b"x" * 2000)
    with pytest.raises(MediaError, match="byte cap"):
        read_source("big.bin", MediaPolicy(max_bytes=1000))
    uri = "data:;base64," + base64.b64encode(b"x" * 2000).decode()
    with pytest.raises(MediaError, match="byte cap"):
        read_source(uri, MediaPolicy(max_bytes=1000))


@pytest.mark.parametrize(
    "source", ["ftp://example.com/a.png", "gopher://x/", "file://example.com/etc/passwd", "data:image/png;base64,@@@"]
)
def test_forbidden_schemes_and_bad_uris(root, source):
    with pytest.raises(MediaError):
        read_source(source)


def test_error_names_the_tag(root):
    with pytest.raises(MediaError) as e:
        MediaEncoder().expand(["look <img>missing.png</img>"])
    assert e.value.tag == "<img>" and "missing.png" in str(e.value) and "file not found" in str(e.value)


# ---- images --------------------------------------------------------------------------------------------------------


def test_decompression_bomb_and_pixel_cap(root):
    (root / "bomb.png").write_bytes(bomb_png())  # 400 Mpixel header: Pillow's guard
    with pytest.raises(MediaError, match="decompression bomb"):
        load_image("bomb.png")
    (root / "wide.png").write_bytes(bomb_png(9000, 8000))  # 72 Mpixel: under Pillow's error limit, over our cap
    with pytest.raises(MediaError, match="pixel cap"):
        load_image("wide.png")
    with pytest.raises(MediaError, match="pixel cap"):
        load_image("ok.png", MediaPolicy(max_image_pixels=100))
    assert Image.MAX_IMAGE_PIXELS is not None  # the guard stays on


@pytest.mark.parametrize(
    "data", [b"not an image", noise_png()[:6000], b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 1 1\n"]
)
def test_undecodable_images(root, data):
    (root / "bad.png").write_bytes(data)
    with pytest.raises(MediaError, match="cannot decode image"):
        load_image("bad.png")


# ---- audio ---------------------------------------------------------------------------------------------------------


def test_audio_is_resampled_and_downmixed(root):
    (root / "a.wav").write_bytes(wav_bytes(seconds=1.0, rate=44100, channels=2))
    audio = load_audio("a.wav")
    assert audio.ndim == 1 and audio.numel() == 16000
    (root / "b.wav").write_bytes(wav_bytes(seconds=0.5))
    assert load_audio("b.wav").numel() == 8000


def test_audio_duration_cap_and_garbage(root):
    (root / "long.wav").write_bytes(wav_bytes(seconds=2.0))
    with pytest.raises(MediaError, match="s cap"):
        load_audio("long.wav", MediaPolicy(max_audio_seconds=1.0))
    (root / "bad.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk")
    with pytest.raises(MediaError, match="cannot decode audio"):
        load_audio("bad.wav")


def test_missing_soundfile_gives_install_hint(root, monkeypatch):
    (root / "a.wav").write_bytes(wav_bytes())
    monkeypatch.setitem(sys.modules, "soundfile", None)
    with pytest.raises(MediaError, match="pip install soundfile"):
        load_audio("a.wav")


# ---- video ---------------------------------------------------------------------------------------------------------


def test_animated_gif_frames_are_sampled_at_fps(root):
    frames = [Image.new("RGB", (32, 24), (i * 40, 0, 0)) for i in range(5)]
    frames[0].save(root / "a.gif", save_all=True, append_images=frames[1:], duration=250, loop=0)
    video = load_video("a.gif", fps=2.0)
    # 5 frames x 250 ms = 1.25 s: samples at 0, 0.5, 1.0 s show frames 0, 2, 4
    assert video.times == [0.0, 0.5, 1.0]
    assert [f.getpixel((0, 0))[0] for f in video.frames] == [0, 80, 160]
    assert len(load_video("a.gif", fps=2.0, max_frames=2).frames) == 2
    with pytest.raises(MediaError, match="frame cap"):
        load_video("a.gif", MediaPolicy(max_video_frames=3))


# ---- network -------------------------------------------------------------------------------------------------------


class Handler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def send(self, body, status=200, headers=()):
        self.send_response(status)
        for key, value in headers:
            self.send_header(key, value)
        if body is not None:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if body:
            self.wfile.write(body)

    def do_GET(self):
        routes = {
            "/img.png": lambda: self.send(png_bytes((5, 6))),
            "/big": lambda: self.send(b"x" * 5000),
            "/to-file": lambda: self.send(b"", 302, [("Location", "file:///etc/passwd")]),
            "/to-ftp": lambda: self.send(b"", 302, [("Location", "ftp://127.0.0.1/x")]),
            "/to-img": lambda: self.send(b"", 302, [("Location", "/img.png")]),
            "/loop": lambda: self.send(b"", 302, [("Location", "/loop")]),
            "/missing": lambda: self.send(b"no", 404),
        }
        if self.path == "/unsized":  # no Content-Length: the cap applies while reading
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"y" * 5000)
            self.close_connection = True
        elif self.path == "/drip":  # each read is quick, the whole download is not
            self.send_response(200)
            self.send_header("Content-Length", "100")
            self.end_headers()
            for _ in range(10):
                self.wfile.write(b"z" * 10)
                self.wfile.flush()
                time.sleep(0.15)
        else:
            routes.get(self.path, lambda: self.send(b"?", 404))()


@pytest.fixture(scope="module")
def server():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


NET = MediaPolicy(allow_network=True, max_bytes=1000, timeout_s=1.0)


def test_network_is_off_by_default(root, server):
    with pytest.raises(MediaError, match="network access is off"):
        load_image(f"{server}/img.png")


def test_network_when_enabled(root, server, monkeypatch):
    assert load_image(f"{server}/img.png", NET).size == (5, 6)
    assert load_image(f"{server}/to-img", NET).size == (5, 6)  # http -> http redirect is fine
    monkeypatch.setenv("QWEN3_MM_ALLOW_NETWORK", "1")
    assert load_image(f"{server}/img.png").size == (5, 6)


@pytest.mark.parametrize(
    "path,message",
    [
        ("/to-file", "redirect"),
        ("/to-ftp", "redirect"),
        ("/loop", "HTTP error"),
        ("/missing", "HTTP error 404"),
        ("/big", "byte cap"),
        ("/unsized", "byte cap"),
        ("/drip", "longer than"),
    ],
)
def test_network_failures(root, server, path, message):
    with pytest.raises(MediaError, match=message):
        read_source(f"{server}{path}", NET, tag="<image>")


# ---- fuzz: only MediaError may escape -------------------------------------------------------------------------------

FRAGMENTS = st.sampled_from(
    [
        "<image>",
        "</image>",
        "<img>",
        "</img>",
        "<audio>",
        "</audio>",
        "<video>",
        "</video>",
        "<",
        ">",
        "/",
        " ",
        "ok.png",
        "a.wav",
        "data:",
        "data:;base64,",
        "file://",
        "http://127.0.0.1:9/x",
        "ftp://x",
        "../",
        "..",
        "\x00",
        "~",
        "%2e%2e/",
        "文",
        "\n",
        "<|image_pad|>",  # typed placeholders: a MediaError too, never a plain ValueError
        "<|vision_start|>",
        "<|audio_pad|>",
    ]
)
TEXT = st.lists(st.one_of(FRAGMENTS, st.text(max_size=8)), max_size=12).map("".join)
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@FUZZ
@given(TEXT)
def test_fuzz_tag_parser(text):
    segments = parse_media_tags(text)
    plain = "".join(s for s in segments if isinstance(s, str))
    assert len(plain) <= len(text)
    for s in segments:
        assert isinstance(s, str) or s[0] in ("image", "video", "audio")


@FUZZ
@given(TEXT)
def test_fuzz_expand_raises_only_media_error(root, text):
    try:
        MediaEncoder().expand([text])
    except MediaError:
        pass


@FUZZ
@given(st.one_of(TEXT, st.binary(max_size=64).map(lambda b: "data:;base64," + base64.b64encode(b).decode())))
def test_fuzz_loader_sources(root, source):
    for load in (load_image, load_audio, load_video):
        try:
            load(source)
        except MediaError:
            pass


VALID = [png_bytes(), wav_bytes(0.05)]
_gif = io.BytesIO()
Image.new("P", (4, 4)).save(_gif, format="GIF", save_all=True, append_images=[Image.new("P", (4, 4), 1)])
VALID.append(_gif.getvalue())


@FUZZ
@given(
    st.sampled_from(VALID),
    st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=6),
    st.integers(0, 2000),
)
def test_fuzz_decoders_on_corrupted_files(root, data, flips, cut):
    data = bytearray(data[: max(cut, 8)] if cut < len(data) else data)
    for position, value in flips:
        data[position % len(data)] = value
    source = "data:;base64," + base64.b64encode(bytes(data)).decode()
    for load in (load_image, load_audio, load_video):
        try:
            load(source)
        except MediaError:
            pass
