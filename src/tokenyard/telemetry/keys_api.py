"""Virtual keys managed live: ``/admin/keys`` (admin key), and the loop that keeps every replica's key ring
in step with the store.

    POST   /admin/keys                 make a key; its secret is in the answer, once ("value")
    GET    /admin/keys                 list (?limit=&after=&tenant=&team=&include_revoked=true)
    GET    /admin/keys/{id}            one key
    PATCH  /admin/keys/{id}            change what it says (fields sent; null clears an optional one)
    DELETE /admin/keys/{id}            revoke it (the record stays, its usage attributed to it)
    POST   /admin/keys/{id}/rotate     a new secret, once; the old one works grace_s more (default 1 h)

Keys live in the meter's store. A replica sees a change made on another one within ``SYNC_S`` and a store
round trip (``KeySync``); the replica that made it, at once. Keys in the config file are listed too
(``source: config``), read-only. Every write is a compare-and-set on the record read, so two admins
changing one key at once never lose a change.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable
from typing import Any, Final, TypeVar

import orjson
from pydantic import BaseModel, ValidationError

from tokenyard.admission.managed_keys import (
    KeyCreate,
    KeyRotate,
    KeyUpdate,
    ManagedKey,
    new_key_id,
    new_secret,
    stored_keys,
)
from tokenyard.config import KeyConfig
from tokenyard.errors import Conflict, InvalidRequest, ObjectNotFound, RouteNotFound, StoreError
from tokenyard.live import LiveConfig
from tokenyard.stores.protocols import KeyStore
from tokenyard.wire import asgi as wire

log = logging.getLogger("tokenyard.keys")
_M = TypeVar("_M", bound=BaseModel)

SYNC_S: Final = 1.0  # how often a replica asks the store whether a key changed
_MAX_BODY: Final = 64 * 1024
_WRITE_ATTEMPTS: Final = 5  # compare-and-set rounds before a write that keeps racing is refused (409)
_NO_STORE: Final = (
    "Keys made through the admin API live in the meter's store, and metering is off (meter.store)."
)


class KeySync:
    """Keeps this replica's key ring what the store says: polls the keys' version, reloads on a change."""

    def __init__(self, store: KeyStore, live: LiveConfig, *, interval_s: float = SYNC_S) -> None:
        self.store = store
        self.live = live
        self.interval_s = interval_s
        self.version = -1  # none read yet
        self._failing = False

    async def sync(self) -> None:
        """Read the keys if they changed since the last read, and put them in force."""
        if await self.store.keys_version() == self.version:
            return
        version, bodies = await self.store.all_keys()
        records = []
        for body in bodies:
            try:
                records.append(ManagedKey.model_validate_json(body))
            except ValidationError as exc:  # a record no tokenyard wrote: skipped, not fatal
                log.warning("keys: a stored record was not understood (%s); it is skipped", exc)
        self.live.keep_stored_keys(stored_keys(records))
        self.version = version

    async def run(self) -> None:
        """Sync every ``interval_s`` until cancelled; while the store is away the last keys read stay."""
        while True:
            try:
                await self.sync()
                if self._failing:
                    log.info("keys: the store answers again; keys are in step")
                self._failing = False
            except StoreError as exc:
                if not self._failing:
                    log.warning("keys: cannot read the store (%s); the keys last read stay in force", exc)
                self._failing = True
            await asyncio.sleep(self.interval_s)


class KeysApi:
    """Handlers for ``/admin/keys``; each checks the admin key first (``authorize``)."""

    def __init__(
        self,
        authorize: Callable[[wire.Scope], None],
        live: LiveConfig,
        sync: KeySync | None,
        *,
        wall: Callable[[], float],
    ) -> None:
        self.authorize = authorize
        self.live = live
        self.sync = sync  # None: no meter store, so no keys but the config file's
        self.wall = wall

    async def create(self, scope: wire.Scope, receive: wire.Receive, send: wire.Send) -> None:
        """``POST /admin/keys``: a new key, with its secret (shown this once)."""
        self.authorize(scope)
        fields = _payload(KeyCreate, await _body(scope, receive))
        self._check_models(fields.models)
        now = int(self.wall())
        self._check_expiry(fields.expires_at, now)
        store = self._store()
        secret = new_secret()
        record = ManagedKey.made(new_key_id(self.wall()), fields, secret, now)
        if not await store.put_key(record.id, _encode(record), expected=None):
            raise Conflict("A key with this id was made at the same moment; try again.")
        await self._settle()
        await wire.send_json(send, 201, {**record.public(now), "value": secret})

    async def list_keys(self, scope: wire.Scope, receive: wire.Receive, send: wire.Send) -> None:
        """``GET /admin/keys``: the config file's keys, then the admin API's, oldest first."""
        self.authorize(scope)
        query = wire.query(scope)
        limit = _limit(query.get("limit", "100"))
        now = self.wall()
        views = [_config_view(name, key) for name, key in self.live.config.keys.items()]
        if self.sync is not None:
            _, bodies = await self.sync.store.all_keys()
            records = sorted((_decode(body) for body in bodies), key=lambda r: r.id)  # oldest first
            revoked_too = _flag(query, "include_revoked")
            views += [r.public(now) for r in records if r.revoked_at is None or revoked_too]
        for field in ("tenant", "team"):
            if field in query:
                views = [view for view in views if view[field] == query[field]]
        after = query.get("after")
        if after is not None:
            views = _after(views, after)
        page = views[:limit]
        await wire.send_json(
            send,
            200,
            {
                "object": "list",
                "data": page,
                "first_id": page[0]["id"] if page else None,
                "last_id": page[-1]["id"] if page else None,
                "has_more": len(views) > limit,
            },
        )

    async def retrieve(self, scope: wire.Scope, receive: wire.Receive, send: wire.Send) -> None:
        """``GET /admin/keys/{id}``."""
        self.authorize(scope)
        key_id = scope["path_params"]["key_id"]
        config_key = self.live.config.keys.get(key_id)
        if config_key is not None and not key_id.startswith("key_"):
            await wire.send_json(send, 200, _config_view(key_id, config_key))
            return
        record, _ = await self._read(key_id)
        await wire.send_json(send, 200, record.public(self.wall()))

    async def update(self, scope: wire.Scope, receive: wire.Receive, send: wire.Send) -> None:
        """``PATCH /admin/keys/{id}``: change what the key says."""
        self.authorize(scope)
        key_id = self._managed_id(scope)
        update = _payload(KeyUpdate, await _body(scope, receive))
        self._check_models(update.models)
        now = int(self.wall())
        if "expires_at" in update.model_fields_set:
            self._check_expiry(update.expires_at, now)
        record = await self._change(key_id, lambda r: r.updated(update, now), revoked_ok=False)
        await wire.send_json(send, 200, record.public(now))

    async def revoke(self, scope: wire.Scope, receive: wire.Receive, send: wire.Send) -> None:
        """``DELETE /admin/keys/{id}``: the key stops working on every replica (a revoked key stays so)."""
        self.authorize(scope)
        key_id = self._managed_id(scope)
        now = int(self.wall())
        await self._change(key_id, lambda r: r.revoked(now) if r.revoked_at is None else r, revoked_ok=True)
        await wire.send_json(send, 200, {"object": "tokenyard.key.deleted", "id": key_id, "deleted": True})

    async def rotate(self, scope: wire.Scope, receive: wire.Receive, send: wire.Send) -> None:
        """``POST /admin/keys/{id}/rotate``: a new secret, shown once; the old one works ``grace_s`` more."""
        self.authorize(scope)
        key_id = self._managed_id(scope)
        body = await _body(scope, receive, empty_ok=True)
        rotation = _payload(KeyRotate, body) if body.strip() else KeyRotate()
        now = int(self.wall())
        secret = new_secret()
        grace_s = rotation.grace_s
        record = await self._change(
            key_id, lambda r: _rotatable(r, now).rotated(secret, grace_s, now), revoked_ok=False
        )
        await wire.send_json(send, 200, {**record.public(now), "value": secret})

    # -- helpers --------------------------------------------------------------------------------------

    def _store(self) -> KeyStore:
        if self.sync is None:
            raise RouteNotFound(_NO_STORE)
        return self.sync.store

    def _managed_id(self, scope: wire.Scope) -> str:
        """The path's key id, which must be one the admin API made (a config file key is read-only)."""
        key_id: str = scope["path_params"]["key_id"]
        if key_id in self.live.config.keys and not key_id.startswith("key_"):
            raise Conflict(
                f"The key {key_id!r} is defined in the config file (keys.{key_id}); change it there and "
                "reload.",
            )
        return key_id

    async def _read(self, key_id: str) -> tuple[ManagedKey, bytes]:
        body = await self._store().get_key(key_id)
        if body is None:
            raise ObjectNotFound(f"No key with id {key_id!r}.")
        return _decode(body), body

    async def _change(
        self, key_id: str, change: Callable[[ManagedKey], ManagedKey], *, revoked_ok: bool
    ) -> ManagedKey:
        """Apply ``change`` to the stored record, compare-and-set, re-reading while other writes race it."""
        store = self._store()
        for _ in range(_WRITE_ATTEMPTS):
            record, body = await self._read(key_id)
            if record.revoked_at is not None and not revoked_ok:
                raise Conflict(f"The key {key_id!r} is revoked; make a new one.")
            changed = change(record)
            if changed is record or await store.put_key(key_id, _encode(changed), expected=body):
                await self._settle()
                return changed
        raise Conflict(f"The key {key_id!r} kept changing while this change was made; try again.")

    async def _settle(self) -> None:
        """Put a change in force here at once (the other replicas see it at their next sync)."""
        if self.sync is not None:
            with contextlib.suppress(StoreError):  # written: the loop catches up if this read fails
                await self.sync.sync()

    def _check_models(self, models: Iterable[str] | None) -> None:
        for i, model in enumerate(models or ()):
            if model not in self.live.config.models:
                raise InvalidRequest(f"Unknown model {model!r}.", param=f"models[{i}]")

    @staticmethod
    def _check_expiry(expires_at: int | None, now: int) -> None:
        if expires_at is not None and expires_at <= now:
            raise InvalidRequest("expires_at must be in the future (unix seconds).", param="expires_at")


