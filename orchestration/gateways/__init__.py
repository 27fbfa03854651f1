"""The gateways area (see DESIGN.md)."""
