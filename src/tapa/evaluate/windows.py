"""Which tokens each evaluation window feeds and which it scores.

A document of n tokens has n - 1 targets (token j is predicted from tokens < j). A window
of length W starting at b feeds tokens [b, e) with e = min(b + W, n - 1) and could score
the targets b + 1 .. e; it scores only those past the previous window's end, so every
target is scored exactly once.

- ``sliding`` (Press et al. 2021, the paper's protocol): windows start every ``stride``
  tokens; after the first window each scores ``stride`` new targets with at least
  ``W - stride`` tokens of context.
- ``non-overlapping``: stride = W; a target's context is its offset in the window.

Every window has length W (or the whole document when shorter): the last one reaches back
so its new targets keep as much context as the document allows.
"""

from __future__ import annotations

from dataclasses import dataclass

from tapa.errors import ConfigError

PROTOCOLS = ("sliding", "non-overlapping")


@dataclass(frozen=True)
class Window:
    start: int  # first input token
    end: int  # one past the last input token; targets are start + 1 .. end
    first_scored: int  # index within the window of the first scored target

    @property
    def length(self) -> int:
        return self.end - self.start

    @property
    def scored(self) -> int:
        return self.length - self.first_scored


def check_window(window: int, stride: int | None) -> None:
    if isinstance(window, bool) or not isinstance(window, int) or window < 1:
        raise ConfigError(f"lengths: each must be a positive integer, got {window!r}")
    if stride is not None:
        if isinstance(stride, bool) or not isinstance(stride, int) or stride < 1:
            raise ConfigError(f"stride: must be a positive integer, got {stride!r}")
        if stride > window:
            raise ConfigError(f"stride: {stride} is larger than the window {window}; tokens would go unscored")


def windows(num_tokens: int, window: int, stride: int) -> list[Window]:
    """The windows covering the ``num_tokens - 1`` targets of one document."""
    check_window(window, stride)
    last = num_tokens - 1  # targets are tokens 1 .. last
    out: list[Window] = []
    done = 0  # targets 1 .. done are scored
    start = 0
    while done < last:
        end = min(start + window, last)
        begin = max(0, end - window)  # a short last window reaches back for full context
        out.append(Window(begin, end, done - begin))
        done = end
        start += stride
    return out
