"""The clients of the store differential (bench/store_differential.py): one
:class:`StorePeer` per server, holding its WebSocket connections in numbered slots,
running each operation with raw ``websockets`` frames or plain HTTP, and recording every
answer (frames, close codes and reasons, HTTP status and body); and :func:`normalised`,
which replaces what must differ between stores (times, generated ids, epochs) by
stable aliases.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import re
import urllib.parse
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from .soak_server import Server

TIMES = {"ts", "created_at", "updated_at", "last_activity_at", "expires_at", "time"}
GENERATED = {"connection_id", "joined", "left", "epoch"}
READ_TIMEOUT = 5.0


def normalised(value: Any, aliases: dict[str, str]) -> Any:
    """``value`` with times as ``<t>`` and generated strings as their alias."""
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            if key in TIMES and isinstance(item, str):
                out[key] = "<t>"
            elif key == "id" and isinstance(item, int):
                # numbered per store: a slot closed on one store only would shift them
                out[key] = "<request>"
            elif isinstance(item, str) and (key in GENERATED or (key == "id" and "role" in value)):
                out[key] = aliases.setdefault(item, f"<{key}{len(aliases)}>")
            else:
                out[key] = normalised(item, aliases)
        return out
    if isinstance(value, list):
        return [normalised(item, aliases) for item in value]
    if isinstance(value, str) and value in aliases:
        return aliases[value]
    return value


class StorePeer:
    """The differential's clients of one server."""

    def __init__(self, kind: str, server: Server, max_frame: int) -> None:
        self.kind = kind
        self.server = server
        self.max_frame = max_frame
        self.slots: dict[int, ClientConnection] = {}
        self.aliases: dict[str, str] = {}
        self.epochs: dict[str, str] = {}
        self.last_seqs: dict[str, int] = {}
        self.names: dict[str, str] = {}  # a pool name (or "new#n") -> the session's real id
        self.slot_session: dict[int, str] = {}
        self.request = 0

    def real_id(self, name: str) -> str:
        return self.names.get(name, name)

    def alias_text(self, text: str) -> str:
        return re.sub(r"\d{4}-\d\d-\d\dT[\d:.]+Z?", "<t>", text)

    async def run(self, op: dict[str, Any]) -> dict[str, Any]:
        kind = op["op"]
        if kind in ("expire", "mark"):
            return {"frames": await self.drain_all()}
        if kind == "list":
            return await self.http("/api/v1/sessions", op["params"])
        if kind == "get":
            return await self.http(f"/api/v1/sessions/{self.real_id(op['session'])}", op["params"])
        if kind == "get_events":
            return await self.http(
                f"/api/v1/sessions/{self.real_id(op['session'])}/events", op["params"]
            )
        if kind == "attach":
            answer = await self.attach(op)
        elif op["slot"] not in self.slots:
            return {"no connection": True}
        elif kind == "close":
            answer = await self.close_slot(op["slot"])
        else:
            answer = await self.request_on(op["slot"], self.frame(op))
        return {"answer": answer, "others": await self.drain_all(but=op["slot"])}

    def frame(self, op: dict[str, Any]) -> dict[str, Any] | bytes:
        self.request += 1
        kind = op["op"]
        base: dict[str, Any] = {"type": kind, "id": self.request}
        if kind == "event":
            return {**base, "event": op["event"], "key": op["key"]}
        if kind == "message":
            return {**base, "message": op["message"], "key": op["key"]}
        if kind == "batch":
            return {**base, "items": op["items"]}
        if kind == "history":
            return {**base, "limit": op["limit"], "before": op["before"]}
        if kind == "events":
            return {**base, "after_seq": op["after_seq"], "limit": op["limit"]}
        if kind == "state":
            return {**base, "state": op["state"]}
        # "sized": an event frame of exactly the frame limit, one byte under or over
        frame = {**base, "type": "event", "event": {"type": "token", "content": ""}}
        pad = self.max_frame + op["delta"] - len(json.dumps(frame).encode())
        frame["event"]["content"] = "p" * pad
        return frame

    async def attach(self, op: dict[str, Any]) -> dict[str, Any]:
        slot = op["slot"]
        closed_before = await self.close_slot(slot) if slot in self.slots else None
        name = op["session"]
        path = "/api/v1/stream" if name is None else f"/api/v1/stream/{self.real_id(name)}"
        hello: dict[str, Any] = {"type": "hello", "role": op["role"], "create": op["create"]}
        if op["user"] is not None:
            hello["user_id"] = op["user"]
        if op["title"] is not None:
            hello["title"] = op["title"]
        if op["resume"] is not None and name is not None:
            hello["last_seq"] = op["last_seq"]
            hello["epoch"] = (
                self.epochs.get(self.real_id(name), "bogus")
                if op["resume"] == "current"
                else "bogus"
            )
        try:
            ws = await connect(
                f"ws://127.0.0.1:{self.server.port}{path}", open_timeout=READ_TIMEOUT, max_size=None
            )
        except Exception as exc:
            return {"closed_before": closed_before, "upgrade": repr(exc)}
        await ws.send(json.dumps(hello))
        frames = await self.read_until(ws, lambda f: f.get("type") == "welcome")
        if ws.state.name != "OPEN" or not frames or frames[-1].get("type") != "welcome":
            frames += await self.read_until(ws, lambda f: False, within=0.5)
            await ws.close()
            return {"closed_before": closed_before, "frames": frames, "close": close_of(ws)}
        welcome = frames[-1]
        real = welcome["session"]["id"]
        if name is None:
            name = f"new#{sum(1 for n in self.names if n.startswith('new#'))}"
            self.names[name] = real
            self.aliases.setdefault(real, f"<{name}>")
        self.epochs[real] = welcome["epoch"]
        self.slots[slot] = ws
        self.slot_session[slot] = real
        frames += await self.read_until(ws, lambda f: False, within=0.3)  # the replay
        return {"closed_before": closed_before, "frames": frames}

    async def request_on(self, slot: int, frame: dict[str, Any] | bytes) -> dict[str, Any]:
        ws = self.slots[slot]
        request_id = frame["id"] if isinstance(frame, dict) else None
        with contextlib.suppress(ConnectionClosed):
            await ws.send(json.dumps(frame))
        frames = await self.read_until(
            ws, lambda f: f.get("id") == request_id and f.get("type") != "event"
        )
        if isinstance(frame, dict) and frame.get("state") == "closed":
            # its own connection is closed too, a moment after the ack: wait for it,
            # or whether the close was seen would depend on timing, not on the store
            frames += await self.read_until(ws, lambda f: False, within=2.0)
        return {"frames": frames, **self.forget_if_closed(slot)}

    async def close_slot(self, slot: int) -> dict[str, Any]:
        ws = self.slots.pop(slot)
        self.slot_session.pop(slot, None)
        await ws.close()
        frames = await self.read_until(ws, lambda f: False, within=1.0)
        return {"frames": frames, "close": close_of(ws)}

    async def drain_all(self, but: int | None = None) -> dict[int, Any]:
        """Every frame each connection (but ``but``'s) has been sent since its last
        read, up to the pong of a ping sent now."""
        await asyncio.sleep(0.05)  # presence and fan-out happen after the reply
        out: dict[int, Any] = {}
        for slot in sorted(self.slots):
            if slot == but:
                continue
            ws = self.slots[slot]
            self.request += 1
            marker = f"drain{self.request}"
            with contextlib.suppress(ConnectionClosed):
                await ws.send(json.dumps({"type": "ping", "id": marker}))
            frames = await self.read_until(ws, lambda f, m=marker: f.get("id") == m)
            frames = [f for f in frames if f.get("id") != marker]
            out[slot] = {"frames": frames, **self.forget_if_closed(slot)}
        return out

    def forget_if_closed(self, slot: int) -> dict[str, Any]:
        ws = self.slots[slot]
        if ws.state.name == "OPEN":
            return {}
        del self.slots[slot]
        self.slot_session.pop(slot, None)
        return {"close": close_of(ws)}

    async def read_until(
        self, ws: ClientConnection, done: Any, within: float = READ_TIMEOUT
    ) -> list[Any]:
        frames: list[Any] = []
        try:
            async with asyncio.timeout(within):
                while True:
                    raw = await ws.recv()
                    frame = json.loads(raw)
                    frames.append(frame)
                    if done(frame):
                        return frames
        except TimeoutError:
            if within == READ_TIMEOUT:
                frames.append({"TIMEOUT": True})
        except ConnectionClosed:
            pass
        return frames

    async def drop_all(self) -> None:
        for slot in list(self.slots):
            ws = self.slots.pop(slot)
            ws.transport.abort()

    async def http(self, path: str, params: dict[str, Any] | None) -> dict[str, Any]:
        query = urllib.parse.urlencode(params or {})
        return await asyncio.to_thread(self.get, f"{path}?{query}" if query else path)

    def get(self, target: str) -> dict[str, Any]:
        conn = http.client.HTTPConnection("127.0.0.1", self.server.port, timeout=READ_TIMEOUT)
        try:
            conn.request("GET", target)
            response = conn.getresponse()
            body = response.read()
        finally:
            conn.close()
        try:
            parsed: Any = json.loads(body)
        except ValueError:
            parsed = body.decode(errors="replace")[:500]
        return {"status": response.status, "body": parsed}

    async def snapshot(self, names: tuple[str, ...]) -> dict[str, Any]:
        """Every session as HTTP shows it, and a full listing."""
        out: dict[str, Any] = {
            "list": await self.http("/api/v1/sessions", {"sort_order": "asc", "limit": "6"})
        }
        for name in (*names, *sorted(n for n in self.names if n.startswith("new#"))):
            out[name] = await self.http(f"/api/v1/sessions/{self.real_id(name)}", None)
            out[name + "/events"] = await self.http(
                f"/api/v1/sessions/{self.real_id(name)}/events", None
            )
        return out


def close_of(ws: ClientConnection) -> Any:
    if ws.close_code is None and ws.close_reason is None:
        return None
    return [ws.close_code, ws.close_reason]
