"""Reads streamed chat completions with OpenAI's Python SDK, the reference reader of the wire.

    openai_stream_client.py BASE_URL [BASE_URL ...] < request.json

request.json holds the request's `model`, `messages` and `tools`. For each base URL the script
asks twice for the same completion with `stream_options.include_usage`: once with
`client.chat.completions.create(stream=True)`, reading the chunks the SDK parsed, and once with
the SDK's accumulating helper `client.chat.completions.stream(...)` and its
`get_final_completion()`. The client validates every chunk against the SDK's types
(`_strict_response_validation`), so a chunk the SDK would not accept fails the run.

Prints one JSON object per base URL, in a list:

    [{"create": ANSWER, "stream": ANSWER}, ...]
    ANSWER = {"content", "refusal", "tool_calls": [{"id", "type", "name", "arguments"}],
              "finish_reason", "usage": {"prompt_tokens", "completion_tokens", "total_tokens"}}

with, for "create", `chunks` (how many) and `usage_chunks` (the indexes of the chunks that carry
a usage), and for "stream", `arguments_done`: the SDK's `tool_calls.function.arguments.done`
events as [index, name, arguments].
"""

import json
import sys

import openai


def usage_of(usage):
    if usage is None:
        return None
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
    }


def read_create(client, request):
    """The answer as the chunks the SDK parsed say it, put together by index."""
    content, refusal, finish_reason, usage = None, None, None, None
    calls = {}
    chunks, usage_chunks = 0, []
    stream = client.chat.completions.create(
        **request, stream=True, stream_options={"include_usage": True}
    )
    for number, chunk in enumerate(stream):
        chunks += 1
        if chunk.usage is not None:
            usage_chunks.append(number)
            usage = usage_of(chunk.usage)
        for choice in chunk.choices:
            if choice.index != 0:
                continue
            delta = choice.delta
            if delta.content:
                content = (content or "") + delta.content
            if delta.refusal:
                refusal = (refusal or "") + delta.refusal
            for piece in delta.tool_calls or []:
                call = calls.setdefault(
                    piece.index, {"id": None, "type": None, "name": None, "arguments": ""}
                )
                if piece.id:
                    call["id"] = piece.id
                if piece.type:
                    call["type"] = piece.type
                if piece.function is not None:
                    if piece.function.name:
                        call["name"] = piece.function.name
                    call["arguments"] += piece.function.arguments or ""
            if choice.finish_reason is not None:
                finish_reason = choice.finish_reason
    return {
        "content": content,
        "refusal": refusal,
        "tool_calls": [calls[index] for index in sorted(calls)],
        "finish_reason": finish_reason,
        "usage": usage,
        "chunks": chunks,
        "usage_chunks": usage_chunks,
    }


def read_helper(client, request):
    """The answer as the SDK's own accumulator builds it."""
    arguments_done = []
    with client.chat.completions.stream(
        **request, stream_options={"include_usage": True}
    ) as stream:
        for event in stream:
            if event.type == "tool_calls.function.arguments.done":
                arguments_done.append([event.index, event.name, event.arguments])
        final = stream.get_final_completion()
    choice = final.choices[0]
    message = choice.message
    return {
        "content": message.content,
        "refusal": message.refusal,
        "tool_calls": [
            {
                "id": call.id,
                "type": call.type,
                "name": call.function.name,
                "arguments": call.function.arguments,
            }
            for call in message.tool_calls or []
        ],
        "finish_reason": choice.finish_reason,
        "usage": usage_of(final.usage),
        "arguments_done": arguments_done,
    }


def main():
    if len(sys.argv) < 2:
        sys.exit("usage: openai_stream_client.py BASE_URL [BASE_URL ...] < request.json")
    spec = json.load(sys.stdin)
    request = {key: spec[key] for key in ("model", "messages", "tools") if key in spec}
    answers = []
    for base_url in sys.argv[1:]:
        client = openai.OpenAI(
            base_url=base_url,
            api_key="sk-test-openai-stream-client",
            max_retries=0,
            timeout=60,
            _strict_response_validation=True,
        )
        answers.append(
            {"create": read_create(client, request), "stream": read_helper(client, request)}
        )
    json.dump(answers, sys.stdout, ensure_ascii=False)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
