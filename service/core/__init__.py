"""The service core: the :class:`~service.core.core.Core` facade over the catalog store, the
range cache, the jobs, the database, the tokens, the path policy and the Ray engine (the only
module that imports Ray). Nothing here knows HTTP."""

from service._extras import CORE, require_server

require_server("the service core (service.core)", CORE)
