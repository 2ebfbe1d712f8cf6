import sys

from personseg.cli import main

sys.exit(main())
