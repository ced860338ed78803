"""The help of ``bamboo-session serve``'s flags: one line for each field of
:class:`~bamboo_session.server.config.ServerConfig`, what it is and its unit (server/cli.py
adds its default). Kept apart from the command's code, which it outgrew."""

from __future__ import annotations

# Help for each ServerConfig field: one line, what it is and its unit.
SERVE_HELP: dict[str, str] = {
    "host": "address to listen on",
    "port": "TCP port (0 picks a free one)",
    "store": "the store's URL: jsonl:///path, sqlite:///path, redis://host:port/db, memory://",
    "data_dir": "directory of the embedded JSONL store when --store is not given (~ expands)",
    "durability": "of the JSONL store in --data-dir, or of a JSONL or SQLite --store whose URL"
    " names none (?durability=): fsync (ack after fsync) or os (after write); none: fsync, or"
    " what the --store URL says (a URL that says another than a given one is refused);"
    " ignored, with a warning, for memory:// and redis:// stores",
    "default_ttl": "seconds of inactivity after which a session expires, at most 100 years "
    "(none: never, and closed sessions then stay, counted by --max-stored-sessions, until "
    "deleted)",
    "cleanup_interval": "seconds between removals of expired sessions",
    "log_format": "auto (JSON unless stderr is a terminal), json or console",
    "log_level": "debug, info, warning or error",
    "workers": "server processes on one port (SO_REUSEPORT) under one supervisor; more "
    "than 1 needs a redis:// store; each worker gets every limit whole (--memory-budget, "
    "--read-slots, rates: N workers hold N times as much)",
    "redis_wait_replicas": "Redis store: acknowledge a write once this many replicas have "
    "it (WAIT; the URL's wait_replicas)",
    "redis_wait_timeout_ms": "Redis store: how long WAIT may take before a write fails "
    "(the URL's wait_timeout_ms)",
    "backlog": "connections the kernel queues before accepting (a reconnect storm needs many)",
    "max_frame_bytes": "largest frame accepted; larger ones close the connection with 1009",
    "max_queue": "incoming frames buffered per connection before reading pauses (one more "
    "is read, outside --memory-budget)",
    "max_queue_bytes": "bytes those incoming frames may hold, inflated, before reading pauses "
    "(a frame alone in the queue may be larger, up to --max-frame-bytes)",
    "write_limit": "outgoing bytes buffered per connection before a send waits",
    "ping_interval": "seconds between keepalive pings (none: off)",
    "ping_timeout": "seconds to wait for a pong before closing (none: forever)",
    "close_timeout": "seconds to wait for the closing handshake before dropping the socket",
    "replay_page_timeout": "seconds a resuming connection's replay may make no progress "
    "(nothing of it delivered); then it is closed with 4429",
    "answer_page_timeout": "seconds the peer of an HTTP answer streamed in pages (GET "
    "/api/v1/sessions/{id} without limit and before: the whole history) has to take each "
    "page, and the most a page waits for its peer's read allowance; then its connection "
    "is dropped and the answer ends incomplete",
    "answer_peer_share": "the part of what HTTP answers not yet taken by their peers may "
    "hold (a quarter of --memory-budget) that one peer's (token sub, else address) may "
    "hold; past it that peer's answers get 429 (1: no part of its own)",
    "replay_peer_share": "the part of --memory-budget that the replay pages of one peer's "
    "(token sub, else address) resuming connections may hold at once; past it, its next "
    "pages wait for its others to be taken (1: no part of its own)",
    "replay_total_share": "the part of --memory-budget that the replay pages of all peers "
    "may hold together (a peer holding none always gets one); past it, further pages wait, "
    "first those of peers holding less than an equal part, leaving the rest to live "
    "viewers (1: no bound of its own)",
    "store_read_timeout": "seconds a page read from the store (history, events, a "
    "replay's page; waiting for one of the --read-slots included), a hello's read of "
    "its session (and, on a Redis store, of its user's connection count), an HTTP API "
    "request's store reads, or /readyz's and /metrics' may "
    "take; then abandoned: error internal, HTTP 503, a replay or a hello closes with "
    "1011, /readyz 503, /metrics serves the figures it has",
    "read_slots": "pages read from the store at once, over all connections and the HTTP "
    "API (history, events, replays' pages not in memory, HTTP pages; whole histories' "
    "pages in at most half); more wait their turn, within --store-read-timeout (2 to 256)",
    "compression": "permessage-deflate (true/false)",
    "hello_timeout": "seconds a new connection has to send hello (else close 4408)",
    "shutdown_grace": "seconds connections and sessions get to finish on shutdown",
    "store_close_timeout": "seconds the store's close gets on shutdown; past that (a disk "
    "that hangs) the stop logs what the store still owes its disk and serve exits 1",
    "max_parked_at_stop": "sessions a graceful stop (JSONL, SQLite) moves from active or "
    "idle to disconnected at most, in about a second at most; the next start parks the "
    "rest (0: none)",
    "idle_timeout": "seconds without traffic after which a connected session is idle",
    "disconnect_retention": "seconds a session with no connection stays in memory",
    "max_sessions": "live sessions in memory at most (parked ones are evicted first)",
    "send_queue_frames": "frames queued per connection before it is closed with 4429",
    "send_queue_bytes": "bytes queued per connection before it is closed with 4429",
    "inbox_limit": "requests queued per session before its peers' readers wait",
    "inbox_bytes": "bytes of requests queued per session before its peers' readers wait",
    "ring_size": "recent events kept in memory per session for fast replay",
    "ring_bytes": "bytes of recent events kept in memory per session for fast replay: "
    "their JSON, the frames sent of them (one per codec) and the ring's own 760",
    "memory_budget": "bytes all rings, send queues and inboxes may hold together; past "
    "it rings keep nothing and backed-up connections close with 4429 (0: no limit); a "
    "quarter of it more for HTTP answers not yet taken by their peers (then 503)",
    "max_sessions_per_user": "sessions a user (token sub, else hello.user_id) keeps, closed "
    "ones aside; one more is refused with close 4403 (0: no cap)",
    "session_create_rate": "new sessions per second per creator (token sub, else peer "
    "address); over it: close 4429 (0: no limit)",
    "session_create_burst": "new sessions a creator may make at once above the rate",
    "max_title_length": "characters of a session title at most (bad_request above)",
    "max_user_id_length": "characters of a user id at most (a hello's user_id: bad_request "
    "above when it creates a session, else ignored and counted against no user; a token "
    "whose sub is longer is refused, 4401 or HTTP 401)",
    "max_extra_bytes": "bytes of a session's extra (JSON) at most",
    "max_session_bytes": "bytes a session's log may hold in the store (events' JSON and "
    "keys; JSONL: its log file); an append past it stores nothing and gets error "
    "too_large (0: no cap)",
    "max_user_bytes": "bytes the sessions of one user may hold in the store together, "
    "closed ones too until they are deleted (as --max-session-bytes counts them; sessions "
    "without a user are not counted); an append past it stores nothing and gets error "
    "too_large (0: no cap)",
    "max_stored_sessions": "sessions the store keeps, any user's or none's, closed and "
    "expired ones too until they are deleted or cleaned up; a hello creating one more is "
    "closed 1013 (0: no cap); a warning is logged as the count passes 90%% of it",
    "max_stored_sessions_per_user": "sessions a user (token sub, else hello.user_id) keeps "
    "in the store, closed and expired ones too until they are deleted or cleaned up; a "
    "hello creating one more is closed 4403 (0: no cap)",
    "max_history_page": "most messages one history request returns",
    "max_events_page": "most events one events request returns",
    "max_list_page": "most sessions one listing returns",
    "max_page_bytes": "bytes of messages or events one page holds at most (at least one "
    "item): history, events and their HTTP endpoints",
    "batch_frames": "accept batch frames and list the batch extension in welcome (false: "
    "speak plain version 1)",
    "max_batch_items": "items one batch frame may hold at most, up to 10000 (bad_request above)",
    "auth_secret": "HS256 secret (32+ bytes) that turns JWT auth on; prefer the env "
    "variable, a flag shows in ps (unset: no auth, loopback only)",
    "auth_leeway": "seconds of clock difference allowed on a token's exp, nbf and iat",
    "auth_audience": "a token's aud must name this (unset: tokens with aud are refused)",
    "auth_issuer": "a token's iss must be this (unset: not checked)",
    "insecure": "allow listening on a non-loopback address without auth",
    "allowed_origins": "comma-separated Origins allowed to upgrade, beside loopback ones; "
    "others get 403 (* for any; requests without Origin always pass; with auth and "
    "none given: any)",
    "allowed_hosts": "comma-separated Host names the server answers to, beside loopback "
    "ones and its own address; others get 403 (* for any; with auth and none given: any)",
    "rate_limit": "frames per second per connection; over it: rate_limited errors (0: off)",
    "rate_limit_burst": "frames a connection may send at once above the rate",
    "rate_limit_refusals": "rate-limited frames within about a second before close 4429",
    "rate_limit_bytes": "bytes of frames read per second per connection; over it the "
    "server reads more slowly, nothing is refused (0: off)",
    "rate_limit_bytes_burst": "bytes of frames a connection may send at once above the rate",
    "max_connections_per_user": "concurrent connections per user (token sub, else "
    "hello.user_id), over every instance on a Redis store; over it: close 4429 (0: off)",
    "max_session_connections": "connections attached to one session at once on this "
    "process; one more is closed with 4429 at hello (0: no cap)",
    "max_connections": "connections open at once, HTTP and WebSocket, attached or not; "
    "one more is closed as soon as it is accepted, unanswered (none: half the open-file "
    "limit, at most 10000; 0: no cap)",
}
