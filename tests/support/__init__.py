"""One helper of each kind for the whole suite: waits, webhooks, step metadata, sandbox."""
