"""Pure folds: events in, state and decisions out. No Kafka, no clock, no I/O."""
