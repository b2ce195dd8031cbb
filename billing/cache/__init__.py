"""The Redis cache: store, connections, streams, outbox, dedupe and audit."""
