"""The CloudFormation templates in cloudformation/.

Four layers, none needing network or AWS credentials:
- cfn-lint (pinned) finds no error and no warning in any template;
- checkov (pinned, offline) finds no failed check in the templates and the
  Dockerfile, and every check it skips is one the template explains;
- every template deploys to moto with its parameter defaults (and the few it
  requires), and the resources moto models are checked through boto3 describe
  calls (VPC and subnets, security groups, RDS, ECS, the load balancer and its
  log bucket, logs, KMS, IAM);
- what moto does not model (MSK, Cloud Map, Secrets Manager, autoscaling,
  alarms, bucket policies; an ECS service's launch type, network and load
  balancer settings) is checked on the parsed template.
"""

import json
import os
import re
import shutil
import subprocess
import sys
import warnings
from contextlib import contextmanager
from pathlib import Path

import boto3
import pytest
import yaml
from cfnlint.api import lint, lint_file
from cfnlint.decode import cfn_yaml
from moto import mock_aws

pytestmark = pytest.mark.filterwarnings("ignore:Tried to parse .* not supported by moto:UserWarning")

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE_DIR = ROOT / "cloudformation"
DOCKERFILE = ROOT / "Dockerfile"
TEMPLATES = sorted(TEMPLATE_DIR.glob("*.yaml"))
PMS_TEMPLATE = TEMPLATE_DIR / "pms.yaml"
REGION = "us-east-1"
STACK = "pms"
ACCOUNT = "123456789012"  # moto's default account

# Resource types moto's CloudFormation skips (Ref/GetAtt to them resolve to
# nothing there); the template-level tests below cover them instead.
NOT_MODELLED_BY_MOTO = {
    "AWS::MSK::Cluster",
    "AWS::MSK::Configuration",
    "AWS::ServiceDiscovery::PrivateDnsNamespace",
    "AWS::ServiceDiscovery::Service",
    "AWS::SecretsManager::Secret",
    "AWS::SecretsManager::SecretTargetAttachment",
    "AWS::S3::BucketPolicy",
    "AWS::ApplicationAutoScaling::ScalableTarget",
    "AWS::ApplicationAutoScaling::ScalingPolicy",
    "AWS::CloudWatch::Alarm",
}
# Parameters a template cannot be deployed without (in moto they come from
# moto's own ACM); every other parameter keeps its default.
REQUIRED = {
    "pms.yaml": lambda stack: {
        "CertificateArn": stack.acm.request_certificate(DomainName="pms.example.com")["CertificateArn"]
    }
}
KAFKA_BROKERS = "b-1.pms-kafka.example:9098,b-2.pms-kafka.example:9098,b-3.pms-kafka.example:9098"
RDS_CA_BUNDLE = "/etc/pms/rds-ca-bundle.pem"  # where the Dockerfile puts it

# The gateway task's renderer first makes the audit log's folder in its task
# volume, owned by the app image's group (which Envoy joins: ENVOY_GID).
APP_GID = "10001"
AUDIT_LOG_FOLDER = "/var/log/pms-audit"
AUDIT_LOG_PATH = f"{AUDIT_LOG_FOLDER}/gateway-audit.jsonl"
AUDIT_LOG_FOLDER_MADE = f"install -d -o 0 -g {APP_GID} -m 2770 {AUDIT_LOG_FOLDER}"
RENDER = "python -m gateway.render --out /etc/envoy/envoy.yaml"
# One row per deployed part: its ECS service, task definition, security group,
# log group, Cloud Map service, port, containers and their commands, database.
PARTS = {
    "gateway": dict(
        logical="Gateway",
        port=4004,
        db=None,
        containers={
            "gateway-config": ["sh", "-c", f"{AUDIT_LOG_FOLDER_MADE} && exec {RENDER}"],
            "envoy": ["envoy", "-c", "/etc/envoy/envoy.yaml", "--file-flush-interval-msec", "1000"],
            "audit-collector": [
                "sh",
                "-c",
                'AUDIT_LOG_NAME="gateway-$(hostname)" exec python -m audit.collector',
            ],
        },
    ),
    "ext-authz": dict(
        logical="ExtAuthz",
        port=9002,
        db=None,
        containers={"ext-authz": ["python", "-m", "gateway.ext_authz"]},
    ),
    "patient": dict(
        logical="Patient",
        port=4000,
        db="patient",
        containers={
            "patient": ["python", "-m", "patient"],
            "patient-worker": ["python", "-m", "patient.worker"],
        },
    ),
    "auth": dict(
        logical="Auth",
        port=4005,
        db="auth",
        containers={"auth": ["python", "-m", "auth"]},
    ),
    "billing": dict(
        logical="Billing",
        port=9001,
        db="billing",
        containers={"billing": ["python", "-m", "billing"]},
    ),
    "analytics": dict(
        logical="Analytics",
        port=4002,
        db="analytics",
        containers={
            "analytics": ["python", "-m", "analytics"],
            "analytics-consumer": ["python", "-m", "analytics.consumer"],
        },
    ),
    "audit": dict(
        logical="Audit",
        port=4006,
        db="audit",
        containers={
            "audit-migrate": ["python", "-m", "audit.grants"],
            "audit": ["python", "-m", "audit"],
            "audit-consumer": ["python", "-m", "audit.consumer"],
        },
    ),
}
APP_CONTAINERS = [c for part in PARTS.values() for c in part["containers"] if c != "envoy"]
KAFKA_CONTAINERS = {
    "patient",
    "patient-worker",
    "billing",
    "analytics",
    "analytics-consumer",
    "audit-consumer",
}
# A container whose database is not its part's: the audit collector beside Envoy.
CONTAINER_DB = {"audit-collector": "audit"}
# The secret a container logs in to its database with, when not its part's
# master secret: audit's processes use the role audit-migrate grants append
# and read only; audit-migrate alone uses the owner's.
AUDIT_SERVICE_ROLE_CONTAINERS = {"audit", "audit-consumer", "audit-collector"}
DB_SECRET_OF = dict.fromkeys(AUDIT_SERVICE_ROLE_CONTAINERS, "AuditServiceDbSecret")


def db_of(part, container):
    return CONTAINER_DB.get(container, PARTS[part]["db"])


def db_secret_of(part, container):
    return DB_SECRET_OF.get(container, f"{PARTS[part]['logical']}DbSecret")


# Every Kafka client on MSK: IAM over TLS, and topics on three brokers, two in sync.
MSK_CLIENT_ENV = {"KAFKA_SECURITY": "iam", "KAFKA_REPLICATION_FACTOR": "3", "KAFKA_MIN_INSYNC_REPLICAS": "2"}
# Each part's Kafka permissions: (action, resource kind, name) for its task role.
KAFKA_GRANTS = {
    "patient": {
        ("kafka-cluster:Connect", "cluster", None),
        ("kafka-cluster:WriteDataIdempotently", "cluster", None),
        ("kafka-cluster:DescribeTopic", "topic", "patient"),
        ("kafka-cluster:WriteData", "topic", "patient"),
    },
    "billing": {
        ("kafka-cluster:Connect", "cluster", None),
        ("kafka-cluster:DescribeTopic", "topic", "patient"),
        ("kafka-cluster:ReadData", "topic", "patient"),
        ("kafka-cluster:DescribeTopic", "topic", "patient.dlq"),
        ("kafka-cluster:WriteData", "topic", "patient.dlq"),
        ("kafka-cluster:DescribeGroup", "group", "billing-service"),
        ("kafka-cluster:AlterGroup", "group", "billing-service"),
    },
    "analytics": {
        ("kafka-cluster:Connect", "cluster", None),
        ("kafka-cluster:CreateTopic", "topic", "patient"),
        ("kafka-cluster:CreateTopic", "topic", "patient.dlq"),
        ("kafka-cluster:DescribeTopic", "topic", "patient"),
        ("kafka-cluster:DescribeTopic", "topic", "patient.dlq"),
        ("kafka-cluster:ReadData", "topic", "patient"),
        ("kafka-cluster:WriteData", "topic", "patient.dlq"),
        ("kafka-cluster:DescribeGroup", "group", "analytics-service"),
        ("kafka-cluster:AlterGroup", "group", "analytics-service"),
    },
    # The audit consumer: as analytics', in its own group.
    "audit": {
        ("kafka-cluster:Connect", "cluster", None),
        ("kafka-cluster:CreateTopic", "topic", "patient"),
        ("kafka-cluster:CreateTopic", "topic", "patient.dlq"),
        ("kafka-cluster:DescribeTopic", "topic", "patient"),
        ("kafka-cluster:DescribeTopic", "topic", "patient.dlq"),
        ("kafka-cluster:ReadData", "topic", "patient"),
        ("kafka-cluster:WriteData", "topic", "patient.dlq"),
        ("kafka-cluster:DescribeGroup", "group", "audit-service"),
        ("kafka-cluster:AlterGroup", "group", "audit-service"),
    },
}
ADDRESS_BOOK = {
    "PATIENT_HOST": "patient.pms.local",
    "PATIENT_PORT": "4000",
    "AUTH_HOST": "auth.pms.local",
    "AUTH_PORT": "4005",
    "BILLING_HOST": "billing.pms.local",
    "BILLING_PORT": "9001",
    "ANALYTICS_HOST": "analytics.pms.local",
    "ANALYTICS_PORT": "4002",
    "EXT_AUTHZ_HOST": "ext-authz.pms.local",
    "EXT_AUTHZ_PORT": "9002",
    "AUDIT_HOST": "audit.pms.local",
    "AUDIT_PORT": "4006",
    "GATEWAY_PORT": "4004",
}
ANYWHERE = "0.0.0.0/0"
# Security group -> the (port, source) pairs it lets in, and nothing else.
EXPECTED_INGRESS = {
    "LoadBalancerSecurityGroup": {(80, ANYWHERE), (443, ANYWHERE)},
    "GatewaySecurityGroup": {(4004, "LoadBalancerSecurityGroup")},
    "ExtAuthzSecurityGroup": {(9002, "GatewaySecurityGroup")},
    "PatientSecurityGroup": {(4000, "GatewaySecurityGroup")},
    "AuthSecurityGroup": {(4005, "GatewaySecurityGroup"), (4005, "ExtAuthzSecurityGroup")},
    "BillingSecurityGroup": {(9001, "GatewaySecurityGroup"), (9001, "PatientSecurityGroup")},
    "AnalyticsSecurityGroup": {(4002, "GatewaySecurityGroup")},
    "AuditSecurityGroup": {(4006, "GatewaySecurityGroup")},
    "PatientDbSecurityGroup": {(5432, "PatientSecurityGroup")},
    "AuthDbSecurityGroup": {(5432, "AuthSecurityGroup")},
    "BillingDbSecurityGroup": {(5432, "BillingSecurityGroup")},
    "AnalyticsDbSecurityGroup": {(5432, "AnalyticsSecurityGroup")},
    # The gateway's tasks run the audit collector, which appends to the trail.
    "AuditDbSecurityGroup": {(5432, "AuditSecurityGroup"), (5432, "GatewaySecurityGroup")},
    "KafkaSecurityGroup": {
        (9098, "PatientSecurityGroup"),
        (9098, "BillingSecurityGroup"),
        (9098, "AnalyticsSecurityGroup"),
        (9098, "AuditSecurityGroup"),
    },
}
# What checkov may skip, each with its reason written on the resource.
CHECKOV_SKIPS = {
    ("CKV_AWS_260", "AWS::EC2::SecurityGroup.LoadBalancerSecurityGroup"),
    ("CKV_AWS_18", "AWS::S3::Bucket.AccessLogBucket"),
} | {
    (check, f"AWS::RDS::DBInstance.{db}Db")
    for check in ("CKV_AWS_157", "CKV_AWS_161")
    for db in ("Patient", "Auth", "Billing", "Analytics", "Audit")
}


