"""The finance read model: topics projected into one DuckDB file, exactly once."""
