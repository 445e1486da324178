#!/usr/bin/env python
"""Terminal chat with Medusa speculative decoding: ``python chat.py [--help]``.

A thin launcher; the session lives in medusa_mlx/chat/session.py, the display in
medusa_mlx/chat/ui.py, the arguments in medusa_mlx/chat/cli.py.
"""

import medusa_mlx  # noqa: F401  (first: preloads OpenBLAS before mlx is imported)
from medusa_mlx.chat.cli import main

if __name__ == "__main__":
    main()
