"""Billing service: one billing account per patient over gRPC (BillingService),
closed when the patient is deleted (patient events from Kafka)."""
from pms_common import grpc_server
from pms_common.protos import billing_service_pb2, billing_service_pb2_grpc

from .config import Config
from .service import BillingServicer
from .store import Store

SERVICE_NAMES = (billing_service_pb2.DESCRIPTOR.services_by_name["BillingService"].full_name,)


def create_server(config=None, address=None, store=None):
    """Builds (not starts) the server; health stays NOT_SERVING until
    set_ready(). Returns (server, port, health)."""
    config = config or Config()
    store = store or Store(config.DATABASE_URL)
    servicer = BillingServicer(store)
    return grpc_server.create_server(
        address or f"{config.BIND_HOST}:{config.PORT}",
        lambda server: billing_service_pb2_grpc.add_BillingServiceServicer_to_server(servicer, server),
        SERVICE_NAMES, max_workers=config.GRPC_MAX_WORKERS)


def set_ready(health, store):
    """SERVING once the store answers with its table in place (raises otherwise)."""
    store.check()
    grpc_server.set_serving(health, SERVICE_NAMES, serving=True)
