"""Progress in a log file: whole timestamped lines, never carriage returns (ifcn.progress)."""

from __future__ import annotations

import io
import re

import pytest
from tqdm import tqdm

from ifcn import progress as progress_module
from ifcn.progress import LogProgress, progress_bar

STAMP = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d "


class FakeClock:
    """time.monotonic for the module under test, advanced by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch) -> FakeClock:
    fake = FakeClock()
    monkeypatch.setattr(progress_module.time, "monotonic", fake)
    return fake


def _lines(stream: io.StringIO) -> list[str]:
    text = stream.getvalue()
    assert "\r" not in text and text.endswith("\n")
    return text.splitlines()


def test_a_log_gets_a_start_line_a_line_per_period_and_a_last_line(clock):
    stream = io.StringIO()
    seen = []
    for item in progress_bar(range(10), desc="infer", unit="image", file=stream, every_seconds=5):
        seen.append(item)
        clock.now += 2.0  # one item every 2 s: a line after items 3, 6 and 9 (6 s, 12 s, 18 s)
    assert seen == list(range(10))
    lines = _lines(stream)
    assert all(re.match(STAMP + "infer: ", line) for line in lines), lines
    counts = [re.search(r" (\d+)/10 ", line).group(1) for line in lines]
    assert counts == ["0", "3", "6", "9", "10"]
    assert "100% 10/10 [00:20<00:00,  2.00s/image]" in lines[-1], lines[-1]


def test_every_steps_writes_a_line_per_count_of_updates(clock):
    stream = io.StringIO()
    with progress_bar(total=7, desc="nms", file=stream, every_steps=3) as bar:
        for _ in range(7):
            bar.update(1)
    counts = [re.search(r" (\d+)/7 ", line).group(1) for line in _lines(stream)]
    assert counts == ["0", "3", "6", "7"]


def test_postfix_and_resumed_count_show_on_the_next_line(clock):
    stream = io.StringIO()
    bar = progress_bar(total=100, initial=40, desc="train", file=stream, every_steps=10)
    bar.set_postfix(loss="0.412", pos=38)
    assert len(_lines(stream)) == 1  # set_postfix writes nothing by itself
    clock.now += 20.0
    bar.update(10)
    bar.close()
    bar.close()  # closing twice writes once
    lines = _lines(stream)
    assert len(lines) == 2
    # 10 steps in 20 s since the start: the rate counts only this run's steps, not the 40
    assert re.search(
        r"train:\s+50% 50/100 \[00:20<01:40,\s+2\.00s/it, loss=0\.412, pos=38\]", lines[1]
    ), lines[1]


def test_manual_updates_in_bytes_scale_their_unit(clock):
    stream = io.StringIO()
    with progress_bar(total=None, desc="coco.zip", unit="B", unit_scale=True, file=stream) as bar:
        clock.now += 10.0
        bar.update(5 * 1024 * 1024)
    last = _lines(stream)[-1]
    assert "coco.zip: 5.24MB [00:10, 524kB/s]" in last, last


def test_disabled_writes_nothing_and_still_yields_everything():
    stream = io.StringIO()
    assert list(progress_bar(iter("abc"), file=stream, disable=True)) == ["a", "b", "c"]
    assert stream.getvalue() == ""


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_terminal_gets_tqdm_itself():
    bar = progress_bar(range(3), desc="x", file=Terminal(), dynamic_ncols=True)
    assert isinstance(bar, tqdm) and list(bar) == [0, 1, 2]
    assert isinstance(progress_bar(range(3), file=io.StringIO()), LogProgress)
