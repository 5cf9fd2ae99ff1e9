"""The `routelet` console script: route texts with a router folder, or serve it over HTTP.

    routelet route "what's my balance" --router data/router
    cat requests.txt | routelet route --router data/router
    routelet serve --router data/router --port 8000

Each subcommand is one entry in COMMANDS (name -> (help, add_arguments, run)); `run` imports
what it needs itself, so `route` and `serve` load only the torch-free runtime and server.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Callable, Iterator

from routelet.paths import ROUTER

EXIT_USER_ERROR = 2
DEFAULT_ROUTER = str(ROUTER)  # where `dvc repro` puts the exported router
_ROUTER_HELP = "router folder holding router.json and its model files (default: %(default)s)"


def positive_int(value: str) -> int:
    """argparse type: an integer of at least 1."""
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"{number} is not allowed: give 1 or more")
    return number


def positive_float(value: str) -> float:
    """argparse type: a finite number above 0."""
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number") from None
    if not 0 < number < float("inf"):
        raise argparse.ArgumentTypeError(f"{value} is not allowed: give a number above 0")
    return number


def _route_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("text", nargs="?", help="text to route; omit it to read one text per stdin line")
    parser.add_argument("--image", nargs="+", metavar="PATH",
                        help="route these image files with an image router (one JSON line each)")
    parser.add_argument("--router", default=DEFAULT_ROUTER, help=_ROUTER_HELP)
    parser.add_argument("--top-k", type=positive_int, default=3,
                        help="how many top routes to list, 1 or more (default: %(default)s)")
    parser.add_argument("--threads", type=positive_int, default=1, help="onnxruntime threads (default: %(default)s)")


def stdin_lines(stream) -> Iterator[str]:
    """Each line of a binary stream as text, line ending removed. A line that is not UTF-8 is decoded
    with U+FFFD for the bad bytes, and stderr says which line: it is still routed, and so is the rest."""
    for number, raw in enumerate(stream, 1):
        raw = raw.rstrip(b"\r\n")
        if number == 1:
            raw = raw.removeprefix(b"\xef\xbb\xbf")  # a UTF-8 byte order mark is no text
        try:
            yield raw.decode("utf-8")
        except UnicodeDecodeError as error:
            print(f"routelet route: stdin line {number}: not valid UTF-8 (byte {error.start + 1}); "
                  "routed with U+FFFD for the bad bytes: convert the input to UTF-8 (e.g. iconv -t UTF-8)",
                  file=sys.stderr, flush=True)
            yield raw.decode("utf-8", errors="replace")


def _route(args: argparse.Namespace) -> int:
    from routelet.serving.runtime import Router

    router = Router.load(args.router, threads=args.threads)
    image_router = router.info.input.modality == "image"
    if bool(args.image) != image_router:
        print(f"routelet route: error: {args.router} routes {router.info.input.modality}s: "
              f"{'pass --image PATH...' if image_router else 'pass text, not --image'}", file=sys.stderr)
        return EXIT_USER_ERROR
    for path in args.image or []:  # an unreadable file abstains with the reason, the rest go on
        print(json.dumps({"image": path, **router.route_one(Path(path), top_k=args.top_k)}), flush=True)
    if image_router:
        return 0
    if args.text is not None:
        print(json.dumps(router.route_one(args.text, top_k=args.top_k)))
        return 0
    # One JSON line per input line, flushed at once, so it works as a pipe filter.
    for line in stdin_lines(sys.stdin.buffer):
        print(json.dumps(router.route_one(line, top_k=args.top_k)), flush=True)
    return 0


def _serve_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--router", default=DEFAULT_ROUTER, help=_ROUTER_HELP)
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to bind (default: %(default)s); any non-loopback address needs an API key")
    parser.add_argument("--port", type=int, default=8000, help="port to listen on (default: %(default)s)")
    parser.add_argument("--api-key", default=os.environ.get("ROUTELET_API_KEY") or None,
                        help="require this value (16 characters or more) in the X-API-Key header on /v1/* "
                        "(default: $ROUTELET_API_KEY)")
    parser.add_argument("--threads", type=positive_int, default=1, help="onnxruntime threads (default: %(default)s)")
    parser.add_argument("--access-log", action="store_true",
                        help="log one line per request (off by default: under load it took about a sixth of the event loop)")
    parser.add_argument("--no-reload", dest="reload", action="store_false",
                        help="serve the router as loaded: do not watch its folder (a promote or rollback) or take SIGHUP")
    parser.add_argument("--log-samples", metavar="DIR|s3://BUCKET/PREFIX", default=None,
                        help="log every routed text (redacted) with its decision there, as JSONL batches "
                        "(read them back with `python -m stages.pull_samples`)")
    parser.add_argument("--log-endpoint-url", default=None,
                        help="S3-compatible endpoint for an s3:// --log-samples (R2, MinIO); default: AWS_ENDPOINT_URL or AWS")
    parser.add_argument("--defer", choices=["teacher", "openai"], default=None,
                        help="ask an LLM about the texts the router abstains on: teacher (Claude: $ANTHROPIC_API_KEY, "
                        "$ANTHROPIC_BASE_URL) or openai (an OpenAI-compatible endpoint at --defer-base-url, "
                        '$OPENAI_API_KEY if it wants one); results then carry "deferred"')
    parser.add_argument("--defer-base-url", default=None, metavar="URL",
                        help="the LLM endpoint's base URL (required for --defer openai, e.g. http://127.0.0.1:8080/v1)")
    parser.add_argument("--defer-model", default="claude-haiku-4-5", metavar="NAME",
                        help="the model asked (default: %(default)s)")
    parser.add_argument("--defer-timeout", type=positive_float, default=2.0, metavar="S",
                        help="seconds a request waits for the LLM before the reject route answers (default: %(default)s)")
    parser.add_argument("--defer-concurrency", type=positive_int, default=4, metavar="N",
                        help="LLM calls in flight at most; over it the router answers at once (default: %(default)s)")
    parser.add_argument("--defer-per-minute", type=positive_int, default=60, metavar="N",
                        help="LLM calls per minute at most; over it the router answers at once (default: %(default)s)")


def _serve(args: argparse.Namespace) -> int:
    from routelet.serving.defer import DeferSettings
    from routelet.serving.server import ServeError, serve

    try:
        defer = None if args.defer is None else DeferSettings(
            timeout_s=args.defer_timeout, concurrency=args.defer_concurrency, per_minute=args.defer_per_minute,
            model=args.defer_model, provider="anthropic" if args.defer == "teacher" else "openai",
            base_url=args.defer_base_url)
    except ValueError as exc:
        raise ServeError(str(exc)) from None
    serve(args.router, host=args.host, port=args.port, api_key=args.api_key, threads=args.threads,
          access_log=args.access_log, reload=args.reload, log_samples=args.log_samples,
          log_endpoint_url=args.log_endpoint_url, defer=defer)
    return 0


def _llm_baseline_arguments(parser: argparse.ArgumentParser) -> None:
    from routelet.llm.command import add_arguments  # argparse only: the teacher loads in run

    add_arguments(parser)


def _llm_baseline(args: argparse.Namespace) -> int:
    from routelet.llm.command import run

    return run(args)


def _promotion(name: str) -> Callable:
    from routelet.serving import promote  # lazy: numpy and the runtime load only for these commands

    return getattr(promote, name)


COMMANDS: dict[str, tuple[str, str, Callable, Callable]] = {
    "route": (
        "route texts with a router folder and print one JSON line per text",
        "examples:\n"
        "  routelet route \"what's my account balance\"\n"
        "  routelet route \"book a flight\" --router data/router --top-k 5\n"
        "  printf 'hi\\nsend money\\n' | routelet route --router data/router   # one JSON line per input line\n"
        "\noutput: {\"route\", \"target\", \"p\", \"confidence\", \"abstain\", \"abstain_reason\", "
        "\"top_k\": [{\"route\", \"target\", \"p\"}], \"tier\", \"model_version\"}\n"
        "Input with nothing the model can read (empty, emoji, unknown words only) abstains with a reason.\n"
        "A stdin line that is not UTF-8 is routed with U+FFFD for its bad bytes, and a warning on stderr.",
        _route_arguments,
        _route,
    ),
    "serve": (
        "serve a router folder over HTTP (POST /v1/route, GET /healthz, playground at /)",
        "examples:\n"
        "  routelet serve --router data/router                      # http://127.0.0.1:8000/ (playground)\n"
        "  export ROUTELET_API_KEY=$(python -c 'import secrets; print(secrets.token_urlsafe(24))')\n"
        "  routelet serve --host 0.0.0.0 --port 8080                 # the key: 16 characters or more\n"
        "  curl -s localhost:8000/v1/route -H 'content-type: application/json' -d '{\"text\": \"hi\"}'\n"
        "\nAPI docs are at /docs. Binding a non-loopback host requires --api-key or $ROUTELET_API_KEY.",
        _serve_arguments,
        _serve,
    ),
    "llm-baseline": (
        "score an LLM (Claude, or any OpenAI-compatible endpoint) on the holdout into report/baselines.json",
        "examples:\n"
        "  routelet llm-baseline                                  # Claude, settings from params.yaml ingest.teacher\n"
        "  routelet llm-baseline --limit 500 --max-usd 1\n"
        "  routelet llm-baseline --provider openai --base-url http://127.0.0.1:8000/v1 --model arch-router\n"
        "\nAnswers are cached: a re-run pays only for rows not answered before.",
        _llm_baseline_arguments,
        _llm_baseline,
    ),
    "promote": (
        "promote a router folder unless it does worse than the promoted one on the holdout and guard sets",
        "examples:\n"
        "  routelet promote data/router                 # settings from params.yaml promote:\n"
        "  routelet promote data/router --dry-run       # the comparison table and exit code only\n"
        "  routelet serve --router data/promoted/current  # serves what was promoted\n"
        "\nexit codes: 0 promoted (or nothing to do), 1 refused (the table says what fell), 2 an error",
        lambda parser: _promotion("promote_arguments")(parser),
        lambda args: _promotion("run_promote")(args),
    ),
    "rollback": (
        "go back to the router promoted before the current one (logged in the promotions log)",
        "examples:\n  routelet rollback\n  routelet rollback --registry data/promoted",
        lambda parser: _promotion("rollback_arguments")(parser),
        lambda args: _promotion("run_rollback")(args),
    ),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="routelet",
        description="Route texts with a trained router folder, without torch.",
        epilog="examples:\n  routelet route \"what's my balance\" --router data/router\n"
        "  routelet serve --router data/router --port 8000\n\n"
        "Run `routelet <command> --help` for a command's options.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="<command>", required=True)
    for name, (summary, epilog, add_arguments, run) in COMMANDS.items():
        command = sub.add_parser(name, help=summary, description=summary[0].upper() + summary[1:] + ".",
                                 epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter)
        add_arguments(command)
        command.set_defaults(run=run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from routelet.serving.runtime import RouterError

    errors: tuple[type[Exception], ...] = (RouterError,)
    if args.command == "serve":
        from routelet.serving.sample_log import StorageError
        from routelet.serving.server import ServeError

        errors += (ServeError, StorageError)
    try:
        return args.run(args)
    except errors as exc:
        print(f"routelet {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `routelet route | head` closed the pipe: not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
