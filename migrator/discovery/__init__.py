"""Discovery: what is on the source, read without changing anything, saved to the inventory."""
