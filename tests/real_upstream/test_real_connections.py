"""Connections real upstreams close: llama-server closes its connection after every streamed answer.

It says ``Keep-Alive: timeout=5, max=100`` and then closes anyway, so a pooled connection to it is often
dead by the time it is reused; anything between tokenyard and the server (a load balancer, a relay) passes
that close on a little late. A request that fails on a reused connection before any byte of an answer came
back never reached a live server: it must go again on a new connection, not fail the client with 502.
"""

from __future__ import annotations

from tests.real_upstream.yard import Yard, new_marker


async def test_a_pooled_connection_the_upstream_closed_does_not_fail_the_next_request(
    llama_yard: Yard,
) -> None:
    yard = llama_yard
    await yard.chat_relay.command(late_close=True)  # the close reaches tokenyard only with its next request
    try:
        async with yard.proxy.client(timeout=120) as client:
            for _ in range(3):
                marker = new_marker()
                stream = await client.chat.completions.create(
                    model=yard.chat_model,
                    messages=[{"role": "user", "content": f"Hi {marker}"}],
                    max_tokens=3,
                    stream=True,
                )
                chunks = [chunk async for chunk in stream]
                upstream = await yard.chat_relay.find(marker)
                assert upstream.saw_done()
                assert chunks
                sent = [x for x in yard.chat_relay.exchanges() if marker.encode() in x.request_body]
                assert len(sent) <= 3  # at most two resends, and only of requests nobody answered
    finally:
        await yard.chat_relay.command(late_close=False)
