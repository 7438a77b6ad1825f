"""python -m train --config recipes/<name>.yaml [--key value ...]: see train/train.py."""

import sys

from train.train import main

sys.exit(main())
