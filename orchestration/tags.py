"""Run tag names shared by jobs, the run coordinator and the UI filters."""

ENVIRONMENT_TAG = "platform/environment"
# Set only on release runs: dagster.yaml limits it to one queued-then-started run per value.
RELEASE_ENVIRONMENT_TAG = "platform/release-environment"
KIND_TAG = "platform/kind"
