#!/usr/bin/env python3
"""Offline MCP search server: a test peer for agentry's integration tests.

Built on the official MCP Python SDK (FastMCP). It needs no network: `search`
looks through a small corpus embedded below and answers in the same shape as
the DuckDuckGo `search` tool served by the Docker MCP Gateway (a numbered list
with title, URL and summary per result).

Tools:
    search(query, max_results=5)  read-only search over the embedded corpus
    echo(text)                     returns `text` unchanged
    fail(message)                  always raises, so the caller sees a tool
                                   result with isError=true carrying `message`
    slow(seconds)                  sleeps `seconds`, then answers; logs
                                   `tool=slow ...` to stderr when it starts, so
                                   a test knows the call is in flight, and
                                   `CANCELLED slow` when the client cancels it
    add_tool(name)                 registers a tool `name` (echoes `text`) and
                                   sends notifications/tools/list_changed
    chatty()                       mid-call, sends the client a `ping` request
                                   (and waits for its answer) and an info-level
                                   `notifications/message` "chatty says hello";
                                   then answers "pong ok"
    crash_once(marker)             read-only; over HTTP, when the file `marker`
                                   does not exist, the POST carrying the call
                                   creates it and kills the server process as
                                   it arrives, before any answer (a server
                                   that dies with a request in flight: the
                                   client's POST ends with the connection
                                   closed); otherwise answers "survived"
    barrier(group, parties, timeout=30)
                                   returns once `parties` calls with the same
                                   `group` are in progress at the same time; if
                                   they are not within `timeout` seconds, fails
                                   (isError) saying how many arrived. Proves
                                   that a client's calls really overlap.

Usage:
    python mcp_search_server.py --transport {sse,streamable-http,stdio}
                                [--host 127.0.0.1] [--port PORT]
                                [--require-bearer TOKEN_FILE]

HTTP transports:
    * SSE: event stream at /sse, client messages POSTed to /messages/.
    * Streamable HTTP: a single endpoint at /mcp.
    * The listening socket is bound before the server starts; `--port 0` (the
      default) lets the kernel pick a free port. Once the server accepts
      connections it prints exactly one line `READY <port>` to stdout and
      flushes it. Nothing else is written to stdout.
    * `--require-bearer TOKEN_FILE`: every HTTP request must carry
      `Authorization: Bearer <token>`, where <token> is the file's content with
      surrounding whitespace stripped. The file is read again on each request,
      so tests can rotate the token while the server runs. Others get a 401.

stdio transport: stdout carries the protocol, so no READY line is printed;
the server is ready as soon as it is spawned.

Diagnostics go to stderr: one line per tool call, and, with the environment
variable MCP_PEER_LOG_HEADERS=1, one line per HTTP request telling whether an
Authorization header was present (never its value).
"""

from __future__ import annotations

import argparse
import asyncio
import hmac
import json
import os
import re
import socket
import sys
from pathlib import Path
from typing import Any

from mcp.server.fastmcp import Context, FastMCP
from mcp.types import ToolAnnotations

LOG_PREFIX = "[mcp-peer]"


