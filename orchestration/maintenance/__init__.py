"""The maintenance area (see DESIGN.md)."""
