#!/usr/bin/env python
"""Convert released PyTorch checkpoints (VideoMV .pth, LGM safetensors, LDM VAE, open_clip)
into Flax parameters saved with orbax.

Not available in this build: the converters need the Flax model definitions, which land with
the models issue. This script says so instead of writing a partial checkpoint.
"""

import sys

if __name__ == "__main__":
    print("convert_torch_weights.py: conversion is not implemented in this build yet (the Flax "
          "models it converts into are not there yet). Nothing was converted.", file=sys.stderr)
    sys.exit(2)
