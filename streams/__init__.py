"""Everything that talks to Kafka: the batched billing worker (decode, call the folds, send), the
read model's projector, producers and topic administration."""
