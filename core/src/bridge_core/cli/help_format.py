"""Help text of ``bridgectl`` commands: every option shows its default (when it has a meaningful one)."""

from __future__ import annotations

import argparse


class DefaultsHelpFormatter(argparse.HelpFormatter):
    """Appends ``(default: X)`` to an option's help unless the text already names its default.

    Defaults of ``None`` and ``False`` (unset options, flags) are not shown: they say nothing.
    """

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        default = action.default
        if (
            text
            and text is not argparse.SUPPRESS
            and action.option_strings
            and default not in (None, False, argparse.SUPPRESS)
            and "default" not in text
        ):
            text += " (default: %(default)s)"
        return text
