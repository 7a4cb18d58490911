"""Every route of the rendered gateway config, reached by many spellings of its
path, with no token, a USER token and an ADMIN token: the real Envoy (with
ext_authz, auth and the services behind it) decides as it does for the
canonical path, or refuses (4xx); a spelling never gets further than its
canonical path would, and never makes a server error.

The routes come from the rendered envoy.yaml itself; each must be reached by
one of SAMPLES, so a route added without a sample fails here."""

import http.client
import json
import re
import uuid
from itertools import product
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import requests
import yaml

from tests.support import wait_for

pytestmark = pytest.mark.e2e

UNKNOWN_ID = str(uuid.UUID(int=1))
# (method, canonical path, JSON body): the requests each route is tried with.
# Bodies are invalid on purpose, so an allowed write changes nothing (422).
SAMPLES = [
    ("GET", "/docs", None),
    ("GET", "/docs/", None),
    ("GET", "/docs/swagger-init.js", None),
    ("GET", "/docs/swagger-ui-bundle.js", None),
    ("GET", "/docs/swagger-ui.css", None),
    ("GET", "/docs/swagger-ui-standalone-preset.js", None),
    ("GET", "/api-docs/patients", None),
    ("GET", "/api-docs/auth", None),
    ("GET", "/api-docs/analytics", None),
    ("GET", "/api-docs/billing", None),
    ("GET", "/api-docs/audit", None),
    ("POST", "/auth/login", {}),
    ("GET", "/auth/validate", None),
    ("POST", "/auth/logout", None),
    ("POST", "/auth/password", {}),
    ("GET", "/auth/users", None),
    ("POST", "/auth/users", {}),
    ("GET", "/auth/users/{user_id}", None),
    ("PATCH", "/auth/users/{user_id}", {"role": "NOT-A-ROLE"}),
    ("GET", "/api/patients", None),
    ("GET", "/api/patients/{patient_id}", None),
    ("POST", "/api/patients", {}),
    ("PUT", "/api/patients/{patient_id}", {}),
    ("DELETE", f"/api/patients/{UNKNOWN_ID}", None),
    ("GET", "/api/fhir/metadata", None),
    ("GET", "/api/fhir/Patient", None),
    ("POST", "/api/fhir/Patient", {}),
    ("GET", "/api/analytics/summary", None),
    ("GET", "/api/analytics/registrations", None),
    ("GET", "/api/billing/accounts/{patient_id}", None),
    ("GET", "/api/billing/accounts/{patient_id}/x", None),
    ("GET", "/api/audit", None),
    ("GET", "/api/audit/verify", None),
    ("POST", "/api/audit", {}),
    ("DELETE", "/api/audit", None),
    ("GET", "/nowhere", None),
]
# Routes no canonical request is meant to reach: the refusal of leftover escapes.
SPELLING_GUARDS = {".*%.*"}
# A spelling the gateway does not take for its canonical path gets one of these.
GATEWAY_REFUSALS = {400, 404}
REFUSALS = GATEWAY_REFUSALS | {401, 403}
REDIRECTS = {301, 302, 307, 308}


def acceptable(canonical, spelled):
    """A spelling of a refused request is refused too, or redirected to its
    unescaped path (an escaped slash: the client then asks again there); a
    spelling of an allowed one may be allowed, or refused, but never fails
    the server."""
    if spelled == canonical or spelled in GATEWAY_REFUSALS or spelled in REDIRECTS:
        return True
    if canonical in REFUSALS:
        return spelled in REFUSALS
    return spelled < 500


def rendered_routes(system):
    config = yaml.safe_load((Path(system.env["PMS_RUN_DIR"]) / "envoy" / "envoy.yaml").read_text())
    manager = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
    return manager["typed_config"]["route_config"]["virtual_hosts"][0]["routes"]


def route_key(route):
    match = route["match"]
    methods = [
        h["string_match"]["safe_regex"]["regex"] for h in match.get("headers", []) if h["name"] == ":method"
    ]
    pattern = match.get("path") or match.get("prefix") or match["safe_regex"]["regex"]
    return f"{pattern} {methods[0] if methods else '*'}"


