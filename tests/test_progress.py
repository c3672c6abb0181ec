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
    assert lines[-1] == "[train] 20/20 100% | epoch=1/2 loss=0.1235 | 2.00 s/step | elapsed 0:40 | ETA 0:00"


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
