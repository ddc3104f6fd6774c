"""Legacy completions, embeddings and the model catalog, through the official ``openai`` SDK."""

from __future__ import annotations

import httpx
import openai
import pytest

from tests.support.simulators import start_sim


async def test_legacy_completion_with_several_prompts_and_n(client: openai.AsyncOpenAI) -> None:
    completion = await client.completions.create(model="m", prompt=["one two", "three"], n=2, max_tokens=3)

    assert completion.object == "text_completion"
    assert completion.id.startswith("cmpl-")
    assert [c.index for c in completion.choices] == [0, 1, 2, 3]
    assert all(len(c.text.split()) == 3 and c.finish_reason == "length" for c in completion.choices)
    assert completion.usage is not None
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (3, 12)


async def test_legacy_completion_stream_with_usage(client: openai.AsyncOpenAI) -> None:
    stream = await client.completions.create(
        model="m", prompt="say something", stream=True, stream_options={"include_usage": True}
    )
    chunks = [chunk async for chunk in stream]

    *tokens, finish, usage_chunk = chunks
    assert len(tokens) == 4
    assert all(t.choices[0].finish_reason is None and t.usage is None for t in tokens)
    assert (finish.choices[0].text, finish.choices[0].finish_reason) == ("", "stop")
    assert usage_chunk.choices == []
    assert usage_chunk.usage is not None
    assert (usage_chunk.usage.prompt_tokens, usage_chunk.usage.completion_tokens) == (2, 4)


async def test_legacy_completion_stream_without_usage(client: openai.AsyncOpenAI) -> None:
    stream = await client.completions.create(model="m", prompt="hi", stream=True)
    chunks = [chunk async for chunk in stream]
    assert len(chunks) == 5
    assert all(chunk.usage is None and len(chunk.choices) == 1 for chunk in chunks)


async def test_embeddings_as_floats_and_as_the_sdks_default_base64(client: openai.AsyncOpenAI) -> None:
    floats = await client.embeddings.create(model="e", input=["a b c", "d"], encoding_format="float")
    default = await client.embeddings.create(model="e", input=["a b c", "d"])  # the SDK asks for base64

    assert [len(item.embedding) for item in floats.data] == [8, 8]
    assert [item.index for item in floats.data] == [0, 1]
    assert [item.embedding for item in default.data] == [item.embedding for item in floats.data]
    assert floats.data[0].embedding != floats.data[1].embedding
    assert (floats.usage.prompt_tokens, floats.usage.total_tokens) == (4, 4)
    assert floats.model == "e"


async def test_embeddings_honour_dimensions_and_token_arrays(client: openai.AsyncOpenAI) -> None:
    result = await client.embeddings.create(model="e", input=[[1, 2, 3], [4]], dimensions=5)
    assert [len(item.embedding) for item in result.data] == [5, 5]
    assert result.usage.prompt_tokens == 4


async def test_base64_is_little_endian_float32_on_the_wire(http: httpx.AsyncClient) -> None:
    response = await http.post(
        "/v1/embeddings", json={"model": "e", "input": "x", "encoding_format": "base64", "dimensions": 4}
    )
    encoded = response.json()["data"][0]["embedding"]
    assert isinstance(encoded, str)
    assert len(encoded) == 24  # base64 of 4 * 4 bytes


async def test_models_list_and_retrieve_when_any_model_is_accepted(client: openai.AsyncOpenAI) -> None:
    page = await client.models.list()
    assert [(m.id, m.object, m.owned_by) for m in page.data] == [
        ("sim-model", "model", "tokenyard-simulator")
    ]
    model = await client.models.retrieve("org/some-model")
    assert model.id == "org/some-model"


async def test_models_list_the_configured_ones_and_unknown_ids_are_404() -> None:
    async with (
        start_sim(models=["a", "b"]) as server,
        openai.AsyncOpenAI(base_url=server.base_url, api_key="x", max_retries=0) as sdk,
    ):
        assert [m.id for m in (await sdk.models.list()).data] == ["a", "b"]
        assert (await sdk.models.retrieve("b")).id == "b"
        with pytest.raises(openai.NotFoundError):
            await sdk.models.retrieve("c")
        with pytest.raises(openai.NotFoundError):
            await sdk.embeddings.create(model="c", input="x")
