"""Tests of the local platform sandbox."""
