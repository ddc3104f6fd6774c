"""The admin API (``/admin/*``, admin key): usage with time range and group-by, backends, replicas."""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import orjson

from tokenyard.capacity import envelope as capacity_envelope
from tokenyard.capacity.envelope_keeper import EnvelopeKeeper
from tokenyard.capacity.shared_replicas import publish_replicas
from tokenyard.config import MAX_REPLICAS, TokenyardConfig
from tokenyard.errors import AuthenticationFailed, Forbidden, InvalidRequest, RouteNotFound, StoreError
from tokenyard.live import LiveConfig
from tokenyard.meter.engine_usage import ENGINE_MAX_GAP_S, engine_window
from tokenyard.meter.meter import Meter
from tokenyard.proxy.backends import Backend
from tokenyard.telemetry import sessions
from tokenyard.wire import asgi as wire

if TYPE_CHECKING:  # types only: the advisor and the async track load when a config runs them
    from tokenyard.advisor.live import AdvisorLoop
    from tokenyard.queue.dispatcher import Dispatcher

log = logging.getLogger("tokenyard.admin")

SESSION_COOKIE = b"tokenyard_admin"


class AdminApi:
    """Handlers for ``/admin/*``; every one checks the admin key first."""

    def __init__(
        self,
        live: LiveConfig,
        meter: Meter,
        backends: dict[str, Backend],
        *,
        replica: str,
        advisor: AdvisorLoop | None,
        dispatcher: Dispatcher | None,
        wall: Callable[[], float],
        envelope: EnvelopeKeeper | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.live = live  # the config in force: its admin key and keys (a reload may change them)
        self.meter = meter
        self.backends = backends
        self.wall = wall
        self.clock = clock  # the request path's: engine snapshots are dated by it
        self.advisor = advisor  # None: the advisor is off (no meter store, or advisor.enabled false)
        self.dispatcher = dispatcher  # None: the async track is off
        self.replica = replica  # this replica's name: who set a replica count
        self.envelope = envelope  # None: no store (each backend shows this replica's counts) or none kept
        self._session_owner = replica  # this replica, for the lock on the shared salt
        self._session_key: bytes | None = None  # the admin key _session_secret belongs to
        self._session_secret: bytes | None = None

    @property
    def config(self) -> TokenyardConfig:
        """The config in force."""
        return self.live.config

    @property
    def _admin_key(self) -> bytes | None:
        admin_key = self.live.config.server.admin_key
        return admin_key.get_secret_value().encode() if admin_key else None

    @property
    def _secret(self) -> bytes | None:
        """The session secret, while it belongs to the admin key in force: sessions signed under a key a
        reload replaced end at once, not when the new secret is agreed."""
        return self._session_secret if self._session_key == self._admin_key else None

    @property
    def admin_key_set(self) -> bool:
        """Whether an admin key is configured (without one the admin API and dashboard are closed)."""
        return self._admin_key is not None

    @property
    def session_ttl_s(self) -> int:
        """How long a dashboard session lasts."""
        return self.config.server.dashboard_session_ttl_s

    async def agree_session_secret(self) -> None:
        """Take the secret that signs dashboard sessions for the admin key in force: the one the replicas
        sharing the store agreed on, drawn anew when the key changed (see ``sessions``). At start-up and
        after every reload, so a replica that missed a rotation catches up."""
        key = self._admin_key
        if key is None:
            self._session_secret = self._session_key = None
            return
        salt = await sessions.agreed_salt(
            self.meter.store, sessions.key_fingerprint(key), self._session_owner
        )
        if key == self._admin_key:  # unless another reload changed it meanwhile
            self._session_secret, self._session_key = sessions.session_secret(key, salt), key

    async def new_session(self) -> bytes | None:
        """A new dashboard session's cookie value, or None without an admin key."""
        if self._secret is None:
            await self.agree_session_secret()
        secret = self._secret
        if secret is None:
            return None
        return sessions.session_value(secret, int(self.wall()))

    def is_admin_key(self, secret: bytes) -> bool:
        """Whether ``secret`` is the admin key (compared in constant time)."""
        return self._admin_key is not None and hmac.compare_digest(secret, self._admin_key)

    def signed_in(self, scope: wire.Scope) -> bool:
        """Whether the request carries the dashboard's session cookie (or the proxy runs open)."""
        if self.live.current.keys.admin_open:  # open, loopback-only mode: nothing to protect it with
            return True
        cookie = wire.cookie(scope, SESSION_COOKIE)
        return cookie is not None and sessions.session_valid(
            self._secret, cookie, self.wall(), self.session_ttl_s
        )

    def authorize(self, scope: wire.Scope) -> None:
        """Raise unless the request carries the admin key or the dashboard's session cookie (or the proxy
        runs open on loopback)."""
        if self.signed_in(scope):
            return
        authorization = wire.header(scope, b"authorization") or b""
        scheme, _, secret = authorization.partition(b" ")
        if scheme.lower() != b"bearer" or not secret:
            raise AuthenticationFailed("The admin API needs the admin key as a Bearer token.")
        if self._admin_key is None:
            raise Forbidden("The admin API is disabled: set server.admin_key in the config.")
        if not self.is_admin_key(secret.strip()):
            raise Forbidden("This key may not use the admin API.")

    async def usage(self, scope: wire.Scope, receive: wire.Receive, send: wire.Send) -> None:
        """``GET /admin/usage?start=24h&end=&group_by=model,tenant&granularity=hour``."""
        self.authorize(scope)
        from tokenyard.telemetry import report  # the usage API's reader: loaded on its first use

        query = wire.query(scope)
        try:
            start, end = self._window(query, "24h")
            group_by = [g for g in query.get("group_by", "model").split(",") if g]
            granularity = query.get("granularity", "hour")
            if self.meter.store is None:
                raise ValueError("metering is off (meter.store: off): there is no stored usage")
            start_minute, end_minute = int(start) // 60 * 60, (int(end) // 60 + 1) * 60
            aggregates = await self.meter.store.aggregates(start_minute, end_minute)
            gpu = await self.meter.store.gpu(start_minute, end_minute)
            # The readings before the window are what the engines' first minutes in it are taken from.
            engine = await self.meter.store.engine(start_minute - ENGINE_MAX_GAP_S, end_minute)
            # Weeks of per-minute buckets take a while to sum: not on the event loop serving requests.
            rows = await asyncio.to_thread(
                report.summarize, aggregates, gpu, group_by=group_by, granularity=granularity
            )
            engine_minutes = await asyncio.to_thread(engine_window, engine, start_minute, end_minute)
            engine_rows = report.engine_rows(engine_minutes, aggregates, granularity)
        except ValueError as exc:
            raise InvalidRequest(str(exc)) from exc
        payload: dict[str, Any] = {
            "object": "usage",
            "start": start_minute,
            "end": end_minute,
            "granularity": granularity,
            "group_by": group_by,
            "data": [row.to_json(group_by) for row in rows],
            "totals": report.totals(rows),
            "dedicated": [
                s.to_json()
                for s in report.dedicated_summaries(aggregates, gpu, self.config.backends, engine_minutes)
            ],
            # What each engine said it did (metrics_url), per period and backend, beside tokenyard's count.
            "engine": engine_rows,
            "async_savings_usd": report.async_savings_usd(aggregates, self.config),
            # The busy share dedicated replicas are sized for (the SLA's headroom), to compare against.
            "utilization_cap": self.config.advisor.utilization_cap,
        }
        await wire.send_json(send, 200, payload)

    async def export_focus(self, scope: wire.Scope, receive: wire.Receive, send: wire.Send) -> None:
        """``GET /admin/export/focus?start=7d&end=&format=csv|parquet``: cost rows in FOCUS 1.2's columns
        over whole hours (the window widened to them), as a file to download."""
        self.authorize(scope)
        from tokenyard.telemetry import focus, focus_files  # the FOCUS export: loaded on its first use

        query = wire.query(scope)
        try:
            file_format = focus_files.format_named(query.get("format", "csv"))
        except ValueError as exc:
            raise InvalidRequest(str(exc), param="format") from exc
        try:
            start, end = self._window(query, "7d")
        except ValueError as exc:
            raise InvalidRequest(str(exc)) from exc
        if self.meter.store is None:
            raise InvalidRequest("metering is off (meter.store: off): there is no stored usage")
        start_hour, end_hour = focus.hour_window(start, end)
        aggregates = await self.meter.store.aggregates(start_hour, end_hour)
        gpu = await self.meter.store.gpu(start_hour, end_hour)
        # Weeks of per-minute buckets take a while to turn into rows: not on the event loop serving requests.
        rows = await asyncio.to_thread(focus.focus_rows, aggregates, gpu, self.config)
        body = await asyncio.to_thread(focus_files.encode, rows, file_format)
        name = f"tokenyard-focus-{_stamp(start_hour)}-{_stamp(end_hour)}.{file_format}"
        headers = [
            (b"content-type", focus_files.CONTENT_TYPES[file_format].encode()),
            (b"content-disposition", f'attachment; filename="{name}"'.encode()),
        ]
        await wire.send_bytes(send, 200, body, headers)

    def _window(self, query: dict[str, str], default_start: str) -> tuple[float, float]:
        """The span a read covers, from the query's ``start`` and ``end`` (ValueError if they make none)."""
        from tokenyard.telemetry import report

        start, end = query.get("start", default_start), query.get("end")
        return report.parse_window(start, end, self.wall(), self.config.meter.retention_days * 86400)

    async def advice(self, scope: wire.Scope, receive: wire.Receive, send: wire.Send) -> None:
        """``GET /admin/advice[?fresh=1]``: the latest advice per workload (``fresh``: evaluate now)."""
        self.authorize(scope)
        if self.advisor is None:
            raise RouteNotFound(
                "The advisor is off: it needs a meter store (meter.store) and advisor.enabled."
            )
        document = self.advisor.latest
        if document is None or wire.query(scope).get("fresh", "").lower() in ("1", "true", "yes"):
            document = await self.advisor.evaluate(keep_state=False)
        await wire.send_json(send, 200, document)

    async def queue(self, scope: wire.Scope, receive: wire.Receive, send: wire.Send) -> None:
        """``GET /admin/queue``: the async track's queue and what this replica answered, by path."""
        self.authorize(scope)
        dispatcher = self.dispatcher
        if dispatcher is None:
            await wire.send_json(send, 200, {"object": "queue", "enabled": False})
            return
        stats = dispatcher.stats
        oldest = stats.oldest_created_at if stats else None
        await wire.send_json(
            send,
            200,
            {
                "object": "queue",
                "enabled": True,
                "leader": dispatcher.leader,
                "waiting": stats.waiting if stats else None,
                "claimed": stats.claimed if stats else None,
                "in_provider_batch": stats.in_batches if stats else None,
                "oldest_age_s": max(0.0, self.wall() - oldest) if oldest else None,
                "answered_by_path": dispatcher.jobs_by_path,
                "wait_s_by_path": dispatcher.wait_s_by_path,
                "duplicates": dispatcher.front.duplicates,
            },
        )

    async def backends_state(self, scope: wire.Scope, receive: wire.Receive, send: wire.Send) -> None:
        """``GET /admin/backends``: each backend's live state."""
        self.authorize(scope)
        data = []
        for name, backend in self.backends.items():
            item: dict[str, Any] = {
                "name": name,
                "kind": backend.config.kind,
                "in_flight": backend.in_flight,
                "max_concurrency": backend.max_concurrency,
                # This replica's share of the caps: they are split among the live proxy replicas.
                "rpm": int(backend.rpm.max_rate) if backend.rpm else None,
                "tpm": int(backend.tpm.max_rate) if backend.tpm else None,
                "proxy_replicas": backend.cluster_size,
                "circuit": "open" if backend.breaker.tripped else "closed",
                "failures": backend.failures,
            }
            if name in self.meter.dedicated:
                item["replicas"] = self.meter.replicas(name)
            capacity = item["capacity"] = _capacity(backend)
            if backend.envelope is not None:
                capacity["envelope"] = self.envelope_of(name, backend)
            if backend.engine is not None:
                capacity["engine"] = backend.engine.to_json(self.clock())
            data.append(item)
        await wire.send_json(send, 200, {"object": "list", "data": data})

    def envelopes(self) -> dict[str, dict[str, Any]]:
        """Every measured envelope by backend (``GET /admin/capacity`` shows them beside the replicas)."""
        return {
            name: self.envelope_of(name, backend)
            for name, backend in self.backends.items()
            if backend.envelope is not None
        }

    def envelope_of(self, name: str, backend: Backend) -> dict[str, Any]:
        """The backend's measured envelope across the cluster (as last merged, plus this replica's news)."""
        assert backend.envelope is not None
        cells = self.envelope.cells(name) if self.envelope else dict(backend.envelope.peek())
        learned = self.envelope.learned_limit(name) if self.envelope else None
        return capacity_envelope.summary(cells, backend.config.sla, backend.config.max_concurrency, learned)

    async def replicas(self, scope: wire.Scope, receive: wire.Receive, send: wire.Send) -> None:
        """``PUT /admin/backends/{name}/replicas`` with ``{"replicas": N}``: provisioned capacity changed, on
        every replica sharing the store."""
        self.authorize(scope)
        name = scope["path_params"]["name"]
        backend = self.backends.get(name)
        if backend is None or name not in self.meter.dedicated:
            raise RouteNotFound(f"No dedicated backend named {name!r}.")
        body = await wire.read_body(scope, receive, 4096)
        try:
            replicas = orjson.loads(body).get("replicas")
        except (orjson.JSONDecodeError, AttributeError):
            replicas = None
        if not isinstance(replicas, int) or isinstance(replicas, bool) or not 0 <= replicas <= MAX_REPLICAS:
            raise InvalidRequest(
                f'Body must be {{"replicas": N}} with 0 <= N <= {MAX_REPLICAS}.', param="replicas"
            )
        # Published first, for every replica (each counts it from its next membership beat), and only
        # then counted here: a count this replica alone held would be reverted at its next beat.
        shared = False
        if self.meter.store is not None:
            try:
                await publish_replicas(
                    self.meter.store,
                    name,
                    replicas,
                    config_replicas=backend.config.replicas,
                    by=self.replica,
                    source="admin",
                    at=self.wall(),
                )
            except StoreError as exc:
                log.warning("admin: %s replicas not changed: %s", name, exc)
                raise StoreError(
                    f"The replica count could not be shared with the other proxy replicas ({exc.message}); "
                    "nothing changed. Retry when the store is back."
                ) from exc
            shared = True
        self.meter.set_replicas(name, replicas)
        backend.replicas = replicas
        await wire.send_json(
            send,
            200,
            {
                "name": name,
                "replicas": replicas,
                "max_concurrency": backend.max_concurrency,
                "shared": shared,  # False: no meter store (one replica only)
            },
        )


def _capacity(backend: Backend) -> dict[str, Any]:
    """What tokenyard learned of a backend's capacity: its SLA and the limit learned from it."""
    capacity: dict[str, Any] = {}
    sla, limit = backend.config.sla, backend.limit
    if sla is not None and limit is not None:
        capacity["sla"] = sla.model_dump(exclude_none=True)
        capacity["limit"] = limit.to_json(backend.engine_replicas, backend.cluster_size)
    return capacity


def _stamp(ts: int) -> str:
    return time.strftime("%Y%m%dT%H%MZ", time.gmtime(ts))
