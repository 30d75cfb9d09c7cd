import sys

from onnxslim_compress.cli.main import main

sys.exit(main())
