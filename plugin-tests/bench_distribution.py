"""Parallel distribution: a many-version key against a one-version key, per provider.

Run through scripts/bench-distribution. Every call to a cloud waits a fixed
`--latency` (default 50 ms) before it is served, standing in for a cloud region
far away: the Azure Key Vault and Cloud KMS fakes (plugin-tests/fakes/) delay
every request they serve, and LocalStack is reached through the AWS fault
proxy, which delays every call it forwards. All of it on 127.0.0.1.

Two dev servers run the same plugin binary: one with the default import
concurrency (KEYMGMT_IMPORT_CONCURRENCY unset: 8) and one with
KEYMGMT_IMPORT_CONCURRENCY=1, the sequential peer measured in the same run.
For each provider, `--keys` one-version keys are distributed (p50), then one
key of `--versions` versions; the ratio of the two is the figure of merit
(target: at most 3x in parallel; sequential import is about `--versions`x).
Key creation and rotation are not timed. Google's CryptoKey versions have no
labels, so Cloud KMS imports one version at a time in both modes.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import requests

from fakes.aws_fault_proxy import AwsFaultProxy
from fakes.azure_keyvault import FakeKeyVault
from fakes.gcp_kms import FakeCloudKms
from benchlib import log, timed_post
from harness import MOUNT, BaoServer, cli, install_plugin, kill_plugins
from localstack import LocalStack

KEY_TYPE = "ecdsa-p256"
PROVIDERS = ("azurekeyvault", "awskms", "gcpckms")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--latency", type=float, default=0.05, help="seconds every cloud call waits")
    parser.add_argument("--keys", type=int, default=3, help="one-version keys per provider and mode")
    parser.add_argument("--versions", type=int, default=50, help="versions of the many-version key")
    parser.add_argument("--concurrency", type=int, default=None,
                        help="KEYMGMT_IMPORT_CONCURRENCY of the parallel mode (default: unset, the engine's 8)")
    parser.add_argument("--providers", default=",".join(PROVIDERS),
                        help=f"comma-separated subset of {','.join(PROVIDERS)} (default: all)")
    args = parser.parse_args()
    wanted = [p.strip() for p in args.providers.split(",") if p.strip()]
    if not wanted or any(p not in PROVIDERS for p in wanted):
        parser.error(f"--providers: choose from {', '.join(PROVIDERS)}")

    tmp = Path(tempfile.mkdtemp(prefix="bench-distribution-"))
    # LocalStack takes a core for a while to start: only when AWS is measured.
    localstack = LocalStack(tmp / "localstack") if "awskms" in wanted else None
    proxy = (AwsFaultProxy(localstack.endpoint, latency_s=args.latency, upstream_keep_alive=True).start()
             if localstack else None)
    azure_cm = FakeKeyVault()
    azure = azure_cm.__enter__()
    gcp_cm = FakeCloudKms(import_job_delay=0.0, version_delay=0.0)
    gcp = gcp_cm.__enter__()
    for service in ("vault", "login", "imds"):
        azure.set_latency(args.latency, service)
    for service in ("kms", "oauth2"):
        gcp.set_latency(args.latency, service)
    env = {
        "KEYMGMT_AZURE_KEYVAULT_ENDPOINT": azure.vault_url, "AZURE_AUTHORITY_HOST": azure.authority_url,
        "KEYMGMT_AZURE_IMDS_ENDPOINT": azure.imds_url, "KEYMGMT_AZURE_CA_FILE": azure.ca_pem_path,
        "AZURE_TENANT_ID": None, "AZURE_CLIENT_ID": None, "AZURE_CLIENT_SECRET": None,
        "KEYMGMT_GCP_KMS_ENDPOINT": gcp.kms_url, "KEYMGMT_GCP_CA_FILE": gcp.ca_pem_path,
        "GOOGLE_CREDENTIALS": None, "GOOGLE_APPLICATION_CREDENTIALS": None, "GCE_METADATA_HOST": "127.0.0.1:9",
        "AWS_EC2_METADATA_DISABLED": "true", "AWS_ACCESS_KEY_ID": None, "AWS_SECRET_ACCESS_KEY": None,
        "AWS_SESSION_TOKEN": None, "AWS_CONFIG_FILE": "/dev/null", "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
    }
    parallel = {} if args.concurrency is None else {"KEYMGMT_IMPORT_CONCURRENCY": str(args.concurrency)}
    modes = {"parallel": parallel, "sequential": {"KEYMGMT_IMPORT_CONCURRENCY": "1"}}
    servers = {mode: BaoServer(tmp / mode, env={**env, **extra}) for mode, extra in modes.items()}
    access_key = "".join(random.choice("0123456789") for _ in range(12))
    providers: dict[str, tuple[list[str], str, str]] = {
        # Software protection: with BYOK the fake spends its own CPU generating
        # each run's RSA exchange key, which would hide the calls' latency.
        "azurekeyvault": (["provider=azurekeyvault", "key_collection=keyvault-name",
                           *[f"credentials={k}={v}" for k, v in azure.credentials.items()]], "software", "sign,verify"),
        "awskms": (["provider=awskms", "key_collection=us-east-1", f"credentials=access_key={access_key}",
                    "credentials=secret_key=bench", f"credentials=endpoint={proxy.endpoint if proxy else ''}"],
                   "hsm", "sign,verify"),
        "gcpckms": (["provider=gcpckms", f"key_collection={gcp.key_collection}",
                     f"credentials=service_account_file={gcp.service_account_file}"], "hsm", "sign"),
    }
    results: dict[tuple[str, str], dict[str, float]] = {}
    try:
        for mode, server in servers.items():
            install_plugin(server)
            s = requests.Session()
            s.trust_env = False
            s.headers["X-Vault-Token"] = server.token
            base = f"{server.addr}/v1/{MOUNT}"
            for index, (provider, (settings, protection, purpose)) in enumerate(providers.items()):
                if provider not in wanted:
                    continue
                kms = f"p{index}"
                cli(server, "write", f"{MOUNT}/kms/{kms}", *settings)

                def distribute(name: str, kms: str = kms, protection: str = protection,
                               purpose: str = purpose) -> float:
                    return timed_post(s, f"{base}/kms/{kms}/key/{name}",
                                      {"purpose": purpose, "protection": protection}, timeout=900)

                def new_key(name: str, versions: int, server: BaoServer = server) -> None:
                    cli(server, "write", f"{MOUNT}/key/{name}", f"type={KEY_TYPE}")
                    for _ in range(versions - 1):
                        cli(server, "write", "-f", f"{MOUNT}/key/{name}/rotate")

                new_key(f"{kms}-warmup", 1)
                distribute(f"{kms}-warmup")  # tokens, clients, import jobs
                singles = []
                for k in range(args.keys):
                    new_key(f"{kms}-one-{k}", 1)
                    singles.append(distribute(f"{kms}-one-{k}"))
                new_key(f"{kms}-many", args.versions)
                many = distribute(f"{kms}-many")
                versions = s.get(f"{base}/kms/{kms}/key/{kms}-many", timeout=60).json()["data"]["versions"]
                if len(versions) != args.versions:
                    raise RuntimeError(f"{provider}: {len(versions)} of {args.versions} versions recorded")
                one = statistics.median(singles)
                results[(provider, mode)] = {"one_ms": one * 1000, "many_ms": many * 1000, "ratio": many / one}
                log(f"{mode} {provider}: 1 version p50 {one * 1000:.0f} ms, "
                    f"{args.versions} versions {many * 1000:.0f} ms ({many / one:.1f}x)")
    finally:
        for server in servers.values():
            server.stop()
            kill_plugins(server)
        if proxy:
            proxy.stop()
        gcp_cm.__exit__(None, None, None)
        azure_cm.__exit__(None, None, None)
        if localstack:
            localstack.stop()

    print(f"Distribution of one {KEY_TYPE} key, every cloud call delayed {args.latency * 1000:.0f} ms; "
          f"1 version p50 of {args.keys} keys vs one {args.versions}-version key; "
          f"parallel = {'default concurrency (8)' if args.concurrency is None else f'KEYMGMT_IMPORT_CONCURRENCY={args.concurrency}'}, "
          f"sequential = KEYMGMT_IMPORT_CONCURRENCY=1 (same run)")
    header = (f"{'provider':<18} {'mode':<10} {'1 version':>10} {f'{args.versions} versions':>13} "
              f"{'ratio':>7} {'vs sequential':>14}")
    print(header)
    print("-" * len(header))
    for (provider, mode), r in results.items():
        sequential = results.get((provider, "sequential"))
        speedup = f"{sequential['many_ms'] / r['many_ms']:.1f}x faster" if sequential and mode == "parallel" else ""
        print(f"{provider:<18} {mode:<10} {r['one_ms']:>7.0f} ms {r['many_ms']:>10.0f} ms "
              f"{r['ratio']:>6.1f}x {speedup:>14}")
    print(json.dumps({f"{p} {m}": r for (p, m), r in results.items()}), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
