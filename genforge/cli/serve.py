"""`genforge serve`: the OpenAI-compatible HTTP API and web UI over genforge.serve."""

from __future__ import annotations

import argparse
import os
import sys

from genforge.cli.flags import add_model_args, check_model_args, parse_adapters
from genforge.errors import GenforgeError
from genforge.hub import ANSWER_MODEL

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def add_parser(sub) -> None:
    p = sub.add_parser(
        "serve",
        help="OpenAI-compatible HTTP API and web UI",
        description="Serve models over an OpenAI-compatible HTTP API (/v1/chat/"
        "completions, /v1/completions, /v1/embeddings, /v1/images/generations, "
        "/v1/audio/transcriptions, /v1/audio/speech, /v1/models) and agent runs "
        "(/v1/agents/runs), with a web UI at / and Prometheus metrics at /metrics.",
    )
    add_model_args(p, many=True, default=ANSWER_MODEL)
    _add_server_args(p)
    _add_upstream_args(p)
    _add_rag_args(p)
    p.add_argument(
        "--agent-tools",
        default="calculator,python",
        metavar="NAMES",
        help="the tools agents may call on /v1/agents/runs and in the web UI's Agents view: "
        "calculator, python (sandboxed), rag_search (needs --rag-store), comma-separated, or "
        "none to disable agents (default: calculator,python). Tools that ask for approval "
        "(write_file) cannot be enabled: HTTP has no way to approve a call",
    )
    p.add_argument(
        "--image-model",
        default=None,
        metavar="NAME",
        help="the default model of /v1/images/generations and the web UI's Images view: "
        "shapes (the default), digits, a model folder or a `genforge image train` run; the "
        "shipped models are served too when installed. Needs the image extra: "
        "pip install 'genforge[image]'",
    )
    p.add_argument(
        "--max-audio-bytes",
        type=int,
        default=25 * 1024 * 1024,
        metavar="N",
        help="largest upload to /v1/audio/transcriptions (default: 25 MiB, as OpenAI's)",
    )
    p.add_argument(
        "--max-audio-minutes",
        type=float,
        default=60.0,
        metavar="M",
        help="longest recording /v1/audio/transcriptions accepts (default: 60; Whisper holds "
        "about 2.7 GB of memory an hour of sound)",
    )
    p.add_argument(
        "--speech-warm",
        action="store_true",
        help="start a speech worker with the server, so that the first /v1/audio/speech request "
        "starts speaking within a second (it holds 140-190 MB; by default one starts on the first "
        "speech or transcription request and is kept)",
    )
    p.add_argument(
        "--no-speech",
        action="store_true",
        help="serve neither /v1/audio/transcriptions nor /v1/audio/speech (by default both are "
        "served when the speech extra is installed: pip install 'genforge[speech]')",
    )
    p.set_defaults(func=run)


def _add_server_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to bind (default: 127.0.0.1, this machine only)",
    )
    p.add_argument("--port", type=int, default=8000, help="port (default: 8000)")
    p.add_argument(
        "--allowed-host",
        action="append",
        default=[],
        metavar="NAME",
        help="on a loopback --host, answer requests for this Host name too (repeatable; "
        "default: localhost, 127.x.x.x and [::1] only)",
    )
    p.add_argument(
        "--api-key",
        default=None,
        metavar="KEY",
        help="require 'Authorization: Bearer KEY' on every route but /health "
        "(default: $GENFORGE_API_KEY; none if unset)",
    )
    p.add_argument(
        "--max-tokens",
        type=int,
        default=4096,
        metavar="N",
        help="the most tokens one request may generate (default: 4096)",
    )
    p.add_argument(
        "--max-body-bytes",
        type=int,
        default=4 * 1024 * 1024,
        metavar="N",
        help="largest request body accepted (default: 4 MiB)",
    )
    p.add_argument(
        "--cors-origin",
        action="append",
        default=[],
        metavar="ORIGIN",
        help="allow browser requests from this origin (repeatable; default: none)",
    )


def _add_upstream_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--upstream",
        action="append",
        default=[],
        metavar="[NAME=]URL",
        help="forward requests for NAME (or every model URL serves) to that "
        "OpenAI-compatible server (repeatable)",
    )
    p.add_argument(
        "--upstream-api-key",
        default=None,
        metavar="KEY",
        help="bearer key sent upstream (default: $GENFORGE_UPSTREAM_API_KEY)",
    )
    p.add_argument(
        "--idle-unload",
        type=float,
        default=None,
        metavar="SECONDS",
        help="unload a model unused for this long (default: keep models loaded)",
    )
    p.add_argument(
        "--max-batch",
        type=int,
        default=None,
        metavar="N",
        help="requests decoded together (default: 32)",
    )


def _add_rag_args(p: argparse.ArgumentParser) -> None:
    """The document-store flags (read by genforge.serve.rag.parse_stores and parse_root)."""
    p.add_argument(
        "--rag-store",
        action="append",
        default=[],
        metavar="[NAME=]FILE|URL",
        help="a document index (SQLite file or postgresql:// URL) for /v1/rag and chats "
        "with rag (repeatable; the first is the default; NAME: the file's stem)",
    )
    p.add_argument(
        "--rag-root",
        default=".",
        metavar="DIR",
        help="the folder under which clients may index files (default: .)",
    )


