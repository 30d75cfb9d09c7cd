"""The DataSource contract (re-iterable feed dicts, `len`, `describe`) and the in-memory sources.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Mapping, Sequence

import numpy as np

from onnxslim_compress.data.spec import Feed, InputSpec, conform, match_names
from onnxslim_compress.errors import BadInputError


class DataSource:
    """A re-iterable of feed dicts: each `iter()` starts over from the first sample.

    `names` are the model inputs every feed carries; `len()` is the number of samples an iteration
    yields (after any limit); `describe()` is one line for reports.
    """

    names: list[str]
    #: False: a sample with NaN/Inf raises BadInputError when iterated (see refuse_nonfinite)
    allow_nonfinite: bool = False

    def __iter__(self) -> Iterator[Feed]:  # pragma: no cover - abstract
        raise NotImplementedError

    def __len__(self) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    def describe(self) -> str:  # pragma: no cover - abstract
        raise NotImplementedError

    def where(self, i: int) -> str:
        """Where sample `i` comes from, for error messages (a file name, a sample index)."""
        return f"sample {i}"

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.describe()}>"


def limited(n: int, limit: int | None) -> int:
    """How many of `n` samples a source yields under `limit` (None: all)."""
    return n if limit is None else min(n, limit)


class ListSource(DataSource):
    """Feeds given in memory (the Python API); each is checked and converted once up front."""

    def __init__(self, feeds: Sequence[Mapping[str, np.ndarray]], specs: list[InputSpec], limit: int | None = None):
        self.specs = specs
        self.names = [s.name for s in specs]
        n = limited(len(feeds), limit)
        if n == 0:
            raise BadInputError("the data holds no samples")
        self.feeds = []
        for i, f in enumerate(feeds[:n]):
            if not isinstance(f, Mapping):
                raise BadInputError(f"sample {i}: expected a dict {{input name: array}}, got {type(f).__name__}")
            match_names(specs, f, f" (sample {i})")
            self.feeds.append({s.name: conform(s, np.asarray(f[s.name]), f" (sample {i})") for s in specs})

    def __len__(self) -> int:
        return len(self.feeds)

    def __iter__(self) -> Iterator[Feed]:
        for i, feed in enumerate(self.feeds):
            if not self.allow_nonfinite:
                refuse_nonfinite(feed, self, i)
            yield feed

    def describe(self) -> str:
        return f"{len(self.feeds)} samples given in memory"


class LimitedSource(DataSource):
    """The first `limit` samples of another source (open_data's `limit` on a given DataSource)."""

    def __init__(self, inner: DataSource, limit: int):
        self.inner, self.limit = inner, limit
        self.names = list(inner.names)

    def __len__(self) -> int:
        return min(len(self.inner), self.limit)

    def __iter__(self) -> Iterator[Feed]:
        for k, feed in enumerate(self.inner):
            if k >= self.limit:
                return
            yield feed

    def describe(self) -> str:
        return f"first {len(self)} of {self.inner.describe()}"


# --------------------------------------------------------------------------------------------------
# Non-finite values
# --------------------------------------------------------------------------------------------------


def nonfinite_input(feed: Mapping[str, np.ndarray]) -> str | None:
    """The first input of a feed holding a NaN or an infinity, or None."""
    for name, x in feed.items():
        if x.dtype.kind in "fc" and not np.isfinite(x).all():
            return name
    return None


def refuse_nonfinite(feed: Mapping[str, np.ndarray], src: DataSource, i: int) -> None:
    """BadInputError naming the input and the sample if the feed holds NaN or Inf.

    Why: one NaN in calibration data gives NaN ranges (int8 at 10 % accuracy), all-NaN recovered
    weights, or a NaN fidelity that compares as "fine"; all silently. Checked as samples are read
    (cheap next to running a model on them, and streaming: no extra pass over a big data set)."""
    name = nonfinite_input(feed)
    if name is not None:
        raise BadInputError(
            f"input {name!r} in {src.where(i)}: non-finite values (NaN or Inf); fix the data "
            "or pass --drop-nonfinite to leave such samples out"
        )


def drop_nonfinite_samples(src: DataSource) -> DataSource:
    """`src` without its samples holding NaN/Inf, found in one read of the data up front, with a
    warning on stderr naming them. Clean data comes back as the same source."""
    src.allow_nonfinite = True
    keep: list[int] = []
    bad: list[str] = []
    for i, feed in enumerate(src):
        if nonfinite_input(feed) is None:
            keep.append(i)
        else:
            bad.append(src.where(i))
    if not bad:
        return src
    if not keep:
        raise BadInputError(f"{src.describe()}: every sample holds non-finite values (NaN or Inf)")
    shown = ", ".join(bad[:5]) + (", ..." if len(bad) > 5 else "")
    print(f"onnxslim-compress: warning: dropped {len(bad)} of {len(keep) + len(bad)} samples with non-finite values: "
          f"{shown}", file=sys.stderr)
    return FiniteSource(src, keep, bad)


class FiniteSource(DataSource):
    """The samples of `inner` that drop_nonfinite_samples kept (by index), in order."""

    def __init__(self, inner: DataSource, keep: list[int], dropped: list[str]):
        self.inner = inner
        self.names = list(inner.names)
        self.keep = keep
        self.dropped = dropped

    def __len__(self) -> int:
        return len(self.keep)

    def __iter__(self) -> Iterator[Feed]:
        wanted = set(self.keep)
        for i, feed in enumerate(self.inner):
            if i in wanted:
                yield feed

    def where(self, i: int) -> str:
        return self.inner.where(self.keep[i])

    def describe(self) -> str:
        extra = f", {len(self.dropped)} with non-finite values dropped" if self.dropped else ""
        return self.inner.describe() + extra