def _after(views: list[dict[str, Any]], after: str) -> list[dict[str, Any]]:
    """The views listed after the key ``after``. The admin API's ids sort by when they were made, so a page
    goes on even if the key it ended at was revoked (and left the list) meanwhile."""
    ids = [view["id"] for view in views]
    if after in ids:
        return views[ids.index(after) + 1 :]
    if after.startswith("key_"):
        return [view for view in views if view["source"] == "api" and view["id"] > after]
    raise InvalidRequest(f"No key {after!r} to list after.", param="after")


def _rotatable(record: ManagedKey, now: int) -> ManagedKey:
    """``record``, if a new secret for it would work (an expired key's would not)."""
    if record.status(now) == "expired":
        raise Conflict(f"The key {record.id!r} has expired; set a later expires_at first, then rotate it.")
    return record


def _config_view(name: str, key: KeyConfig) -> dict[str, Any]:
    """A config file key as the admin API shows it: never any part of its secret."""
    return {
        "object": "tokenyard.key",
        "source": "config",
        "status": "active",
        "id": name,
        "name": name,
        "tenant": key.tenant or name,
        "team": None,
        "models": key.models,
        "mode": key.mode,
        "deadline_s": key.deadline_s,
        "metadata": {},
        "expires_at": None,
        "prefix": None,
        "created_at": None,
        "updated_at": None,
        "revoked_at": None,
        "rotated_at": None,
        "previous_expires_at": None,
    }


