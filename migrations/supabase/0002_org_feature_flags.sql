-- Per-org feature flags read by the API service.
CREATE TABLE IF NOT EXISTS org_feature_flags (
    org_slug VARCHAR(100) NOT NULL,
    flag VARCHAR(100) NOT NULL,
    enabled BOOLEAN NOT NULL DEFAULT FALSE,
    updated_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP,
    PRIMARY KEY (org_slug, flag)
);