def run(args: argparse.Namespace) -> int:
    names = args.model or ([] if args.upstream else [ANSWER_MODEL])
    _check_flags(args)
    from genforge.serve.agents import parse_agent_tools
    from genforge.serve.models import Registry, Upstream
    from genforge.serve.rag import parse_root, parse_stores

    rag_stores, rag_root = parse_stores(args.rag_store), parse_root(args.rag_root)
    agent_tools = parse_agent_tools(args.agent_tools, has_store=bool(rag_stores))
    up_key = args.upstream_api_key or os.environ.get("GENFORGE_UPSTREAM_API_KEY")
    upstreams = [Upstream.parse(u, up_key) for u in args.upstream]
    api_key = args.api_key or os.environ.get("GENFORGE_API_KEY") or None
    if args.host not in LOOPBACK and not api_key:
        print(
            f"genforge: warning: serving on {args.host} without --api-key: anyone who can reach "
            "this machine can use it.",
            file=sys.stderr,
        )
    import logging

    import uvicorn

    from genforge.generate.llm import load
    from genforge.image.sampling import DEFAULT_IMAGE_MODEL
    from genforge.serve.app import ServeConfig, create_app

    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s")
    engine = {"kv_dtype": args.kv_dtype} | ({"max_batch": args.max_batch} if args.max_batch else {})
    options = {
        "dtype": args.dtype,
        "context_length": args.ctx,
        "threads": args.threads,
        "device": args.device,
        **engine,
    }
    adapters = parse_adapters(args.adapter)
    if adapters and not names:
        raise GenforgeError("--adapter goes on a local model; add -m BASE.")
    if clash := set(adapters) & set(names):
        raise GenforgeError(f"adapter name {clash.pop()!r} is also a model's; name it NAME=DIR.")
    # Loaded before the server starts, so that a broken model is one clear error, not a traceback.
    preloaded = {
        name: load(name, **options, **({"adapters": adapters} if i == 0 and adapters else {}))
        for i, name in enumerate(names)
    }
    registry = Registry(
        names,
        adapters={a: (names[0], path) for a, path in adapters.items()},
        load_options=options,
        idle_unload=args.idle_unload,
        upstreams=upstreams,
        preloaded=preloaded,
    )
    config = ServeConfig(
        host=args.host,
        allowed_hosts=args.allowed_host,
        api_key=api_key,
        max_body_bytes=args.max_body_bytes,
        max_tokens=args.max_tokens,
        cors_origins=args.cors_origin,
        rag_stores=rag_stores,
        rag_root=rag_root,
        agent_tools=agent_tools,
        image_model=args.image_model or DEFAULT_IMAGE_MODEL,
        speech=not args.no_speech,
        speech_warm=args.speech_warm,
        max_audio_bytes=args.max_audio_bytes,
        max_audio_seconds=args.max_audio_minutes * 60,
    )
    app = create_app(registry, config)
    served = names + list(adapters) + app.state.images.names()
    served += [m["id"] for m in app.state.speech.entries()] + [u.url for u in upstreams]
    print(
        f"genforge: serving {', '.join(served)} on "
        f"http://{args.host}:{args.port} (web UI at /, API at /v1)",
        file=sys.stderr,
    )
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        log_level="warning",
        timeout_graceful_shutdown=5,
    )
    return 0


def _check_flags(args: argparse.Namespace) -> None:
    """Refuse impossible numbers and an address that cannot be bound, before loading anything."""
    for flag, value, low in (
        ("--port", args.port, 0),
        ("--max-tokens", args.max_tokens, 1),
        ("--max-body-bytes", args.max_body_bytes, 1024),
        ("--max-audio-bytes", args.max_audio_bytes, 1024),
        ("--max-audio-minutes", args.max_audio_minutes, 0.01),
    ):
        if value < low:
            raise GenforgeError(f"{flag} must be at least {low}, got {value}.")
    check_model_args(args)
    if args.image_model is not None:
        _check_image_model(args.image_model)
    if args.max_batch is not None and args.max_batch < 1:
        raise GenforgeError(f"--max-batch must be at least 1, got {args.max_batch}.")
    _check_port(args.host, args.port)


def _check_image_model(name: str) -> None:
    """An --image-model given on the command line must be there: a typo is an error at start, not a
    404 on the first request."""
    from genforge.image.model import is_image_model
    from genforge.image.sampling import resolve
    from genforge.serve.images import EXTRA, available

    if not available():
        raise GenforgeError(f"--image-model needs the image extra (diffusers, pillow); {EXTRA}.")
    if not is_image_model(resolve(name)):  # a shipped model's name, when it is not installed
        raise GenforgeError(
            f"the image model {name!r} is not installed; give a model folder or a "
            "`genforge image train` run."
        )


def _check_port(host: str, port: int) -> None:
    """Fail before loading anything if the address cannot be bound."""
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror:
        raise GenforgeError(f"--host {host} is not an address of this machine.") from None
    family, _, _, _, addr = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(addr)
        except OSError as e:
            raise GenforgeError(
                f"cannot listen on {host}:{port} ({e.strerror.lower()}); pick another --port "
                "or stop what uses it."
            ) from None
