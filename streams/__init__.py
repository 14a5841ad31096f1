"""The Faust worker and the Kafka plumbing around it: decode, call the folds, send."""
