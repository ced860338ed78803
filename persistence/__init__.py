"""Storage interfaces and backends for sessions, messages and event logs."""
