"""Keeping the cache current: webhook ingest, the worker, transitions, backfill and reconcile."""
