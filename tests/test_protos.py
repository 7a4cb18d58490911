"""The committed stubs are current, and the wire contract is the Java original's."""

from pathlib import Path

from pms_common.protos import billing_service_pb2, codegen, patient_event_pb2

STUBS = Path(codegen.__file__).parent


def test_committed_stubs_match_a_fresh_generation(tmp_path):
    codegen.generate(tmp_path)
    fresh = tmp_path / codegen.VIRTUAL_PREFIX
    generated = sorted(p.name for p in fresh.iterdir())
    assert generated, "protoc generated nothing"
    for name in generated:
        assert (STUBS / name).read_text() == (fresh / name).read_text(), (
            f"{name} is stale: run `make proto` and commit the result"
        )


def fields(message):
    return {field.name: field.number for field in message.fields}


def test_billing_wire_contract_is_the_originals():
    service = billing_service_pb2.DESCRIPTOR.services_by_name["BillingService"]
    assert service.full_name == "BillingService"  # no proto package
    method = service.methods_by_name["CreateBillingAccount"]
    assert method.input_type.name == "BillingRequest" and method.output_type.name == "BillingResponse"
    assert fields(billing_service_pb2.BillingRequest.DESCRIPTOR) == {"patientId": 1, "name": 2, "email": 3}
    assert fields(billing_service_pb2.BillingResponse.DESCRIPTOR) == {"accountId": 1, "status": 2}


def test_patient_event_keeps_the_original_fields_and_package():
    descriptor = patient_event_pb2.PatientEvent.DESCRIPTOR
    assert descriptor.full_name == "patient.events.PatientEvent"
    original = {"patientId": 1, "name": 2, "email": 3, "event_type": 4}
    assert original.items() <= fields(descriptor).items()


def test_envoys_protos_and_the_otlp_exporter_load_together():
    # xds-protos carries an older opentelemetry/proto; installed over
    # opentelemetry-proto's files it breaks the exporter (make install reinstalls it).
    from envoy.service.auth.v3 import external_auth_pb2
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.proto.common.v1 import common_pb2

    assert "InstrumentationScope" in common_pb2.DESCRIPTOR.message_types_by_name
    assert external_auth_pb2.CheckRequest.DESCRIPTOR.full_name == "envoy.service.auth.v3.CheckRequest"
    assert OTLPSpanExporter.__name__ == "OTLPSpanExporter"
