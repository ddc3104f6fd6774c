"""The Files API over real HTTP through the official ``openai`` SDK: upload, list, get, download, delete."""

from __future__ import annotations

import httpx
import openai
import pytest

from tokenyard.errors import InvalidRequest
from tokenyard.wire.multipart import parse_form

# Line endings, a blank line and non-ASCII text must all come back byte for byte.
CONTENT = b'{"custom_id": "a"}\r\n{"custom_id": "\xc3\xa9"}\n\n'


async def test_upload_returns_a_file_object_and_the_content_comes_back_exactly(
    client: openai.AsyncOpenAI,
) -> None:
    uploaded = await client.files.create(file=("requests.jsonl", CONTENT), purpose="batch")

    assert uploaded.id.startswith("file-")
    assert (uploaded.object, uploaded.purpose, uploaded.status) == ("file", "batch", "processed")
    assert (uploaded.filename, uploaded.bytes) == ("requests.jsonl", len(CONTENT))
    assert uploaded.expires_at == uploaded.created_at + 30 * 86_400  # batch files expire after 30 days
    assert await client.files.retrieve(uploaded.id) == uploaded
    assert (await client.files.content(uploaded.id)).content == CONTENT


async def test_list_is_newest_first_filters_by_purpose_and_pages(client: openai.AsyncOpenAI) -> None:
    ids = [(await client.files.create(file=(f"{n}.jsonl", b"{}\n"), purpose="batch")).id for n in range(3)]
    other = await client.files.create(file=("notes.txt", b"hi"), purpose="user_data")

    assert [f.id for f in (await client.files.list()).data] == [other.id, *reversed(ids)]
    assert [f.id for f in (await client.files.list(purpose="batch", order="asc")).data] == ids
    first = await client.files.list(purpose="batch", limit=2)
    assert ([f.id for f in first.data], first.has_more) == ([ids[2], ids[1]], True)
    rest = await client.files.list(purpose="batch", limit=2, after=ids[1])
    assert ([f.id for f in rest.data], rest.has_more) == ([ids[0]], False)
    assert [f.id async for f in client.files.list(purpose="batch", limit=1)] == ids[::-1]


async def test_list_page_carries_first_and_last_ids(http: httpx.AsyncClient) -> None:
    assert (await http.get("/v1/files")).json() == {
        "object": "list",
        "data": [],
        "first_id": None,
        "last_id": None,
        "has_more": False,
    }
    for name in ("a.jsonl", "b.jsonl"):
        await http.post("/v1/files", files={"file": (name, b"{}")}, data={"purpose": "batch"})
    listed = (await http.get("/v1/files")).json()
    assert (listed["first_id"], listed["last_id"]) == (listed["data"][0]["id"], listed["data"][1]["id"])


async def test_delete_answers_file_deleted_then_the_id_is_unknown(client: openai.AsyncOpenAI) -> None:
    uploaded = await client.files.create(file=("x.jsonl", b"{}\n"), purpose="batch")

    deleted = await client.files.delete(uploaded.id)

    assert (deleted.id, deleted.object, deleted.deleted) == (uploaded.id, "file", True)
    for call in (client.files.retrieve, client.files.content, client.files.delete):
        with pytest.raises(openai.NotFoundError) as caught:
            await call(uploaded.id)
        assert caught.value.body == {
            "message": f"No such File object: {uploaded.id}",
            "type": "invalid_request_error",
            "param": "id",
            "code": None,
        }


async def test_unknown_purpose_is_400_naming_the_param(client: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        await client.files.create(file=("x.jsonl", b"{}"), purpose="homework")  # type: ignore[arg-type]
    assert (caught.value.type, caught.value.param) == ("invalid_request_error", "purpose")
    assert "'homework' is not one of" in caught.value.message


@pytest.mark.parametrize(
    ("request_kwargs", "param"),
    [
        ({"data": {"purpose": "batch"}, "files": {"other": ("x", b"")}}, "file"),
        ({"files": {"file": ("x.jsonl", b"{}")}}, "purpose"),
        ({"json": {"purpose": "batch"}}, None),
    ],
)
async def test_incomplete_or_non_multipart_uploads_are_400(
    http: httpx.AsyncClient, request_kwargs: dict[str, object], param: str | None
) -> None:
    response = await http.post("/v1/files", **request_kwargs)  # type: ignore[arg-type]
    assert response.status_code == 400
    assert response.json()["error"]["param"] == param


def test_form_parsing_keeps_quoted_names_and_rejects_an_unclosed_body() -> None:
    body = (
        b'--b0\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nbatch\r\n'
        b'--b0\r\nContent-Disposition: form-data; name="file"; filename="a \\"q\\".jsonl"\r\n'
        b"Content-Type: application/octet-stream\r\n\r\nx\r\ny\r\n--b0--\r\n"
    )
    fields = parse_form('multipart/form-data; boundary="b0"', body)
    assert fields["purpose"].content == b"batch"
    assert (fields["file"].filename, fields["file"].content) == ('a "q".jsonl', b"x\r\ny")
    with pytest.raises(InvalidRequest):
        parse_form("multipart/form-data; boundary=b0", body.removesuffix(b"--b0--\r\n"))