def _encode(record: ManagedKey) -> bytes:
    return record.model_dump_json().encode()


def _decode(body: bytes) -> ManagedKey:
    try:
        return ManagedKey.model_validate_json(body)
    except ValidationError as exc:
        raise StoreError(f"a stored key record was not understood: {exc.error_count()} problem(s)") from exc


async def _body(scope: wire.Scope, receive: wire.Receive, *, empty_ok: bool = False) -> bytes:
    body = await wire.read_body(scope, receive, _MAX_BODY)
    if not body.strip() and not empty_ok:
        raise InvalidRequest("The request body must be a JSON object.")
    return body


def _payload(model: type[_M], body: bytes) -> _M:
    """``body`` as ``model``, or a 400 naming every problem (the first one's path as ``param``)."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest("We could not parse the JSON body of your request.") from exc
    if not isinstance(data, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_input=False)
        paths = [_path(error["loc"]) for error in errors]
        message = "; ".join(f"{path}: {error['msg']}" for path, error in zip(paths, errors, strict=True))
        raise InvalidRequest(f"Invalid key: {message}.", param=paths[0] or None) from exc


def _path(loc: tuple[int | str, ...]) -> str:
    path = ""
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path


def _limit(raw: str) -> int:
    if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= 1000:
        raise InvalidRequest("limit must be an integer from 1 to 1000.", param="limit")
    return int(raw)


def _flag(query: dict[str, str], name: str) -> bool:
    return query.get(name, "").lower() in ("1", "true", "yes")
