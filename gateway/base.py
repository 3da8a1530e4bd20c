"""What every part of the gateway service shares: the state :class:`gateway.service.Gateway`
holds (declared here for the type checker; the gateway sets it) and the decision context."""

from __future__ import annotations

import collections
import datetime as dt

from broker.consumer import Consumer
from gateway.audit import AuditStore
from gateway.config import GatewayConfig
from gateway.decide import Context
from gateway.metrics import GatewayMetrics
from gateway.policy import Policy
from gateway.transport import Transport
from keys.agency import AgencyKeys
from keys.directory import Directory


class GatewayBase:
    """The gateway's state, shared by its parts (pause, settle, log publishing)."""

    config: GatewayConfig
    directory: Directory
    policy: Policy
    keys: AgencyKeys
    audit: AuditStore
    counters: collections.Counter[str]
    metrics: GatewayMetrics
    _transport: Transport | None
    _consumer: Consumer | None

    def context(self, now: dt.datetime) -> Context:
        return Context(
            self.directory, self.policy, now, self.config.gateway_id, self.config.login_prefix
        )
