"""Operations: metrics, logs, drain, shared-memory checks."""
