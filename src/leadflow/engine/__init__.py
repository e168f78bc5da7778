"""The engine: the eventsourcing application (commands and queries), record processing in
batches, ingest of files, and the auditor's replays and backtests."""
