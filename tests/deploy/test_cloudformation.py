"""The CloudFormation templates in cloudformation/.

Three layers, none needing network or AWS credentials:
- cfn-lint (pinned) finds no error and no warning in any template;
- every template deploys to moto with its parameter defaults, and the
  resources moto models are checked through boto3 describe calls (VPC and
  subnets, security-group rules, RDS, ECS, the load balancer, logs, IAM);
- what moto does not model (MSK, Cloud Map, Secrets Manager; an ECS service's
  launch type, network and load balancer settings) is checked on the parsed
  template.
"""
import json
import re
import warnings
from contextlib import contextmanager
from pathlib import Path

import boto3
import pytest
from cfnlint.api import lint, lint_file
from cfnlint.decode import cfn_yaml
from moto import mock_aws

pytestmark = pytest.mark.filterwarnings("ignore:Tried to parse .* not supported by moto:UserWarning")

TEMPLATE_DIR = Path(__file__).resolve().parents[2] / "cloudformation"
TEMPLATES = sorted(TEMPLATE_DIR.glob("*.yaml"))
PMS_TEMPLATE = TEMPLATE_DIR / "pms.yaml"
REGION = "us-east-1"
STACK = "pms"
ACCOUNT = "123456789012"  # moto's default account

# Resource types moto's CloudFormation skips (Ref/GetAtt to them resolve to
# nothing there); the template-level tests below cover them instead.
NOT_MODELLED_BY_MOTO = {
    "AWS::MSK::Cluster",
    "AWS::ServiceDiscovery::PrivateDnsNamespace",
    "AWS::ServiceDiscovery::Service",
    "AWS::SecretsManager::Secret",
    "AWS::SecretsManager::SecretTargetAttachment",
}

