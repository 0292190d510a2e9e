"""synth: see docs/architecture.md."""