def first_route(routes, method, path):
    """The route Envoy picks for a canonical request, read off the config."""
    for route in routes:
        match = route["match"]
        methods = [
            h["string_match"]["safe_regex"]["regex"]
            for h in match.get("headers", [])
            if h["name"] == ":method"
        ]
        if methods and not re.fullmatch(methods[0], method):
            continue
        if (
            ("path" in match and path == match["path"])
            or ("prefix" in match and path.startswith(match["prefix"]))
            or ("safe_regex" in match and re.fullmatch(match["safe_regex"]["regex"], path))
        ):
            return route_key(route)
    raise AssertionError(f"no route for {method} {path}")


def encode(char, upper=True):
    escape = f"%{ord(char):02X}"
    return escape if upper else escape.lower()


def spellings(path):
    """Other ways to write `path` that a lax server or router might take for it."""
    segments = path.split("/")
    slashes = [i for i, char in enumerate(path) if char == "/"]
    variants = {
        "every character escaped": "/".join("".join(encode(c) for c in s) for s in segments),
        "every character escaped, lower-case hex": "/".join(
            "".join(encode(c, False) for c in s) for s in segments
        ),
        "trailing slash": path + "/",
        "trailing dot segment": path + "/.",
        "leading double slash": "/" + path,
        "upper case": path.upper(),
        "title case": "/".join(s[:1].upper() + s[1:] for s in segments),
        "semicolon parameter": path + ";x=1",
        "double-escaped trailing slash": path + "%252F",
    }
    for position, char in enumerate(path):
        if char != "/":
            variants[f"char {position} escaped"] = path[:position] + encode(char) + path[position + 1 :]
            if char.isalpha():
                variants[f"char {position} escaped lower"] = (
                    path[:position] + encode(char, False) + path[position + 1 :]
                )
    for n, at in enumerate(slashes):
        head, tail = path[:at], path[at + 1 :]
        variants.update(
            {
                f"slash {n} doubled": f"{head}//{tail}",
                f"slash {n} as %2F": f"{head}%2F{tail}",
                f"slash {n} as %2f": f"{head}%2f{tail}",
                f"slash {n} as %252F": f"{head}%252F{tail}",
                f"slash {n} as backslash": f"{head}\\{tail}",
                f"slash {n} as %5C": f"{head}%5C{tail}",
                f"dot segment at slash {n}": f"{head}/./{tail}",
                f"escaped dot segment at slash {n}": f"{head}/%2e/{tail}",
                f"dot-dot segment at slash {n}": f"{head}/x/../{tail}",
                f"escaped dot-dot segment at slash {n}": f"{head}/x/%2E%2E/{tail}",
                f"semicolon at slash {n}": f"{head};x/{tail}" if head else f"/;x/{tail}",
            }
        )
    return {name: spelled for name, spelled in variants.items() if spelled != path}