# One row per deployed part: its ECS service, task definition, security group,
# log group, Cloud Map service, port, containers and their commands, database.
PARTS = {
    "gateway": dict(
        logical="Gateway", port=4004, db=None,
        containers={
            "gateway-config": ["python", "-m", "gateway.render", "--out", "/etc/envoy/envoy.yaml"],
            "envoy": ["envoy", "-c", "/etc/envoy/envoy.yaml"],
        },
    ),
    "ext-authz": dict(
        logical="ExtAuthz", port=9002, db=None,
        containers={"ext-authz": ["python", "-m", "gateway.ext_authz"]},
    ),
    "patient": dict(
        logical="Patient", port=4000, db="patient",
        containers={
            "patient": ["python", "-m", "patient"],
            "patient-worker": ["python", "-m", "patient.worker"],
        },
    ),
    "auth": dict(
        logical="Auth", port=4005, db="auth",
        containers={"auth": ["python", "-m", "auth"]},
    ),
    "billing": dict(
        logical="Billing", port=9001, db="billing",
        containers={"billing": ["python", "-m", "billing"]},
    ),
    "analytics": dict(
        logical="Analytics", port=4002, db="analytics",
        containers={
            "analytics": ["python", "-m", "analytics"],
            "analytics-consumer": ["python", "-m", "analytics.consumer"],
        },
    ),
}
APP_CONTAINERS = [c for part in PARTS.values() for c in part["containers"] if c != "envoy"]
KAFKA_CONTAINERS = {"patient", "patient-worker", "billing", "analytics-consumer"}
ADDRESS_BOOK = {
    "PATIENT_HOST": "patient.pms.local", "PATIENT_PORT": "4000",
    "AUTH_HOST": "auth.pms.local", "AUTH_PORT": "4005",
    "BILLING_HOST": "billing.pms.local", "BILLING_PORT": "9001",
    "ANALYTICS_HOST": "analytics.pms.local", "ANALYTICS_PORT": "4002",
    "EXT_AUTHZ_HOST": "ext-authz.pms.local", "EXT_AUTHZ_PORT": "9002",
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
    "PatientDbSecurityGroup": {(5432, "PatientSecurityGroup")},
    "AuthDbSecurityGroup": {(5432, "AuthSecurityGroup")},
    "BillingDbSecurityGroup": {(5432, "BillingSecurityGroup")},
    "AnalyticsDbSecurityGroup": {(5432, "AnalyticsSecurityGroup")},
    "KafkaSecurityGroup": {(9092, "PatientSecurityGroup"), (9092, "BillingSecurityGroup"),
                           (9092, "AnalyticsSecurityGroup")},
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
        "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SECURITY_TOKEN": "testing", "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": REGION, "AWS_REGION": REGION,
        "AWS_CONFIG_FILE": "/nonexistent/aws-config", "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/aws-credentials",
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
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
        self.physical = {r["LogicalResourceId"]: r.get("PhysicalResourceId")
                         for r in listed if "LogicalResourceId" in r}

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


# ----------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def template():
    return load_template(PMS_TEMPLATE)


@pytest.fixture(scope="module")
def with_defaults():
    """Each template deployed (once, on first use) with every parameter at its default."""
    with pytest.MonkeyPatch.context() as monkeypatch, fake_aws(monkeypatch):
        # pms.yaml in REGION (the tests below expect it there); any other template
        # in a region of its own. us-west-2 is deployed_https's.
        other_regions = iter(["eu-west-1", "eu-central-1", "ap-southeast-2", "ca-central-1", "sa-east-1"])
        cache = {}

        def deploy(path):
            if path not in cache:
                cache[path] = Deployed(path, region=REGION if path == PMS_TEMPLATE else next(other_regions))
            return cache[path]

        yield deploy


@pytest.fixture(scope="module")
def deployed(with_defaults):
    return with_defaults(PMS_TEMPLATE)


@pytest.fixture(scope="module")
def deployed_https(with_defaults):
    """pms.yaml deployed with a certificate and known Kafka brokers (the second deploy)."""
    def certificate(stack):
        arn = stack.acm.request_certificate(DomainName="pms.example.com")["CertificateArn"]
        return {"CertificateArn": arn}

    return Deployed(PMS_TEMPLATE, region="us-west-2", before=certificate, parameters={
        "KafkaBootstrapServers": "b-1.pms-kafka.example:9092,b-2.pms-kafka.example:9092",
        "PatientDesiredCount": "3",
        "BillingDesiredCount": "2",
        "AnalyticsDesiredCount": "4",
    })


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
    assert text.count('EngineVersion: "16.13"') == 4
    regressed = text.replace('EngineVersion: "16.13"', 'EngineVersion: "11.9"', 1)
    regressed = regressed.replace("HealthCheckPath: /health", "HealthCheckPath: /health\n      HealthCheckPathh: /", 1)
    rule_ids = {match.rule.id for match in lint(regressed)}
    assert "W3691" in rule_ids  # deprecated engine version
    assert "E3002" in rule_ids  # unknown property


# ----------------------------------------------------------------- moto: whole stack

@pytest.mark.parametrize("path", TEMPLATES, ids=lambda p: p.name)
def test_every_template_deploys_with_its_defaults(path, with_defaults):
    stack = with_defaults(path)
    assert stack.stack["StackStatus"] == "CREATE_COMPLETE", stack.stack.get("StackStatusReason")
    skipped = {res["Type"] for name, res in load_template(path)["Resources"].items()
               if name not in stack.physical and "Condition" not in res}
    # A resource moto dropped without us knowing would go unchecked.
    assert skipped <= NOT_MODELLED_BY_MOTO, skipped - NOT_MODELLED_BY_MOTO


def test_stack_is_created(deployed):
    assert deployed.stack["StackStatus"] == "CREATE_COMPLETE", deployed.stack.get("StackStatusReason")


def test_vpc_has_public_and_private_subnets_in_two_azs(deployed):
    vpc_id = deployed.physical["Vpc"]
    vpc = deployed.ec2.describe_vpcs(VpcIds=[vpc_id])["Vpcs"][0]
    assert vpc["CidrBlock"] == "10.0.0.0/16"
    subnets = {s["SubnetId"]: s for s in deployed.ec2.describe_subnets(
        Filters=[{"Name": "vpc-id", "Values": [vpc_id]}])["Subnets"]}
    public = [subnets[deployed.physical[f"PublicSubnet{i}"]] for i in (1, 2)]
    private = [subnets[deployed.physical[f"PrivateSubnet{i}"]] for i in (1, 2)]
    assert len({s["AvailabilityZone"] for s in public}) == 2
    assert len({s["AvailabilityZone"] for s in private}) == 2
    assert {s["AvailabilityZone"] for s in public} == {s["AvailabilityZone"] for s in private}


def test_public_subnets_route_to_the_internet_and_private_ones_through_nat(deployed):
    tables = deployed.ec2.describe_route_tables(RouteTableIds=[
        deployed.physical["PublicRouteTable"], deployed.physical["PrivateRouteTable"]])["RouteTables"]
    routes = {t["RouteTableId"]: {r.get("DestinationCidrBlock"): r for r in t["Routes"]} for t in tables}
    public_default = routes[deployed.physical["PublicRouteTable"]]["0.0.0.0/0"]
    private_default = routes[deployed.physical["PrivateRouteTable"]]["0.0.0.0/0"]
    assert public_default.get("GatewayId") == deployed.physical["InternetGateway"]
    assert private_default.get("NatGatewayId") == deployed.physical["NatGateway"]
    nat = deployed.ec2.describe_nat_gateways(NatGatewayIds=[deployed.physical["NatGateway"]])["NatGateways"][0]
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
            allowed |= {(rule["FromPort"], by_id.get(pair["GroupId"], pair["GroupId"]))
                        for pair in rule.get("UserIdGroupPairs", [])}
            assert not rule.get("Ipv6Ranges"), (name, rule)
        assert allowed == EXPECTED_INGRESS[name], name


def test_each_database_is_postgres_private_and_reached_only_from_its_service(deployed):
    dbs = deployed.db_instances()
    assert set(dbs) == {"patient", "auth", "billing", "analytics"}
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
        "LoadBalancers"][0]
    assert lb["Scheme"] == "internet-facing"
    assert lb["Type"] == "application"
    assert {az["SubnetId"] for az in lb["AvailabilityZones"]} == {
        deployed.physical["PublicSubnet1"], deployed.physical["PublicSubnet2"]}
    assert lb["SecurityGroups"] == [deployed.physical["LoadBalancerSecurityGroup"]]
    assert deployed.outputs["LoadBalancerDnsName"] == lb["DNSName"]
    assert deployed.outputs["GatewayUrl"] == f"http://{lb['DNSName']}"


