"""Bamboo session server: keeps AI-agent sessions alive across flaky connections.

The distribution's subpackages live in the repository's top-level folders:
``bamboo_session.protocol`` (wire data and codec), ``bamboo_session.persistence``
(storage) and ``bamboo_session.server`` (the running server). Beside them,
``bamboo_session.wakeup``: the one asyncio helper all three use.
"""

__version__ = "0.1.0"
