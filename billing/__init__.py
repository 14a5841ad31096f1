"""The plan (versioned TOML) and pure rating of usage against it."""
