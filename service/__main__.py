"""``python -m service``: run the gateway with settings from ``VDATA_*`` / ``VDATA_CONFIG``.
Without the server extra: one line naming it and exit status 2, as the CLI does."""

import sys

from service._extras import require_server

try:
    require_server("python -m service")
except ModuleNotFoundError as exc:
    print(f"error: {exc}", file=sys.stderr)
    raise SystemExit(2) from None

from service.http.server import main  # noqa: E402  (after the check: it imports the server's packages)

main()
