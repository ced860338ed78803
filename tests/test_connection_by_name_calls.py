"""The websockets methods the server calls by name, not through ``super()``
(http_wire.py ``_websockets_frame_event`` and ``_websockets_send_data``, sliced_reads.py
``_websockets_data_received``): a call by name skips every override between
:class:`BambooConnection` and websockets' ``Connection``, so only the ones meant to be
skipped may stand there. A mixin added later that overrides one of them would
otherwise be skipped without a word."""

from __future__ import annotations

from websockets.asyncio.connection import Connection
from websockets.asyncio.server import ServerConnection

from bamboo_session.server.http_wire import BambooConnection

# Name: the classes of BambooConnection's MRO before websockets' Connection that may
# define it. BambooConnection's own are the entry points that make the calls;
# ServerConnection's process_event takes the upgrade's request, which the by-name call
# (frames only) never sees.
MEANT: dict[str, set[type]] = {
    "data_received": {BambooConnection},
    "send_data": {BambooConnection},
    "process_event": {BambooConnection, ServerConnection},
}


def test_no_class_between_bamboo_and_websockets_overrides_a_method_called_by_name() -> None:
    mro = BambooConnection.__mro__
    assert Connection in mro
    between = mro[: mro.index(Connection)]
    for name, meant in MEANT.items():
        defining = {cls for cls in between if name in vars(cls)}
        assert defining == meant, (
            f"{name} is called by name on websockets' Connection, skipping "
            f"{sorted(c.__qualname__ for c in defining - meant)}"
        )
