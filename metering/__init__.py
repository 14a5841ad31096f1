"""Process wiring: settings, the local Kafka broker and stack, and the `metering` CLI."""