# ----------------------------------------------------------------- helpers


def load_template(path):
    """The template as plain dicts, with !Ref/!Sub/!GetAtt as Ref/Fn::Sub/Fn::GetAtt."""
    return json.loads(json.dumps(cfn_yaml.load(str(path))))


def resources_of_type(template, resource_type):
    return {name: res for name, res in template["Resources"].items() if res["Type"] == resource_type}


def refs_in(value):
    """Logical names a value refers to: Ref, Fn::GetAtt and ${Name} / ${Name.Attr} in Fn::Sub."""
    found = set()
    if isinstance(value, dict):
        for key, inner in value.items():
            if key == "Ref":
                found.add(inner)
            elif key == "Fn::GetAtt":
                found.add(inner[0] if isinstance(inner, list) else inner.split(".")[0])
            elif key == "Fn::Sub":
                text = inner[0] if isinstance(inner, list) else inner
                found |= {m.split(".")[0] for m in re.findall(r"\$\{([^}!]+)\}", text)}
                if isinstance(inner, list):
                    found |= refs_in(inner[1])
            else:
                found |= refs_in(inner)
    elif isinstance(value, list):
        for inner in value:
            found |= refs_in(inner)
    return found


def container_defs(template):
    for td_name, td in resources_of_type(template, "AWS::ECS::TaskDefinition").items():
        for container in td["Properties"]["ContainerDefinitions"]:
            yield td_name, container


def env_of(container):
    """A deployed (describe_task_definition) container's environment as a dict."""
    return {e["name"]: e.get("value") for e in container.get("environment", [])}


@contextmanager
def fake_aws(monkeypatch):
    """moto with fake credentials: nothing leaves the machine, no real account is used.
    One mock for the whole module (moto shares state between nested mocks), so
    each deployment below goes to a region of its own."""
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SECURITY_TOKEN": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": REGION,
        "AWS_REGION": REGION,
        "AWS_CONFIG_FILE": "/nonexistent/aws-config",
        "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/aws-credentials",
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    # moto resolves a Ref to a DB parameter group to the object, not its name.
    from moto.rds.models import DBParameterGroup

    monkeypatch.setattr(
        DBParameterGroup, "physical_resource_id", property(lambda group: group.name), raising=False
    )
    with mock_aws():
        yield


class Deployed:
    """A stack created in moto, with clients and its resources by logical name."""

    def __init__(self, template_path, region=REGION, parameters=None, before=None):
        self.region = region
        self.cf = boto3.client("cloudformation", region_name=region)
        self.ec2 = boto3.client("ec2", region_name=region)
        self.ecs = boto3.client("ecs", region_name=region)
        self.rds = boto3.client("rds", region_name=region)
        self.elbv2 = boto3.client("elbv2", region_name=region)
        self.logs = boto3.client("logs", region_name=region)
        self.iam = boto3.client("iam", region_name=region)
        self.acm = boto3.client("acm", region_name=region)
        self.s3 = boto3.client("s3", region_name=region)
        self.kms = boto3.client("kms", region_name=region)
        self.parameters = dict(before(self) if before else {}, **(parameters or {}))
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Tried to parse .* not supported by moto")
            self.cf.create_stack(
                StackName=STACK,
                TemplateBody=template_path.read_text(),
                Parameters=[{"ParameterKey": k, "ParameterValue": v} for k, v in self.parameters.items()],
                Capabilities=["CAPABILITY_NAMED_IAM"],
            )
        self.stack = self.cf.describe_stacks(StackName=STACK)["Stacks"][0]
        self.outputs = {o["OutputKey"]: o["OutputValue"] for o in self.stack.get("Outputs", [])}
        listed = self.cf.describe_stack_resources(StackName=STACK)["StackResources"]
        self.physical = {
            r["LogicalResourceId"]: r.get("PhysicalResourceId") for r in listed if "LogicalResourceId" in r
        }

    def services(self):
        cluster = self.physical["Cluster"]
        arns = self.ecs.list_services(cluster=cluster)["serviceArns"]
        described = self.ecs.describe_services(cluster=cluster, services=arns)["services"] if arns else []
        return {s["serviceName"]: s for s in described}

    def containers(self):
        found = {}
        for service in self.services().values():
            td = self.ecs.describe_task_definition(taskDefinition=service["taskDefinition"])["taskDefinition"]
            for container in td["containerDefinitions"]:
                found[container["name"]] = container
        return found

    def db_instances(self):
        return {d["DBName"]: d for d in self.rds.describe_db_instances()["DBInstances"]}

    def listeners(self):
        return {
            listener["Port"]: listener
            for listener in self.elbv2.describe_listeners(LoadBalancerArn=self.physical["LoadBalancer"])[
                "Listeners"
            ]
        }


# ----------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def template():
    return load_template(PMS_TEMPLATE)


@pytest.fixture(scope="module")
def with_defaults():
    """Each template deployed (once, on first use) with every parameter at its
    default but those it requires (REQUIRED)."""
    with pytest.MonkeyPatch.context() as monkeypatch, fake_aws(monkeypatch):
        # pms.yaml in REGION (the tests below expect it there); any other template
        # in a region of its own. us-west-2 is deployed_running's.
        other_regions = iter(["eu-west-1", "eu-central-1", "ap-southeast-2", "ca-central-1", "sa-east-1"])
        cache = {}

        def deploy(path):
            if path not in cache:
                cache[path] = Deployed(
                    path,
                    region=REGION if path == PMS_TEMPLATE else next(other_regions),
                    before=REQUIRED.get(path.name),
                )
            return cache[path]

        yield deploy


@pytest.fixture(scope="module")
def deployed(with_defaults):
    """pms.yaml's first deploy: the Kafka brokers are not known yet, no task runs."""
    return with_defaults(PMS_TEMPLATE)


@pytest.fixture(scope="module")
def deployed_running(with_defaults):
    """pms.yaml deployed with known Kafka brokers (the second deploy) and an alarm e-mail."""
    return Deployed(
        PMS_TEMPLATE,
        region="us-west-2",
        before=REQUIRED["pms.yaml"],
        parameters={
            "KafkaBootstrapServers": KAFKA_BROKERS,
            "PatientDesiredCount": "3",
            "BillingDesiredCount": "2",
            "AnalyticsDesiredCount": "4",
            "AlarmEmail": "oncall@example.com",
        },
    )


# ----------------------------------------------------------------- cfn-lint


def test_there_are_templates():
    assert PMS_TEMPLATE in TEMPLATES


@pytest.mark.parametrize("path", TEMPLATES, ids=lambda p: p.name)
def test_cfn_lint_reports_no_error_and_no_warning(path):
    # The same run as `cfn-lint cloudformation/<template>`: errors and warnings, not infos.
    matches = lint_file(path)
    assert matches == [], "\n".join(f"{m.rule.id} line {m.linenumber}: {m.message}" for m in matches)


def test_cfn_lint_would_catch_a_deprecated_engine_or_bad_property():
    """The lint above is not vacuous: a regressed copy of the template fails it."""
    text = PMS_TEMPLATE.read_text()
    assert text.count('EngineVersion: "16.13"') == len([part for part in PARTS.values() if part["db"]])
    regressed = text.replace('EngineVersion: "16.13"', 'EngineVersion: "11.9"', 1)
    regressed = regressed.replace(
        "HealthCheckPath: /health", "HealthCheckPath: /health\n      HealthCheckPathh: /", 1
    )
    rule_ids = {match.rule.id for match in lint(regressed)}
    assert "W3691" in rule_ids  # deprecated engine version
    assert "E3002" in rule_ids  # unknown property


# ----------------------------------------------------------------- moto: whole stack


@pytest.mark.parametrize("path", TEMPLATES, ids=lambda p: p.name)
def test_every_template_deploys_with_its_defaults_and_required_parameters(path, with_defaults):
    stack = with_defaults(path)
    assert stack.stack["StackStatus"] == "CREATE_COMPLETE", stack.stack.get("StackStatusReason")
    skipped = {
        res["Type"]
        for name, res in load_template(path)["Resources"].items()
        if name not in stack.physical and "Condition" not in res
    }
    # A resource moto dropped without us knowing would go unchecked.
    assert skipped <= NOT_MODELLED_BY_MOTO, skipped - NOT_MODELLED_BY_MOTO


def test_stack_is_created(deployed):
    assert deployed.stack["StackStatus"] == "CREATE_COMPLETE", deployed.stack.get("StackStatusReason")


def test_vpc_has_public_and_private_subnets_in_two_azs(deployed):
    vpc_id = deployed.physical["Vpc"]
    vpc = deployed.ec2.describe_vpcs(VpcIds=[vpc_id])["Vpcs"][0]
    assert vpc["CidrBlock"] == "10.0.0.0/16"
    subnets = {
        s["SubnetId"]: s
        for s in deployed.ec2.describe_subnets(Filters=[{"Name": "vpc-id", "Values": [vpc_id]}])["Subnets"]
    }
    public = [subnets[deployed.physical[f"PublicSubnet{i}"]] for i in (1, 2)]
    private = [subnets[deployed.physical[f"PrivateSubnet{i}"]] for i in (1, 2)]
    assert len({s["AvailabilityZone"] for s in public}) == 2
    assert len({s["AvailabilityZone"] for s in private}) == 2
    assert {s["AvailabilityZone"] for s in public} == {s["AvailabilityZone"] for s in private}


def test_public_subnets_route_to_the_internet_and_private_ones_through_nat(deployed):
    tables = deployed.ec2.describe_route_tables(
        RouteTableIds=[deployed.physical["PublicRouteTable"], deployed.physical["PrivateRouteTable"]]
    )["RouteTables"]
    routes = {t["RouteTableId"]: {r.get("DestinationCidrBlock"): r for r in t["Routes"]} for t in tables}
    public_default = routes[deployed.physical["PublicRouteTable"]]["0.0.0.0/0"]
    private_default = routes[deployed.physical["PrivateRouteTable"]]["0.0.0.0/0"]
    assert public_default.get("GatewayId") == deployed.physical["InternetGateway"]
    assert private_default.get("NatGatewayId") == deployed.physical["NatGateway"]
    nat = deployed.ec2.describe_nat_gateways(NatGatewayIds=[deployed.physical["NatGateway"]])["NatGateways"][
        0
    ]
    assert nat["SubnetId"] in {deployed.physical["PublicSubnet1"], deployed.physical["PublicSubnet2"]}
    for i in (1, 2):
        assoc = deployed.physical[f"PrivateSubnet{i}RouteTableAssociation"]
        assert assoc == deployed.physical["PrivateRouteTable"] or assoc.startswith("rtbassoc-")


