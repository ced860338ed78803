"""A child process for tests/test_supervisor_stop_status.py (run as a script, not
collected): ``python tests/supervised_jsonl_child.py DIR`` runs the supervisor of
``serve --workers 2`` (server/supervisor.py) over two real servers, each on a JSONL
store of its own in ``DIR/w<N>``, shutdown grace 1 s and store close bound 2 s.

The supervisor refuses JSONL for several workers (one process owns such a store), so
its configuration names a Redis store, which each worker replaces with its JSONL one:
a Redis store's close owes no disk, and a JSONL store's can be made to hang (its sync
helper stopped) to see what a worker's unclean stop does to the supervisor's status."""

from __future__ import annotations

import sys

from bamboo_session.server.cli import run_worker
from bamboo_session.server.config import ServerConfig
from bamboo_session.server.logs import configure_logging
from bamboo_session.server.supervisor import Supervisor


def main(base: str) -> int:
    config = ServerConfig(
        host="127.0.0.1",
        port=0,
        workers=2,
        store="redis://127.0.0.1:1/0",  # checked by the supervisor, used by no worker
        log_format="json",
        shutdown_grace=1.0,
        store_close_timeout=2.0,
    )
    configure_logging(config.log_format, config.log_level)

    def worker(config: ServerConfig, number: int) -> int:
        return run_worker(config.replace(store=None, data_dir=f"{base}/w{number}"), number)

    return Supervisor(config, worker).run()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
