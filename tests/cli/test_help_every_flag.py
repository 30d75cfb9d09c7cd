"""Every flag of every subcommand has help text, and a flag with a default says what it is (issue 19)."""

import argparse

from onnxslim_compress.cli.main import build_parser


def _subparsers(parser):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def test_every_flag_has_help_and_shows_its_default():
    missing, no_default = [], []
    subs = _subparsers(build_parser())
    assert set(subs) == {"inspect", "profile", "compare", "compress", "search", "worker"}
    for name, sub in subs.items():
        fmt = sub._get_formatter()
        for action in sub._actions:
            if isinstance(action, argparse._HelpAction) or action.help == argparse.SUPPRESS:
                continue
            label = f"{name} {'/'.join(action.option_strings) or action.dest}"
            if not action.help:
                missing.append(label)
                continue
            if action.option_strings and action.default not in (None, False, argparse.SUPPRESS):
                text = fmt._expand_help(action)
                if "default" not in text:
                    no_default.append(label)
    assert missing == [], f"flags without help: {missing}"
    assert no_default == [], f"flags whose help hides their default: {no_default}"


def test_ort_modelopt_spellings_and_old_aliases_parse_to_the_same_params():
    from onnxslim_compress.cli.main import CompressCommand
    from onnxslim_compress.passes.recipe import pass_registry

    def chosen(*argv):
        cmd = CompressCommand(pass_registry())
        p = argparse.ArgumentParser()
        cmd.attach(p.add_subparsers())
        ns = p.parse_args(["compress", "m.onnx", "-o", "o.onnx", "--quantize", "int8", *argv])
        cmd.parse(ns)
        return cmd.passes.chosen()["quantize"]

    assert chosen("--calibrate-method", "minmax") == chosen("--calibration", "minmax") == {"mode": "int8", "calibration": "minmax"}
    assert chosen("--no-per-channel")["per_channel"] is False
    assert chosen("--reduce-range")["reduce_range"] is True
    assert chosen("--percentile", "99.9")["percentile"] == 99.9
    assert chosen("--smoothquant")["smoothquant"] == 0.5
    assert chosen("--smoothquant-alpha", "0.8")["smoothquant"] == 0.8
    got = chosen("--nodes-to-exclude", "conv1", "--nodes-to-exclude", "fc", "--op-types-to-exclude", "Gemm")
    assert got["nodes_to_exclude"] == ["conv1", "fc"] and got["op_types_to_exclude"] == ["Gemm"]
