"""`python -m onnxslim_compress.search search|worker ...`: the two subcommands on their own.

The same commands as `onnxslim-compress search|worker`; this entry point lets tests and fleet
scripts start workers without depending on how the main CLI is assembled.
"""

from __future__ import annotations

import sys

from onnxslim_compress.cli.main import _Parser
from onnxslim_compress.cli.search_commands import add_commands
from onnxslim_compress.errors import CompressError


def main(argv: list[str] | None = None) -> int:
    import traceback

    args = sys.argv[1:] if argv is None else argv
    debug = "--debug" in args
    try:
        p = _Parser(prog="python -m onnxslim_compress.search")
        common = _Parser(add_help=False)
        common.add_argument("--debug", action="store_true", help="show tracebacks")
        common.add_argument("--seed", type=int, default=0, help="seed (default 0)")
        common.add_argument("--no-progress", action="store_true", help="no progress bars")
        sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
        commands = add_commands(sub, common)
        ns = p.parse_args(args)
        if not ns.command:
            p.print_help()
            return 2
        return commands[ns.command](ns)
    except CompressError as e:
        if debug:
            traceback.print_exc()
        print(f"onnxslim-compress: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("onnxslim-compress: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
