"""mkdocs hooks: the command-line reference is generated from the argparse parser.

``<!-- cli-options: COMMAND -->`` in a page becomes a table of that command's options, read
from ``camb_async.cli``'s parser at build time, so the docs cannot drift from the code.
"""

from __future__ import annotations

import argparse
import re
from typing import Any

_MARKER = re.compile(r"<!-- cli-options: ([\w-]+) -->")


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    from camb_async import cli

    parser = cli._parser()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    raise RuntimeError("camb_async.cli has no subcommands")


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def options_table(command: str) -> str:
    """A Markdown table of ``command``'s arguments and options."""
    commands = _subparsers()
    if command not in commands:
        raise ValueError(f"docs mention `camb-async {command}`, which the parser lacks")
    rows = ["| argument / option | default | help |", "|---|---|---|"]
    for action in commands[command]._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        if action.option_strings:
            name = ", ".join(f"`{s}`" for s in action.option_strings)
            if action.nargs != 0:
                metavar = action.metavar or (
                    "{" + ",".join(action.choices) + "}" if action.choices else action.dest.upper()
                )
                name += f" `{metavar}`"
        else:
            metavar = action.metavar or action.dest
            name = f"`{metavar}`" + (" ..." if action.nargs in ("*", "+") else "")
        if (
            action.nargs == 0
            or action.default in (None, argparse.SUPPRESS)
            or (not action.option_strings)
        ):
            default = ""
        else:
            default = f"`{action.default}`"
        rows.append(f"| {name} | {default} | {_cell(action.help or '')} |")
    return "\n".join(rows)


def on_page_markdown(markdown: str, **kwargs: Any) -> str:
    return _MARKER.sub(lambda m: options_table(m.group(1)), markdown)
