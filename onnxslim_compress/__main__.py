"""`python -m onnxslim_compress` and the `onnxslim-compress` script: the CLI.

Why not `cli.main:main` directly: importing the CLI pulls in onnx and onnxruntime (~0.6 s), and a
Ctrl-C in that window printed a traceback (or, inside a C extension's initialisation, crashed the
interpreter). Here Ctrl-C is held back until the imports are done, then answered with the same one
line (exit 130) as a Ctrl-C during a run.
"""

import signal
import sys


def run() -> int:
    pending: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: pending.append(signum))
    try:
        from onnxslim_compress.cli.main import main
        from onnxslim_compress.runtime import session  # noqa: F401 - onnxruntime, which main() needs first
    finally:
        signal.signal(signal.SIGINT, previous)
    if pending:
        print("onnxslim-compress: interrupted; no output was written", file=sys.stderr)
        return 130
    return main()


if __name__ == "__main__":
    sys.exit(run())
