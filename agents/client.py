"""The agency desktop agent: send, receive, reply with a status, show statuses.

:class:`Client` is the agent of one agency and the SDK's entry point (``agents.open_agent``).
It is made of parts, each in its own module and each building on the one before:

- :mod:`agents.outbox` sends: seals to a spool file (ciphertext only; a document under
  256 KiB in memory), then publishes it part by part (one AMQP message per segment,
  confirms pipelined) with ``user_id`` set to the agency's broker login;
- :mod:`agents.statuses` signs, sends and takes in notices (statuses, receipts, recalls)
  and shows them, with the audit proofs of :mod:`agents.proofs`;
- :mod:`agents.opening` opens a whole envelope through a quarantine file into the inbox
  folder (a one-part envelope is verified and decrypted in memory and written once, after
  every check passed), writes a JSON sidecar and, once durable, a signed receipt (status 01);
- :mod:`agents.inbox` receives: spools each verified part to disk (ciphertext, fsynced)
  before acking it. Parts and documents of one consumer batch are made durable together
  (one fsync round at the batch end); only then are they recorded (with their receipts and
  the notices taken in, one commit), acked and receipted. Duplicate deliveries are
  recognised by envelope id and part and never written twice.

The state they share is declared in :mod:`agents.base`; files are written through
:mod:`agents.durable`.
"""

from __future__ import annotations

from agents.base import utc_now
from agents.config import AgentConfig
from agents.inbox import Inbox, ReceiverRunning
from agents.opening import ReceivedDocument
from agents.outbox import Sending, recipients
from agents.state import AgentState
from broker.connection import BrokerConfig
from broker.directory_feed import DirectoryFeed
from keys.agency import TRUST_FILE, load_agency
from keys.ca import load_ca_certificate
from keys.directory import Directory, TrustState
from keys.errors import CipherpostError

__all__ = ["Client", "ReceivedDocument", "ReceiverRunning", "Sending", "recipients"]


class Client(Inbox):
    """The agent for one agency. Construct with the config and the key passphrase.

    Its methods come from its parts (:class:`~agents.inbox.Inbox` builds on
    :class:`~agents.opening.Opening`, on :class:`~agents.statuses.Statuses`, on
    :class:`~agents.outbox.Outbox` and :class:`~agents.proofs.Proofs`); this class sets
    up the state they share.
    """

    def __init__(self, config: AgentConfig, passphrase: bytes) -> None:
        self.config = config
        self.keys = load_agency(config.agency_dir, passphrase)
        self.ca_certificate = ca_cert = load_ca_certificate(config.ca_cert)
        try:
            data = config.directory.read_bytes()
        except OSError as e:
            raise CipherpostError(f"cannot read directory {config.directory}: {e.strerror}") from e
        trust = TrustState(config.agency_dir / TRUST_FILE)
        self.directory = Directory.load(data, trust, now=utc_now(), ca_certificate=ca_cert)
        self.broker = BrokerConfig.load(config.broker_credentials)
        self.feed = DirectoryFeed(
            self.broker,
            self.broker.agency_queues()[1],
            current=self.directory,
            trust=trust,
            ca_certificate=ca_cert,
            path=config.directory,
            on_update=self._directory_updated,
        )
        self._feed_drained = False
        self.state = AgentState(config.state_db)
        self.spool = config.agency_dir / "spool"
        # What the parts share (each declared, with its meaning, in the part that uses it).
        self._publisher = None
        self._in_flight = []
        self._unconfirmed = []
        self.interrupted = []
        self._receiving = {}
        self.sending = None
        self.received = []
        self.on_received = None
        self.events = []
        self.on_event = None
        self._to_sync = []
        self._after_sync = []
        self._opening = set()
        self._spooling = {}

    def close(self) -> None:
        if self._publisher is not None:
            self._publisher.close()
            self._publisher = None
        self.state.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _directory_updated(self, directory: Directory) -> None:
        self.directory = directory
