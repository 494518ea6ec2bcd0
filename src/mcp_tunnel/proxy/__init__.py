"""The tunnel proxy: the I/O layers around the pure policy modules."""
