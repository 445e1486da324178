#!/usr/bin/env python
"""Terminal chat with Medusa speculative decoding: ``python chat.py [--help]``.

A thin launcher; the session lives in medusa_mlx/chat.py, the display in
medusa_mlx/chat_ui.py.
"""

import medusa_mlx  # noqa: F401  (first: preloads OpenBLAS before mlx is imported)
from medusa_mlx.chat import main

if __name__ == "__main__":
    main()