def test_target_group_health_checks_the_gateway_on_slash_health(deployed):
    tg = deployed.elbv2.describe_target_groups(TargetGroupArns=[deployed.physical["GatewayTargetGroup"]])[
        "TargetGroups"][0]
    assert tg["Port"] == 4004
    assert tg["Protocol"] == "HTTP"
    assert tg["TargetType"] == "ip"
    assert tg["HealthCheckPath"] == "/health"  # the Java original left the default "/"
    assert tg["HealthCheckPort"] == "traffic-port"
    assert tg["Matcher"]["HttpCode"] == "200"
    assert tg["VpcId"] == deployed.physical["Vpc"]


def test_http_listener_forwards_to_the_gateway_without_a_certificate(deployed):
    listeners = deployed.elbv2.describe_listeners(LoadBalancerArn=deployed.physical["LoadBalancer"])["Listeners"]
    assert [(l["Port"], l["Protocol"]) for l in listeners] == [(80, "HTTP")]
    action = listeners[0]["DefaultActions"][0]
    assert action["Type"] == "forward"
    assert action["TargetGroupArn"] == deployed.physical["GatewayTargetGroup"]


def test_with_a_certificate_443_serves_and_80_redirects(deployed_https):
    stack = deployed_https
    assert stack.stack["StackStatus"] == "CREATE_COMPLETE"
    listeners = {l["Port"]: l for l in stack.elbv2.describe_listeners(
        LoadBalancerArn=stack.physical["LoadBalancer"])["Listeners"]}
    assert set(listeners) == {80, 443}
    https = listeners[443]
    assert https["Protocol"] == "HTTPS"
    assert [c["CertificateArn"] for c in https["Certificates"]] == [stack.parameters["CertificateArn"]]
    assert https["DefaultActions"][0]["Type"] == "forward"
    assert https["DefaultActions"][0]["TargetGroupArn"] == stack.physical["GatewayTargetGroup"]
    redirect = listeners[80]["DefaultActions"][0]
    assert redirect["Type"] == "redirect"
    assert redirect["RedirectConfig"]["Protocol"] == "HTTPS"
    assert redirect["RedirectConfig"]["Port"] == "443"
    assert stack.outputs["GatewayUrl"].startswith("https://")


