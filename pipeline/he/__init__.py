"""he: see docs/architecture.md."""
