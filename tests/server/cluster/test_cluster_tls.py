"""A cluster on TLS end to end: the nodes forward to each other over TLS, verifying against
``cluster_ca_file``, and reach NATS servers that accept TLS only, verifying them against
``cluster_nats_ca_file`` (3 NATS servers + 3 nodes on loopback, every certificate for
127.0.0.1 signed by a test CA)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("cryptography.x509", reason="cryptography makes the test certificates")
sys.path.insert(0, str(Path(__file__).parents[1] / "rpc"))  # the test CA helper
from pki import Pki, make_pki

from nudge.clients import Client, make_event
from nudge.server.cluster.local import LocalCluster
from nudge.server.cluster.node import nats_tls_context
from nudge.server.config import Config, ConfigError

pytestmark = [pytest.mark.timeout(300), pytest.mark.slow]


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def tls_cluster(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    running = LocalCluster(tmp_path_factory.mktemp("tls-cluster"), 3, 8, 2.0, env={
        "NUDGE_TLS_CERT_FILE": str(pki.server_cert),
        "NUDGE_TLS_KEY_FILE": str(pki.server_key),
        "NUDGE_CLUSTER_CA_FILE": str(pki.ca),
        "NUDGE_CLUSTER_NATS_CA_FILE": str(pki.ca),
    }, nats_tls=(pki.server_cert, pki.server_key))
    running.start()
    yield running
    running.stop()


def test_every_node_answers_for_every_user_over_tls(tls_cluster: LocalCluster,
                                                     pki: Pki) -> None:
    users = [f"tls-{i}" for i in range(24)]  # spread over every node's partitions
    with Client(tls_cluster.nodes[0].target, ca_file=pki.ca, retries=8) as client:
        assert client.track([make_event(u, "app_opened") for u in users]).accepted == 24
    for node in tls_cluster.nodes:  # most calls are forwarded to another node, over TLS
        with Client(node.target, ca_file=pki.ca, retries=8) as client:
            for user in users:
                assert client.decide(user, dry_run=True).model_version


def test_tls_in_cluster_mode_needs_the_peers_ca(pki: Pki) -> None:
    with pytest.raises(ConfigError, match="cluster_ca_file"):
        Config(cluster="nats://127.0.0.1:4222", tls_cert_file=pki.server_cert,
               tls_key_file=pki.server_key)


def test_a_bad_nats_ca_names_its_setting(pki: Pki) -> None:
    with pytest.raises(ConfigError, match="cluster_nats_ca_file"):
        nats_tls_context(Config(cluster="tls://127.0.0.1:4222",
                                cluster_nats_ca_file=pki.server_key))  # a key, not a CA
    assert nats_tls_context(Config(cluster="nats://127.0.0.1:4222")) is None
    context = nats_tls_context(Config(cluster="tls://127.0.0.1:4222",
                                      cluster_nats_ca_file=pki.ca))
    assert context is not None and context.check_hostname