class Gateway:
    """Raw HTTP to the gateway: the path goes out byte for byte as written
    (requests would re-quote it)."""

    def __init__(self, url):
        parts = urlsplit(url)
        self.host, self.port = parts.hostname, parts.port
        self.sent = 0

    def status(self, method, path, token, body):
        """The answer's status; the request's User-Agent is `route-test/<n>`
        for the n-th request, so its access-log line can be found."""
        self.sent += 1
        connection = http.client.HTTPConnection(self.host, self.port, timeout=10)
        headers = {"Connection": "close", "User-Agent": f"route-test/{self.sent}"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        payload = None
        if body is not None:
            payload = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        try:
            connection.request(method, path, body=payload, headers=headers)
            response = connection.getresponse()
            response.read()
            return response.status
        finally:
            connection.close()


@pytest.fixture(scope="module")
def identities(system):
    admin = system.token()
    email = f"route-user-{uuid.uuid4().hex[:8]}@example.com"
    password = "quiet harbour lantern " + uuid.uuid4().hex[:6]
    created = requests.post(
        f"{system.url}/auth/users",
        json={"email": email, "password": password, "role": "USER"},
        headers={"Authorization": f"Bearer {admin}"},
        timeout=10,
    )
    assert created.status_code == 201, created.text
    user = {"email": email, "password": password}
    return {
        "no token": lambda: None,
        "USER": lambda: system.token(user),
        "ADMIN": system.token,
    }, created.json()["id"]


@pytest.fixture(scope="module")
def ids(system, identities):
    admin = system.session()
    patients = admin.get(f"{system.url}/api/patients", timeout=10).json()
    return {"patient_id": patients[0]["id"], "user_id": identities[1]}


def test_every_route_has_a_sample(system, ids):
    routes = rendered_routes(system)
    reached = {first_route(routes, method, path.format(**ids)) for method, path, _ in SAMPLES}
    every = {
        route_key(route)
        for route in routes
        if route["match"].get("safe_regex", {}).get("regex") not in SPELLING_GUARDS
    }
    assert every - reached == set(), "routes no sample reaches: add one to SAMPLES"


def served_by_upstream(system, requests_sent):
    """For each request the test sent (by its number), whether a service
    answered it (else the gateway did), from the gateway's access log."""
    log = Path(system.env["PMS_RUN_DIR"]) / "logs" / "gateway.log"

    def lines():
        tagged = {}
        for line in log.read_text().splitlines():
            if line.startswith("{") and '"route-test/' in line:
                entry = json.loads(line)
                tagged[int(entry["user_agent"].split("/")[1])] = entry["details"] == "via_upstream"
        # The last request's line shows that the log is complete; a request the
        # gateway refused before reading its headers has no line (nor a service).
        return tagged if requests_sent in tagged else None

    tagged = wait_for(lines, timeout=15, interval=0.5, message="the gateway's access log")
    return {number: tagged.get(number, False) for number in range(1, requests_sent + 1)}


def test_no_spelling_gets_further_than_its_canonical_path(system, identities, ids):
    token_for, _ = identities
    # A token is fetched per request where the request may revoke it (logout).
    tokens = {name: make() for name, make in token_for.items()}
    gateway = Gateway(system.url)
    surprises, pairs = [], []
    for (method, template, body), who in product(SAMPLES, token_for):
        path = template.format(**ids)

        def token(who=who, path=path):
            return token_for[who]() if path == "/auth/logout" else tokens[who]

        canonical = gateway.status(method, path, token(), body)
        canonical_number = gateway.sent
        for name, spelled in spellings(path).items():
            status = gateway.status(method, spelled, token(), body)
            described = f"{who}: {method} {spelled!r} ({name}) -> {status}, canonical {path} -> {canonical}"
            pairs.append((canonical_number, gateway.sent, described))
            if not acceptable(canonical, status):
                surprises.append(described)
    assert len(pairs) > 1000
    assert not surprises, "\n".join(surprises)
    # The gateway alone holds, whatever the services check again: a spelling
    # reaches a service only where its canonical path did.
    upstream = served_by_upstream(system, gateway.sent)
    past_the_gateway = [
        described for canonical, spelled, described in pairs if upstream[spelled] and not upstream[canonical]
    ]
    assert not past_the_gateway, "\n".join(past_the_gateway)


def test_the_issue_s_attack_lines_are_refused(system):
    """The spellings that once listed users and created an ADMIN with no token."""
    gateway = Gateway(system.url)
    evil = {"email": "evil@attacker.test", "password": "Attack3r-Passw0rd!x", "role": "ADMIN"}
    for path in (
        "/auth/%75sers",
        "/auth//users",
        "/auth/%2Fusers",
        "/auth/./users",
        "/auth/x/../users",
        "/auth/users;x",
        "/auth/Users",
        "/auth\\users",
    ):
        assert gateway.status("GET", path, None, None) in REFUSALS | REDIRECTS, path
        assert gateway.status("POST", path, None, evil) in REFUSALS | REDIRECTS, path
    login = requests.post(
        f"{system.url}/auth/login", json={"email": evil["email"], "password": evil["password"]}, timeout=10
    )
    assert login.status_code == 401
