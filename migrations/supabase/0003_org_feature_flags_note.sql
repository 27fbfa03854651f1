-- Operators explain why a flag was flipped.
ALTER TABLE org_feature_flags ADD COLUMN note TEXT;