def test_security_groups_let_in_exactly_the_intended_traffic(deployed):
    by_id = {deployed.physical[name]: name for name in EXPECTED_INGRESS}
    groups = deployed.ec2.describe_security_groups(GroupIds=list(by_id))["SecurityGroups"]
    assert len(groups) == len(EXPECTED_INGRESS)
    for group in groups:
        name = by_id[group["GroupId"]]
        allowed = set()
        for rule in group["IpPermissions"]:
            assert rule["IpProtocol"] == "tcp", (name, rule)
            assert rule["FromPort"] == rule["ToPort"], (name, rule)  # single ports, no ranges
            allowed |= {(rule["FromPort"], r["CidrIp"]) for r in rule.get("IpRanges", [])}
            allowed |= {
                (rule["FromPort"], by_id.get(pair["GroupId"], pair["GroupId"]))
                for pair in rule.get("UserIdGroupPairs", [])
            }
            assert not rule.get("Ipv6Ranges"), (name, rule)
        assert allowed == EXPECTED_INGRESS[name], name


def test_each_database_is_postgres_private_and_reached_only_from_its_service(deployed):
    dbs = deployed.db_instances()
    assert set(dbs) == {"patient", "auth", "billing", "analytics", "audit"}
    for name, db in dbs.items():
        logical = PARTS[name]["logical"]
        assert db["Engine"] == "postgres"
        assert int(db["EngineVersion"].split(".")[0]) >= 16
        assert db["DBInstanceClass"] == "db.t4g.micro"  # not the original's t2.micro
        assert db["PubliclyAccessible"] is False
        assert db["StorageEncrypted"] is True
        assert db["Endpoint"]["Port"] == 5432
        assert db["DBInstanceIdentifier"] == deployed.physical[f"{logical}Db"]
        # (moto drops VPCSecurityGroups; test_databases_sit_behind_their_own_security_group checks them)
        subnet_ids = {s["SubnetIdentifier"] for s in db["DBSubnetGroup"]["Subnets"]}
        assert subnet_ids == {deployed.physical["PrivateSubnet1"], deployed.physical["PrivateSubnet2"]}


def test_load_balancer_is_internet_facing_in_the_public_subnets(deployed):
    lb = deployed.elbv2.describe_load_balancers(LoadBalancerArns=[deployed.physical["LoadBalancer"]])[
        "LoadBalancers"
    ][0]
    assert lb["Scheme"] == "internet-facing"
    assert lb["Type"] == "application"
    assert {az["SubnetId"] for az in lb["AvailabilityZones"]} == {
        deployed.physical["PublicSubnet1"],
        deployed.physical["PublicSubnet2"],
    }
    assert lb["SecurityGroups"] == [deployed.physical["LoadBalancerSecurityGroup"]]
    assert deployed.outputs["LoadBalancerDnsName"] == lb["DNSName"]
    assert deployed.outputs["GatewayUrl"] == f"https://{lb['DNSName']}"


def test_load_balancer_drops_invalid_headers_and_logs_every_request(template):
    # (moto drops a load balancer's attributes, so they are read from the template)
    attributes = {
        a["Key"]: a["Value"]
        for a in template["Resources"]["LoadBalancer"]["Properties"]["LoadBalancerAttributes"]
    }
    assert attributes["routing.http.drop_invalid_header_fields.enabled"] == "true"
    assert attributes["access_logs.s3.enabled"] == "true"
    assert attributes["access_logs.s3.bucket"] == {"Ref": "AccessLogBucket"}
    assert attributes["access_logs.s3.prefix"] == "alb"
    assert attributes["deletion_protection.enabled"] == {"Ref": "DeletionProtection"}


def test_access_logs_go_to_an_encrypted_private_versioned_bucket(deployed, template):
    bucket = deployed.physical["AccessLogBucket"]
    assert deployed.outputs["AccessLogBucketName"] == bucket
    rules = deployed.s3.get_bucket_encryption(Bucket=bucket)["ServerSideEncryptionConfiguration"]["Rules"]
    # SSE-S3: the only encryption ALB access logs can be written with.
    assert [r["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"] for r in rules] == ["AES256"]
    # (moto applies only a bucket's encryption; the rest is read from the template)
    props = template["Resources"]["AccessLogBucket"]["Properties"]
    assert props["PublicAccessBlockConfiguration"] == {
        "BlockPublicAcls": True,
        "IgnorePublicAcls": True,
        "BlockPublicPolicy": True,
        "RestrictPublicBuckets": True,
    }
    assert props["OwnershipControls"] == {"Rules": [{"ObjectOwnership": "BucketOwnerEnforced"}]}  # no ACLs
    assert props["VersioningConfiguration"] == {"Status": "Enabled"}
    (lifecycle,) = props["LifecycleConfiguration"]["Rules"]
    assert (lifecycle["Status"], lifecycle["ExpirationInDays"]) == (
        "Enabled",
        {"Ref": "AccessLogRetentionDays"},
    )
    assert template["Resources"]["AccessLogBucket"]["DeletionPolicy"] == "Retain"


