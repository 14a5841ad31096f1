"""The read-model process: the HTTP API and the Licences page on one server, beside the
projector that owns the DuckDB file."""
