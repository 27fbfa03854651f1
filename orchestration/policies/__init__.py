"""Job policies shared by every area: retries, recipes, progress, notifications, archival."""
