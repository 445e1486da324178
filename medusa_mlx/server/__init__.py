"""The OpenAI-compatible HTTP server app: request validation (requests.py), the
generation worker (worker.py) and its conversation caches (conversations.py), the
HTTP layer (http.py) and the CLI (cli.py)."""
