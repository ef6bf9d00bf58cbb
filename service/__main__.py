"""``python -m service``: run the gateway with settings from ``VDATA_*`` / ``VDATA_CONFIG``."""

from service.http.server import main

main()
