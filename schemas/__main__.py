import sys

from schemas.generate import main

sys.exit(main())
