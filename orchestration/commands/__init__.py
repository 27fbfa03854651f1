"""The commands area (see DESIGN.md)."""
