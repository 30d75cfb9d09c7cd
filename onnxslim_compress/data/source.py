"""The DataSource contract (re-iterable feed dicts, `len`, `describe`) and the in-memory sources.
"""

from __future__ import annotations

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

    def __iter__(self) -> Iterator[Feed]:  # pragma: no cover - abstract
        raise NotImplementedError

    def __len__(self) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    def describe(self) -> str:  # pragma: no cover - abstract
        raise NotImplementedError

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
        return iter(self.feeds)

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
