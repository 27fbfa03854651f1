-- The record store lives beside Dagster's storage, in its own database.
CREATE DATABASE record_store OWNER dagster;
