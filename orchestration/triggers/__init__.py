"""The triggers area (see DESIGN.md)."""
