"""`banger web`: a local page over the same API (`pip install 'banger[web]'`).

`create_app(banger, out_dir)` is an ASGI app (Starlette): the page in static/, the JSON API
the page and scripts use, and the files it wrote. Importing this package needs the `web`
extra; the `banger web` command checks for it first and says how to install it.
"""

from .app import create_app
from .options import WebConfig

__all__ = ["WebConfig", "create_app"]
