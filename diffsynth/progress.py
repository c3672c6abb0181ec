"""Progress of long loops (training, validation, sampling, data checks, downloads, encoder caching).

One API::

    from diffsynth.progress import progress
    bar = progress(loader, total=len(loader), desc="train", unit="step")
    for item in bar:
        ...
        bar.set_postfix(epoch="1/4", loss=0.123)   # shown in the next line / redraw

    with progress(total=n_bytes, desc="download x", unit="B") as bar:   # without an iterable
        bar.update(len(chunk))

Output goes to stderr, in one of two forms:

- on a terminal, one bar redrawn in place (``\\r``) at most 5 times a second;
- anywhere else (a log file, DVC or CI capturing the output) plain lines, never carriage returns: one line
  every ``DIFFSYNTH_PROGRESS_INTERVAL`` seconds (default 30), at every tenth of the total (no closer than
  a tenth of that interval, at least 1 s) and at the end, each readable on its own::

      [train] 12/80 15% | epoch=1/4 loss=0.1234 | 0.42 s/step | elapsed 0:05 | ETA 0:28

``DIFFSYNTH_PROGRESS`` chooses: ``auto`` (default: the form above; nothing under pytest), ``1``/``on`` (also
under pytest), ``lines`` (plain lines even on a terminal), ``0``/``off`` (nothing). Callers pass
``enabled=False`` on all but the main process.
"""
from __future__ import annotations

import os
import sys
import threading
import time
from typing import Iterable, Iterator, TextIO

REDRAW_S = 0.2        # terminal: least time between redraws
MIN_LINE_GAP_S = 1.0  # lines: least time between two "tenth of the total" lines (and a tenth of the interval)

_live: list["Progress"] = []  # terminal bars drawn now, innermost last
_clock = time.monotonic       # tests replace it


def mode(stream: TextIO | None = None) -> str:
    """``off``, ``bar`` or ``lines`` for ``stream`` (default stderr), from ``DIFFSYNTH_PROGRESS``."""
    setting = os.environ.get("DIFFSYNTH_PROGRESS", "auto").strip().lower()
    if setting in ("0", "off", "false", "no"):
        return "off"
    if setting == "lines":
        return "lines"
    if setting not in ("1", "on", "true", "yes", "auto"):
        raise ValueError(f"DIFFSYNTH_PROGRESS={setting!r}: use auto, 1, lines or 0")
    if setting == "auto" and "PYTEST_CURRENT_TEST" in os.environ:
        return "off"  # tests compare and capture output; progress would only be noise there
    stream = stream or sys.stderr
    try:
        tty = stream.isatty()
    except (AttributeError, ValueError):
        tty = False
    return "bar" if tty else "lines"


def line_interval() -> float:
    value = os.environ.get("DIFFSYNTH_PROGRESS_INTERVAL", "30")
    try:
        seconds = float(value)
    except ValueError:
        raise ValueError(f"DIFFSYNTH_PROGRESS_INTERVAL={value!r}: give seconds between progress lines, "
                         "e.g. 30") from None
    if seconds < 0:
        raise ValueError(f"DIFFSYNTH_PROGRESS_INTERVAL={value!r} must be >= 0")
    return seconds


