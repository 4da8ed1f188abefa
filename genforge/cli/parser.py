"""The argument parser of `genforge` and of each of its verbs.

Flags are spelled out in full: argparse's prefix matching would take `--max-token` for
`--max-tokens` today and for another flag once one is added. A near miss (`--max_tokens`,
`--max-token`, `--temp`) gets one line naming the flag it was probably meant to be.
"""

from __future__ import annotations

import argparse
import difflib


class Parser(argparse.ArgumentParser):
    """An ArgumentParser without abbreviations; argparse makes subparsers of their parent's class,
    so every verb's parser is one too."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def parse_known_args(self, args=None, namespace=None):
        if args is not None and self._subparsers is None:  # a verb's own flags: check them first,
            self._check_near_misses(args)  # or a misspelt required flag is reported as missing
        namespace, extras = super().parse_known_args(args, namespace)
        self._check_near_misses(extras)
        return namespace, extras

    def _check_near_misses(self, args: list[str]) -> None:
        for arg in args:
            if arg == "--":  # the rest are values
                return
            if " " in arg:  # a value, for argparse too (e.g. a prompt that starts with "--")
                continue
            flag = arg.split("=", 1)[0]
            if flag not in self._option_string_actions and (meant := self.meant(flag)):
                self.exit(2, f"{self.prog}: error: unknown flag {flag}; did you mean {meant}?\n")

    def meant(self, flag: str) -> str | None:
        """The long flag of this parser that an unknown `flag` is a near miss of, if any."""
        if not flag.startswith("--"):
            return None
        known = [s for a in self._actions for s in a.option_strings if s.startswith("--")]
        if flag.replace("_", "-") in known:
            return flag.replace("_", "-")
        if len(starting := [s for s in known if s.startswith(flag)]) == 1:
            return starting[0]  # an abbreviation, as argparse used to accept
        close = difflib.get_close_matches(flag, known, n=1, cutoff=0.8)
        return close[0] if close else None
