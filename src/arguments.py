"""Argument types that check ranges when the command line is parsed (argparse then prints the usage and one
error line, exit code 2), so a value that cannot work never reaches minutes of work."""
from __future__ import annotations

import argparse
import math
import sys


class Parser(argparse.ArgumentParser):
    """argparse with a one-line error (the usage block is what --help is for), exit code 2."""

    def error(self, message: str):
        print(f"error: {self.prog}: {message} (--help explains every option)", file=sys.stderr)
        raise SystemExit(2)


def bounded(kind: type, low: float | None = None, high: float | None = None, low_open: bool = False,
            high_open: bool = False):
    """An argparse `type` converting with `kind` and accepting low <= value <= high (open bounds exclude them)."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if kind is int else 'a number'}") from None
        if isinstance(value, float) and not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{text} is not a finite number")
        if low is not None and (value < low or (low_open and value == low)):
            raise argparse.ArgumentTypeError(f"{text} is out of range: {describe(low, high, low_open, high_open)}")
        if high is not None and (value > high or (high_open and value == high)):
            raise argparse.ArgumentTypeError(f"{text} is out of range: {describe(low, high, low_open, high_open)}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its messages
    return parse


def describe(low, high, low_open=False, high_open=False) -> str:
    if high is None:
        return f"must be {'>' if low_open else '>='} {low}"
    if low is None:
        return f"must be {'<' if high_open else '<='} {high}"
    return f"must be in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"


positive_int = bounded(int, 1)
count = bounded(int, 0)                          # 0 allowed (e.g. 0 = no limit)
positive_float = bounded(float, 0, low_open=True)
fraction = bounded(float, 0, 1, low_open=True, high_open=True)


def odd_window(text: str) -> int:
    """A window of frames centred on each frame: an odd integer in SMOOTH_RANGE."""
    from src.controls import SMOOTH_RANGE

    value = bounded(int, *SMOOTH_RANGE)(text)
    if value % 2 == 0:
        raise argparse.ArgumentTypeError(f"{text} is even: a window centred on each frame has an odd length")
    return value


odd_window.__name__ = "int"
