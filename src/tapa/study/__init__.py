"""Studies that go past the paper's tables: why TAPA lags at small scale (ablation ladder,
mechanism diagnostics) and whether it retrieves past its training length (associative recall)."""
