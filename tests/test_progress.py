"""Progress output: plain lines when not on a terminal (logs, DVC), a redrawn bar on one, nothing in tests."""
import io
import re

import pytest

from diffsynth import progress as progress_module
from diffsynth.progress import format_bytes, format_duration, progress


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


class FakeTTY(io.StringIO):
    def isatty(self):
        return True


@pytest.fixture
def clock(monkeypatch):
    c = Clock()
    monkeypatch.setattr(progress_module, "_clock", c)
    return c


def test_lines_mode_prints_plain_lines_at_tenths_and_intervals(monkeypatch, clock):
    monkeypatch.setenv("DIFFSYNTH_PROGRESS", "lines")
    monkeypatch.setenv("DIFFSYNTH_PROGRESS_INTERVAL", "30")
    out = io.StringIO()
    bar = progress(range(20), desc="train", unit="step", stream=out)
    for i, _ in enumerate(bar):
        clock.now += 2.0  # 2 s per step
        bar.set_postfix(epoch="1/2", loss=0.123456)
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue()
    # one line per tenth (every 2 steps here), each complete on its own
    assert [re.match(r"\[train\] (\d+)/20", line).group(1) for line in lines] == [str(n) for n in range(2, 21, 2)]
    assert lines[0] == "[train] 2/20  10% | epoch=1/2 loss=0.1235 | 2.00 s/step | elapsed 0:04 | ETA 0:36"
    assert lines[-1] == "[train] 20/20 100% | epoch=1/2 loss=0.1235 | 2.00 s/step | elapsed 0:40"


def test_lines_mode_time_interval_and_fast_work(monkeypatch, clock):
    monkeypatch.setenv("DIFFSYNTH_PROGRESS", "lines")
    monkeypatch.setenv("DIFFSYNTH_PROGRESS_INTERVAL", "5")
    out = io.StringIO()
    with progress(total=100_000, desc="data", unit="row", stream=out) as bar:
        for _ in range(100):  # 0.1 % of the work per 1.5 s: only the 5 s interval prints
            clock.now += 1.5
            bar.update(10)
    lines = out.getvalue().splitlines()
    # every 4th update (6 s >= 5 s); the last of them is at the final count, so closing adds no line
    assert [int(re.match(r"\[data\] (\d+)/", line).group(1)) for line in lines] == list(range(40, 1001, 40))
    assert lines[0].startswith("[data] 40/100000   0% | 6.67 row/s | elapsed 0:06 | ETA 4:09:54")
    # a second run that is fast: at most one line per tenth, plus the end
    out = io.StringIO()
    for _ in progress(range(1000), desc="fast", stream=out):
        clock.now += 0.01
    assert len(out.getvalue().splitlines()) <= 11


def test_bytes_and_durations():
    assert format_bytes(512) == "512 B" and format_bytes(3 * 2 ** 30) == "3.0 GiB"
    assert format_duration(59.6) == "1:00" and format_duration(3 * 3600 + 61) == "3:01:01"


def test_terminal_bar_redraws_in_place(monkeypatch, clock):
    monkeypatch.setenv("DIFFSYNTH_PROGRESS", "1")
    out = FakeTTY()
    bar = progress(range(4), desc="samples", unit="image", stream=out)
    for _ in bar:
        clock.now += 1.0
    text = out.getvalue()
    assert text.count("\n") == 1 and text.endswith("\n") and text.count("\r") == 5  # 4 redraws + the closing one
    assert "[samples] |####################| 4/4 100%" in text


def test_off_under_pytest_and_when_asked(monkeypatch, capsys):
    monkeypatch.delenv("DIFFSYNTH_PROGRESS", raising=False)
    assert progress_module.mode(FakeTTY()) == "off"  # pytest sets PYTEST_CURRENT_TEST
    for _ in progress(range(3), desc="x"):
        pass
    monkeypatch.setenv("DIFFSYNTH_PROGRESS", "0")
    for _ in progress(range(3), desc="x", stream=FakeTTY()):
        pass
    monkeypatch.setenv("DIFFSYNTH_PROGRESS", "1")
    assert [i for i in progress(range(3), desc="x", enabled=False)] == [0, 1, 2]  # other ranks: silent
    assert capsys.readouterr() == ("", "")
    monkeypatch.setenv("DIFFSYNTH_PROGRESS", "sometimes")
    with pytest.raises(ValueError, match="DIFFSYNTH_PROGRESS"):
        progress(range(3))


def test_download_callback_prints_one_line_per_file_in_logs(monkeypatch, capsys):
    from diffsynth.models.model_config import file_progress_callback
    monkeypatch.setenv("DIFFSYNTH_PROGRESS", "lines")
    callback = file_progress_callback()("transformer/model-00001-of-00002.safetensors", 3 * 2 ** 20)
    for _ in range(3):
        callback.update(2 ** 20)
    callback.end()
    err = capsys.readouterr().err
    assert "\r" not in err
    assert err.splitlines()[-1].startswith("[download transformer/model-00001-of-00002.safetensors] "
                                           "3.0 MiB/3.0 MiB 100% | ")


@pytest.mark.slow
def test_training_progress_lines(tmp_path, shapes_dataset, tiny_env, monkeypatch, capsys):
    """What a log (DVC, CI, `> file`) shows of a run: step counts, epoch, loss, rate and ETA, no carriage returns."""
    from helpers import tiny_config

    from diffsynth.training.loop import run_training
    monkeypatch.setenv("DIFFSYNTH_PROGRESS", "lines")
    monkeypatch.setenv("DIFFSYNTH_PROGRESS_INTERVAL", "0")  # a line per update
    run_training(tiny_config(tmp_path, shapes_dataset, train__max_steps=5, validation__num_samples=1,
                             sample__prompts=["a red circle"], sample__out_dir=str(tmp_path / "samples")))
    err = capsys.readouterr().err
    assert "\r" not in err
    train = [line for line in err.splitlines() if line.startswith("[train]")]
    rate = r"([\d.]+ s/step|[\d.]+ step/s)"
    pattern = rf"\[train\] (\d)/5 +\d+% \| epoch=1/4 loss=[\d.e-]+ \| {rate} \| elapsed \d+:\d\d( \| ETA \d+:\d\d)?$"
    assert [int(re.match(pattern, line).group(1)) for line in train] == [1, 2, 3, 4, 5], train
    assert all("ETA" in line for line in train[:-1]) and "ETA" not in train[-1]  # done: no estimate left
    # save points (start and end) show validation and sampling
    assert sum(line.startswith("[validation] 1/1 100%") for line in err.splitlines()) == 2
    assert sum(line.startswith("[samples] 1/1 100%") for line in err.splitlines()) == 2


def test_terminal_bar_inside_a_bar_keeps_both_readable(monkeypatch, clock):
    monkeypatch.setenv("DIFFSYNTH_PROGRESS", "1")
    out = FakeTTY()
    outer = progress(total=10, desc="train", stream=out)
    clock.now += 1.0
    outer.update()
    for _ in progress(range(2), desc="validation", stream=out):
        clock.now += 1.0
    clock.now += 1.0
    outer.update()
    outer.close()
    lines = out.getvalue().split("\n")
    assert lines[0].startswith("\r[train]") and "1/10" in lines[0]          # the outer bar's last state stays
    assert lines[1].rsplit("\r", 1)[-1].startswith("[validation] |") and "2/2 100%" in lines[1]
    assert lines[2].rsplit("\r", 1)[-1].startswith("[train]") and "2/10" in lines[2] and lines[3] == ""
