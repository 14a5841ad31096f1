"""The HTTP side of the read model: the process that owns the DuckDB file serves its queries."""
