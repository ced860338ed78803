"""``python -m bamboo_session.server``: the same as the ``bamboo-session`` command."""

from .cli import main

raise SystemExit(main())