def log(message: str) -> None:
    """Write one diagnostic line to stderr (stdout is reserved)."""
    print(f"{LOG_PREFIX} {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------
# The corpus
# ---------------------------------------------------------------------------

CORPUS: list[dict[str, str]] = [
    {
        "title": "Transformer (deep learning architecture)",
        "url": "https://en.wikipedia.org/wiki/Transformer_(deep_learning_architecture)",
        "body": "The transformer is a deep learning architecture based on multi-head "
        "self-attention. It processes all tokens of a sequence in parallel and "
        "underlies large language models such as GPT and BERT.",
    },
    {
        "title": "Gradient descent and backpropagation in machine learning",
        "url": "https://developers.google.com/machine-learning/crash-course/reducing-loss/gradient-descent",
        "body": "Neural networks are trained with gradient descent: backpropagation "
        "computes the gradient of the loss with respect to every weight, and the "
        "optimizer (SGD, Adam) takes a small step against it at each iteration.",
    },
    {
        "title": "Retrieval-augmented generation (RAG)",
        "url": "https://en.wikipedia.org/wiki/Retrieval-augmented_generation",
        "body": "Retrieval-augmented generation lets a language model consult an "
        "external document store: relevant passages are retrieved by embedding "
        "similarity or keyword search and added to the prompt before generation.",
    },
    {
        "title": "Fearless Concurrency - The Rust Programming Language",
        "url": "https://doc.rust-lang.org/book/ch16-00-concurrency.html",
        "body": "Rust's ownership and type system prevent data races at compile time. "
        "Threads share data through Arc and Mutex, or communicate by sending "
        "values over channels; the Send and Sync traits mark what is thread-safe.",
    },
    {
        "title": "Tokio - An asynchronous Rust runtime",
        "url": "https://tokio.rs/tokio/tutorial",
        "body": "Tokio is an event-driven, non-blocking I/O platform for writing "
        "asynchronous applications in Rust. It provides a multi-threaded work-"
        "stealing scheduler, async TCP and UDP sockets, timers and process spawning.",
    },
    {
        "title": "Error handling in Rust with Result and the ? operator",
        "url": "https://doc.rust-lang.org/book/ch09-00-error-handling.html",
        "body": "Rust groups errors into recoverable ones, returned as Result<T, E> "
        "and propagated with the ? operator, and unrecoverable ones that panic. "
        "Crates like thiserror and anyhow reduce the boilerplate.",
    },
    {
        "title": "Docker overview",
        "url": "https://docs.docker.com/get-started/docker-overview/",
        "body": "Docker packages an application and its dependencies into an image "
        "and runs it as an isolated container. Images are built from a Dockerfile "
        "layer by layer and shared through registries such as Docker Hub.",
    },
    {
        "title": "Docker Compose secrets",
        "url": "https://docs.docker.com/compose/how-tos/use-secrets/",
        "body": "Compose secrets keep sensitive data such as API keys and passwords "
        "out of environment variables: each secret is read from a file and mounted "
        "into the container under /run/secrets/<name>.",
    },
    {
        "title": "Docker MCP Gateway",
        "url": "https://docs.docker.com/ai/mcp-catalog-and-toolkit/mcp-gateway/",
        "body": "The Docker MCP Gateway runs Model Context Protocol servers in "
        "containers and exposes their tools to AI clients through a single "
        "endpoint over stdio, SSE or streamable HTTP, injecting secrets as needed.",
    },
    {
        "title": "What is OpenTelemetry?",
        "url": "https://opentelemetry.io/docs/what-is-opentelemetry/",
        "body": "OpenTelemetry is a vendor-neutral observability framework for "
        "generating and exporting telemetry: traces, metrics and logs. The OTLP "
        "protocol carries the data to a collector or backend over gRPC or HTTP.",
    },
    {
        "title": "Traces and spans - OpenTelemetry concepts",
        "url": "https://opentelemetry.io/docs/concepts/signals/traces/",
        "body": "A trace records the path of a request through a system as a tree of "
        "spans. Each span has a name, start and end timestamps, attributes and a "
        "parent; context propagation links spans across process boundaries.",
    },
    {
        "title": "Model Context Protocol specification",
        "url": "https://modelcontextprotocol.io/specification",
        "body": "The Model Context Protocol (MCP) is an open JSON-RPC based protocol "
        "connecting language model applications to tools, resources and prompts. "
        "Clients call tools with tools/call; errors surface as isError results.",
    },
    {
        "title": "The actor model of concurrency",
        "url": "https://en.wikipedia.org/wiki/Actor_model",
        "body": "In the actor model, actors are independent units of computation that "
        "communicate only by asynchronous messages. Supervisors restart failed "
        "actors, the let-it-crash approach popularised by Erlang/OTP.",
    },
    {
        "title": "Exponential backoff and jitter",
        "url": "https://aws.amazon.com/builders-library/timeouts-retries-and-backoff-with-jitter/",
        "body": "Clients that retry failed calls should wait exponentially longer "
        "between attempts and add random jitter, so that retries from many "
        "clients do not synchronise and overload a recovering service.",
    },
]

# Words that carry no meaning for matching.
STOPWORDS = frozenset(
    "a an and are as at be by for from how in is it of on or the to what when "
    "where which who why with does do can".split()
)


def tokenize(text: str) -> list[str]:
    """Lower-cased alphanumeric words of `text`, without stopwords."""
    return [w for w in re.findall(r"[a-z0-9]+", text.lower()) if w not in STOPWORDS]


def rank(query: str) -> list[dict[str, str]]:
    """Corpus entries matching `query`, best first.

    A query term found among an entry's title words scores 3, among its body
    words 1; an entry matching no term is left out. Ties keep corpus order.
    """
    terms = set(tokenize(query))
    scored = []
    for index, doc in enumerate(CORPUS):
        title_words = set(tokenize(doc["title"]))
        body_words = set(tokenize(doc["body"]))
        score = sum(3 * (t in title_words) + (t in body_words) for t in terms)
        if score > 0:
            scored.append((-score, index, doc))
    scored.sort(key=lambda item: (item[0], item[1]))
    return [doc for _, _, doc in scored]


def format_results(results: list[dict[str, str]]) -> str:
    """Render results like the DuckDuckGo MCP server does for an LLM."""
    if not results:
        return (
            "No results were found for your search query. "
            "Please try rephrasing your search."
        )
    lines = [f"Found {len(results)} search results:", ""]
    for position, doc in enumerate(results, start=1):
        lines.append(f"{position}. {doc['title']}")
        lines.append(f"   URL: {doc['url']}")
        lines.append(f"   Summary: {doc['body']}")
        lines.append("")
    return "\n".join(lines)


# ---------------------------------------------------------------------------
# The MCP server
# ---------------------------------------------------------------------------


def build_server(host: str) -> FastMCP:
    """A FastMCP server with the test tools registered."""
    mcp = FastMCP(
        name="agentry-test-search",
        instructions="Offline search over a small fixed corpus, for tests.",
        host=host,
        log_level="WARNING",
    )

    @mcp.tool(
        title="Web search",
        annotations=ToolAnnotations(title="Web search", readOnlyHint=True, openWorldHint=False),
        structured_output=False,
    )
    def search(query: str, ctx: Context, max_results: int = 5) -> str:
        """Search the web (here: a small offline corpus) and return formatted results.

        Args:
            query: The search query string.
            max_results: Maximum number of results to return (default: 5).
        """
        meta = ctx.request_context.meta
        traceparent = getattr(meta, "traceparent", None) if meta is not None else None
        log(f"tool=search query={query!r} max_results={max_results} meta.traceparent={traceparent or '-'}")
        if max_results < 1:
            raise ValueError("max_results must be at least 1")
        return format_results(rank(query)[:max_results])

    @mcp.tool(structured_output=False)
    def echo(text: str) -> str:
        """Return the given text unchanged."""
        shown = text if len(text) <= 80 else f"{text[:80]}... ({len(text)} chars)"
        log(f"tool=echo text={shown!r}")
        return text

    @mcp.tool(structured_output=False)
    def fail(message: str) -> str:
        """Always fail with the given message (the result has isError set)."""
        log(f"tool=fail message={message!r}")
        raise RuntimeError(message)

    @mcp.tool(structured_output=False)
    async def slow(seconds: float) -> str:
        """Sleep for `seconds`, then answer. A cancelled call logs `CANCELLED slow`."""
        log(f"tool=slow seconds={seconds}")
        try:
            await asyncio.sleep(seconds)
        except asyncio.CancelledError:
            log("CANCELLED slow")
            raise
        return f"slept {seconds}s"

    @mcp.tool(structured_output=False)
    async def add_tool(name: str, ctx: Context) -> str:
        """Register a new echo-like tool called `name` and tell the client the list changed."""
        def extra(text: str) -> str:
            return f"{name}: {text}"

        mcp.add_tool(extra, name=name, description=f"Added at run time: echoes as {name}")
        log(f"tool=add_tool name={name!r}")
        await ctx.session.send_tool_list_changed()
        return f"added {name}"

    @mcp.tool(structured_output=False)
    async def chatty(ctx: Context) -> str:
        """Ping the client and send it a log message mid-call, then answer."""
        log("tool=chatty")
        await ctx.session.send_ping()
        await ctx.info("chatty says hello")
        return "pong ok"

    @mcp.tool(
        annotations=ToolAnnotations(title="Crash once", readOnlyHint=True, openWorldHint=False),
        structured_output=False,
    )
    def crash_once(marker: str) -> str:
        """Answer once the server has died on this call (see CrashOnceMiddleware)."""
        log(f"tool=crash_once survived marker={marker!r}")
        return "survived"

    barriers: dict[str, Barrier] = {}

    @mcp.tool(structured_output=False)
    async def barrier(group: str, parties: int, timeout: float = 30.0) -> str:
        """Wait until `parties` calls with this `group` are in progress at once."""
        state = barriers.setdefault(group, Barrier(parties))
        log(f"tool=barrier group={group!r} arrived={state.arrived + 1}/{parties}")
        await state.wait(timeout)
        return f"{parties} calls met at barrier {group}"

    return mcp


class Barrier:
    """A one-shot meeting point for `parties` concurrent tool calls."""

    def __init__(self, parties: int) -> None:
        self.parties = parties
        self.arrived = 0
        self.all_here = asyncio.Event()

    async def wait(self, timeout: float) -> None:
        self.arrived += 1
        if self.arrived >= self.parties:
            self.all_here.set()
        try:
            await asyncio.wait_for(self.all_here.wait(), timeout)
        except TimeoutError:
            raise RuntimeError(
                f"only {self.arrived} of {self.parties} calls arrived within {timeout}s"
            ) from None


# ---------------------------------------------------------------------------
# ASGI middleware
# ---------------------------------------------------------------------------


class HeaderLogMiddleware:
    """Logs each HTTP request, whether it had an Authorization header (never its value), and
    its W3C `traceparent` header (trace context is not secret)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            has_auth = any(name == b"authorization" for name, _ in scope["headers"])
            traceparent = next((v.decode() for n, v in scope["headers"] if n == b"traceparent"), "-")
            log(
                f"http {scope['method']} {scope['path']} "
                f"authorization={'present' if has_auth else 'absent'} traceparent={traceparent}"
            )
        await self.app(scope, receive, send)


class CrashOnceMiddleware:
    """Kills the process when a POST carries a `tools/call` of `crash_once` whose marker file
    does not exist yet (creating it first), before the request reaches the MCP app: the
    client's request is in flight and gets no answer at all."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if message["type"] != "http.request" or not message.get("more_body", False):
                break
        try:
            request = json.loads(body)
        except ValueError:
            request = None
        if isinstance(request, dict) and request.get("method") == "tools/call":
            params = request.get("params") or {}
            marker = (params.get("arguments") or {}).get("marker")
            if params.get("name") == "crash_once" and marker and not Path(marker).exists():
                Path(marker).touch()
                log(f"tool=crash_once exiting marker={marker!r}")
                os._exit(1)
        replayed = False

        async def replay() -> dict:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


class BearerAuthMiddleware:
    """Rejects HTTP requests lacking `Authorization: Bearer <token>` with 401.

    The expected token is the content of `token_file`, stripped, read anew on
    every request so that rotating the file takes effect immediately.
    """

    def __init__(self, app: Any, token_file: Path) -> None:
        self.app = app
        self.token_file = token_file

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        try:
            expected = self.token_file.read_text(encoding="utf-8").strip()
        except OSError as err:
            log(f"cannot read bearer token file: {err}")
            expected = ""
        header = b""
        for name, value in scope["headers"]:
            if name == b"authorization":
                header = value
                break
        scheme, _, presented = header.decode("latin-1").partition(" ")
        if expected and scheme.lower() == "bearer" and hmac.compare_digest(
            presented.strip().encode(), expected.encode()
        ):
            await self.app(scope, receive, send)
            return
        log(f"http {scope['method']} {scope['path']} rejected: 401")
        body = json.dumps({"error": "invalid_token", "error_description": "Bearer token required"}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 401,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"www-authenticate", b'Bearer error="invalid_token"'),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


# ---------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------


def bind_socket(host: str, port: int) -> socket.socket:
    """Bind a listening TCP socket; port 0 picks a free one.

    SO_REUSEADDR lets a restarted server take the same port back while old
    connections linger in TIME_WAIT.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


async def serve_http(mcp: FastMCP, args: argparse.Namespace) -> int:
    """Serve an HTTP transport with uvicorn and announce readiness."""
    import uvicorn

    app: Any = mcp.sse_app() if args.transport == "sse" else mcp.streamable_http_app()
    app = CrashOnceMiddleware(app)
    if args.require_bearer:
        app = BearerAuthMiddleware(app, Path(args.require_bearer))
    if os.environ.get("MCP_PEER_LOG_HEADERS") == "1" or args.log_headers:
        app = HeaderLogMiddleware(app)

    sock = bind_socket(args.host, args.port)
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        if task.done():
            log("server stopped before it was ready")
            await task
            return 1
        await asyncio.sleep(0.02)
    log(f"{args.transport} server listening on {args.host}:{port}")
    print(f"READY {port}", flush=True)
    await task
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--transport", choices=["sse", "streamable-http", "stdio"], default="stdio")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port (HTTP transports)")
    parser.add_argument(
        "--require-bearer",
        metavar="TOKEN_FILE",
        help="require 'Authorization: Bearer <file content>' on HTTP requests",
    )
    parser.add_argument(
        "--log-headers",
        action="store_true",
        help="log each HTTP request (as MCP_PEER_LOG_HEADERS=1 does)",
    )
    args = parser.parse_args()

    mcp = build_server(args.host)
    if args.transport == "stdio":
        log("stdio server starting")
        asyncio.run(mcp.run_stdio_async())
        return 0
    return asyncio.run(serve_http(mcp, args))


if __name__ == "__main__":
    sys.exit(main())
