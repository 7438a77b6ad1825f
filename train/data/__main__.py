import sys

from train.data import main

sys.exit(main())
