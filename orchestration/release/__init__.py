"""The release workflow: migrate → bootstrap → org_sync_all."""
