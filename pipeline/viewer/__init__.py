"""viewer: see docs/architecture.md."""
