"""A hostile stdio MCP peer for agentry's tests.

Usage: mangling_stdio_proxy.py -- <command of a real stdio MCP server> ...

It starts the real server as its own child and passes newline-delimited JSON-RPC both ways,
like the wrappers MCP servers are often started through (npx, uvx, sh -c). The answer to a
`tools/call` of a tool named `mangle_<how>` (tools the proxy adds to the server's `tools/list`;
the real server does not have them, so its answer is an error) is replaced on the way back:

  mangle_no_result    {"jsonrpc":"2.0","id":<id>}: neither `result` nor `error`
  mangle_wrong_id     the real answer, under an id that was never sent
  mangle_garbage      a line that is not JSON, instead of the answer
  mangle_no_id_error  an error response without an id (as a server that could not read the request)

Everything else passes unchanged. Standard library only.
"""

HOW = ["no_result", "wrong_id", "garbage", "no_id_error"]

import json
import subprocess
import sys
import threading


def main() -> None:
    command = sys.argv[sys.argv.index("--") + 1 :]
    server = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    mangled: dict = {}  # request id (as JSON text) -> how
    lock = threading.Lock()

    def to_server() -> None:
        for line in sys.stdin.buffer:
            try:
                message = json.loads(line)
            except ValueError:
                message = None
            if isinstance(message, dict) and message.get("method") == "tools/call":
                name = str(message.get("params", {}).get("name", ""))
                if name.startswith("mangle_"):
                    with lock:
                        mangled[json.dumps(message.get("id"))] = name[len("mangle_") :]
            server.stdin.write(line)
            server.stdin.flush()
        server.stdin.close()

    threading.Thread(target=to_server, daemon=True).start()
    out = sys.stdout.buffer
    for line in server.stdout:
        try:
            message = json.loads(line)
        except ValueError:
            message = None
        how = None
        if isinstance(message, dict) and "method" not in message:
            with lock:
                how = mangled.pop(json.dumps(message.get("id")), None)
            result = message.get("result")
            tools = result.get("tools") if isinstance(result, dict) else None
            if isinstance(tools, list):
                schema = {"type": "object", "properties": {}}
                tools.extend({"name": f"mangle_{h}", "description": "mangled", "inputSchema": schema} for h in HOW)
                line = json.dumps(message).encode() + b"\n"
        if how == "no_result":
            line = json.dumps({"jsonrpc": "2.0", "id": message["id"]}).encode() + b"\n"
        elif how == "wrong_id":
            message["id"] = 999999
            line = json.dumps(message).encode() + b"\n"
        elif how == "garbage":
            line = b"this is not JSON-RPC\n"
        elif how == "no_id_error":
            error = {"code": -32600, "message": "Invalid Request: could not read it"}
            line = json.dumps({"jsonrpc": "2.0", "id": None, "error": error}).encode() + b"\n"
        out.write(line)
        out.flush()
    sys.exit(server.wait())


if __name__ == "__main__":
    main()
