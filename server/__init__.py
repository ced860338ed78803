"""The running Bamboo server: WebSocket app, session actors, manager, HTTP, CLI."""
