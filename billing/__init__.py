"""Billing service: one billing account per patient over gRPC (BillingService),
closed when the patient is deleted (patient events from Kafka)."""

from pms_common.grpc_server import READY, GrpcFrame, Readiness
from pms_common.protos import billing_service_pb2, billing_service_pb2_grpc

from .config import Config
from .service import BillingServicer
from .store import Store

SERVICE_NAMES = (billing_service_pb2.DESCRIPTOR.services_by_name["BillingService"].full_name,)


def create_server(config=None, address=None, store=None):
    """Builds (not starts) the server in the gRPC frame; health stays
    NOT_SERVING until set_ready(). Returns (server, port, frame)."""
    config = config or Config()
    store = store or Store(config.DATABASE_URL)
    servicer = BillingServicer(store)
    frame = GrpcFrame(
        address or f"{config.BIND_HOST}:{config.PORT}",
        lambda server: billing_service_pb2_grpc.add_BillingServiceServicer_to_server(servicer, server),
        SERVICE_NAMES,
        max_workers=config.GRPC_MAX_WORKERS,
        reflection_enabled=config.is_dev,
    )
    return frame.server, frame.port, frame


def set_ready(frame, store):
    """SERVING once the store answers with its table in place (raises otherwise)."""
    store.check()
    frame.set_readiness(READY)


def readiness_probe(store, consumer=None):
    """What health follows: the RPCs need the store, the whole part also
    needs its consumer at work (not waiting for the database or broker)."""

    def probe():
        store.check()
        return Readiness(serving=True, working=consumer is None or consumer.ready)

    return probe
