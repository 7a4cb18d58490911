from pms_common.config import ServiceConfig, env_float, env_int, service_address

# Flask-SQLAlchemy's bind for writes that are one statement, atomic by itself.
AUTOCOMMIT_BIND = "autocommit"


class Config(ServiceConfig):
    SERVICE = "patient"
    DEFAULT_PORT = 4000

    API_TITLE = "Patient Service"
    # A request body larger than this is refused with 413 before it is parsed.
    MAX_CONTENT_LENGTH = 64 * 1024

    def load(self):
        self.BILLING_ADDRESS = service_address("BILLING", 9001)
        # A create waits this long for billing; after that the worker opens the account.
        self.BILLING_TIMEOUT_SECONDS = env_float("BILLING_TIMEOUT_SECONDS", 1.0)
        self.BILLING_RETRY_MAX_SECONDS = env_float("BILLING_RETRY_MAX_SECONDS", 30.0)
        # The relay's pause after a batch that was not full: under load a batch
        # then carries 30 ms of events, not a few (fewer, larger batches cost the
        # relay and the broker less per event); the most an event waits here.
        self.OUTBOX_POLL_SECONDS = env_float("OUTBOX_POLL_SECONDS", 0.03)
        self.OUTBOX_BATCH_SIZE = env_int("OUTBOX_BATCH_SIZE", 500)
        self.EVENTS_TOPIC = "patient"

    def __init__(self, **overrides):
        super().__init__(**overrides)
        if self.SQLALCHEMY_DATABASE_URI.startswith("postgresql"):
            # A create's write is one statement (see outbox.insert_with_event):
            # on a pool of its own that stays in autocommit, no connection
            # switches its mode at each checkout and back at each return.
            self.SQLALCHEMY_BINDS = {AUTOCOMMIT_BIND: {
                "url": self.SQLALCHEMY_DATABASE_URI, "isolation_level": "AUTOCOMMIT",
                **self.SQLALCHEMY_ENGINE_OPTIONS}}