def test_log_groups_exist_with_retention(deployed):
    groups = {g["logGroupName"]: g for g in deployed.logs.describe_log_groups()["logGroups"]}
    for part in PARTS:
        assert groups[f"/{STACK}/{part}"]["retentionInDays"] == 30
    assert groups[f"/{STACK}/kafka"]["retentionInDays"] == 30
    containers = deployed.containers()
    for part, spec in PARTS.items():
        for name in spec["containers"]:
            options = containers[name]["logConfiguration"]["options"]
            assert containers[name]["logConfiguration"]["logDriver"] == "awslogs"
            assert options["awslogs-group"] == f"/{STACK}/{part}"
            assert options["awslogs-region"] == REGION


def test_task_execution_role_exists(deployed):
    role_name = deployed.physical["TaskExecutionRole"]
    role = deployed.iam.get_role(RoleName=role_name)["Role"]
    principals = [s["Principal"]["Service"] for s in role["AssumeRolePolicyDocument"]["Statement"]]
    assert principals == ["ecs-tasks.amazonaws.com"]
    assert deployed.iam.list_role_policies(RoleName=role_name)["PolicyNames"] == ["read-service-secrets"]
    # (moto drops a task definition's ExecutionRoleArn; the template test below checks it)


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


def test_desired_counts_follow_the_parameters_once_brokers_are_known(deployed_https):
    counts = {name: s["desiredCount"] for name, s in deployed_https.services().items()}
    assert counts == {"gateway": 2, "ext-authz": 1, "auth": 1, "patient": 3, "billing": 2, "analytics": 4}
    containers = deployed_https.containers()
    for name in KAFKA_CONTAINERS:
        assert env_of(containers[name])["KAFKA_BOOTSTRAP_SERVERS"] == \
            deployed_https.parameters["KafkaBootstrapServers"]


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
    for name in ("patient-worker", "analytics-consumer", "gateway-config"):
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
            if spec["db"]:
                db = dbs[spec["db"]]
                assert env["DB_HOST"] == db["Endpoint"]["Address"], name
                assert env["DB_PORT"] == "5432", name
                assert env["DB_NAME"] == spec["db"], name
            else:
                assert not {"DB_HOST", "DB_NAME"} & set(env), name
            if name in KAFKA_CONTAINERS:
                assert "KAFKA_BOOTSTRAP_SERVERS" in env, name
            assert not [k for k in env if re.search(r"PASSWORD|SECRET|TOKEN", k)], name
    assert env_of(containers["auth"])["ADMIN_EMAIL"] == "admin@example.com"