def test_access_log_bucket_policy_admits_the_regions_log_delivery_and_tls_only(template):
    props = template["Resources"]["AccessLogBucketPolicy"]["Properties"]
    assert props["Bucket"] == {"Ref": "AccessLogBucket"}
    write, tls_only = props["PolicyDocument"]["Statement"]
    assert (write["Effect"], write["Action"]) == ("Allow", "s3:PutObject")
    assert write["Resource"] == {"Fn::Sub": "${AccessLogBucket.Arn}/alb/AWSLogs/${AWS::AccountId}/*"}
    condition, by_account, by_service = write["Principal"]["Fn::If"]
    assert condition == "ElbLogsFromAnAccount"
    assert by_service == {"Service": "logdelivery.elasticloadbalancing.amazonaws.com"}
    assert by_account["AWS"]["Fn::Sub"][1]["ElbAccount"] == {
        "Fn::FindInMap": ["ElbLogDelivery", {"Ref": "AWS::Region"}, "Account"]
    }
    # The condition names exactly the regions the mapping has an account for.
    listed = {
        region
        for group in ("ElbLogsFromAnAccount1", "ElbLogsFromAnAccount2", "ElbLogsFromAnAccount3")
        for region in (term["Fn::Equals"][1] for term in template["Conditions"][group]["Fn::Or"])
    }
    assert listed == set(template["Mappings"]["ElbLogDelivery"])
    assert template["Mappings"]["ElbLogDelivery"]["us-east-1"] == {"Account": "127311923021"}
    assert tls_only["Effect"] == "Deny" and tls_only["Principal"] == "*"
    assert tls_only["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
    # The load balancer turns its logs on only once it may write them.
    assert template["Resources"]["LoadBalancer"]["DependsOn"] == "AccessLogBucketPolicy"


def test_target_group_health_checks_the_gateway_on_slash_health(deployed):
    tg = deployed.elbv2.describe_target_groups(TargetGroupArns=[deployed.physical["GatewayTargetGroup"]])[
        "TargetGroups"
    ][0]
    assert tg["Port"] == 4004
    assert tg["Protocol"] == "HTTP"
    assert tg["TargetType"] == "ip"
    assert tg["HealthCheckPath"] == "/health"  # the Java original left the default "/"
    assert tg["HealthCheckPort"] == "traffic-port"
    assert tg["Matcher"]["HttpCode"] == "200"
    assert tg["VpcId"] == deployed.physical["Vpc"]


@pytest.mark.parametrize("stack", ["deployed", "deployed_running"])
def test_443_serves_the_gateway_over_current_tls_and_80_only_redirects(stack, request):
    stack = request.getfixturevalue(stack)
    assert stack.stack["StackStatus"] == "CREATE_COMPLETE"
    listeners = stack.listeners()
    assert set(listeners) == {80, 443}
    https = listeners[443]
    assert https["Protocol"] == "HTTPS"
    assert https["SslPolicy"] == "ELBSecurityPolicy-TLS13-1-2-2021-06"
    assert [c["CertificateArn"] for c in https["Certificates"]] == [stack.parameters["CertificateArn"]]
    assert https["DefaultActions"][0]["Type"] == "forward"
    assert https["DefaultActions"][0]["TargetGroupArn"] == stack.physical["GatewayTargetGroup"]
    assert listeners[80]["Protocol"] == "HTTP"
    assert [a["Type"] for a in listeners[80]["DefaultActions"]] == ["redirect"]
    redirect = listeners[80]["DefaultActions"][0]["RedirectConfig"]
    assert (redirect["Protocol"], redirect["Port"], redirect["StatusCode"]) == ("HTTPS", "443", "HTTP_301")
    assert stack.outputs["GatewayUrl"].startswith("https://")


def test_https_needs_a_given_certificate_or_a_domain_to_request_one_for(template):
    """No plain-HTTP fallback: CloudFormation refuses the parameters before
    creating anything unless one of the two is given."""
    (rule,) = template["Rules"]["HttpsNeedsACertificate"]["Assertions"]
    assert rule["Assert"] == {
        "Fn::Or": [
            {"Fn::Not": [{"Fn::Equals": [{"Ref": "CertificateArn"}, ""]}]},
            {"Fn::Not": [{"Fn::Equals": [{"Ref": "DomainName"}, ""]}]},
        ]
    }
    certificate = template["Resources"]["GeneratedCertificate"]
    assert certificate["Condition"] == "CreateCertificate"
    assert template["Conditions"]["CreateCertificate"] == {
        "Fn::And": [{"Fn::Not": [{"Condition": "HasCertificateArn"}]}, {"Condition": "HasDomainName"}]
    }
    assert certificate["Properties"]["DomainName"] == {"Ref": "DomainName"}
    assert certificate["Properties"]["ValidationMethod"] == "DNS"
    https = template["Resources"]["HttpsListener"]
    assert "Condition" not in https and "Condition" not in template["Resources"]["HttpListener"]
    assert https["Properties"]["Certificates"] == [
        {
            "CertificateArn": {
                "Fn::If": ["HasCertificateArn", {"Ref": "CertificateArn"}, {"Ref": "GeneratedCertificate"}]
            }
        }
    ]
    record = template["Resources"]["GatewayDnsRecord"]
    assert record["Condition"] == "CreateDnsRecord"
    assert record["Properties"]["AliasTarget"]["DNSName"] == {"Fn::GetAtt": ["LoadBalancer", "DNSName"]}
    assert template["Outputs"]["GatewayUrl"]["Value"]["Fn::If"][1] == {"Fn::Sub": "https://${DomainName}"}


def test_log_groups_exist_with_retention(deployed):
    # (moto drops a log group's KmsKeyId; a template test below checks it)
    groups = {g["logGroupName"]: g for g in deployed.logs.describe_log_groups()["logGroups"]}
    for part in list(PARTS) + ["kafka"]:
        assert groups[f"/{STACK}/{part}"]["retentionInDays"] == 30, part
    containers = deployed.containers()
    for part, spec in PARTS.items():
        for name in spec["containers"]:
            options = containers[name]["logConfiguration"]["options"]
            assert containers[name]["logConfiguration"]["logDriver"] == "awslogs"
            assert options["awslogs-group"] == f"/{STACK}/{part}"
            assert options["awslogs-region"] == REGION


def test_each_part_has_its_own_execution_role(deployed):
    pull_images = deployed.physical["PullImagesPolicy"]
    for part, spec in PARTS.items():
        role_name = deployed.physical[f"{spec['logical']}ExecutionRole"]
        role = deployed.iam.get_role(RoleName=role_name)["Role"]
        principals = [s["Principal"]["Service"] for s in role["AssumeRolePolicyDocument"]["Statement"]]
        assert principals == ["ecs-tasks.amazonaws.com"], part
        reads_secrets = any(db_of(part, name) for name in spec["containers"])
        expected = "own-logs-and-secrets" if reads_secrets else "own-logs"
        assert deployed.iam.list_role_policies(RoleName=role_name)["PolicyNames"] == [expected], part
    assert deployed.iam.get_policy(PolicyArn=pull_images)["Policy"]["Arn"] == pull_images
    # (moto drops a task definition's ExecutionRoleArn and a role's ManagedPolicyArns;
    # the template tests below check them)


def test_both_keys_rotate(deployed):
    for key in ("LogsKey", "DataKey"):
        assert (
            deployed.kms.get_key_rotation_status(KeyId=deployed.physical[key])["KeyRotationEnabled"] is True
        ), key


def test_ecs_cluster_and_one_service_per_part(deployed):
    clusters = deployed.ecs.describe_clusters(clusters=[deployed.physical["Cluster"]])["clusters"]
    assert [c["clusterName"] for c in clusters] == [STACK]
    services = deployed.services()
    assert set(services) == set(PARTS)
    for name, service in services.items():
        family = service["taskDefinition"].rsplit("/", 1)[1].split(":")[0]
        assert family == f"{STACK}-{name}"


def test_first_deploy_starts_no_task_until_the_kafka_brokers_are_known(deployed):
    # The gateway's /health needs every service behind it, and three of them need
    # Kafka: so nothing starts before the second deploy passes KafkaBootstrapServers.
    assert {name: s["desiredCount"] for name, s in deployed.services().items()} == dict.fromkeys(PARTS, 0)


def test_desired_counts_follow_the_parameters_once_brokers_are_known(deployed_running):
    counts = {name: s["desiredCount"] for name, s in deployed_running.services().items()}
    assert counts == {
        "gateway": 2,
        "ext-authz": 1,
        "auth": 1,
        "patient": 3,
        "billing": 2,
        "analytics": 4,
        "audit": 1,
    }
    containers = deployed_running.containers()
    for name in KAFKA_CONTAINERS:
        assert env_of(containers[name])["KAFKA_BOOTSTRAP_SERVERS"] == KAFKA_BROKERS


def test_the_brokers_given_must_be_the_iam_ones(template):
    """The plaintext (9092) or TLS-only (9094) broker string would not get past
    IAM authentication: the parameter takes only the 9098 one."""
    pattern = re.compile(template["Parameters"]["KafkaBootstrapServers"]["AllowedPattern"])
    assert pattern.fullmatch("") and pattern.fullmatch(KAFKA_BROKERS)
    assert not pattern.fullmatch("b-1.pms-kafka.example:9092,b-2.pms-kafka.example:9092")
    assert not pattern.fullmatch("b-1.pms-kafka.example:9094")
    command = template["Outputs"]["KafkaBootstrapCommand"]["Value"]["Fn::Sub"]
    assert "--query BootstrapBrokerStringSaslIam" in command


def test_containers_run_their_part_of_the_one_app_image(deployed):
    containers = deployed.containers()
    app_image = f"{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com/pms-app:latest"
    for spec in PARTS.values():
        for name, command in spec["containers"].items():
            assert containers[name]["command"] == command, name
            expected_image = "envoyproxy/envoy:v1.40-latest" if name == "envoy" else app_image
            assert containers[name]["image"] == expected_image, name
    for part, spec in PARTS.items():
        served_by = "envoy" if part == "gateway" else part
        ports = [p["containerPort"] for p in containers[served_by]["portMappings"]]
        assert ports == [spec["port"]], part
    for name in (
        "patient-worker",
        "analytics-consumer",
        "gateway-config",
        "audit-migrate",
        "audit-consumer",
        "audit-collector",
    ):
        assert containers[name]["portMappings"] == [], name


def test_the_analytics_consumer_gathers_events_from_msk_into_batches(deployed):
    """MSK answers a fetch as soon as one event is there (Tansu, the local
    default, holds it): without a gather wait each event would be a transaction."""
    env = env_of(deployed.containers()["analytics-consumer"])
    assert int(env.get("ANALYTICS_BATCH_WAIT_MS") or 0) > 0


def test_gateway_renders_its_config_before_envoy_starts(deployed):
    containers = deployed.containers()
    render, envoy = containers["gateway-config"], containers["envoy"]
    assert render["essential"] is False
    assert envoy["essential"] is True
    assert envoy["dependsOn"] == [{"containerName": "gateway-config", "condition": "SUCCESS"}]
    assert render["user"] == "0"  # a Fargate task volume is owned by root
    assert env_of(render)["ENVOY_ADMIN_BIND"] == "127.0.0.1"  # admin stays inside the task
    render_mount = render["mountPoints"][0]
    envoy_mount = envoy["mountPoints"][0]
    assert render_mount["sourceVolume"] == envoy_mount["sourceVolume"]
    assert render_mount["containerPath"] == envoy_mount["containerPath"] == "/etc/envoy"
    for container in (render, envoy):
        env = env_of(container)
        assert {k: env.get(k) for k in ADDRESS_BOOK} == ADDRESS_BOOK


def test_app_containers_get_the_environment_contract(deployed):
    containers = deployed.containers()
    dbs = deployed.db_instances()
    for part, spec in PARTS.items():
        for name in spec["containers"]:
            if name == "envoy":
                continue
            env = env_of(containers[name])
            assert env["PMS_ENV"] == "production", name
            assert env["BIND_HOST"] == "0.0.0.0", name
            assert env["LOG_LEVEL"] == "INFO", name
            assert {k: env.get(k) for k in ADDRESS_BOOK} == ADDRESS_BOOK, name
            database = db_of(part, name)
            if database:
                db = dbs[database]
                assert env["DB_HOST"] == db["Endpoint"]["Address"], name
                assert env["DB_PORT"] == "5432", name
                assert env["DB_NAME"] == database, name
            else:
                assert not {"DB_HOST", "DB_NAME"} & set(env), name
            if database:
                # TLS to the database, verified against the RDS CAs baked into the image.
                assert (env["DB_SSLMODE"], env["DB_SSLROOTCERT"]) == ("verify-full", RDS_CA_BUNDLE), name
            if name in KAFKA_CONTAINERS:
                assert "KAFKA_BOOTSTRAP_SERVERS" in env, name
                assert {k: env.get(k) for k in MSK_CLIENT_ENV} == MSK_CLIENT_ENV, name
                assert env["AWS_REGION"] == REGION, name
            else:
                assert not {"KAFKA_BOOTSTRAP_SERVERS", "KAFKA_SECURITY"} & set(env), name
            assert not [k for k in env if re.search(r"PASSWORD|SECRET|TOKEN", k)], name
    assert env_of(containers["auth"])["ADMIN_EMAIL"] == "admin@example.com"


def test_app_containers_have_health_checks(deployed):
    containers = deployed.containers()
    for part in ("patient", "auth", "analytics", "audit"):
        check = " ".join(containers[part]["healthCheck"]["command"])
        assert f"127.0.0.1:{PARTS[part]['port']}/health/live" in check, part
    for part in ("billing", "ext-authz"):
        check = " ".join(containers[part]["healthCheck"]["command"])
        assert f"grpc.insecure_channel('127.0.0.1:{PARTS[part]['port']}')" in check, part
        assert "HealthCheckResponse.SERVING" in check, part
    assert "check_consumer_alive" in " ".join(containers["analytics-consumer"]["healthCheck"]["command"])
    # Envoy's own liveness is its admin /ready, not the public /health (which
    # reflects the services behind it).
    envoy_check = " ".join(containers["envoy"]["healthCheck"]["command"])
    assert "/dev/tcp/127.0.0.1/9901" in envoy_check and "GET /ready" in envoy_check


def test_containers_start_in_the_order_compose_uses(deployed):
    containers = deployed.containers()
    # patient runs the migrations the relay needs; the consumer runs analytics'
    # migrations and writes the heartbeat the API's readiness needs.
    assert containers["patient-worker"]["dependsOn"] == [{"containerName": "patient", "condition": "HEALTHY"}]
    assert containers["analytics"]["dependsOn"] == [
        {"containerName": "analytics-consumer", "condition": "HEALTHY"}
    ]
    # audit-migrate makes the tables and the role the others log in as; the
    # collector waits for the renderer to make the audit log's folder.
    for name in ("audit", "audit-consumer"):
        assert containers[name]["dependsOn"] == [{"containerName": "audit-migrate", "condition": "SUCCESS"}]
    assert containers["audit-migrate"]["essential"] is False
    assert containers["audit-collector"]["dependsOn"] == [
        {"containerName": "gateway-config", "condition": "SUCCESS"}
    ]
    for name, container in containers.items():
        for dependency in container.get("dependsOn", []):
            if dependency["condition"] == "HEALTHY":
                assert "healthCheck" in containers[dependency["containerName"]], (name, dependency)


def test_app_containers_drop_every_capability(deployed):
    containers = deployed.containers()
    for name in APP_CONTAINERS:
        if name == "gateway-config":
            continue  # one-shot root writer of the task volume
        linux = containers[name]["linuxParameters"]
        assert linux["capabilities"]["drop"] == ["ALL"], name
        assert linux["initProcessEnabled"] is True, name
        assert "user" not in containers[name], name  # the image's non-root user


# ----------------------------------------------------------------- template: what moto does not model


def test_every_ecs_service_runs_on_fargate_in_private_subnets(template):
    services = resources_of_type(template, "AWS::ECS::Service")
    assert {s["Properties"]["ServiceName"] for s in services.values()} == set(PARTS)
    for name, service in services.items():
        props = service["Properties"]
        assert props["LaunchType"] == "FARGATE", name
        network = props["NetworkConfiguration"]["AwsvpcConfiguration"]
        assert network["AssignPublicIp"] == "DISABLED", name
        assert network["Subnets"] == [{"Ref": "PrivateSubnet1"}, {"Ref": "PrivateSubnet2"}], name
        logical = PARTS[props["ServiceName"]]["logical"]
        assert network["SecurityGroups"] == [{"Ref": f"{logical}SecurityGroup"}], name
        assert props["DeploymentConfiguration"]["DeploymentCircuitBreaker"] == {
            "Enable": True,
            "Rollback": True,
        }
    for name, td in resources_of_type(template, "AWS::ECS::TaskDefinition").items():
        assert td["Properties"]["RequiresCompatibilities"] == ["FARGATE"], name
        assert td["Properties"]["NetworkMode"] == "awsvpc", name
        logical = name.removesuffix("TaskDefinition")
        assert td["Properties"]["ExecutionRoleArn"] == {"Fn::GetAtt": [f"{logical}ExecutionRole", "Arn"]}, (
            name
        )


def test_databases_sit_behind_their_own_security_group(template):
    for name, db in resources_of_type(template, "AWS::RDS::DBInstance").items():
        props = db["Properties"]
        assert props["VPCSecurityGroups"] == [{"Ref": f"{name}SecurityGroup"}], name
        assert props["DBSubnetGroupName"] == {"Ref": "DbSubnetGroup"}, name
        assert props["PubliclyAccessible"] is False, name
    subnets = template["Resources"]["DbSubnetGroup"]["Properties"]["SubnetIds"]
    assert subnets == [{"Ref": "PrivateSubnet1"}, {"Ref": "PrivateSubnet2"}]


def test_only_the_gateway_service_is_behind_the_load_balancer(template):
    services = resources_of_type(template, "AWS::ECS::Service")
    behind = {
        name: s["Properties"]["LoadBalancers"]
        for name, s in services.items()
        if "LoadBalancers" in s["Properties"]
    }
    assert behind == {
        "GatewayService": [
            {"ContainerName": "envoy", "ContainerPort": 4004, "TargetGroupArn": {"Ref": "GatewayTargetGroup"}}
        ]
    }
    tg = template["Resources"]["GatewayTargetGroup"]["Properties"]
    assert tg["HealthCheckPath"] == "/health"
    assert tg["Port"] == 4004
    assert tg["TargetType"] == "ip"
    # /health waits for every service behind the gateway: give them time to start.
    assert services["GatewayService"]["Properties"]["HealthCheckGracePeriodSeconds"] >= 120


def test_msk_cluster_exists_and_is_spelt_right(template):
    clusters = resources_of_type(template, "AWS::MSK::Cluster")
    assert len(clusters) == 1
    props = next(iter(clusters.values()))["Properties"]
    name = props["ClusterName"]["Fn::Sub"].replace("${AWS::StackName}", STACK)
    assert name == "pms-kafka"
    assert "kafa" not in json.dumps(template).lower()  # the Java original's "kafa-cluster"
    brokers = props["BrokerNodeGroupInfo"]
    # One broker per AZ in three AZs: three replicas, each in its own AZ.
    assert props["NumberOfBrokerNodes"] == 3
    assert brokers["ClientSubnets"] == [{"Ref": f"PrivateSubnet{i}"} for i in (1, 2, 3)]
    azs = {
        template["Resources"][f"PrivateSubnet{i}"]["Properties"]["AvailabilityZone"]["Fn::Select"][0]
        for i in (1, 2, 3)
    }
    assert azs == {0, 1, 2}
    assert brokers["SecurityGroups"] == [{"Ref": "KafkaSecurityGroup"}]
    assert brokers["InstanceType"] == {"Ref": "KafkaBrokerInstanceType"}
    assert template["Parameters"]["KafkaBrokerInstanceType"]["Default"] == "kafka.t3.small"


def test_msk_speaks_only_tls_with_iam_and_encrypts_its_volumes(template):
    props = template["Resources"]["KafkaCluster"]["Properties"]
    assert props["ClientAuthentication"] == {
        "Sasl": {"Iam": {"Enabled": True}},
        "Unauthenticated": {"Enabled": False},
    }
    encryption = props["EncryptionInfo"]
    assert encryption["EncryptionInTransit"] == {"ClientBroker": "TLS", "InCluster": True}
    assert encryption["EncryptionAtRest"] == {"DataVolumeKMSKeyId": {"Fn::GetAtt": ["DataKey", "Arn"]}}
    assert props["LoggingInfo"]["BrokerLogs"]["CloudWatchLogs"] == {
        "Enabled": True,
        "LogGroup": {"Ref": "KafkaLogGroup"},
    }


def test_topics_keep_three_copies_and_need_two_in_sync(template):
    configuration = template["Resources"]["KafkaConfiguration"]["Properties"]
    assert template["Resources"]["KafkaCluster"]["Properties"]["ConfigurationInfo"] == {
        "Arn": {"Fn::GetAtt": ["KafkaConfiguration", "Arn"]},
        "Revision": {"Fn::GetAtt": ["KafkaConfiguration", "LatestRevision.Revision"]},
    }
    properties = dict(line.split("=", 1) for line in configuration["ServerProperties"].split())
    assert properties == {
        "auto.create.topics.enable": "false",
        "default.replication.factor": "3",
        "min.insync.replicas": "2",
        "num.partitions": "3",
        "unclean.leader.election.enable": "false",
    }
    # The services create their topics with the same (pms_common.kafka.ensure_topics).
    for _, container in container_defs(template):
        env = {e["Name"]: e["Value"] for e in container.get("Environment", [])}
        if "KAFKA_BOOTSTRAP_SERVERS" in env:
            assert {k: env.get(k) for k in MSK_CLIENT_ENV} == MSK_CLIENT_ENV, container["Name"]


def test_every_service_registers_in_cloud_map_under_its_name(template):
    namespaces = resources_of_type(template, "AWS::ServiceDiscovery::PrivateDnsNamespace")
    assert list(namespaces) == ["ServiceNamespace"]
    namespace = namespaces["ServiceNamespace"]["Properties"]
    assert namespace["Name"] == {"Ref": "ServiceDiscoveryNamespace"}
    assert template["Parameters"]["ServiceDiscoveryNamespace"]["Default"] == "pms.local"
    assert namespace["Vpc"] == {"Ref": "Vpc"}
    discovery = resources_of_type(template, "AWS::ServiceDiscovery::Service")
    for name, service in resources_of_type(template, "AWS::ECS::Service").items():
        registries = service["Properties"]["ServiceRegistries"]
        assert len(registries) == 1, name
        targets = refs_in(registries[0]["RegistryArn"]) & set(discovery)
        assert len(targets) == 1, name
        registered = discovery[targets.pop()]["Properties"]
        assert registered["Name"] == service["Properties"]["ServiceName"], name
        assert registered["NamespaceId"] == {"Ref": "ServiceNamespace"}, name
        assert registered["DnsConfig"]["DnsRecords"] == [{"Type": "A", "TTL": 10}], name
    # Every *_HOST a container is given is a name that some service registers.
    registered_names = {d["Properties"]["Name"] for d in discovery.values()}
    for td_name, container in container_defs(template):
        for entry in container.get("Environment", []):
            if entry["Name"] in ADDRESS_BOOK and entry["Name"].endswith("_HOST"):
                host = entry["Value"]["Fn::Sub"]
                assert host.endswith(".${ServiceDiscoveryNamespace}"), (td_name, entry)
                assert host.split(".")[0] in registered_names, (td_name, entry)


def test_database_credentials_come_from_generated_secrets(template):
    secrets = resources_of_type(template, "AWS::SecretsManager::Secret")
    for name, db in resources_of_type(template, "AWS::RDS::DBInstance").items():
        props = db["Properties"]
        secret = f"{name}Secret"
        assert secret in secrets, name
        assert props["MasterUsername"] == {
            "Fn::Sub": f"{{{{resolve:secretsmanager:${{{secret}}}:SecretString:username}}}}"
        }
        assert props["MasterUserPassword"] == {
            "Fn::Sub": f"{{{{resolve:secretsmanager:${{{secret}}}:SecretString:password}}}}"
        }
        generated = secrets[secret]["Properties"]["GenerateSecretString"]
        assert generated["GenerateStringKey"] == "password"
        assert json.loads(generated["SecretStringTemplate"])["username"]
        assert generated["PasswordLength"] >= 32
        for bad in '@/" ':
            assert bad in generated["ExcludeCharacters"]  # characters RDS refuses in passwords
        assert db.get("DeletionPolicy") == "Snapshot", name


def test_services_get_db_passwords_and_jwt_secret_as_ecs_secrets(template):
    secrets = resources_of_type(template, "AWS::SecretsManager::Secret")
    by_container = {c["Name"]: c for _, c in container_defs(template)}
    for part, spec in PARTS.items():
        for name in spec["containers"]:
            if not db_of(part, name):
                continue
            secret = db_secret_of(part, name)
            given = {s["Name"]: s["ValueFrom"] for s in by_container[name].get("Secrets", [])}
            assert given["DB_USER"] == {"Fn::Sub": f"${{{secret}}}:username::"}, name
            assert given["DB_PASSWORD"] == {"Fn::Sub": f"${{{secret}}}:password::"}, name
    auth = {s["Name"]: s["ValueFrom"] for s in by_container["auth"]["Secrets"]}
    for variable, secret in (("JWT_SECRET", "JwtSecret"), ("ADMIN_PASSWORD", "AdminPasswordSecret")):
        assert auth[variable] == {"Ref": secret}
        generated = secrets[secret]["Properties"]["GenerateSecretString"]
        assert generated["PasswordLength"] >= 24
    assert secrets["JwtSecret"]["Properties"]["GenerateSecretString"]["PasswordLength"] >= 64
    # Only auth gets the JWT key and the admin password.
    for name, container in by_container.items():
        if name != "auth":
            assert not {"JWT_SECRET", "ADMIN_PASSWORD"} & {s["Name"] for s in container.get("Secrets", [])}


def statements_of(role):
    return [
        statement
        for policy in role["Properties"].get("Policies", [])
        for statement in policy["PolicyDocument"]["Statement"]
    ]


def as_list(value):
    return value if isinstance(value, list) else [value]


def test_each_execution_role_reads_exactly_its_own_secrets_and_writes_its_own_logs(template):
    secrets = set(resources_of_type(template, "AWS::SecretsManager::Secret"))
    read_by_someone = set()
    for td_name, td in resources_of_type(template, "AWS::ECS::TaskDefinition").items():
        logical = td_name.removesuffix("TaskDefinition")
        used = {
            secret
            for container in td["Properties"]["ContainerDefinitions"]
            for entry in container.get("Secrets", [])
            for secret in refs_in(entry["ValueFrom"]) & secrets
        }
        role = template["Resources"][f"{logical}ExecutionRole"]
        assert role["Properties"]["ManagedPolicyArns"] == [{"Ref": "PullImagesPolicy"}], logical
        granted = {}
        for statement in statements_of(role):
            assert statement["Effect"] == "Allow"
            for action in as_list(statement["Action"]):
                granted.setdefault(action, []).extend(as_list(statement["Resource"]))
        readable = granted.pop("secretsmanager:GetSecretValue", [])
        assert all(set(r) == {"Ref"} for r in readable), readable  # no wildcards
        assert {r["Ref"] for r in readable} == used, logical
        read_by_someone |= used
        own_logs = [{"Fn::GetAtt": [f"{logical}LogGroup", "Arn"]}]
        assert granted.pop("logs:CreateLogStream") == granted.pop("logs:PutLogEvents") == own_logs, logical
        # Secrets are encrypted with DataKey: decrypting is allowed only through Secrets Manager.
        if used:
            assert granted.pop("kms:Decrypt") == [{"Fn::GetAtt": ["DataKey", "Arn"]}], logical
        # The collector's configuration, for its AOT_CONFIG_CONTENT.
        assert granted.pop("ssm:GetParameters") == [COLLECTOR_CONFIG_ARN], logical
        assert not granted, (logical, granted)
    assert read_by_someone == secrets
    pull = template["Resources"]["PullImagesPolicy"]["Properties"]["PolicyDocument"]["Statement"]
    assert {
        (s["Action"] if isinstance(s["Action"], str) else tuple(s["Action"])): s["Resource"] for s in pull
    } == {
        "ecr:GetAuthorizationToken": "*",  # an action with no resource to narrow it to
        ("ecr:BatchCheckLayerAvailability", "ecr:GetDownloadUrlForLayer", "ecr:BatchGetImage"): {
            "Fn::Sub": "arn:${AWS::Partition}:ecr:${AWS::Region}:${AWS::AccountId}:repository/*"
        },
    }


def test_each_task_role_sends_its_own_telemetry_and_reaches_only_its_topics_and_group(template):
    """Every part's containers may write metrics into the part's own log group
    and spans to X-Ray; the Kafka users also reach their own topics and group."""
    task_definitions = resources_of_type(template, "AWS::ECS::TaskDefinition")
    kafka_arn = "arn:${AWS::Partition}:kafka:${AWS::Region}:${AWS::AccountId}:"
    for part, spec in PARTS.items():
        expected = KAFKA_GRANTS.get(part, set())
        logical = spec["logical"]
        assert task_definitions[f"{logical}TaskDefinition"]["Properties"]["TaskRoleArn"] == {
            "Fn::GetAtt": [f"{logical}TaskRole", "Arn"]
        }
        role = template["Resources"][f"{logical}TaskRole"]
        trust = role["Properties"]["AssumeRolePolicyDocument"]["Statement"]
        assert [s["Principal"] for s in trust] == [{"Service": "ecs-tasks.amazonaws.com"}]
        assert trust[0]["Condition"]["StringEquals"] == {"aws:SourceAccount": {"Ref": "AWS::AccountId"}}
        granted, telemetry = set(), set()
        for statement in statements_of(role):
            assert statement["Effect"] == "Allow"
            for action in as_list(statement["Action"]):
                for resource in as_list(statement["Resource"]):
                    if action.startswith("kafka-cluster:"):
                        arn = resource["Fn::Sub"]
                        assert arn.startswith(kafka_arn), arn
                        kind, cluster, *rest = arn[len(kafka_arn) :].split("/")
                        assert cluster == "${AWS::StackName}-kafka", arn
                        assert rest[0] == "*" and len(rest) == (1 if kind == "cluster" else 2), arn
                        granted.add((action, kind, rest[1] if kind != "cluster" else None))
                    else:
                        telemetry.add((action, json.dumps(resource)))
        assert granted == expected, part
        assert telemetry == {
            ("logs:CreateLogStream", json.dumps({"Fn::GetAtt": [f"{logical}LogGroup", "Arn"]})),
            ("logs:PutLogEvents", json.dumps({"Fn::GetAtt": [f"{logical}LogGroup", "Arn"]})),
            ("xray:PutTraceSegments", json.dumps("*")),  # X-Ray's writes have no resource to narrow to
            ("xray:PutTelemetryRecords", json.dumps("*")),
        }, part
    # No other role in the stack can act on Kafka, the metrics or the traces.
    task_roles = {f"{spec['logical']}TaskRole" for spec in PARTS.values()}
    for name, role in resources_of_type(template, "AWS::IAM::Role").items():
        if name not in task_roles:
            text = json.dumps(role)
            assert "kafka-cluster" not in text and "cloudwatch:" not in text and "xray:" not in text, name
        if name not in {f"{PARTS[part]['logical']}TaskRole" for part in KAFKA_GRANTS}:
            assert "kafka-cluster" not in json.dumps(role), name


def test_log_groups_are_encrypted_by_a_key_only_cloudwatch_logs_of_this_stack_may_use(template):
    prefixes = ("/${AWS::StackName}/", "/aws/ecs/containerinsights/${AWS::StackName}/")
    for name, group in resources_of_type(template, "AWS::Logs::LogGroup").items():
        assert group["Properties"]["KmsKeyId"] == {"Fn::GetAtt": ["LogsKey", "Arn"]}, name
        assert group["Properties"]["LogGroupName"]["Fn::Sub"].startswith(prefixes), name
    # Container Insights would otherwise make its own log group, unencrypted by this key.
    assert template["Resources"]["Cluster"]["DependsOn"] == "ContainerInsightsLogGroup"
    statements = template["Resources"]["LogsKey"]["Properties"]["KeyPolicy"]["Statement"]
    (logs,) = [
        s
        for s in statements
        if s["Principal"] != {"AWS": {"Fn::Sub": "arn:${AWS::Partition}:iam::${AWS::AccountId}:root"}}
    ]
    assert logs["Principal"] == {"Service": {"Fn::Sub": "logs.${AWS::Region}.${AWS::URLSuffix}"}}
    assert logs["Condition"]["ArnLike"]["kms:EncryptionContext:aws:logs:arn"] == [
        {"Fn::Sub": f"arn:${{AWS::Partition}}:logs:${{AWS::Region}}:${{AWS::AccountId}}:log-group:{prefix}*"}
        for prefix in prefixes
    ]


def test_secrets_and_alarm_messages_are_encrypted_with_the_data_key(template):
    for name, secret in resources_of_type(template, "AWS::SecretsManager::Secret").items():
        assert secret["Properties"]["KmsKeyId"] == {"Ref": "DataKey"}, name
    assert template["Resources"]["AlarmTopic"]["Properties"]["KmsMasterKeyId"] == {"Ref": "DataKey"}
    # Retained secrets stay readable: the key outlives the stack with them.
    assert template["Resources"]["DataKey"]["DeletionPolicy"] == "Retain"
    principals = [
        s["Principal"] for s in template["Resources"]["DataKey"]["Properties"]["KeyPolicy"]["Statement"]
    ]
    assert {"Service": "cloudwatch.amazonaws.com"} in principals  # alarms publish to the encrypted topic


def test_no_literal_password_or_secret_anywhere(template):
    assert not [p for p in template["Parameters"] if re.search(r"password|secret|jwt|token", p, re.I)]
    assert not [p for p, spec in template["Parameters"].items() if spec.get("NoEcho")]
    for name, secret in resources_of_type(template, "AWS::SecretsManager::Secret").items():
        assert "SecretString" not in secret["Properties"], name
        assert "GenerateSecretString" in secret["Properties"], name

    def walk(value, path):
        # Any property that carries a credential (MasterUserPassword, Password,
        # AuthToken, SecretString, ...) must be a Secrets Manager dynamic reference.
        if isinstance(value, dict):
            for key, inner in value.items():
                if re.search(r"(?i)(password|passwd|authtoken|secretkey)$", key) or key == "SecretString":
                    text = inner.get("Fn::Sub") if isinstance(inner, dict) else inner
                    assert isinstance(text, str) and text.startswith("{{resolve:secretsmanager:"), path + [
                        key
                    ]
                walk(inner, path + [key])
        elif isinstance(value, list):
            for i, inner in enumerate(value):
                walk(inner, path + [i])

    walk(template["Resources"], [])
    # Environment never carries credentials: they come as ECS Secrets.
    for td_name, container in container_defs(template):
        for entry in container.get("Environment", []):
            assert not re.search(r"PASSWORD|SECRET|TOKEN", entry["Name"]), (td_name, entry)
    text = PMS_TEMPLATE.read_text()
    assert not re.search(r"(?i)(password|secret)\s*[:=]\s*['\"]?[A-Za-z0-9+/]{12,}", text)


def test_databases_require_tls_keep_backups_and_resist_deletion(deployed):
    group = deployed.physical["DbParameterGroup"]
    force_ssl = [
        p
        for p in deployed.rds.describe_db_parameters(DBParameterGroupName=group)["Parameters"]
        if p["ParameterName"] == "rds.force_ssl"
    ]
    assert [p["ParameterValue"] for p in force_ssl] == ["1"]
    for name, db in deployed.db_instances().items():
        assert db["StorageEncrypted"] is True, name
        assert db["BackupRetentionPeriod"] >= 7, name
        assert [g["DBParameterGroupName"] for g in db["DBParameterGroups"]] == [group], name
    # (moto drops DeletionProtection and CACertificateIdentifier; the next test reads them)


def test_database_tls_is_verified_against_the_ca_the_image_carries(template):
    assert template["Resources"]["DbParameterGroup"]["Properties"]["Parameters"] == {"rds.force_ssl": "1"}
    assert template["Parameters"]["DbBackupRetentionDays"]["MinValue"] >= 7
    for name, db in resources_of_type(template, "AWS::RDS::DBInstance").items():
        props = db["Properties"]
        assert props["DBParameterGroupName"] == {"Ref": "DbParameterGroup"}, name
        assert props["CACertificateIdentifier"] == "rds-ca-rsa2048-g1", name
        assert props["DeletionProtection"] == {"Ref": "DeletionProtection"}, name
        assert props["StorageEncrypted"] is True, name
    assert template["Parameters"]["DeletionProtection"]["Default"] == "true"
    dockerfile = DOCKERFILE.read_text()
    assert f"COPY --from=builder /opt/certs/rds-ca-bundle.pem {RDS_CA_BUNDLE}" in dockerfile
    assert "truststore.pki.rds.amazonaws.com/global/global-bundle.pem" in dockerfile


def test_only_the_load_balancer_is_open_to_the_internet_and_it_talks_only_to_the_gateway(template):
    # (moto ignores a security group's egress rules, so they are read from the template)
    groups = resources_of_type(template, "AWS::EC2::SecurityGroup")
    assert groups["LoadBalancerSecurityGroup"]["Properties"]["SecurityGroupEgress"] == [
        {
            "IpProtocol": "tcp",
            "FromPort": 4004,
            "ToPort": 4004,
            "DestinationSecurityGroupId": {"Ref": "GatewaySecurityGroup"},
            "Description": "to the gateway",
        }
    ]
    for name, group in groups.items():
        for rule in group["Properties"].get("SecurityGroupIngress", []):
            assert "CidrIp" not in rule or name == "LoadBalancerSecurityGroup", name
    for name, rule in resources_of_type(template, "AWS::EC2::SecurityGroupIngress").items():
        assert "CidrIp" not in rule["Properties"], name


def test_services_scale_between_their_counts_on_cpu_and_the_gateway_on_requests_too(template):
    targets = resources_of_type(template, "AWS::ApplicationAutoScaling::ScalableTarget")
    policies = resources_of_type(template, "AWS::ApplicationAutoScaling::ScalingPolicy")
    assert len(targets) == len(PARTS)
    for part, spec in PARTS.items():
        logical = spec["logical"]
        target = targets[f"{logical}ScalableTarget"]["Properties"]
        assert (target["ServiceNamespace"], target["ScalableDimension"]) == (
            "ecs",
            "ecs:service:DesiredCount",
        )
        assert target["ResourceId"] == {"Fn::Sub": f"service/${{Cluster}}/${{{logical}Service.Name}}"}
        # Nothing may start before the second deploy, autoscaling included.
        assert target["MinCapacity"] == {
            "Fn::If": ["KafkaBootstrapKnown", {"Ref": f"{logical}DesiredCount"}, 0]
        }
        assert target["MaxCapacity"] == {"Fn::If": ["KafkaBootstrapKnown", {"Ref": f"{logical}MaxCount"}, 0]}
        tracked = {}
        for policy in policies.values():
            props = policy["Properties"]
            if props["ScalingTargetId"] == {"Ref": f"{logical}ScalableTarget"}:
                assert props["PolicyType"] == "TargetTrackingScaling"
                config = props["TargetTrackingScalingPolicyConfiguration"]
                tracked[config["PredefinedMetricSpecification"]["PredefinedMetricType"]] = config
        assert tracked["ECSServiceAverageCPUUtilization"]["TargetValue"] == {"Ref": "ScalingCpuTarget"}, part
        assert set(tracked) == (
            {"ECSServiceAverageCPUUtilization", "ALBRequestCountPerTarget"}
            if part == "gateway"
            else {"ECSServiceAverageCPUUtilization"}
        ), part
    requests = [
        p["Properties"]["TargetTrackingScalingPolicyConfiguration"]
        for p in policies.values()
        if "ResourceLabel" in json.dumps(p)
    ]
    assert requests[0]["PredefinedMetricSpecification"]["ResourceLabel"] == {
        "Fn::Sub": "${LoadBalancer.LoadBalancerFullName}/${GatewayTargetGroup.TargetGroupFullName}"
    }


def alarms_by_metric(template):
    found = {}
    for name, alarm in resources_of_type(template, "AWS::CloudWatch::Alarm").items():
        props = alarm["Properties"]
        dimensions = {d["Name"]: d["Value"] for d in props.get("Dimensions", [])}
        found.setdefault((json.dumps(props["Namespace"]), props["MetricName"]), []).append(
            (name, props, dimensions)
        )
    return found


def test_alarms_watch_errors_health_cpu_consumer_lag_and_the_outbox(template):
    found = alarms_by_metric(template)
    elb = json.dumps("AWS/ApplicationELB")
    load_balancer = {"Fn::GetAtt": ["LoadBalancer", "LoadBalancerFullName"]}
    target_group = {"Fn::GetAtt": ["GatewayTargetGroup", "TargetGroupFullName"]}
    ((_, _, elb_5xx),) = found[(elb, "HTTPCode_ELB_5XX_Count")]
    assert elb_5xx == {"LoadBalancer": load_balancer}
    for metric in ("HTTPCode_Target_5XX_Count", "UnHealthyHostCount", "HealthyHostCount"):
        ((_, _, dimensions),) = found[(elb, metric)]
        assert dimensions == {"LoadBalancer": load_balancer, "TargetGroup": target_group}, metric
    cpu = {
        dims["ServiceName"]["Fn::GetAtt"][0]: dims
        for _, _, dims in found[(json.dumps("AWS/ECS"), "CPUUtilization")]
    }
    assert set(cpu) == {f"{spec['logical']}Service" for spec in PARTS.values()}
    assert all(dims["ClusterName"] == {"Ref": "Cluster"} for dims in cpu.values())
    lag = {
        dims["Consumer Group"]: (props, dims)
        for _, props, dims in found[(json.dumps("AWS/Kafka"), "MaxOffsetLag")]
    }
    assert set(lag) == {"analytics-service", "billing-service", "audit-service"}
    for props, dims in lag.values():
        assert dims["Topic"] == "patient" and dims["Cluster Name"] == {"Fn::Sub": "${AWS::StackName}-kafka"}
        assert props["Threshold"] == {"Ref": "ConsumerLagAlarmThreshold"}
    # The parts' own figures, which each task's collector puts in the stack's
    # namespace (also without dimensions, which these alarms read).
    namespace = {"Fn::Sub": "PMS/${AWS::StackName}"}
    ((_, backlog, backlog_dims),) = found[(json.dumps(namespace), "pms_outbox_backlog_events")]
    assert backlog["Threshold"] == {"Ref": "OutboxBacklogAlarmThreshold"} and backlog_dims == {}
    ((_, consumer_lag, lag_dims),) = found[(json.dumps(namespace), "pms_consumer_lag_events")]
    assert consumer_lag["Threshold"] == {"Ref": "ConsumerLagAlarmThreshold"} and lag_dims == {}
    for alarm in (backlog, consumer_lag):
        assert alarm["Statistic"] == "Maximum"
    collectors = [c for _, c in container_defs(template) if c["Name"] == COLLECTOR]
    assert collectors and all(
        {"Name": "PMS_METRICS_NAMESPACE", "Value": namespace} in c["Environment"] for c in collectors
    )
    rollup = yaml.safe_load(collector_config(template))["exporters"]["awsemf"]["dimension_rollup_option"]
    assert rollup == "ZeroAndSingleDimensionRollup"
    # Every alarm notifies the topic, both ways; the e-mail subscription is optional.
    for name, alarm in resources_of_type(template, "AWS::CloudWatch::Alarm").items():
        assert (
            alarm["Properties"]["AlarmActions"] == alarm["Properties"]["OKActions"] == [{"Ref": "AlarmTopic"}]
        ), name
    subscription = template["Resources"]["AlarmEmailSubscription"]
    assert subscription["Condition"] == "HasAlarmEmail"
    assert subscription["Properties"]["Endpoint"] == {"Ref": "AlarmEmail"}
    assert template["Parameters"]["AlarmEmail"]["Default"] == ""


def test_the_gateway_trusts_one_proxy_hop_the_load_balancer(deployed, template):
    assert env_of(deployed.containers()["gateway-config"])["GATEWAY_TRUSTED_HOPS"] == "1"
    # ... which appends the address it saw to X-Forwarded-For.
    attributes = {
        a["Key"]: a["Value"]
        for a in template["Resources"]["LoadBalancer"]["Properties"]["LoadBalancerAttributes"]
    }
    assert attributes["routing.http.xff_header_processing.mode"] == "append"


# ----------------------------------------------------------------- telemetry

COLLECTOR = "otel-collector"
COLLECTOR_CONFIG_ARN = {
    "Fn::Sub": "arn:${AWS::Partition}:ssm:${AWS::Region}:${AWS::AccountId}:parameter${CollectorConfig}"
}
# Where each part's processes serve Prometheus metrics, on the task's loopback
# (Envoy: its admin interface, which stays inside the task).
METRICS_ENDPOINTS = {
    "gateway": ("/stats/prometheus", ["127.0.0.1:9901"]),
    "ext-authz": ("/metrics", ["127.0.0.1:9102"]),
    "patient": ("/metrics", ["127.0.0.1:4000", "127.0.0.1:9103"]),
    "auth": ("/metrics", ["127.0.0.1:4005"]),
    "billing": ("/metrics", ["127.0.0.1:9101"]),
    "analytics": ("/metrics", ["127.0.0.1:4002", "127.0.0.1:9104"]),
    "audit": ("/metrics", ["127.0.0.1:4006"]),
}


def collector_config(template):
    return template["Resources"]["CollectorConfig"]["Properties"]["Value"]


def expand(config_text, env):
    """The collector's ${env:NAME} expansion: a value that is one whole
    reference takes the variable's value as YAML (a list stays a list)."""
    config = yaml.safe_load(config_text)

    def walk(node):
        if isinstance(node, dict):
            return {key: walk(value) for key, value in node.items()}
        if isinstance(node, list):
            return [walk(item) for item in node]
        if isinstance(node, str):
            whole = re.fullmatch(r"\$\{env:(\w+)\}", node)
            if whole:
                return yaml.safe_load(env[whole[1]])
            return re.sub(r"\$\{env:(\w+)\}", lambda m: env[m[1]], node)
        return node

    return walk(config)


def test_every_task_runs_the_collector_beside_its_part_with_the_shared_configuration(template):
    image = template["Parameters"]["CollectorImage"]["Default"]
    assert image.startswith("public.ecr.aws/aws-observability/aws-otel-collector:v")
    assert re.fullmatch(template["Parameters"]["CollectorImage"]["AllowedPattern"], image)
    assert not re.fullmatch(template["Parameters"]["CollectorImage"]["AllowedPattern"], image.split(":")[0])
    for part, spec in PARTS.items():
        td = template["Resources"][f"{spec['logical']}TaskDefinition"]["Properties"]
        collectors = [c for c in td["ContainerDefinitions"] if c["Name"] == COLLECTOR]
        assert len(collectors) == 1, part
        (collector,) = collectors
        assert collector["Image"] == {"Ref": "CollectorImage"}
        # Telemetry never takes the part down; ECS restarts the collector.
        assert collector["Essential"] is False and collector["RestartPolicy"]["Enabled"] is True, part
        assert collector["ReadonlyRootFilesystem"] is True and "User" not in collector, part
        assert collector["LinuxParameters"]["Capabilities"] == {"Drop": ["ALL"]}, part
        assert collector["Secrets"] == [{"Name": "AOT_CONFIG_CONTENT", "ValueFrom": COLLECTOR_CONFIG_ARN}]
        assert collector["LogConfiguration"]["Options"]["awslogs-group"] == {
            "Ref": f"{spec['logical']}LogGroup"
        }
        env = {e["Name"]: e["Value"] for e in collector["Environment"]}
        assert env["PMS_METRICS_LOG_GROUP"] == {"Ref": f"{spec['logical']}LogGroup"}, part
        path, targets = METRICS_ENDPOINTS[part]
        assert (env["PMS_PART"], env["PMS_METRICS_PATH"], yaml.safe_load(env["PMS_METRICS_TARGETS"])) == (
            part,
            path,
            targets,
        ), part
        config = expand(
            collector_config(template),
            {
                **env,
                "AWS_REGION": REGION,
                "PMS_METRICS_NAMESPACE": "PMS/pms",
                "PMS_METRICS_LOG_GROUP": "/pms/x",
            },
        )
        (job,) = config["receivers"]["prometheus"]["config"]["scrape_configs"]
        assert (job["job_name"], job["metrics_path"], job["static_configs"]) == (
            part,
            path,
            [{"targets": targets}],
        )


def test_the_collector_sends_metrics_to_cloudwatch_and_traces_to_xray_from_loopback_only(template):
    config = yaml.safe_load(collector_config(template))
    pipelines = config["service"]["pipelines"]
    assert pipelines["metrics"]["receivers"] == ["prometheus"]
    assert pipelines["metrics"]["exporters"] == ["awsemf"]
    assert pipelines["traces"] == {
        "receivers": ["otlp"],
        "processors": ["batch/traces"],
        "exporters": ["awsxray"],
    }
    for processor in pipelines["metrics"]["processors"]:
        assert processor in config["processors"], processor
    # The receivers and the health check answer inside the task only.
    assert config["receivers"]["otlp"]["protocols"] == {"grpc": {"endpoint": "127.0.0.1:4317"}}
    assert config["extensions"]["health_check"]["endpoint"].startswith("127.0.0.1:")
    emf = config["exporters"]["awsemf"]
    assert (emf["namespace"], emf["log_group_name"]) == (
        "${env:PMS_METRICS_NAMESPACE}",
        "${env:PMS_METRICS_LOG_GROUP}",
    )
    # What the alarms and the dashboard read passes the filter.
    (condition,) = config["processors"]["filter/pms"]["metrics"]["metric"]
    kept = re.search(r'IsMatch\(name, "([^"]+)"\)', condition)[1]
    for name in ("pms_outbox_backlog_events", "pms_consumer_lag_events", "flask_http_request_total"):
        assert re.match(kept, name), name
    assert condition.startswith("not ") and not re.match(kept, "python_gc_objects_collected_total")


def test_every_part_and_envoy_send_their_spans_to_the_collector_in_their_task(deployed):
    containers = deployed.containers()
    names = {}
    for name in APP_CONTAINERS:
        env = env_of(containers[name])
        assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://127.0.0.1:4317", name
        assert env["OTEL_EXPORTER_OTLP_PROTOCOL"] == "grpc", name
        assert (env["OTEL_TRACES_SAMPLER"], env["OTEL_TRACES_SAMPLER_ARG"]) == (
            "parentbased_traceidratio",
            "0.1",
        )
        names[name] = env["OTEL_SERVICE_NAME"]
    assert names.pop("gateway-config") == "gateway"  # the renderer configures Envoy's tracer
    assert names == {name: name for name in names}


# ----------------------------------------------------------------- checkov


def checkov_binary():
    """checkov lives in a venv of its own (.venv/tools): its pins clash with the project's."""
    for candidate in (
        os.environ.get("CHECKOV"),
        Path(sys.prefix) / "tools" / "bin" / "checkov",
        ROOT / ".venv" / "tools" / "bin" / "checkov",
        shutil.which("checkov"),
    ):
        if candidate and Path(candidate).is_file():
            return str(candidate)
    pytest.fail("checkov is not installed: `make install-dev` puts it in .venv/tools")


def checkov(*files):
    """checkov's JSON report per framework, run offline on these files."""
    env = {**os.environ, "CKV_SKIP_PACKAGE_UPDATE_CHECK": "true", "BC_SKIP_MAPPING": "TRUE"}
    args = [checkov_binary(), "--skip-download", "--framework", "cloudformation", "dockerfile", "-o", "json"]
    for path in files:
        args += ["-f", str(path)]
    result = subprocess.run(args, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode in (0, 1), result.stderr
    reports = json.loads(result.stdout)
    return {report["check_type"]: report for report in (reports if isinstance(reports, list) else [reports])}


def test_checkov_finds_no_failed_check_and_every_skip_says_why():
    reports = checkov(*TEMPLATES, DOCKERFILE)
    assert set(reports) == {"cloudformation", "dockerfile"}
    for kind, report in reports.items():
        assert report["summary"]["parsing_errors"] == 0, kind
        assert report["summary"]["passed"] > 0, kind
        failed = [
            f"{c['check_id']} {c['resource']}: {c['check_name']}" for c in report["results"]["failed_checks"]
        ]
        assert not failed, "\n".join(failed)
    skipped = reports["cloudformation"]["results"]["skipped_checks"]
    for check in skipped:
        assert len(check["check_result"].get("suppress_comment") or "") > 20, check["check_id"]
    assert {(c["check_id"], c["resource"]) for c in skipped} == CHECKOV_SKIPS
    assert not reports["dockerfile"]["results"]["skipped_checks"]


def test_checkov_would_catch_plaintext_kafka_and_an_unencrypted_log_group(tmp_path):
    """The scan above is not vacuous: a regressed copy of the template fails it."""
    text = PMS_TEMPLATE.read_text()
    regressed = text.replace("ClientBroker: TLS", "ClientBroker: PLAINTEXT", 1)
    regressed = regressed.replace("      KmsKeyId: !GetAtt LogsKey.Arn\n", "", 1)
    assert regressed.count("KmsKeyId: !GetAtt LogsKey.Arn") == text.count("KmsKeyId: !GetAtt LogsKey.Arn") - 1
    copy = tmp_path / "pms.yaml"
    copy.write_text(regressed)
    failed = {c["check_id"] for c in checkov(copy)["cloudformation"]["results"]["failed_checks"]}
    assert {"CKV_AWS_81", "CKV_AWS_158"} <= failed, failed


def test_database_defaults_fix_the_originals_instance_class(template):
    params = template["Parameters"]
    assert params["DbInstanceClass"]["Default"] == "db.t4g.micro"
    assert "t2." not in json.dumps(template)
    for db in resources_of_type(template, "AWS::RDS::DBInstance").values():
        assert db["Properties"]["Engine"] == "postgres"
        assert db["Properties"]["DBInstanceClass"] == {"Ref": "DbInstanceClass"}
        assert db["Properties"]["AllocatedStorage"] == {"Ref": "DbAllocatedStorage"}


def test_sizes_and_counts_are_parameters_per_service(template):
    params = template["Parameters"]
    for spec in PARTS.values():
        logical = spec["logical"]
        for suffix in ("Cpu", "Memory", "DesiredCount", "MaxCount"):
            assert f"{logical}{suffix}" in params
        td = template["Resources"][f"{logical}TaskDefinition"]["Properties"]
        assert td["Cpu"] == {"Ref": f"{logical}Cpu"}
        assert td["Memory"] == {"Ref": f"{logical}Memory"}
        count = template["Resources"][f"{logical}Service"]["Properties"]["DesiredCount"]
        assert f"{logical}DesiredCount" in refs_in(count)
    for name in ("AppImage", "ImageTag", "EnvoyImage", "DbInstanceClass", "DbAllocatedStorage"):
        assert name in params
    assert params["EnvoyImage"]["Default"] == "envoyproxy/envoy:v1.40-latest"


# ----------------------------------------------------------------- audit trail


def test_audit_migrates_as_the_owner_and_everything_else_runs_as_the_append_only_role(template):
    """Only audit-migrate gets the audit database's master credentials; it
    makes the role the API, the consumer and the gateway's collector log in
    as, with the grants audit/grants.py gives: no UPDATE or DELETE of an entry."""
    from audit.grants import TABLE_GRANTS

    by_container = {c["Name"]: c for _, c in container_defs(template)}
    owner_readers = {
        name
        for name, container in by_container.items()
        for entry in container.get("Secrets", [])
        if "AuditDbSecret" in refs_in(entry["ValueFrom"])
    }
    assert owner_readers == {"audit-migrate"}
    migrate = {s["Name"]: s["ValueFrom"] for s in by_container["audit-migrate"]["Secrets"]}
    assert migrate["AUDIT_SERVICE_DB_USER"] == {"Fn::Sub": "${AuditServiceDbSecret}:username::"}
    assert migrate["AUDIT_SERVICE_DB_PASSWORD"] == {"Fn::Sub": "${AuditServiceDbSecret}:password::"}
    for name in AUDIT_SERVICE_ROLE_CONTAINERS:
        given = {s["Name"]: s["ValueFrom"] for s in by_container[name]["Secrets"]}
        assert given == {
            "DB_USER": {"Fn::Sub": "${AuditServiceDbSecret}:username::"},
            "DB_PASSWORD": {"Fn::Sub": "${AuditServiceDbSecret}:password::"},
        }, name
    service_secret = template["Resources"]["AuditServiceDbSecret"]
    assert service_secret["DeletionPolicy"] == "Retain"  # the role outlives a stack, like the database
    generated = service_secret["Properties"]["GenerateSecretString"]
    assert json.loads(generated["SecretStringTemplate"]) == {"username": "audit_service"}
    assert generated["PasswordLength"] >= 32
    assert TABLE_GRANTS == {
        "audit_entries": ("SELECT", "INSERT"),
        "audit_chain_head": ("SELECT", "UPDATE"),
        "audit_log_positions": ("SELECT", "INSERT", "UPDATE"),
        "alembic_version_audit": ("SELECT",),
    }


def test_the_gateway_task_shares_the_audit_log_with_its_collector(template):
    td = template["Resources"]["GatewayTaskDefinition"]["Properties"]
    assert {"Name": "audit-log"} in td["Volumes"]
    containers = {c["Name"]: c for c in td["ContainerDefinitions"]}
    render, envoy, collector = (
        containers["gateway-config"],
        containers["envoy"],
        containers["audit-collector"],
    )

    def mount(container):
        (found,) = [m for m in container["MountPoints"] if m["SourceVolume"] == "audit-log"]
        return found

    # The renderer (root) makes the folder for the app image's group; Envoy
    # joins that group and writes; the collector only reads.
    assert mount(render)["ContainerPath"] == mount(envoy)["ContainerPath"] == AUDIT_LOG_FOLDER
    assert mount(collector) == {
        "SourceVolume": "audit-log",
        "ContainerPath": AUDIT_LOG_FOLDER,
        "ReadOnly": True,
    }
    assert not mount(envoy).get("ReadOnly")
    assert render["Command"][2].startswith(AUDIT_LOG_FOLDER_MADE + " && exec ")
    envoy_env = {e["Name"]: e["Value"] for e in envoy["Environment"]}
    assert envoy_env["ENVOY_GID"] == APP_GID
    users = [line for line in DOCKERFILE.read_text().splitlines() if line.startswith("USER ")]
    assert users[-1].split(":")[1] == APP_GID
    # The renderer writes the path into Envoy's config; the collector reads it.
    for container in (render, collector):
        env = {e["Name"]: e["Value"] for e in container["Environment"]}
        assert env["AUDIT_LOG_PATH"] == AUDIT_LOG_PATH, container["Name"]
    # Flushed every second, as make run's Envoy (stack/parts.py).
    assert envoy["Command"][envoy["Command"].index("--file-flush-interval-msec") + 1] == "1000"
    # The gateway keeps serving while its collector is away, and ECS restarts it.
    assert collector["Essential"] is False and collector["RestartPolicy"]["Enabled"] is True
    # Each gateway task has its own log, so its own position row.
    assert 'AUDIT_LOG_NAME="gateway-$(hostname)"' in collector["Command"][2]
    # It reaches only the audit database, as the append-only role, and no Kafka.
    env = {e["Name"]: e["Value"] for e in collector["Environment"]}
    assert env["DB_HOST"] == {"Fn::GetAtt": ["AuditDb", "Endpoint.Address"]}
    assert "KAFKA_BOOTSTRAP_SERVERS" not in env


def test_the_gateway_routes_to_audit_through_cloud_map(template):
    discovery = template["Resources"]["AuditDiscovery"]["Properties"]
    assert discovery["Name"] == "audit"
    registry = template["Resources"]["AuditService"]["Properties"]["ServiceRegistries"][0]["RegistryArn"]
    assert "AuditDiscovery" in refs_in(registry)
    td = template["Resources"]["GatewayTaskDefinition"]["Properties"]
    for container in td["ContainerDefinitions"]:
        if container["Name"] in ("gateway-config", "envoy"):
            env = {e["Name"]: e["Value"] for e in container["Environment"]}
            assert env["AUDIT_HOST"] == {"Fn::Sub": "audit.${ServiceDiscoveryNamespace}"}
            assert env["AUDIT_PORT"] == "4006"
