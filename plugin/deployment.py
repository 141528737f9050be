"""What one deployment owns in a Redis that several share.

Every key and queue of a deployment lives under ``es-interest:<index prefix>:``
(``Settings.redis_key``). Two deployments with the same prefix on *different* clusters would
still meet there, so the first one to start claims the namespace for its cluster and any other
is refused with a message that says what to change. Keys written before namespaces existed
move into the namespace of the first deployment whose ``setup`` runs.
"""

from __future__ import annotations

from plugin.services import Services

_UNCLAIMED_SENTINELS = ("", "_na_")


class DeploymentConflict(RuntimeError):
    """This Redis namespace belongs to a deployment on another cluster."""


def claim(services: Services) -> None:
    """Claim this deployment's Redis namespace for its engine's cluster, or refuse."""
    settings = services.settings
    mine = services.engine.cluster_uuid
    if mine in _UNCLAIMED_SENTINELS:
        return  # an engine that does not say which cluster it is: nothing to compare
    key = settings.redis_key("deployment")
    services.redis.set(key, mine, nx=True)
    raw = services.redis.get(key)
    owner = raw.decode() if isinstance(raw, bytes) else str(raw)
    if owner != mine:
        raise DeploymentConflict(
            f"the Redis namespace '{settings.redis_key()}' belongs to a deployment on another "
            f"cluster ({owner}; this engine is {mine}): give this deployment its own "
            "ES_INTEREST_INDEX_PREFIX or its own Redis database (ES_INTEREST_REDIS_URL)")


def adopt_legacy_keys(services: Services) -> list[str]:
    """Move keys written before namespaces (API keys, the behaviour version, dead letters)
    into this deployment's namespace, once: the first deployment set up takes them."""
    settings, redis = services.settings, services.redis
    moves = [
        ("es-interest:api-keys", settings.redis_key("api-keys"), "API keys"),
        (f"es-interest:behaviour-version:{settings.index_prefix}",
         settings.redis_key("behaviour", "version"), "behaviour version"),
        ("es-interest:dead-letter", settings.redis_key("dead-letter"), "dead letters"),
    ]
    lines = []
    for old, new, what in moves:
        if redis.exists(old) and not redis.exists(new):
            redis.rename(old, new)
            lines.append(f"redis  {what}: {old} -> {new}")
    return lines
