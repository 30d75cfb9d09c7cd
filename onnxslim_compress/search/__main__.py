"""`python -m onnxslim_compress.search search|worker ...`: the main CLI under the search package's name.

Tests and fleet scripts start workers this way. It is the same `main()` (one parser, one error
handler) as `onnxslim-compress`; this entry point is a launcher, not a library module, so importing
the CLI from here is not an upward import of the search package.
"""

from __future__ import annotations

import sys

from onnxslim_compress.cli.main import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main(prog="python -m onnxslim_compress.search"))
