from pms_common.config import ServiceConfig, env_bool, env_float, env_int, env_str
from pms_common.events import PATIENT_TOPIC


class Config(ServiceConfig):
    SERVICE = "billing"
    DEFAULT_PORT = 9001

    def load(self):
        self.GRPC_MAX_WORKERS = env_int("GRPC_MAX_WORKERS", 16)
        # SIGTERM → NOT_SERVING, then in-flight calls get this long to finish.
        self.SHUTDOWN_GRACE_SECONDS = env_float("SHUTDOWN_GRACE_SECONDS", 10.0)
        # Consume patient events (closes the account of a deleted patient).
        self.EVENTS_ENABLED = env_bool("EVENTS_ENABLED", True)
        self.EVENTS_TOPIC = PATIENT_TOPIC
        self.EVENTS_GROUP_ID = env_str("EVENTS_GROUP_ID", "billing-service")
