"""A third-party FHIR client (SMART on FHIR's `fhirclient`) drives the FHIR
API through the gateway: the capability statement, create, read, search
with paging (following the server's next links), update; and the gateway
lets the capability statement through without a token, the rest not."""

import uuid

import pytest
import requests
from fhir.resources.R4B.bundle import Bundle as CheckedBundle
from fhir.resources.R4B.patient import Patient as CheckedPatient
from fhirclient.models.address import Address
from fhirclient.models.contactpoint import ContactPoint
from fhirclient.models.fhirdate import FHIRDate
from fhirclient.models.humanname import HumanName
from fhirclient.models.patient import Patient
from fhirclient.server import FHIRServer

pytestmark = pytest.mark.e2e


@pytest.fixture
def server(system):
    """fhirclient's server object on the gateway's FHIR base, sending an ADMIN token."""
    fhir = FHIRServer(None, base_uri=f"{system.url}/api/fhir")
    fhir.session.headers["Authorization"] = f"Bearer {system.token()}"
    return fhir


def new_patient(family, given, email):
    patient = Patient()
    name = HumanName()
    name.family, name.given = family, [given]
    email_point = ContactPoint()
    email_point.system, email_point.value = "email", email
    patient.name, patient.telecom = [name], [email_point]
    patient.gender = "female"
    patient.birthDate = FHIRDate("1984-02-29")
    address = Address()
    address.text = "1 Quay Street, Galway"
    patient.address = [address]
    return patient


def test_the_capability_statement_needs_no_token_and_patients_do(system, server):
    statement = server.capabilityStatement
    assert statement.fhirVersion == "4.0.1"
    assert [resource.type for resource in statement.rest[0].resource] == ["Patient"]
    anonymous = requests.get(f"{system.url}/api/fhir/metadata", timeout=10)
    assert anonymous.status_code == 200
    assert anonymous.headers["Content-Type"].startswith("application/fhir+json")
    assert requests.get(f"{system.url}/api/fhir/Patient", timeout=10).status_code == 401


def test_create_read_search_with_paging_and_update(system, server):
    tag = uuid.uuid4().hex[:10]
    family = f"Quillfeather{tag}"
    created_ids = []
    for index in range(5):
        response = new_patient(family, f"Given{index}", f"fhir-{tag}-{index}@example.com").create(server)
        CheckedPatient.model_validate(response)
        created_ids.append(response["id"])

    read = Patient.read(created_ids[0], server)
    assert read.name[0].family == family and read.name[0].given == ["Given0"]
    assert read.meta.versionId == "1"
    assert read.identifier[0].value.startswith("MRN-")

    search = Patient.where(struct={"family": family.lower(), "_count": "2", "_sort": "given"})
    pages = list(search.perform_iter(server))
    assert [len(page.entry or []) for page in pages] == [2, 2, 1]
    assert all(page.total == 5 for page in pages)
    for page in pages:
        CheckedBundle.model_validate(page.as_json())
    found = [entry.resource.id for page in pages for entry in page.entry]
    assert sorted(found) == sorted(created_ids) and len(set(found)) == 5

    read.telecom[0].value = f"moved-{tag}@example.com"
    read.gender = "other"
    updated = read.update(server)
    CheckedPatient.model_validate(updated)
    assert updated["meta"]["versionId"] == "2" and updated["gender"] == "other"
    again = Patient.read(created_ids[0], server)
    assert again.telecom[0].value == f"moved-{tag}@example.com" and again.meta.versionId == "2"

    # The same patient on the REST API, through the same write path.
    rest = system.session().get(f"{system.url}/api/patients/{created_ids[0]}", timeout=10).json()
    assert rest["email"] == f"moved-{tag}@example.com" and rest["gender"] == "other"
    assert rest["billingStatus"] in ("ACTIVE", "PENDING")

    stale = requests.put(
        f"{system.url}/api/fhir/Patient/{created_ids[0]}",
        json=again.as_json(),
        headers={
            "Authorization": f"Bearer {system.token()}",
            "If-Match": 'W/"1"',
            "Content-Type": "application/fhir+json",
        },
        timeout=10,
    )
    assert stale.status_code == 412
    assert stale.json()["resourceType"] == "OperationOutcome"
