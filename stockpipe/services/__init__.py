"""Service functions: the work behind each task, taking a store, a source and plain values."""
