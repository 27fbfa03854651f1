"""Software-defined assets (trace summaries and any derived tables)."""
