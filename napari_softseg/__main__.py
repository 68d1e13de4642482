import sys

from napari_softseg.commands import main

sys.exit(main())
