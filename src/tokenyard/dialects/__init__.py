"""Dialects: the client APIs a chat-completions backend does not speak, translated to chat and back (pure).

A Responses or Anthropic Messages request bound for a deployment that speaks only chat completions is
translated here (``to_chat``), and the chat answer translated back, whole (``from_chat``) or event by event
(``ResponsesStream``, ``MessagesStream``). What a translation cannot carry is refused up front, all of it
named in one 400, rather than silently dropped. No I/O: the proxy room owns the wire.
"""
