"""Scenario 3 of the rolling-upgrade bench (bench/rolling_upgrade.py): the wire across
versions. Each tree's Python client against each tree's server (old on new and new on
old, with old on old and new on new beside them, so that a difference is the mix's):
a publisher and a viewer, each a child process of the client's tree
(bench/rolling_wire_client.py), on a fresh session of a JSONL store; half way through
the publishes the server is stopped (SIGTERM, close 1012) and started again on the
same port and store, so both clients resume. Checked: ``hello`` and ``welcome`` on
both, the batch extension as negotiated (the client's ``max_batch_items`` from the
welcome, the server's ``bamboo_batch_items`` count), every publish stored once at its
seq, the viewer's sequence whole with no ``Reset``.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from .rolling_trees import HOST, Tree, TreeServer, free_port

CLIENT = Path(__file__).resolve().parent / "rolling_wire_client.py"
CHILD_TIMEOUT = 120.0


def spawn(tree: Tree, role: str, url: str, session_id: str, events: int) -> subprocess.Popen[str]:
    argv = [sys.executable, "-P", str(CLIENT), role, "--url", url, "--session", session_id]
    return subprocess.Popen(
        [*argv, "--events", str(events)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=tree.env(),
        cwd=tree.shim,
    )


def batch_frames(server: TreeServer) -> float | None:
    """Batch frames the server accepted (``bamboo_batch_items_count``)."""
    with urllib.request.urlopen(server.http("/metrics"), timeout=10) as response:
        text = response.read().decode()
    found = re.search(r"^bamboo_batch_items_count (\S+)$", text, re.M)
    return float(found.group(1)) if found else None


async def finish(child: subprocess.Popen[str], until: float) -> dict[str, Any]:
    """The child's JSON result; killed by its pid past ``until``."""
    try:
        wait = max(1.0, until - time.monotonic())
        out, err = await asyncio.to_thread(child.communicate, None, wait)
    except subprocess.TimeoutExpired:
        child.kill()
        out, err = child.communicate()
        return {"problems": [f"no result in {CHILD_TIMEOUT} s"], "stderr": err[-500:]}
    lines = [line for line in out.splitlines() if line.startswith("{")]
    if not lines:
        return {"problems": [f"exited {child.returncode} with no result"], "stderr": err[-500:]}
    result: dict[str, Any] = json.loads(lines[-1])
    return result


async def one_pair(client: Tree, server_tree: Tree, work: Path, events: int) -> dict[str, Any]:
    name = f"{client.name}-client-{server_tree.name}-server"
    store = f"jsonl://{work / name}"
    log = work / f"{name}.log"
    server = TreeServer(server_tree, store, log, port=free_port())
    report: dict[str, Any] = {"client": client.name, "server": server_tree.name}
    await asyncio.to_thread(server.start)
    url = f"ws://{HOST}:{server.port}"
    until = time.monotonic() + CHILD_TIMEOUT
    view = spawn(client, "viewer", url, "wire", events)
    assert view.stdout is not None
    attached = await asyncio.to_thread(view.stdout.readline)  # before any publish
    pub = spawn(client, "publisher", url, "wire", events)
    first_start: list[str] = []
    half = ""
    try:
        assert pub.stdout is not None
        half = await asyncio.to_thread(pub.stdout.readline)
        frames = [batch_frames(server)]
        if half.strip() == "HALF":
            await asyncio.to_thread(server.stop)
            first_start = server.problems()
            await asyncio.to_thread(server.start)  # the same port and store
        report["publisher"] = await finish(pub, until)
        report["viewer"] = await finish(view, until)
        frames.append(batch_frames(server))
        report["batch_frames_before_and_after_restart"] = frames
    finally:
        for child in (pub, view):
            if child.poll() is None:
                child.kill()
                child.wait()
        await asyncio.to_thread(server.stop)
    problems = [*report["publisher"]["problems"], *report["viewer"]["problems"]]
    if attached.strip() != "ATTACHED":
        problems.append("the viewer never attached")
    if half.strip() != "HALF":
        problems.append("the publisher never got half way")
    if report["viewer"].get("resets"):
        problems.append("the viewer's resume was refused")
    problems += first_start + server.problems()
    report["problems"] = problems
    report["ok"] = not problems
    return report


async def wire_scenario(old: Tree, new: Tree, work: Path, events: int) -> list[dict[str, Any]]:
    await asyncio.to_thread(work.mkdir, parents=True, exist_ok=True)
    pairs = ((old, new), (new, old), (old, old), (new, new))
    return [await one_pair(client, server, work, events) for client, server in pairs]
