"""End-to-end tests: the real daemon on a real instance."""