def test_app_containers_have_health_checks(deployed):
    containers = deployed.containers()
    for part in ("patient", "auth", "analytics"):
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
        {"containerName": "analytics-consumer", "condition": "HEALTHY"}]
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
        assert props["DeploymentConfiguration"]["DeploymentCircuitBreaker"] == {"Enable": True, "Rollback": True}
    for name, td in resources_of_type(template, "AWS::ECS::TaskDefinition").items():
        assert td["Properties"]["RequiresCompatibilities"] == ["FARGATE"], name
        assert td["Properties"]["NetworkMode"] == "awsvpc", name
        assert td["Properties"]["ExecutionRoleArn"] == {"Fn::GetAtt": ["TaskExecutionRole", "Arn"]}, name


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
    behind = {name: s["Properties"]["LoadBalancers"] for name, s in services.items()
              if "LoadBalancers" in s["Properties"]}
    assert behind == {"GatewayService": [{
        "ContainerName": "envoy", "ContainerPort": 4004, "TargetGroupArn": {"Ref": "GatewayTargetGroup"}}]}
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
    assert props["NumberOfBrokerNodes"] == 2
    assert brokers["ClientSubnets"] == [{"Ref": "PrivateSubnet1"}, {"Ref": "PrivateSubnet2"}]
    assert brokers["SecurityGroups"] == [{"Ref": "KafkaSecurityGroup"}]
    assert brokers["InstanceType"] == {"Ref": "KafkaBrokerInstanceType"}
    assert template["Parameters"]["KafkaBrokerInstanceType"]["Default"] == "kafka.t3.small"
    # What the plaintext clients connect to must be what the security group opens.
    assert props["EncryptionInfo"]["EncryptionInTransit"]["ClientBroker"] == "PLAINTEXT"


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
            "Fn::Sub": f"{{{{resolve:secretsmanager:${{{secret}}}:SecretString:username}}}}"}
        assert props["MasterUserPassword"] == {
            "Fn::Sub": f"{{{{resolve:secretsmanager:${{{secret}}}:SecretString:password}}}}"}
        generated = secrets[secret]["Properties"]["GenerateSecretString"]
        assert generated["GenerateStringKey"] == "password"
        assert json.loads(generated["SecretStringTemplate"])["username"]
        assert generated["PasswordLength"] >= 32
        for bad in "@/\" ":
            assert bad in generated["ExcludeCharacters"]  # characters RDS refuses in passwords
        assert db.get("DeletionPolicy") == "Snapshot", name


def test_services_get_db_passwords_and_jwt_secret_as_ecs_secrets(template):
    secrets = resources_of_type(template, "AWS::SecretsManager::Secret")
    by_container = {c["Name"]: c for _, c in container_defs(template)}
    for part, spec in PARTS.items():
        if not spec["db"]:
            continue
        secret = f"{spec['logical']}DbSecret"
        for name in spec["containers"]:
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


def test_execution_role_reads_exactly_the_secrets_the_tasks_use(template):
    secrets = set(resources_of_type(template, "AWS::SecretsManager::Secret"))
    used = set()
    for _, container in container_defs(template):
        for entry in container.get("Secrets", []):
            used |= refs_in(entry["ValueFrom"]) & secrets
    statements = [s for policy in template["Resources"]["TaskExecutionRole"]["Properties"]["Policies"]
                  for s in policy["PolicyDocument"]["Statement"]]
    readable = [s for s in statements if "secretsmanager:GetSecretValue" in json.dumps(s["Action"])]
    assert len(readable) == 1
    resources = readable[0]["Resource"]
    assert all(set(r) == {"Ref"} for r in resources), resources  # no wildcards
    assert {r["Ref"] for r in resources} == used == secrets


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
                    assert isinstance(text, str) and text.startswith("{{resolve:secretsmanager:"), \
                        path + [key]
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


def test_database_defaults_fix_the_originals_instance_class(template):
    params = template["Parameters"]
    assert params["DbInstanceClass"]["Default"] == "db.t4g.micro"
    assert "t2." not in json.dumps(template)
    for name, db in resources_of_type(template, "AWS::RDS::DBInstance").items():
        assert db["Properties"]["Engine"] == "postgres"
        assert db["Properties"]["DBInstanceClass"] == {"Ref": "DbInstanceClass"}
        assert db["Properties"]["AllocatedStorage"] == {"Ref": "DbAllocatedStorage"}


def test_sizes_and_counts_are_parameters_per_service(template):
    params = template["Parameters"]
    for spec in PARTS.values():
        logical = spec["logical"]
        for suffix in ("Cpu", "Memory", "DesiredCount"):
            assert f"{logical}{suffix}" in params
        td = template["Resources"][f"{logical}TaskDefinition"]["Properties"]
        assert td["Cpu"] == {"Ref": f"{logical}Cpu"}
        assert td["Memory"] == {"Ref": f"{logical}Memory"}
        count = template["Resources"][f"{logical}Service"]["Properties"]["DesiredCount"]
        assert f"{logical}DesiredCount" in refs_in(count)
    for name in ("AppImage", "ImageTag", "EnvoyImage", "DbInstanceClass", "DbAllocatedStorage"):
        assert name in params
    assert params["EnvoyImage"]["Default"] == "envoyproxy/envoy:v1.40-latest"
