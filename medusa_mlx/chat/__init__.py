"""The terminal chat app: a session (conversation, cache reuse, commands),
its statistics, and the Rich display."""
