import sys

from icllm_emulator.cli import main

sys.exit(main())