def format_duration(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def format_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def _number(x: float) -> str:
    return f"{x:.2f}" if x < 10 else f"{x:.1f}" if x < 100 else f"{x:.0f}"


def _value(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


class Progress:
    """Counts work done and shows it; iterate it, or call :meth:`update`. Thread-safe updates."""

    def __init__(self, iterable: Iterable | None = None, total: int | None = None, desc: str = "", unit: str = "it",
                 initial: int = 0, enabled: bool = True, stream: TextIO | None = None):
        if total is None and iterable is not None:
            try:
                total = len(iterable)  # type: ignore[arg-type]
            except TypeError:
                total = None
        self.iterable, self.total, self.desc, self.unit = iterable, total, desc, unit
        self.n = self.start_n = initial
        self.postfix: dict = {}
        self.stream = stream or sys.stderr
        self.mode = mode(self.stream) if enabled else "off"
        self.interval = line_interval() if self.mode == "lines" else 0.0
        self.started = self._last_shown = _clock()
        self._last_tenth = self._tenth(initial)
        self._closed = self._printed = False
        self._last_shown_n: int | None = None
        self._drawn_width = 0  # terminal: length of the text on the line now
        self._lock = threading.Lock()
        if self.mode == "bar":
            if _live and _live[-1]._drawn_width:  # keep the outer bar's last state on its own line
                self.stream.write("\n")
                _live[-1]._drawn_width = 0
            _live.append(self)

    # ---------------------------------------------------------------- counting
    def __iter__(self) -> Iterator:
        if self.iterable is None:
            raise TypeError("this progress has no iterable; call update() instead")
        try:
            for item in self.iterable:
                yield item
                self.update()
        finally:
            self.close()

    def update(self, n: int = 1) -> None:
        with self._lock:
            self.n += n
            if self.mode != "off":
                self._maybe_show()

    def set_postfix(self, **values) -> None:
        """Values shown after the count (e.g. ``loss=0.12``); floats get 4 significant digits."""
        self.postfix.update(values)

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self.mode == "lines":
                if self._last_shown_n != self.n or not self._printed:
                    self._emit()
            elif self.mode == "bar":
                self._draw()
                self.stream.write("\n")
                self.stream.flush()
                if self in _live:
                    _live.remove(self)

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---------------------------------------------------------------- showing
    def _tenth(self, n: int) -> int:
        return int(10 * n / self.total) if self.total else 0

    def _maybe_show(self) -> None:
        now = _clock()
        since = now - self._last_shown
        if self.mode == "bar":
            if since >= REDRAW_S or self.n == self.total:
                self._last_shown = now
                self._draw()
            return
        tenth = self._tenth(self.n)
        if (self.n == self.total or since >= self.interval
                or (tenth > self._last_tenth and since >= max(MIN_LINE_GAP_S, self.interval / 10))):
            self._emit(now)

    def _draw(self) -> None:
        text = self.text()
        self.stream.write("\r" + text.ljust(self._drawn_width))  # spaces wipe a longer previous text
        self.stream.flush()
        self._drawn_width = len(text)

    def _emit(self, now: float | None = None) -> None:
        self._last_shown = now if now is not None else _clock()
        self._last_tenth, self._last_shown_n, self._printed = self._tenth(self.n), self.n, True
        self.stream.write(self.text() + "\n")
        self.stream.flush()

    def _amount(self, n: float) -> str:
        return format_bytes(n) if self.unit == "B" else str(n)

    def _rate(self, elapsed: float) -> tuple[str, float | None]:
        done = self.n - self.start_n
        if done <= 0 or elapsed <= 0:
            return "", None
        per_item = elapsed / done
        if self.unit == "B":
            return f"{format_bytes(done / elapsed)}/s", per_item
        if per_item >= 1.0:  # slow work reads better as seconds per item (tqdm's switch)
            return f"{_number(per_item)} s/{self.unit}", per_item
        return f"{_number(1 / per_item)} {self.unit}/s", per_item

    def text(self) -> str:
        elapsed = _clock() - self.started
        rate, per_item = self._rate(elapsed)
        count = f"{self._amount(self.n)}/{self._amount(self.total)}" if self.total else self._amount(self.n)
        parts = [count + (f" {100 * self.n / self.total:3.0f}%" if self.total else "")]
        if self.postfix:
            parts.append(" ".join(f"{k}={_value(v)}" for k, v in self.postfix.items()))
        timing = [rate] if rate else []
        timing.append(f"elapsed {format_duration(elapsed)}")
        if self.total and per_item is not None and self.n < self.total:
            timing.append(f"ETA {format_duration(max(0, self.total - self.n) * per_item)}")
        parts.append(" | ".join(timing))
        text = f"[{self.desc}] " + " | ".join(parts) if self.desc else " | ".join(parts)
        if self.mode == "bar" and self.total:
            filled = int(20 * min(1.0, self.n / self.total))
            text = text.replace("] ", "] |" + "#" * filled + "." * (20 - filled) + "| ", 1) if self.desc else text
        return text


def progress(iterable: Iterable | None = None, total: int | None = None, desc: str = "", unit: str = "it",
             initial: int = 0, enabled: bool = True, stream: TextIO | None = None) -> Progress:
    """Show progress of ``iterable`` (or of :meth:`Progress.update` calls); see the module docstring."""
    return Progress(iterable, total, desc, unit, initial, enabled, stream)


__all__ = ["progress", "Progress", "mode", "format_duration", "format_bytes"]
