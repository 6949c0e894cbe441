#!/usr/bin/env python
"""Fine-tuning entry point (stage 1: video UNet, stage 2: LGM reconstructor).

Not available in this build: training needs the Flax models and the data sets, which land with
the models and training issues. This script says so instead of pretending to train.
"""

import sys

if __name__ == "__main__":
    print("train.py: training is not implemented in this build yet (it needs the video UNet, "
          "VAE, CLIP and LGM models and the data pipeline). Nothing was run.", file=sys.stderr)
    sys.exit(2)
