import sys

from dora_voice_tools.bench.cli import main

sys.exit(main())
