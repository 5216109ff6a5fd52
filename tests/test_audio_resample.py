"""Audio resampling to the 16 kHz mel front end is band-limited (soxr), not linear interpolation.

Oracles: the analytic sine at the expected frequency (scipy is not a dependency, so there is no resample_poly to
compare with) and the spectrum level measured with numpy's FFT. The levels below were measured on 2026-12-02:
an 11 kHz tone at -6 dBFS in 48 kHz audio came out of the old linear interpolation as a 5 kHz tone at -6.0 dBFS
(48 -> 16 kHz is an integer ratio, so linear interpolation is plain decimation: no attenuation at all); through soxr
it is at -156 dBFS.
"""

import numpy as np
import pytest
import soundfile
import torch

from transformers_qwen3.remote.media_qwen3_multimodal import MediaError, load_audio, resample

TARGET = 16000


def tone(freq, rate, seconds=2.0, amplitude=0.5):
    return amplitude * np.sin(2 * np.pi * freq * np.arange(int(seconds * rate)) / rate)


def level_db(x, freq, rate):
    """Peak level (dBFS) of the spectrum within ±3 bins of ``freq``, Hann-windowed and amplitude-normalised."""
    window = np.hanning(len(x))
    spectrum = np.abs(np.fft.rfft(x * window)) * 2 / window.sum()
    k = int(np.argmin(np.abs(np.fft.rfftfreq(len(x), 1 / rate) - freq)))
    return 20 * np.log10(spectrum[k - 3 : k + 4].max() + 1e-300)


@pytest.mark.parametrize("rate", [48000, 44100])
def test_a_tone_above_the_new_nyquist_is_removed_not_folded(rate):
    out = resample(torch.tensor(tone(11000, rate), dtype=torch.float32), rate, TARGET).numpy()
    alias = TARGET - 11000  # where linear interpolation folds it: 5 kHz
    before = level_db(tone(11000, rate), 11000, rate)
    after = level_db(out, alias, TARGET)
    assert before - after >= 60, f"11 kHz at {rate} Hz: {before:.1f} dB in, alias at 5 kHz {after:.1f} dB out"
    peak = np.abs(out[800:-800]).max()  # the edges ring: the tone starts and stops abruptly
    assert peak < 1e-3, f"peak {peak:.3g} left of an out-of-band tone"


@pytest.mark.parametrize("rate", [48000, 44100, 22050, 8000])
def test_an_in_band_tone_passes_unchanged(rate):
    out = resample(torch.tensor(tone(1000, rate), dtype=torch.float32), rate, TARGET).numpy()
    assert len(out) == 2 * TARGET and out.dtype == np.float32
    gain = level_db(out, 1000, TARGET) - level_db(tone(1000, rate), 1000, rate)
    assert abs(gain) <= 0.1, f"1 kHz tone through {rate} -> {TARGET} Hz changed by {gain:.3f} dB"
    # the analytic sine at 16 kHz, away from the edges (the filter's settling time)
    expected = tone(1000, TARGET)
    diff = np.abs(out[800:-800] - expected[800:-800]).max()
    assert diff < 2e-3, f"max |diff| to the analytic 1 kHz sine {diff:.2e}"


def test_files_at_other_rates_are_resampled_through_soxr(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    soundfile.write(tmp_path / "hi.wav", np.stack([tone(11000, 48000), tone(1000, 48000)], 1), 48000)
    audio = load_audio("hi.wav").numpy()  # stereo: downmixed, then resampled
    assert len(audio) == 2 * TARGET
    assert level_db(audio, TARGET - 11000, TARGET) < -100
    assert abs(level_db(audio, 1000, TARGET) - level_db(tone(1000, TARGET) / 2, 1000, TARGET)) <= 0.1


def test_missing_soxr_names_the_package(monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "soxr", None)  # import soxr -> ImportError
    with pytest.raises(MediaError, match="pip install soxr") as e:
        load_audio(np.zeros(4800, dtype=np.float32), source_rate=48000, tag="<audio>")
    assert e.value.tag == "<audio>"
    assert load_audio(np.zeros(1600, dtype=np.float32)).shape == (1600,)  # 16 kHz input needs no resampling
