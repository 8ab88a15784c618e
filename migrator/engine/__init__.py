"""The engine: pure decisions (mapping, diff) and the thin execution around them (worker, scheduler)."""
