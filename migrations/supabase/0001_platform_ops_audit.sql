-- Audit trail of platform operations run by the orchestration project.
CREATE TABLE IF NOT EXISTS platform_ops_audit (
    id VARCHAR(64) PRIMARY KEY,
    operation VARCHAR(100) NOT NULL,
    environment VARCHAR(20) NOT NULL,
    started_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP,
    detail TEXT
);
CREATE INDEX IF NOT EXISTS platform_ops_audit_operation_idx ON platform_ops_audit (operation, started_at);
