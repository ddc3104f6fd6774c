"""Chat completions over real HTTP, parsed by the official ``openai`` SDK."""

from __future__ import annotations

import httpx
import openai
import pytest

from tests.support.simulators import USER_HELLO, start_sim
from tokenyard.simulator.server import SimulatorServer


async def test_non_streamed_chat_completion(client: openai.AsyncOpenAI) -> None:
    completion = await client.chat.completions.create(model="any-model", messages=USER_HELLO)

    assert completion.object == "chat.completion"
    assert completion.id.startswith("chatcmpl-")
    assert completion.model == "any-model"
    assert completion.system_fingerprint == "fp_shared"
    [choice] = completion.choices
    assert choice.message.role == "assistant"
    assert choice.message.refusal is None
    assert choice.finish_reason == "stop"
    assert choice.message.content is not None
    assert len(choice.message.content.split()) == 4  # default_max_tokens
    assert completion.usage is not None
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (3, 4)
    assert completion.usage.total_tokens == 7
    assert completion.usage.prompt_tokens_details is not None
    assert completion.usage.prompt_tokens_details.cached_tokens == 0


async def test_n_choices_are_all_generated_and_counted(client: openai.AsyncOpenAI) -> None:
    completion = await client.chat.completions.create(
        model="m", messages=USER_HELLO, n=3, max_completion_tokens=5
    )
    assert [c.index for c in completion.choices] == [0, 1, 2]
    assert all(c.finish_reason == "length" for c in completion.choices)
    assert all(len((c.message.content or "").split()) == 5 for c in completion.choices)
    assert completion.usage is not None
    assert completion.usage.completion_tokens == 15


async def test_stream_sends_a_role_chunk_one_chunk_per_token_then_the_finish(
    client: openai.AsyncOpenAI,
) -> None:
    stream = await client.chat.completions.create(model="m", messages=USER_HELLO, stream=True, max_tokens=6)
    chunks = [chunk async for chunk in stream]

    assert all(chunk.object == "chat.completion.chunk" and chunk.usage is None for chunk in chunks)
    assert len({chunk.id for chunk in chunks}) == 1
    first, *tokens, last = chunks
    assert first.choices[0].delta.role == "assistant"
    assert first.choices[0].delta.content == ""
    assert len(tokens) == 6
    assert all(len(t.choices) == 1 and (t.choices[0].delta.content or "").endswith(" ") for t in tokens)
    assert last.choices[0].finish_reason == "length"
    assert last.choices[0].delta.content is None


async def test_usage_chunk_comes_last_only_when_asked(client: openai.AsyncOpenAI) -> None:
    stream = await client.chat.completions.create(
        model="m", messages=USER_HELLO, stream=True, stream_options={"include_usage": True}
    )
    chunks = [chunk async for chunk in stream]

    *body, usage_chunk = chunks
    assert all(chunk.usage is None and chunk.choices for chunk in body)
    assert usage_chunk.choices == []
    assert usage_chunk.usage is not None
    text = "".join(c.choices[0].delta.content or "" for c in body)
    assert usage_chunk.usage.completion_tokens == len(text.split()) == 4
    assert usage_chunk.usage.prompt_tokens == 3
    assert usage_chunk.usage.total_tokens == 7


async def test_stream_ends_with_done_and_no_usage_key_unless_asked(http: httpx.AsyncClient) -> None:
    body = {"model": "m", "messages": USER_HELLO, "stream": True}
    async with http.stream("POST", "/v1/chat/completions", json=body) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [line async for line in response.aiter_lines() if line]

    assert events[-1] == "data: [DONE]"
    assert all('"usage"' not in event for event in events)


async def test_same_seed_and_request_give_the_same_text_another_seed_other_text() -> None:
    async def text_from(server: SimulatorServer) -> str:
        async with openai.AsyncOpenAI(base_url=server.base_url, api_key="x", max_retries=0) as sdk:
            completion = await sdk.chat.completions.create(model="m", messages=USER_HELLO, max_tokens=12)
            return completion.choices[0].message.content or ""

    async with start_sim(seed=1) as a, start_sim(seed=1) as b, start_sim(seed=2) as c:
        assert await text_from(a) == await text_from(b)
        assert await text_from(a) != await text_from(c)


async def test_unknown_model_is_404_model_not_found() -> None:
    async with (
        start_sim(models=["llama"]) as server,
        openai.AsyncOpenAI(base_url=server.base_url, api_key="x", max_retries=0) as sdk,
    ):
        await sdk.chat.completions.create(model="llama", messages=USER_HELLO)
        with pytest.raises(openai.NotFoundError) as caught:
            await sdk.chat.completions.create(model="gpt-9", messages=USER_HELLO)
    assert caught.value.code == "model_not_found"


@pytest.mark.parametrize(
    ("content", "param"),
    [(b"{not json", None), (b'{"messages": [{"role": "user", "content": "hi"}]}', "model"), (b"[1]", None)],
)
async def test_bad_bodies_are_400_invalid_request_error(
    http: httpx.AsyncClient, content: bytes, param: str | None
) -> None:
    response = await http.post("/v1/chat/completions", content=content)
    assert response.status_code == 400
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert (error["type"], error["param"]) == ("invalid_request_error", param)


async def test_unknown_route_is_404_and_wrong_method_is_405(http: httpx.AsyncClient) -> None:
    missing = await http.post("/v1/nothing-here", json={})
    assert missing.status_code == 404
    assert missing.json()["error"]["type"] == "invalid_request_error"
    wrong = await http.get("/v1/chat/completions")
    assert wrong.status_code == 405
    assert wrong.headers["allow"] == "POST"
