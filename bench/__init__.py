"""Load scripts: each answers one question a user asks about Bamboo (see RESULTS.md)."""
