"""The web demo's entry point at the repository root (as Gradio Spaces expect it): the same as
``python -m videomv_jax.app``; see ``python app.py --help``."""

import sys

from videomv_jax.app import main

if __name__ == "__main__":
    sys.exit(main())
